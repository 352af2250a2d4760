"""What a quality check measured, and what the report shows: plain data, no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Set, Tuple

SEVERITIES = ("warn", "fail")


@dataclass(frozen=True)
class CheckResult:
    name: str  # unique in a run, e.g. "completeness.<dataset>.<column>"
    kind: str  # completeness | range | row_count | drift | freshness
    table: str  # the table the check measures, e.g. "bronze.<dataset>"
    value: Optional[float]  # the measured value (None: nothing to measure, e.g. no history yet)
    threshold: str  # the bound in words, e.g. ">= 0.95" or "in [0.7, 1.3] x median 1650"
    severity: str  # warn | fail
    passed: bool
    detail: str = ""

    @property
    def blocks(self) -> bool:
        """A failed check of severity `fail` stops the run."""
        return not self.passed and self.severity == "fail"

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        return f"{self.name}={value} (threshold {self.threshold})"


@dataclass(frozen=True)
class Distribution:
    """One gold feature's histogram on shared bins: the previous snapshot against this run's."""

    feature: str  # "<feature set>.<feature>"
    edges: List[float]  # len(bins) + 1 bin edges, ascending
    previous: List[int]  # counts per bin
    current: List[int]
    psi: Optional[float] = None


@dataclass
class ReportData:
    run_id: str
    passed: bool  # the gate's verdict
    checks: List[CheckResult]
    null_rates: Dict[str, Dict[str, float]] = field(default_factory=dict)  # table -> column -> fraction null
    row_counts: Dict[str, List[Tuple[str, int]]] = field(default_factory=dict)  # table -> [(day or run, rows)], oldest first
    day_rows: Dict[str, Dict[dt.date, int]] = field(default_factory=dict)  # dataset -> event day changed -> rows now
    suspect_days: Dict[str, Set[dt.date]] = field(default_factory=dict)  # dataset -> days out of their band
    distributions: List[Distribution] = field(default_factory=list)

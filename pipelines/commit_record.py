"""What every pipeline commit records about itself: one typed record, written and read here only.

Resume after a crash, idempotent reruns and incremental work all rest on these records, stored in each
Iceberg snapshot's summary, atomically with the rows they describe:
- bronze: the units ingested (a file's path and content hash, or a query's result hash) and, for a
  watermarked SQL source, the watermark reached;
- silver: the bronze runs consumed and what refining them gave (rows in, valid, quarantined, duplicates,
  values present per column, the event days touched);
- gold: the bronze runs reflected and the as-of interval recomputed;
- a backfill's commits: the event-day interval rebuilt.
The serialised form (snapshot property names, JSON values) is the one tables written by earlier versions
carry, so they stay readable; `medallion maintain` folds the lists into table properties before it expires
old snapshots (`RECORDED_KEYS`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

INGESTED_UNITS = "ingested_units"
BRONZE_RUNS = "bronze_runs"
RECORDED_KEYS = (INGESTED_UNITS, BRONZE_RUNS)  # JSON lists that must outlive snapshot expiry
WATERMARK = "watermark"
ADDED_RECORDS = "added-records"  # Iceberg's own summary: rows the commit added


@dataclass(frozen=True)
class Unit:
    """One unit of input: a file, or the whole result of a query."""

    uri: str
    sha256: str
    columns: Optional[Tuple[str, ...]] = None  # a file's columns, as its header named them

    def as_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {"uri": self.uri, "sha256": self.sha256}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out

    @staticmethod
    def of(value: Mapping[str, object]) -> "Unit":
        columns = value.get("columns")
        return Unit(str(value["uri"]), str(value["sha256"]), tuple(columns) if columns is not None else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Refined:
    """What refining some bronze runs gave (a silver commit)."""

    rows_in: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates: int = 0
    present: Mapping[str, int] = field(default_factory=dict)  # per declared column, rows with a value
    first_day: Optional[dt.date] = None  # event days of the new silver rows
    last_day: Optional[dt.date] = None

    def as_json(self) -> Dict[str, object]:
        return {"rows_in": self.rows_in, "valid": self.valid, "quarantined": self.quarantined,
                "duplicates": self.duplicates, "present": dict(self.present),
                "first_day": self.first_day.isoformat() if self.first_day else None,
                "last_day": self.last_day.isoformat() if self.last_day else None}

    @staticmethod
    def of(value: Mapping[str, object]) -> "Refined":
        day = lambda key: dt.date.fromisoformat(str(value[key])) if value.get(key) else None  # noqa: E731
        return Refined(int(value["rows_in"]), int(value["valid"]), int(value["quarantined"]),  # type: ignore[arg-type]
                       int(value["duplicates"]), {k: int(v) for k, v in dict(value["present"]).items()},  # type: ignore[arg-type, call-overload]
                       day("first_day"), day("last_day"))


@dataclass(frozen=True)
class CommitRecord:
    run_id: str
    config_hash: str = ""
    code_version: str = ""
    source: Optional[str] = None  # bronze: the dataset a unit came from
    units: Tuple[Unit, ...] = ()  # bronze
    watermark: Optional[str] = None  # bronze of a watermarked SQL source
    bronze_runs: Tuple[str, ...] = ()  # silver and gold: the bronze runs consumed
    refined: Optional[Refined] = None  # silver
    as_of: Optional[Tuple[dt.date, dt.date]] = None  # gold: the as-of days recomputed (inclusive)
    backfill: Optional[Tuple[dt.date, dt.date]] = None  # a backfill's event days [start, end)
    added_records: int = 0  # read back only: Iceberg's count of the rows the commit added

    @property
    def is_ingest(self) -> bool:
        return INGESTED_UNITS in self.properties()

    def properties(self) -> Dict[str, str]:
        """The snapshot summary properties of this record."""
        props = {"run_id": self.run_id, "config_hash": self.config_hash, "code_version": self.code_version}
        if self.source is not None:
            props["source"] = self.source
        if self.units or self.source is not None:
            props[INGESTED_UNITS] = json.dumps([u.as_json() for u in self.units])
        if self.watermark is not None:
            props[WATERMARK] = self.watermark
        if self.bronze_runs or self.refined is not None:
            props[BRONZE_RUNS] = json.dumps(list(self.bronze_runs))
        if self.refined is not None:
            props["refined"] = json.dumps(self.refined.as_json())
        if self.as_of is not None:
            props["as_of_first"], props["as_of_last"] = (d.isoformat() for d in self.as_of)
        if self.backfill is not None:
            props["backfill"] = f"{self.backfill[0]}..{self.backfill[1]}"
        return props

    @staticmethod
    def read(props: Mapping[str, str]) -> "CommitRecord":
        """The record of a snapshot's summary (a commit not made by the pipeline reads as an empty record)."""
        backfill = props.get("backfill")
        start, _, end = (backfill or "").partition("..")
        return CommitRecord(
            run_id=props.get("run_id", ""), config_hash=props.get("config_hash", ""),
            code_version=props.get("code_version", ""), source=props.get("source"),
            units=tuple(Unit.of(u) for u in json.loads(props.get(INGESTED_UNITS, "[]"))),
            watermark=props.get(WATERMARK) or None,
            bronze_runs=tuple(json.loads(props.get(BRONZE_RUNS, "[]"))),
            refined=Refined.of(json.loads(props["refined"])) if "refined" in props else None,
            as_of=(dt.date.fromisoformat(props["as_of_first"]), dt.date.fromisoformat(props["as_of_last"]))
            if "as_of_first" in props else None,
            backfill=(dt.date.fromisoformat(start), dt.date.fromisoformat(end)) if backfill else None,
            added_records=int(props.get(ADDED_RECORDS, 0)))


def history(lake, identifier: str) -> "list[CommitRecord]":
    """The records of a table's commits in its current history, oldest first (none for a missing table)."""
    return [CommitRecord.read(props) for props in lake.snapshot_properties(identifier)]

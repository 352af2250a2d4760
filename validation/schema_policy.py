"""Schema-change policies: what a layer does when the columns arriving differ from the columns it has.

The four policies are dlt's:
  evolve         a new column is added to the table (as text in bronze and silver); a missing one is null
  freeze         a new or missing column stops the run, before anything is written, naming the column
  discard_value  a new column's values are dropped (the table keeps its columns); a missing one is null
  discard_row    a row carrying a value in a new column, or coming from a file that lacks a column, goes
                 to quarantine with the reason (`unexpected_column:<c>`, `missing_column:<c>`)
Bronze keeps every row it receives (it is the raw copy), so it accepts evolve, freeze and discard_value;
gold's columns come from the feature declarations, so it accepts evolve (rebuild) and freeze.
A type change (say, amount arriving as text) is not a schema change here: bronze holds text, and silver's
row rules quarantine each value that does not parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.errors import PipelineError
from validation.rules import RULE_SEPARATOR, join_reasons

POLICIES = ("evolve", "freeze", "discard_row", "discard_value")
ALLOWED = {"bronze": ("evolve", "freeze", "discard_value"), "silver": POLICIES, "gold": ("evolve", "freeze")}


class SchemaChangeError(PipelineError):
    """A frozen layer received a new or missing column."""


@dataclass(frozen=True)
class ColumnChange:
    new: Tuple[str, ...] = ()  # arriving, not in the table
    missing: Tuple[str, ...] = ()  # in the table, not arriving
    redefined: Tuple[str, ...] = ()  # in both, computed differently (gold: a feature's definition changed)

    def __bool__(self) -> bool:
        return bool(self.new or self.missing or self.redefined)

    def describe(self) -> str:
        parts = []
        if self.new:
            parts.append(f"new column(s) {list(self.new)}")
        if self.missing:
            parts.append(f"missing column(s) {list(self.missing)}")
        if self.redefined:
            parts.append(f"changed definition(s) of {list(self.redefined)}")
        return " and ".join(parts)


def compare(arriving: Sequence[str], expected: Sequence[str]) -> ColumnChange:
    have = set(arriving)
    return ColumnChange(tuple(c for c in arriving if c not in set(expected)), tuple(c for c in expected if c not in have))


def check_frozen(layer: str, table: str, policy: str, where: str, change: ColumnChange) -> None:
    """Stop (one line) when a frozen layer would receive a schema change."""
    if policy == "freeze" and change:
        raise SchemaChangeError(
            f"schema change stopped the run: {where} has {change.describe()}, and {table} is frozen "
            f"(schema_policy.{layer}=freeze; set {_accepting(layer)} to accept it)")


def _accepting(layer: str) -> str:
    """The policies `layer` allows that accept a change (gold cannot discard a feature's values)."""
    others = [p for p in ALLOWED[layer] if p != "freeze"]
    return others[0] if len(others) == 1 else ", ".join(others[:-1]) + " or " + others[-1]


def conform(table: pa.Table, expected: Sequence[str], policy: str) -> pa.Table:
    """Bronze: the arriving text columns shaped to the table's columns under `policy` (evolve keeps the
    new columns, after the expected ones; missing columns become null)."""
    columns = list(expected)
    if policy == "evolve":
        columns += [c for c in table.column_names if c not in set(expected)]
    return pa.table({c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows, pa.string())
                     for c in columns})


def row_reasons(frame_columns: Mapping[str, np.ndarray], new: Sequence[str], source_files: np.ndarray,
                missing_by_file: Mapping[str, Sequence[str]]) -> pd.Series:
    """discard_row: per row, the schema reasons it is quarantined for (null when it conforms).

    `frame_columns[c]` holds the values of new column `c` (null = no value); `missing_by_file` names the
    expected columns each source file lacked."""
    missing_text = {f: RULE_SEPARATOR.join(f"missing_column:{c}" for c in cols)
                    for f, cols in missing_by_file.items() if cols}
    reasons = pd.Series(source_files, dtype="object").map(missing_text)
    for c in new:
        present = ~_is_null(frame_columns[c])
        reasons = join_reasons(reasons, pd.Series(np.where(present, f"unexpected_column:{c}", None), dtype="object"))
    return reasons


def _is_null(values: np.ndarray) -> np.ndarray:
    """No value: null, or the empty text a CSV cell without a value reads as."""
    series = pd.Series(values, dtype="object")
    return (series.isna() | (series.astype("string").str.len() == 0)).fillna(True).to_numpy(dtype=bool)


def validate_policies(policies: Dict[str, str]) -> Optional[str]:
    """Why the configured policies are not acceptable (None when they are)."""
    for layer, policy in policies.items():
        if policy not in ALLOWED.get(layer, ()):
            return f"schema_policy.{layer}={policy!r} must be one of {list(ALLOWED[layer])}"
    return None

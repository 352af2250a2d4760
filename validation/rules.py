"""Rules shared by the contracts: what "has a value" means, and turning pandera's lazy failure report into
one `_failed_rules` value per row."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute as pc
import pandera.pandas as pa
from pandera.errors import SchemaErrors

RULE_SEPARATOR = ";"


def as_text(column) -> pyarrow.ChunkedArray:
    column = column if isinstance(column, pyarrow.ChunkedArray) else pyarrow.chunked_array([column])
    return column.cast(pyarrow.string())


def present(text) -> np.ndarray:
    """Has a value: not null and not blank. One rule for the contracts and for completeness counts."""
    trimmed = pc.utf8_length(pc.utf8_trim_whitespace(as_text(text)))
    return pc.fill_null(pc.greater(trimmed, 0), False).to_numpy(zero_copy_only=False)


def failed_rules(schema: pa.DataFrameSchema, frame: pd.DataFrame, rule_order: Sequence[str]) -> pd.Series:
    """Validate lazily (every failure collected) and return, per row, the failed rules joined by ';'
    in `rule_order` (None for a valid row). The frame's index must be unique."""
    result = pd.Series(None, index=frame.index, dtype="object")
    try:
        schema.validate(frame, lazy=True)
        return result
    except SchemaErrors as errors:
        cases = errors.failure_cases
    cases = cases.loc[cases["index"].notna(), ["index", "check"]].drop_duplicates()
    rank = {rule: i for i, rule in enumerate(rule_order)}
    unknown = set(cases["check"]) - set(rank)
    if unknown:  # a schema-level failure (wrong dtype, missing column) is a bug in the caller
        raise RuntimeError(f"unexpected schema failures: {sorted(unknown)}")
    cases = cases.assign(_rank=cases["check"].map(rank)).sort_values(["index", "_rank"])
    joined = cases.groupby("index", sort=False)["check"].agg(RULE_SEPARATOR.join)
    result.loc[joined.index] = joined.to_numpy()
    return result


def join_reasons(first: pd.Series, second: pd.Series) -> pd.Series:
    """Row by row: both reasons joined by ';', or whichever one is there (null when neither)."""
    first, second = first.astype("object"), second.astype("object").set_axis(first.index)
    both = first.notna() & second.notna()
    joined = first.where(first.notna(), second)
    joined[both] = first[both] + RULE_SEPARATOR + second[both]
    return joined

"""Contract of a gold table, derived from its feature set's declaration."""

from __future__ import annotations

import pandera.pandas as pa

from features.aggregations import KINDS
from features.declarations import FeatureSet


def contract(fs: FeatureSet) -> pa.DataFrameSchema:
    """Key columns present and unique per (entity, as_of); counts non-negative; declared columns only."""
    columns = {
        fs.entity.join_key: pa.Column(nullable=False),
        fs.as_of_column: pa.Column(nullable=False),
    }
    non_negative = {
        name
        for agg in fs.aggregations
        if KINDS[agg.agg].non_negative
        for name in agg.feature_names()
    }
    for name in fs.feature_dtypes():
        checks = [pa.Check.ge(0, name=f"{name}_non_negative")] if name in non_negative else []
        columns[name] = pa.Column(nullable=True, checks=checks)
    return pa.DataFrameSchema(
        columns,
        strict=True,
        unique=[fs.entity.join_key, fs.as_of_column],
        report_duplicates="all",
    )

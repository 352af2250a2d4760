"""How a feature set is declared, and the checks that reject a misdeclaration at start-up.

A feature set names its entity, the table of events it aggregates and that table's timestamp column,
and its features. A feature is one of:

- `WindowAggregation`: an aggregation of one event column over trailing whole-day windows, optionally on a
  filtered subset of events. One declaration yields one feature per window, named `<name>_<N>d`.
- `Derived`: a pure function of other features of the same row; its parameter names are its inputs
  (as in Hamilton), so the dependency graph is read off the signature.
- `Attribute`: a column of the entity table, optionally turned into "days from that date to as_of".

Window semantics (grain: one row per entity per as-of day, as_of a midnight UTC): a window of N days covers
events with `as_of - N days <= ts < as_of`. Events at or after as_of never contribute.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable, Dict, Literal, Mapping, Optional, Sequence, Tuple

Aggregation = Literal["sum", "count", "mean", "min", "max", "count_distinct", "last", "days_since_last"]
AGGREGATIONS: Tuple[str, ...] = Aggregation.__args__  # type: ignore[attr-defined]
Dtype = Literal["float64", "int64", "string"]
DTYPES: Tuple[str, ...] = Dtype.__args__  # type: ignore[attr-defined]
AttributeTransform = Literal["value", "days_until_as_of"]

_WINDOW = re.compile(r"^(\d+)d$")


class FeatureDeclarationError(ValueError):
    """A feature set is declared wrongly; the message is one line naming the set and the feature."""


@dataclass(frozen=True)
class Entity:
    name: str  # Feast entity name, e.g. "user"
    join_key: str  # column in the events and in gold, e.g. "user_id"
    dtype: Dtype = "int64"
    description: str = ""


@dataclass(frozen=True)
class Filter:
    """Keep only events whose `column` equals `value` (e.g. channel == "web")."""

    column: str
    value: str

    def label(self) -> str:
        return f"{self.column} == {self.value!r}"


@dataclass(frozen=True)
class WindowAggregation:
    name: str  # feature name prefix; the features are <name>_<N>d
    column: Optional[str]  # event column aggregated; None for count
    agg: str
    windows: Tuple[str, ...]  # e.g. ("7d", "30d")
    dtype: Dtype
    description: str
    where: Optional[Filter] = None
    suffix_window: bool = True  # False: a single-window feature is named just <name>

    def window_days(self) -> Tuple[int, ...]:
        return tuple(int(_WINDOW.match(w).group(1)) for w in self.windows)  # type: ignore[union-attr]

    def feature_names(self) -> Tuple[str, ...]:
        if not self.suffix_window:
            return (self.name,)
        return tuple(f"{self.name}_{days}d" for days in self.window_days())


@dataclass(frozen=True)
class Derived:
    name: str
    fn: Callable[..., object]  # pure function of pandas Series named after the features it reads
    dtype: Dtype
    description: str

    def inputs(self) -> Tuple[str, ...]:
        return tuple(inspect.signature(self.fn).parameters)


@dataclass(frozen=True)
class Attribute:
    name: str
    column: str  # column of the entity table
    dtype: Dtype
    description: str
    transform: AttributeTransform = "value"


@dataclass(frozen=True)
class FeatureSet:
    name: str  # gold table gold.<name> and Feast feature view <name>
    entity: Entity
    source_table: str  # e.g. "transactions" -> silver.transactions
    timestamp_column: str
    aggregations: Tuple[WindowAggregation, ...]
    derived: Tuple[Derived, ...] = ()
    attributes: Tuple[Attribute, ...] = ()
    entity_table: Optional[str] = None  # e.g. "users" -> silver.users, needed by attributes
    description: str = ""
    ttl_days: int = 1  # how long a gold row stays valid for online/historical lookups
    as_of_column: str = "as_of"

    def feature_names(self) -> Tuple[str, ...]:
        """Gold feature columns in declaration order (valid once `validate` has passed)."""
        return tuple(self.feature_dtypes())

    def max_window_days(self) -> int:
        return max(d for agg in self.aggregations for d in agg.window_days())

    def feature_dtypes(self) -> Dict[str, str]:
        dtypes: Dict[str, str] = {}
        for agg in self.aggregations:
            for name in agg.feature_names():
                dtypes[name] = agg.dtype
        dtypes.update({d.name: d.dtype for d in self.derived})
        dtypes.update({a.name: a.dtype for a in self.attributes})
        return dtypes

    def descriptions(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for agg in self.aggregations:
            for name, days in zip(agg.feature_names(), agg.window_days()):
                where = f" where {agg.where.label()}" if agg.where else ""
                out[name] = f"{agg.description} (last {days} days{where})"
        out.update({d.name: d.description for d in self.derived})
        out.update({a.name: a.description for a in self.attributes})
        return out


def validate(
    fs: FeatureSet,
    event_columns: Mapping[str, str],
    entity_columns: Optional[Mapping[str, str]] = None,
) -> None:
    """Reject a misdeclared feature set with one line naming the set, the feature and the problem.

    `event_columns` / `entity_columns` map the column names of the source and entity tables to their
    kinds ("numeric", "string", "timestamp"), as the silver contracts declare them.
    """

    def fail(what: str) -> None:
        raise FeatureDeclarationError(f"feature set {fs.name!r}: {what}")

    if fs.entity.join_key not in event_columns:
        fail(f"entity join key {fs.entity.join_key!r} is not a column of {fs.source_table!r}")
    if fs.timestamp_column not in event_columns:
        fail(f"timestamp column {fs.timestamp_column!r} is not a column of {fs.source_table!r}")
    if not fs.aggregations:
        fail("declares no window aggregation")
    seen: Dict[str, str] = {}

    def claim(name: str, by: str) -> None:
        if name in seen or name in (fs.entity.join_key, fs.as_of_column):
            fail(f"duplicate feature name {name!r} (declared by {by} and {seen.get(name, 'a key column')})")
        seen[name] = by

    for agg in fs.aggregations:
        where = f"feature {agg.name!r}"
        if agg.agg not in AGGREGATIONS:
            fail(f"{where}: unknown aggregation {agg.agg!r} (known: {', '.join(AGGREGATIONS)})")
        if agg.dtype not in DTYPES:
            fail(f"{where}: unknown dtype {agg.dtype!r}")
        if agg.agg not in ("count", "days_since_last"):
            if agg.column is None or agg.column not in event_columns:
                fail(f"{where}: unknown column {agg.column!r} in {fs.source_table!r}")
            numeric_aggs = ("sum", "mean", "min", "max")
            if agg.agg in numeric_aggs and event_columns[agg.column] != "numeric":
                fail(f"{where}: {agg.agg} needs a numeric column, {agg.column!r} is {event_columns[agg.column]}")
        if agg.where is not None and agg.where.column not in event_columns:
            fail(f"{where}: filter on unknown column {agg.where.column!r}")
        if not agg.windows:
            fail(f"{where}: declares no window")
        if not agg.suffix_window and len(agg.windows) != 1:
            fail(f"{where}: suffix_window=False needs exactly one window")
        for window in agg.windows:
            match = _WINDOW.match(str(window))
            if not match or int(match.group(1)) < 1:
                fail(f"{where}: window {window!r} is not a whole number of days (write e.g. '7d')")
        for name in agg.feature_names():
            claim(name, where)

    if fs.attributes:
        if fs.entity_table is None or entity_columns is None:
            fail("declares attributes but no entity table")
        for attr in fs.attributes:
            if attr.column not in entity_columns:  # type: ignore[operator]
                fail(f"attribute {attr.name!r}: unknown column {attr.column!r} in {fs.entity_table!r}")
            if attr.dtype not in DTYPES:
                fail(f"attribute {attr.name!r}: unknown dtype {attr.dtype!r}")
            claim(attr.name, f"attribute {attr.name!r}")

    for derived in fs.derived:
        if derived.dtype not in DTYPES:
            fail(f"derived feature {derived.name!r}: unknown dtype {derived.dtype!r}")
        for needed in derived.inputs():
            if needed not in seen:
                fail(f"derived feature {derived.name!r} refers to missing feature {needed!r}")
        claim(derived.name, f"derived feature {derived.name!r}")


def validate_all(sets: Sequence[FeatureSet]) -> None:
    names = [fs.name for fs in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FeatureDeclarationError(f"feature set(s) {dup} selected twice")

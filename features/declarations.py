"""How a feature set is declared, and the checks that reject a misdeclaration before any work.

A feature set names its entity, the table of events it aggregates and that table's timestamp column,
and its features. A feature is one of:

- `WindowAggregation`: an aggregation of one event column over trailing whole-day windows, optionally on a
  filtered subset of events. One declaration yields one feature per window, named `<name>_<N>d`.
- `Derived`: a pure function of other features of the same row; its parameter names are its inputs
  (as in Hamilton), so the dependency graph is read off the signature.
- `Attribute`: a column of the entity table, optionally turned into "days from that date to as_of".

Window semantics (grain: one row per entity per as-of day, as_of a midnight UTC): a window of N days covers
events with `as_of - N days <= ts < as_of`. Events at or after as_of never contribute.

Checks: everything a declaration says about itself is checked when it is built (`__post_init__`), so a
misdeclared module fails on import; what needs the dataset's columns is checked by `validate` at start-up.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Literal, Mapping, NoReturn, Optional, Sequence, Tuple

from features.aggregations import KINDS

Dtype = Literal["float64", "int64", "string"]
DTYPES: Tuple[str, ...] = Dtype.__args__  # type: ignore[attr-defined]
AttributeTransform = Literal["value", "days_until_as_of"]
TRANSFORMS: Tuple[str, ...] = AttributeTransform.__args__  # type: ignore[attr-defined]

_WINDOW = re.compile(r"^(\d+)d$")


class FeatureDeclarationError(ValueError):
    """A feature set is declared wrongly; the message is one line naming the set and the feature."""


class FeatureError(FeatureDeclarationError):
    """One feature is declared wrongly. It is found when the feature is built, before its set exists, so the
    message names the feature only; `features.registry` adds the set's name when it loads the set."""


def _feature_fails(name: str, what: str) -> NoReturn:
    raise FeatureError(f"feature {name!r}: {what}")


def _digest(definition: Any) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def _code_text(code: types.CodeType) -> str:
    """A function's compiled form, stable across processes (nested code objects by content: their repr
    holds a memory address). Names are included: `np.min` and `np.max` compile to the same bytecode."""
    consts = [_code_text(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return json.dumps([code.co_code.hex(), list(code.co_names), consts])


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
    column: Optional[str]  # event column aggregated; None for a kind that needs none (count, days_since_last)
    agg: str
    windows: Tuple[str, ...]  # e.g. ("7d", "30d")
    dtype: Dtype
    description: str
    where: Optional[Filter] = None
    suffix_window: bool = True  # False: a single-window feature is named just <name>

    def __post_init__(self) -> None:
        kind = KINDS.get(self.agg)
        if kind is None:
            _feature_fails(self.name, f"unknown aggregation {self.agg!r} (known: {', '.join(KINDS)})")
        if kind.needs_column and self.column is None:
            _feature_fails(self.name, f"{self.agg} needs a column")
        if self.dtype not in DTYPES:
            _feature_fails(self.name, f"unknown dtype {self.dtype!r}")
        if not self.windows:
            _feature_fails(self.name, "declares no window")
        for window in self.windows:
            match = _WINDOW.match(str(window))
            if not match or int(match.group(1)) < 1:
                _feature_fails(self.name, f"window {window!r} is not a whole number of days (write e.g. '7d')")
        if not self.suffix_window and len(self.windows) != 1:
            _feature_fails(self.name, "suffix_window=False needs exactly one window")

    def window_days(self) -> Tuple[int, ...]:
        return tuple(int(_WINDOW.match(w).group(1)) for w in self.windows)  # type: ignore[union-attr]

    def feature_names(self) -> Tuple[str, ...]:
        if not self.suffix_window:
            return (self.name,)
        return tuple(f"{self.name}_{days}d" for days in self.window_days())

    def definitions(self) -> Dict[str, Dict[str, Any]]:
        """Per feature, what its values depend on (the description does not)."""
        where = [self.where.column, self.where.value] if self.where else None
        return {name: {"agg": self.agg, "column": self.column, "window_days": days, "dtype": self.dtype,
                       "where": where}
                for name, days in zip(self.feature_names(), self.window_days())}


@dataclass(frozen=True)
class Derived:
    name: str
    fn: Callable[..., object]  # pure function of pandas Series named after the features it reads
    dtype: Dtype
    description: str

    def __post_init__(self) -> None:
        if not callable(self.fn):
            _feature_fails(self.name, f"derived from {self.fn!r}, which is not a function")
        if self.dtype not in DTYPES:
            _feature_fails(self.name, f"unknown dtype {self.dtype!r}")

    def inputs(self) -> Tuple[str, ...]:
        return tuple(inspect.signature(self.fn).parameters)

    def source(self) -> str:
        """The function's source text; its compiled code when there is no source (e.g. typed into a REPL)."""
        try:
            return inspect.getsource(self.fn)
        except (OSError, TypeError):
            return _code_text(self.fn.__code__)


@dataclass(frozen=True)
class Attribute:
    name: str
    column: str  # column of the entity table
    dtype: Dtype
    description: str
    transform: AttributeTransform = "value"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            _feature_fails(self.name, f"unknown dtype {self.dtype!r}")
        if self.transform not in TRANSFORMS:
            _feature_fails(self.name, f"unknown transform {self.transform!r} (known: {', '.join(TRANSFORMS)})")


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

    def __post_init__(self) -> None:
        def fail(what: str) -> NoReturn:
            raise FeatureDeclarationError(f"feature set {self.name!r}: {what}")

        if self.entity.dtype not in DTYPES:
            fail(f"entity {self.entity.name!r}: unknown dtype {self.entity.dtype!r}")
        if not self.aggregations:
            fail("declares no window aggregation")
        if self.attributes and self.entity_table is None:
            fail("declares attributes but no entity table")
        seen: Dict[str, str] = {}

        def claim(name: str, by: str) -> None:
            if name in seen or name in (self.entity.join_key, self.as_of_column):
                fail(f"duplicate feature name {name!r} (declared by {by} and {seen.get(name, 'a key column')})")
            seen[name] = by

        for agg in self.aggregations:
            for name in agg.feature_names():
                claim(name, f"feature {agg.name!r}")
        for attr in self.attributes:
            claim(attr.name, f"attribute {attr.name!r}")
        for derived in self.derived:  # in order: a derived feature may read the ones declared before it
            for needed in derived.inputs():
                if needed not in seen:
                    fail(f"derived feature {derived.name!r} refers to missing feature {needed!r}")
            claim(derived.name, f"derived feature {derived.name!r}")

    def feature_names(self) -> Tuple[str, ...]:
        """Gold feature columns in declaration order."""
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

    def feature_fingerprints(self) -> Dict[str, str]:
        """Per gold feature, a sha256 of its full definition: everything its values depend on, so any change
        (sum -> mean under the same name, a new filter value, an edited derived function) changes it. A
        derived feature's includes its inputs' fingerprints: new inputs are new values."""
        events = {"entity": [self.entity.join_key, self.entity.dtype], "source_table": self.source_table,
                  "timestamp_column": self.timestamp_column}
        out: Dict[str, str] = {}
        for agg in self.aggregations:
            for name, definition in agg.definitions().items():
                out[name] = _digest({**events, **definition, "feature": name})
        for attr in self.attributes:
            out[attr.name] = _digest({"entity": events["entity"], "entity_table": self.entity_table,
                                      "column": attr.column, "transform": attr.transform, "dtype": attr.dtype,
                                      "feature": attr.name})
        for derived in self.derived:
            out[derived.name] = _digest({"function": derived.source(), "dtype": derived.dtype,
                                         "inputs": {name: out[name] for name in derived.inputs()},
                                         "feature": derived.name})
        return out

    def fingerprint(self) -> str:
        """A sha256 of the whole declaration, as far as gold's values depend on it."""
        return _digest(self.feature_fingerprints())


def validate(
    fs: FeatureSet,
    event_columns: Mapping[str, str],
    entity_columns: Optional[Mapping[str, str]] = None,
) -> None:
    """Reject a feature set that reads columns its tables do not have (or not of the kind it needs), with one
    line naming the set, the feature and the problem. The rest was checked when the set was built.

    `event_columns` / `entity_columns` map the column names of the source and entity tables to their
    kinds ("numeric", "string", "timestamp"), as the silver contracts declare them.
    """

    def fail(what: str) -> NoReturn:
        raise FeatureDeclarationError(f"feature set {fs.name!r}: {what}")

    if fs.entity.join_key not in event_columns:
        fail(f"entity join key {fs.entity.join_key!r} is not a column of {fs.source_table!r}")
    if fs.timestamp_column not in event_columns:
        fail(f"timestamp column {fs.timestamp_column!r} is not a column of {fs.source_table!r}")
    for agg in fs.aggregations:
        where = f"feature {agg.name!r}"
        if agg.column is not None:
            if agg.column not in event_columns:
                fail(f"{where}: unknown column {agg.column!r} in {fs.source_table!r}")
            if KINDS[agg.agg].numeric_column and event_columns[agg.column] != "numeric":
                fail(f"{where}: {agg.agg} needs a numeric column, {agg.column!r} is {event_columns[agg.column]}")
        if agg.where is not None and agg.where.column not in event_columns:
            fail(f"{where}: filter on unknown column {agg.where.column!r}")
    if fs.attributes and entity_columns is None:
        fail(f"declares attributes, and the entity table {fs.entity_table!r} has no known columns")
    for attr in fs.attributes:
        if attr.column not in entity_columns:  # type: ignore[operator]
            fail(f"attribute {attr.name!r}: unknown column {attr.column!r} in {fs.entity_table!r}")


def validate_all(sets: Sequence[FeatureSet]) -> None:
    names = [fs.name for fs in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FeatureDeclarationError(f"feature set(s) {dup} selected twice")

"""The silver contract of any declared dataset: how bronze text becomes typed, valid rows.

Derived from the dataset's declaration (pipelines/config.py `DatasetConfig`): the silver schema, the row
rules and their names (what quarantine records), the completeness columns. Each rule is computed as a
pass mask with Arrow kernels over the whole batch (no Python call per value); pandera then reports the
failures of the rows that failed something (lazily: every failed rule of a row, joined in rule order).

Rules per column, in this order (default names; `rule_names` renames any):
  present `<c>_present`      required: a value that is null, blank or a null token fails
  parseable `<c>_parseable`  a present value that does not parse as the column's type
  known `<c>_known`          references: the parsed value must be a key of the referenced dataset
  in_range `<c>_in_range`    range: min/max of the parsed value
  allowed `<c>_allowed`      allowed: the exact text must be one of these
  pattern `<c>_pattern`      pattern: the whole text must match
  decimals `<c>_decimals`    max_decimals: digits after the point, as written
  not_before                 dates or timestamps at or after a declared earliest instant (epoch zero, a
                             common default value, is not an event time)
  not_after_cutoff           timestamps before the run's cutoff (its logical end, exclusive)
A column that is not required accepts a missing value: its other rules are not applied to it. Rules
needing a parsed value apply only where it parsed. A malformed source line fails `line_well_formed` only.
Custom checks (a pandera check by name) run on the typed rows after the vocabulary.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc

from validation.parsing import _INTEGER, _parsed, parse_instants
from validation.rules import as_text, failed_rules

RULE_KINDS: Tuple[str, ...] = ("present", "parseable", "known", "in_range", "allowed", "pattern", "decimals",
                               "not_before", "not_after_cutoff")
LINE_RULE = "line_well_formed"
KEY_CONFLICT_RULE = "key_conflict"  # a key delivered again with other content (pipelines/stages/silver.py)
KEY_SEPARATOR = "\x1f"  # joins the parts of a composite key's text (a control character no source writes)
LINEAGE_FIELDS = [pa.field("_source_file", pa.string()), pa.field("_row_hash", pa.string()),
                  pa.field("_run_id", pa.string())]
_UTC_US = pa.timestamp("us", tz="UTC")
_FLOAT = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TRUE, _FALSE = ("true", "1", "t", "yes", "y"), ("false", "0", "f", "no", "n")
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")


class UnknownTypeError(ValueError):
    pass


@dataclass(frozen=True)
class TypeSpec:
    """A logical column type and its Arrow type in silver."""

    name: str  # string | integer | float | boolean | date | timestamp | decimal
    precision: int = 0
    scale: int = 0

    @staticmethod
    def parse(text: str) -> "TypeSpec":
        text = str(text).strip().lower()
        match = _DECIMAL.match(text)
        if match:
            precision, scale = int(match.group(1)), int(match.group(2))
            if not 0 <= scale <= precision <= 38 or precision < 1:
                raise UnknownTypeError(f"{text!r}: decimal(p,s) needs 1 <= p <= 38 and 0 <= s <= p")
            return TypeSpec("decimal", precision, scale)
        if text not in ("string", "integer", "float", "boolean", "date", "timestamp"):
            raise UnknownTypeError(f"unknown type {text!r} (known: string, integer, float, boolean, date, "
                                   "timestamp, decimal(p,s))")
        return TypeSpec(text)

    @property
    def numeric(self) -> bool:
        return self.name in ("integer", "float", "decimal")

    @property
    def arrow(self) -> pa.DataType:
        return {"string": pa.string(), "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(),
                "date": pa.date32(), "timestamp": _UTC_US}.get(self.name) or pa.decimal128(self.precision, self.scale)

    @property
    def checked(self) -> pa.DataType:
        """The type rules compare in: decimals as float (silver itself casts the text to decimal, exact)."""
        return pa.float64() if self.name == "decimal" else self.arrow

    def decimal_pattern(self) -> str:
        whole = self.precision - self.scale
        return rf"^-?\d{{1,{whole}}}" + (rf"(\.\d{{1,{self.scale}}})?$" if self.scale else "$")


@dataclass(frozen=True)
class Column:
    """One declared column, as the contract uses it (built from `ColumnConfig`)."""

    name: str
    type: TypeSpec
    required: bool = False
    zone_less: str = "utc"
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    allowed: Optional[Tuple[str, ...]] = None
    pattern: Optional[str] = None
    max_decimals: Optional[int] = None
    not_before: Optional[dt.datetime] = None  # UTC
    not_after_cutoff: bool = False
    references: Optional[str] = None
    rule_names: Tuple[Tuple[str, str], ...] = ()

    def rule(self, kind: str) -> str:
        return dict(self.rule_names).get(kind, f"{self.name}_{kind}")

    def kinds(self) -> List[str]:
        """The rule kinds this column has, in rule order."""
        has = {"present": self.required, "parseable": self.type.name != "string",
               "known": self.references is not None, "in_range": self.min is not None or self.max is not None,
               "allowed": self.allowed is not None, "pattern": self.pattern is not None,
               "decimals": self.max_decimals is not None, "not_before": self.not_before is not None,
               "not_after_cutoff": self.not_after_cutoff}
        return [kind for kind in RULE_KINDS if has[kind]]


@dataclass(frozen=True)
class Contract:
    """Everything silver needs to judge and type one dataset's rows; picklable (it travels to Ray tasks)."""

    dataset: str
    columns: Tuple[Column, ...]
    key: Tuple[str, ...]
    null_tokens: Tuple[str, ...] = ()
    cutoff: Optional[dt.datetime] = None
    known: Mapping[str, pa.Array] = field(default_factory=dict)  # column -> keys of the referenced dataset
    custom: Tuple[Tuple[str, Callable[[pd.DataFrame], pd.Series]], ...] = ()  # (rule name, check)
    pii: Tuple[Tuple[str, str], ...] = ()  # column -> protection (hmac | drop)

    # -- what is derived from the declaration ----------------------------------------------------------
    @property
    def names(self) -> List[str]:
        return [c.name for c in self.columns]

    @property
    def rules(self) -> Tuple[str, ...]:
        """Every rule name in report order: the line rule, then per column in declaration order, then the
        custom checks (a name shared by two rules of a column is one rule)."""
        ordered = [LINE_RULE] + [c.rule(kind) for c in self.columns for kind in c.kinds()]
        return tuple(dict.fromkeys(ordered + [name for name, _ in self.custom]))

    @property
    def silver_schema(self) -> pa.Schema:
        """Typed columns (a protected PII column holds tokens: text), then the lineage columns."""
        protected = dict(self.pii)
        fields = [pa.field(c.name, pa.string() if protected.get(c.name) == "hmac" else c.type.arrow,
                           nullable=not c.required or c.name in protected) for c in self.columns]
        return pa.schema(fields + LINEAGE_FIELDS)

    # -- judging ---------------------------------------------------------------------------------------
    def text(self, raw: pa.Table, name: str) -> pa.ChunkedArray:
        """A column's source text, with the null tokens read as null."""
        text = as_text(raw.column(name))
        if self.null_tokens:
            text = pc.if_else(pc.fill_null(pc.is_in(text, value_set=pa.array(self.null_tokens, pa.string())), False),
                              pa.scalar(None, pa.string()), text)
        return text

    def present(self, raw: pa.Table, name: str) -> np.ndarray:
        """Where a column has a value: not null, not blank, not a null token."""
        return _present(self.text(raw, name))

    def typed(self, raw: pa.Table) -> pa.Table:
        """Every declared column parsed to its type (null where missing or not parseable)."""
        return pa.table({c.name: _parse(self.text(raw, c.name), c) for c in self.columns},
                        schema=pa.schema([pa.field(c.name, c.type.checked) for c in self.columns]))

    def pass_masks(self, raw: pa.Table, typed: pa.Table) -> Dict[str, np.ndarray]:
        """Rule name -> True where the row passes it. Computed on whole columns with Arrow kernels."""
        n = raw.num_rows
        masks: Dict[str, np.ndarray] = {}

        def add(name: str, passed) -> None:
            passed = _as_bool(passed, n)
            masks[name] = masks[name] & passed if name in masks else passed

        well_formed = (pc.is_null(raw.column("_malformed_line")).to_numpy(zero_copy_only=False)
                       if "_malformed_line" in raw.column_names else np.ones(n, dtype=bool))
        add(LINE_RULE, well_formed)
        for column in self.columns:
            text = self.text(raw, column.name)
            present = _present(text)
            parsed = typed.column(column.name)
            has_value = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
            for kind in column.kinds():
                name = column.rule(kind)
                if kind == "present":
                    add(name, present)
                elif kind == "parseable":
                    add(name, ~present | has_value)
                elif kind == "known":
                    known = self.known.get(column.name, pa.array([], column.type.checked)).cast(parsed.type)
                    add(name, ~has_value | pc.fill_null(pc.is_in(parsed, value_set=known), False))
                elif kind == "in_range":
                    add(name, ~has_value | _in_range(parsed, column))
                elif kind == "allowed":
                    allowed = pa.array(list(column.allowed or ()), pa.string())
                    add(name, ~present | pc.fill_null(pc.is_in(text, value_set=allowed), False))
                elif kind == "pattern":
                    add(name, ~present | pc.fill_null(pc.match_substring_regex(text, f"^(?:{column.pattern})$"), False))
                elif kind == "decimals":
                    fraction = rf"^[^.]*(\.\d{{0,{column.max_decimals}}})?([eE].*)?$"
                    add(name, ~present | pc.fill_null(pc.match_substring_regex(text, fraction), False))
                elif kind == "not_before":
                    earliest = pa.scalar(column.not_before if column.type.name == "timestamp"
                                         else column.not_before.date(), parsed.type)  # type: ignore[union-attr]
                    add(name, ~has_value | pc.fill_null(pc.greater_equal(parsed, earliest), False))
                elif kind == "not_after_cutoff":
                    cutoff = pa.scalar(self.cutoff, _UTC_US)
                    add(name, ~has_value | pc.fill_null(pc.less(parsed, cutoff), False))
        if self.custom:  # on the rows the vocabulary passed: their typed values are trustworthy
            passed = np.logical_and.reduce(list(masks.values()))
            frame = typed.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            for name, check in self.custom:
                add(name, ~passed | pd.Series(check(frame)).fillna(True).astype(bool).to_numpy())
        # a malformed line has no trustworthy fields: it fails that rule only
        for name in masks:
            if name != LINE_RULE:
                masks[name] = masks[name] | ~well_formed
        return masks

    def report(self, masks: Dict[str, np.ndarray], n: int) -> pa.Array:
        """Per row, the failed rules joined by ';' (null for a valid row), as pandera reports them: a
        schema of one check per rule validates (lazily) the pass masks of the rows that failed anything."""
        failing = np.zeros(n, dtype=bool)
        for passed in masks.values():
            failing |= ~passed
        out = np.full(n, None, dtype=object)
        if failing.any():
            rows = np.flatnonzero(failing)
            frame = pd.DataFrame({name: passed[rows] for name, passed in masks.items()}, index=rows)
            out[rows] = failed_rules(_report_schema(tuple(masks)), frame, self.rules).to_numpy()
        return pa.array(out, pa.string(), from_pandas=True)

    def failures(self, raw: pa.Table) -> pa.Array:
        """The `_failed_rules` of each bronze row (null where every rule passes)."""
        return self.report(self.pass_masks(raw, self.typed(raw)), raw.num_rows)

    # -- typing valid rows -----------------------------------------------------------------------------
    def to_silver(self, valid: pa.Table) -> pa.Table:
        """Valid bronze rows -> the silver schema (PII not yet protected). Decimals are cast from the
        source text straight to decimal (exact), not through a float."""
        typed = self.typed(valid)
        columns = {}
        for column in self.columns:
            if column.type.name == "decimal":
                columns[column.name] = self.text(valid, column.name).cast(column.type.arrow)
            else:
                columns[column.name] = typed.column(column.name)
        for lineage in LINEAGE_FIELDS:
            columns[lineage.name] = as_text(valid.column(lineage.name)) if lineage.name in valid.column_names \
                else pa.nulls(valid.num_rows, pa.string())
        schema = pa.schema([pa.field(c.name, c.type.arrow, nullable=not c.required) for c in self.columns]
                           + LINEAGE_FIELDS)
        return pa.table(columns, schema=schema)

    def key_text(self, table: pa.Table, typed: bool) -> pa.ChunkedArray:
        """The key of each row as one text value (comparable across batches, runs and silver). A single
        text key is the text itself; other keys are the parsed values as text, parts joined."""
        parts = []
        for name in self.key:
            column = next(c for c in self.columns if c.name == name)
            if column.type.name == "string":
                value = table.column(name) if typed else self.text(table, name)
            else:
                value = table.column(name) if typed else _parse(self.text(table, name), column)
            parts.append(as_text(value))
        if len(parts) == 1:
            return parts[0]
        return pc.binary_join_element_wise(*parts, KEY_SEPARATOR)


def _present(text: pa.ChunkedArray) -> np.ndarray:
    trimmed = pc.utf8_length(pc.utf8_trim_whitespace(text))
    return pc.fill_null(pc.greater(trimmed, 0), False).to_numpy(zero_copy_only=False)


def _as_bool(values, n: int) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=bool)
    return values if values.shape == (n,) else np.broadcast_to(values, (n,)).copy()


def _in_range(parsed: pa.ChunkedArray, column: Column) -> np.ndarray:
    values = parsed.cast(pa.float64())
    ok = pa.chunked_array([pa.array(np.ones(len(values), dtype=bool))])
    if column.min is not None:
        low = (pc.greater if column.min_exclusive else pc.greater_equal)(values, column.min)
        ok = pc.and_(ok, low)
    if column.max is not None:
        high = (pc.less if column.max_exclusive else pc.less_equal)(values, column.max)
        ok = pc.and_(ok, high)
    return pc.fill_null(ok, False).to_numpy(zero_copy_only=False)


def _parse(text: pa.ChunkedArray, column: Column) -> pa.ChunkedArray:
    """Source text -> the column's type; null where missing or not parseable."""
    kind = column.type
    if kind.name == "string":
        return text
    if kind.name == "integer":
        return _parsed(text, _INTEGER, pa.int64())
    if kind.name == "float":
        return _parsed(text, _FLOAT, pa.float64())
    if kind.name == "decimal":  # checked and range-compared as float; silver casts the text (exact)
        return _parsed(text, kind.decimal_pattern(), pa.float64())
    if kind.name == "date":
        return _parsed(text, _DATE, pa.date32()) if _all_valid_dates(text) else _dates_one_by_one(text)
    if kind.name == "boolean":
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        true = pc.is_in(lowered, value_set=pa.array(_TRUE))
        false = pc.is_in(lowered, value_set=pa.array(_FALSE))
        return pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
    return parse_instants(text, column.zone_less)


def _all_valid_dates(text: pa.ChunkedArray) -> bool:
    try:
        _parsed(text, _DATE, pa.date32())
        return True
    except pa.ArrowInvalid:
        return False


def _dates_one_by_one(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates where some value has the shape but is no day (2026-02-30): those are null."""
    values = []
    for value in text.to_pylist():
        try:
            values.append(dt.date.fromisoformat(value) if value and re.match(_DATE, value) else None)
        except ValueError:
            values.append(None)
    return pa.chunked_array([pa.array(values, pa.date32())])


def _report_schema(rules: Sequence[str]) -> pandera.DataFrameSchema:
    """One check per rule, on its pass-mask column: pandera collects every failure case. (Column checks:
    pandera reshapes a dataframe-level check's failures row by row, ~1 ms per failing row.)"""
    return pandera.DataFrameSchema({rule: pandera.Column(checks=pandera.Check(lambda passed: passed, name=rule,
                                                                             ignore_na=False))
                                    for rule in rules})


def _instant(text: str) -> dt.datetime:
    """A declared date or instant as a UTC instant (a date is its midnight, UTC)."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def build(dataset: str, declaration, cutoff: Optional[dt.datetime] = None,
          known: Optional[Mapping[str, pa.Array]] = None,
          custom: Sequence[Tuple[str, Callable[[pd.DataFrame], pd.Series]]] = ()) -> Contract:
    """The contract of a `DatasetConfig` (the run's cutoff, the referenced keys and the resolved custom
    checks are the run's)."""
    columns = []
    for name, spec in declaration.columns.items():
        bounds = spec.range
        columns.append(Column(
            name=name, type=TypeSpec.parse(spec.type), required=bool(spec.required), zone_less=spec.naive,
            min=None if bounds is None else bounds.min, max=None if bounds is None else bounds.max,
            min_exclusive=bool(bounds and bounds.min_exclusive), max_exclusive=bool(bounds and bounds.max_exclusive),
            allowed=None if spec.allowed is None else tuple(str(v) for v in spec.allowed),
            pattern=spec.pattern, max_decimals=spec.max_decimals, not_after_cutoff=bool(spec.not_after_cutoff),
            not_before=None if spec.not_before is None else _instant(str(spec.not_before)),
            references=spec.references, rule_names=tuple(sorted(dict(spec.rule_names).items()))))
    return Contract(dataset=dataset, columns=tuple(columns), key=tuple(declaration.key_columns),
                    null_tokens=tuple(str(t) for t in declaration.null_tokens), cutoff=cutoff,
                    known=dict(known or {}), custom=tuple(custom), pii=tuple(sorted(dict(declaration.pii).items())))

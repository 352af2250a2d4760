"""Contract of silver.transactions: how raw bronze strings become typed, valid transactions.

Every rule has a name; a row failing any rule goes to quarantine.transactions with all the rules it
failed. Rules that need a parsed value only run where parsing succeeded (pandera's `ignore_na`), so a
row with an unparseable amount fails `amount_parseable`, not also `amount_in_range`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Collection, Tuple

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc

from validation.rules import as_text, failed_rules, present

RULES: Tuple[str, ...] = (
    "line_well_formed",
    "tx_id_present",
    "user_id_present",
    "user_id_parseable",
    "user_id_known",
    "merchant_id_parseable",
    "amount_parseable",
    "amount_in_range",
    "currency_known",
    "channel_known",
    "ts_parseable",
    "ts_not_after_cutoff",
)

SOURCE_COLUMNS = ("tx_id", "user_id", "merchant_id", "amount", "currency", "channel", "ts")

# What features may aggregate: silver column -> kind (see features.declarations.validate).
COLUMN_KINDS = {
    "tx_id": "string",
    "user_id": "numeric",
    "merchant_id": "numeric",
    "amount": "numeric",
    "currency": "string",
    "channel": "string",
    "ts": "timestamp",
}

SILVER_SCHEMA = pyarrow.schema(
    [
        pyarrow.field("tx_id", pyarrow.string(), nullable=False),
        pyarrow.field("user_id", pyarrow.int64(), nullable=False),
        pyarrow.field("merchant_id", pyarrow.int64(), nullable=False),
        pyarrow.field("amount", pyarrow.decimal128(18, 2), nullable=False),
        pyarrow.field("currency", pyarrow.string(), nullable=False),
        pyarrow.field("channel", pyarrow.string(), nullable=False),
        pyarrow.field("ts", pyarrow.timestamp("us", tz="UTC"), nullable=False),
        pyarrow.field("_source_file", pyarrow.string()),
        pyarrow.field("_row_hash", pyarrow.string()),
        pyarrow.field("_run_id", pyarrow.string()),
    ]
)

# Anchored patterns, matched by Arrow's RE2 kernels (ASCII digits only, no per-value Python call).
_AMOUNT = r"^-?\d{1,16}(\.\d{1,2})?$"
_INTEGER = r"^-?\d{1,18}$"
# The ISO-8601 shapes Arrow's cast parses as pandas does (with a zone; without one = UTC, as pandas'
# utc=True reads them). Anything else, and any value Arrow rejects, is parsed by pandas one value at a time.
_ZONED_INSTANT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}(:?\d{2})?)$"
_NAIVE_INSTANT = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?)?$"
_UTC_US = pyarrow.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TransactionRules:
    known_user_ids: Collection[int]
    currencies: Collection[str]
    channels: Collection[str]
    max_amount: float
    cutoff: dt.datetime  # exclusive: events at or after the run's logical end are rejected


def _matches(text: pyarrow.ChunkedArray, pattern: str) -> pyarrow.ChunkedArray:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False)


def _parsed(text: pyarrow.ChunkedArray, pattern: str, to: pyarrow.DataType) -> pyarrow.ChunkedArray:
    """The values matching `pattern` cast to `to`; null elsewhere."""
    return pc.if_else(_matches(text, pattern), text, pyarrow.scalar(None, pyarrow.string())).cast(to)


def _cast_where_valid(text: pyarrow.Array, to: pyarrow.DataType) -> Tuple[pyarrow.Array, np.ndarray]:
    """`text` cast to `to`, and which values Arrow rejected (null in the result). One cast for a clean
    batch; a batch with a rejected value is halved until each rejected value stands alone."""
    try:
        return text.cast(to), np.zeros(len(text), dtype=bool)
    except pyarrow.ArrowInvalid:
        if len(text) == 1:
            return pyarrow.nulls(1, to), np.ones(1, dtype=bool)
    half = len(text) // 2
    (head, head_bad), (tail, tail_bad) = _cast_where_valid(text[:half], to), _cast_where_valid(text[half:], to)
    return pyarrow.concat_arrays([head, tail]), np.concatenate([head_bad, tail_bad])


def _pandas_instant(text: str):
    """pandas' ISO 8601 reading of one value (None when it does not parse). One value at a time: over a
    whole array pandas carries a zone offset over to the zone-less values that follow it."""
    try:
        value = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return None
    return None if pd.isna(value) else value.as_unit("us").to_datetime64()


def parse_instants(text: pyarrow.ChunkedArray) -> pyarrow.ChunkedArray:
    """ISO-8601 text -> UTC microseconds, null where it does not parse (as pandas' ISO 8601 parser reads
    each value). The common shapes go through Arrow's cast; the rest through pandas."""
    text = as_text(text).combine_chunks()
    none = pyarrow.scalar(None, pyarrow.string())
    zoned, naive = _matches(text, _ZONED_INSTANT), _matches(text, _NAIVE_INSTANT)
    zoned_values, zoned_bad = _cast_where_valid(pc.if_else(zoned, text, none), _UTC_US)
    naive_values, naive_bad = _cast_where_valid(pc.if_else(naive, text, none), pyarrow.timestamp("us"))
    parsed = pc.if_else(zoned, zoned_values, pc.assume_timezone(naive_values, "UTC"))
    # what pandas cannot hold (its nanosecond range, ~1677-2262) does not parse there either
    in_range = pc.and_(pc.greater_equal(parsed, pyarrow.scalar(pd.Timestamp.min.ceil("us"), _UTC_US)),
                       pc.less_equal(parsed, pyarrow.scalar(pd.Timestamp.max.floor("us"), _UTC_US)))
    parsed = pc.if_else(in_range, parsed, pyarrow.scalar(None, _UTC_US))
    done = (zoned.to_numpy(zero_copy_only=False) & ~zoned_bad) | (naive.to_numpy(zero_copy_only=False) & ~naive_bad)
    rest = ~done & pc.is_valid(text).to_numpy(zero_copy_only=False)
    if not rest.any():
        return pyarrow.chunked_array([parsed])
    values = parsed.cast(pyarrow.timestamp("us")).to_numpy(zero_copy_only=False)  # NaT for null, exact
    slow = [_pandas_instant(v) for v in text.filter(pyarrow.array(rest)).to_pylist()]
    values[rest] = np.array([np.datetime64("NaT") if v is None else v for v in slow], dtype="datetime64[us]")
    return pyarrow.chunked_array([pyarrow.array(values, pyarrow.timestamp("us"), from_pandas=True).cast(_UTC_US)])


def parse(raw: pyarrow.Table) -> pyarrow.Table:
    """Typed columns (a value that does not parse becomes null) and what the contract checks on text."""
    return pyarrow.table(
        {
            "tx_id": as_text(raw.column("tx_id")),
            "user_id": _parsed(as_text(raw.column("user_id")), _INTEGER, pyarrow.int64()),
            "merchant_id": _parsed(as_text(raw.column("merchant_id")), _INTEGER, pyarrow.int64()),
            "amount": _parsed(as_text(raw.column("amount")), _AMOUNT, pyarrow.float64()),
            "currency": as_text(raw.column("currency")),
            "channel": as_text(raw.column("channel")),
            "ts": parse_instants(raw.column("ts")),
            "_tx_id_present": present(raw.column("tx_id")),
            "_user_id_present": present(raw.column("user_id")),
            "_well_formed": pc.is_null(raw.column("_malformed_line")),
        }
    )


def _for_pandera(typed: pyarrow.Table) -> pd.DataFrame:
    """Nullable integers stay integers (Int64), so `isin` on known ids compares exactly."""
    return typed.to_pandas(types_mapper={pyarrow.int64(): pd.Int64Dtype()}.get)


def contract(rules: TransactionRules) -> pa.DataFrameSchema:
    known = np.asarray(sorted(rules.known_user_ids), dtype=np.int64)
    cutoff = pd.Timestamp(rules.cutoff)

    def check(fn, name: str, ignore_na: bool = True) -> pa.Check:
        return pa.Check(fn, name=name, ignore_na=ignore_na)

    return pa.DataFrameSchema(
        {
            "user_id": pa.Column(
                nullable=True, checks=check(lambda s: s.isin(known), "user_id_known")
            ),
            "amount": pa.Column(
                nullable=True,
                checks=check(lambda s: (s > 0) & (s <= rules.max_amount), "amount_in_range"),
            ),
            "currency": pa.Column(
                nullable=True, checks=check(lambda s: s.isin(list(rules.currencies)), "currency_known", False)
            ),
            "channel": pa.Column(
                nullable=True, checks=check(lambda s: s.isin(list(rules.channels)), "channel_known", False)
            ),
            "ts": pa.Column(nullable=True, checks=check(lambda s: s < cutoff, "ts_not_after_cutoff")),
        },
        checks=[
            check(lambda d: d["_well_formed"], "line_well_formed", False),
            check(lambda d: d["_tx_id_present"], "tx_id_present", False),
            check(lambda d: d["_user_id_present"], "user_id_present", False),
            check(lambda d: ~d["_user_id_present"] | d["user_id"].notna(), "user_id_parseable", False),
            check(lambda d: d["merchant_id"].notna(), "merchant_id_parseable", False),
            check(lambda d: d["amount"].notna(), "amount_parseable", False),
            check(lambda d: d["ts"].notna(), "ts_parseable", False),
        ],
    )


def check_transactions(raw: pyarrow.Table | pd.DataFrame, rules: TransactionRules) -> Tuple[pyarrow.Table, pd.Series]:
    """(typed table, failed rules per row). The typed table is only meaningful where no rule failed."""
    if isinstance(raw, pd.DataFrame):
        raw = pyarrow.Table.from_pandas(raw.reset_index(drop=True), preserve_index=False)
    typed = parse(raw)
    failures = failed_rules(contract(rules), _for_pandera(typed), RULES)
    # A malformed line has no trustworthy fields: report only that.
    malformed = ~typed.column("_well_formed").to_numpy()
    failures = failures.where(~malformed, "line_well_formed")
    return typed, failures


def to_silver_arrow(valid: pyarrow.Table) -> pyarrow.Table:
    """Valid bronze rows -> the silver schema: typed columns plus lineage. Amounts are cast from the
    source text straight to decimal (exact), not through the float the range check used."""
    typed = parse(valid)
    return pyarrow.table(
        {
            "tx_id": typed.column("tx_id"),
            "user_id": typed.column("user_id"),
            "merchant_id": typed.column("merchant_id"),
            "amount": as_text(valid.column("amount")).cast(pyarrow.decimal128(18, 2)),
            "currency": typed.column("currency"),
            "channel": typed.column("channel"),
            "ts": typed.column("ts"),
            "_source_file": as_text(valid.column("_source_file")),
            "_row_hash": as_text(valid.column("_row_hash")),
            "_run_id": as_text(valid.column("_run_id")),
        },
        schema=SILVER_SCHEMA,
    )

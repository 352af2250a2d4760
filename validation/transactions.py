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

from validation.rules import failed_rules

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

_AMOUNT = r"-?\d{1,16}(\.\d{1,2})?"
_INTEGER = r"-?\d{1,18}"


@dataclass(frozen=True)
class TransactionRules:
    known_user_ids: Collection[int]
    currencies: Collection[str]
    channels: Collection[str]
    max_amount: float
    cutoff: dt.datetime  # exclusive: events at or after the run's logical end are rejected


def _present(s: pd.Series) -> pd.Series:
    return s.notna() & (s.astype("string").str.strip().str.len() > 0)


def _parsed_ints(s: pd.Series) -> pd.Series:
    ok = s.astype("string").str.fullmatch(_INTEGER).fillna(False).astype(bool)
    return pd.to_numeric(s.where(ok), errors="coerce").astype("Int64")


def parse(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed columns next to the raw ones; a value that does not parse becomes null."""
    amount_ok = raw["amount"].astype("string").str.fullmatch(_AMOUNT).fillna(False).astype(bool)
    return pd.DataFrame(
        {
            "tx_id": raw["tx_id"],
            "user_id": _parsed_ints(raw["user_id"]),
            "merchant_id": _parsed_ints(raw["merchant_id"]),
            "amount": pd.to_numeric(raw["amount"].where(amount_ok), errors="coerce"),
            "currency": raw["currency"],
            "channel": raw["channel"],
            "ts": pd.to_datetime(raw["ts"], utc=True, errors="coerce", format="ISO8601"),
            "_raw_user_id": raw["user_id"],
            "_raw_merchant_id": raw["merchant_id"],
            "_raw_amount": raw["amount"],
            "_raw_ts": raw["ts"],
            "_malformed_line": raw["_malformed_line"],
        },
        index=raw.index,
    )


def contract(rules: TransactionRules) -> pa.DataFrameSchema:
    known = np.asarray(sorted(rules.known_user_ids), dtype=np.int64)
    cutoff = pd.Timestamp(rules.cutoff)

    def check(fn, name: str, ignore_na: bool = True) -> pa.Check:
        return pa.Check(fn, name=name, ignore_na=ignore_na)

    return pa.DataFrameSchema(
        {
            "tx_id": pa.Column(nullable=True, checks=check(_present, "tx_id_present", ignore_na=False)),
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
            check(lambda d: d["_malformed_line"].isna(), "line_well_formed", False),
            check(lambda d: _present(d["_raw_user_id"]), "user_id_present", False),
            check(lambda d: ~_present(d["_raw_user_id"]) | d["user_id"].notna(), "user_id_parseable", False),
            check(lambda d: d["merchant_id"].notna(), "merchant_id_parseable", False),
            check(lambda d: d["amount"].notna(), "amount_parseable", False),
            check(lambda d: d["ts"].notna(), "ts_parseable", False),
        ],
    )


def check_transactions(raw: pd.DataFrame, rules: TransactionRules) -> Tuple[pd.DataFrame, pd.Series]:
    """(typed frame, failed rules per row). The typed frame is only meaningful where no rule failed."""
    raw = raw.reset_index(drop=True)
    typed = parse(raw)
    failures = failed_rules(contract(rules), typed, RULES)
    # A malformed line has no trustworthy fields: report only that.
    malformed = raw["_malformed_line"].notna()
    failures = failures.where(~malformed, "line_well_formed")
    return typed, failures


def to_silver_arrow(typed: pd.DataFrame, raw: pd.DataFrame) -> pyarrow.Table:
    """Valid rows only: the typed columns plus lineage, in the silver schema."""
    amount = pyarrow.array(raw["amount"].astype("string"), type=pyarrow.string()).cast(pyarrow.decimal128(18, 2))
    return pyarrow.table(
        {
            "tx_id": pyarrow.array(typed["tx_id"], pyarrow.string()),
            "user_id": pyarrow.array(typed["user_id"].astype("int64"), pyarrow.int64()),
            "merchant_id": pyarrow.array(typed["merchant_id"].astype("int64"), pyarrow.int64()),
            "amount": amount,
            "currency": pyarrow.array(typed["currency"], pyarrow.string()),
            "channel": pyarrow.array(typed["channel"], pyarrow.string()),
            "ts": pyarrow.array(typed["ts"], pyarrow.timestamp("us", tz="UTC")),
            "_source_file": pyarrow.array(raw["_source_file"], pyarrow.string()),
            "_row_hash": pyarrow.array(raw["_row_hash"], pyarrow.string()),
            "_run_id": pyarrow.array(raw["_run_id"], pyarrow.string()),
        },
        schema=SILVER_SCHEMA,
    )

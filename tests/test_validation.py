"""The silver contracts on tiny frames: every rule fires on its own, valid rows pass."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from validation import gold, transactions, users
from features.registry import feature_set

RULES = transactions.TransactionRules(
    known_user_ids=[1, 2], currencies=["EUR", "USD"], channels=["web", "app", "store"], max_amount=1_000_000,
    cutoff=dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))
GOOD = {"tx_id": "t1", "user_id": "1", "merchant_id": "7", "amount": "12.50", "currency": "EUR", "channel": "web",
        "ts": "2026-01-31T23:59:59.999999Z", "_malformed_line": None}


def failures(**changes):
    frame = pd.DataFrame([GOOD, {**GOOD, **changes}])
    _, failed = transactions.check_transactions(frame, RULES)
    assert failed.iloc[0] is None or pd.isna(failed.iloc[0])  # the good row stays good
    return failed.iloc[1]


@pytest.mark.parametrize(
    "changes, rules",
    [
        ({}, None),
        ({"tx_id": ""}, "tx_id_present"),
        ({"user_id": ""}, "user_id_present"),
        ({"user_id": None}, "user_id_present"),
        ({"user_id": "abc"}, "user_id_parseable"),
        ({"user_id": "3"}, "user_id_known"),
        ({"merchant_id": "x"}, "merchant_id_parseable"),
        ({"amount": "0.00"}, "amount_in_range"),
        ({"amount": "-5"}, "amount_in_range"),
        ({"amount": "1000000.01"}, "amount_in_range"),
        ({"amount": "1.234"}, "amount_parseable"),
        ({"amount": "twelve"}, "amount_parseable"),
        ({"currency": "XXX"}, "currency_known"),
        ({"channel": "fax"}, "channel_known"),
        ({"ts": "not-a-timestamp"}, "ts_parseable"),
        ({"ts": "2026-02-01T00:00:00Z"}, "ts_not_after_cutoff"),
        ({"currency": "XXX", "channel": "fax", "amount": "0"}, "amount_in_range;currency_known;channel_known"),
        ({"_malformed_line": "t9,1,2"}, "line_well_formed"),
    ],
)
def test_each_rule(changes, rules):
    got = failures(**changes)
    assert (None if got is None or pd.isna(got) else got) == rules


def test_amount_boundaries_are_valid():
    assert pd.isna(failures(amount="1000000.00")) and pd.isna(failures(amount="0.01"))


def test_users_contract():
    frame = pd.DataFrame({"user_id": ["1", "x", "3"], "country": ["DE", "Germany", "FR"],
                          "signup_ts": ["2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "soon"]})
    _, failed = users.check_users(frame)
    assert [None if pd.isna(v) else v for v in failed] == [None, "user_id_parseable;country_valid",
                                                          "signup_ts_parseable"]


def test_gold_contract_is_derived_from_the_declaration():
    fs = feature_set("user_spend_daily")
    schema = gold.contract(fs)
    assert list(schema.columns) == ["user_id", "as_of", *fs.feature_names()]
    assert [c.name for c in schema.columns["tx_count_7d"].checks] == ["tx_count_7d_non_negative"]


# --- the Arrow parsing against a second, plain-Python reading of the same rules ------------------------
TRICKY_TEXT = ["12", "007", "-0", "+5", " 12", "12 ", "1e3", "12.5", "12.50", "12.505", ".5", "5.", "-3.25",
               "99999999999999999", "999999999999999999", "9999999999999999999", "١٢", "", "   ", None, "x",
               "2026-01-31T23:59:59.999999Z", "2026-01-31T23:59:59Z", "2026-01-31T23:59:59.1Z",
               "2026-01-31T23:59:59+02:00", "2026-01-31T23:59:59-05:30", "2026-01-31T23:59:59",
               "2026-01-31 23:59:59Z", "2026-01-31", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
               "2026-01-31T23:59:59.1234567Z", "not-a-timestamp", "2026-01-31T24:00:00Z", "2026-01-31T23:59:60Z",
               "2026-01-31T23:59", "2026-01-31T23:59:59.5", "2026-01-31T23:59:59+0200", "0001-01-01T00:00:00Z",
               "9999-12-31T23:59:59Z", "2026-1-5T00:00:00Z"]


def _python_number(text, pattern, kind):
    import re

    if text is None or not re.fullmatch(pattern, text, flags=re.ASCII):
        return None
    return kind(text)


def _python_instant(text):
    if text is None:
        return None
    try:  # pandas' own ISO 8601 parser, one value at a time
        value = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        return None
    return None if pd.isna(value) else value.as_unit("us").to_pydatetime()


def test_arrow_parsing_equals_a_plain_python_reading_of_the_rules():
    import pyarrow as pa

    table = pa.table({c: pa.array(TRICKY_TEXT, pa.string()) for c in ("tx_id", "user_id", "merchant_id", "amount",
                                                                       "currency", "channel", "ts")}
                     ).append_column("_malformed_line", pa.nulls(len(TRICKY_TEXT), pa.string()))
    typed = transactions.parse(table)
    ints = [_python_number(t, r"-?\d{1,18}", int) for t in TRICKY_TEXT]  # exact, also past 2**53
    amounts = [_python_number(t, r"-?\d{1,16}(\.\d{1,2})?", float) for t in TRICKY_TEXT]
    assert typed.column("user_id").to_pylist() == ints
    assert typed.column("merchant_id").to_pylist() == ints
    assert typed.column("amount").to_pylist() == amounts
    assert typed.column("ts").to_pylist() == [_python_instant(t) for t in TRICKY_TEXT]
    assert list(typed.column("_user_id_present").to_pylist()) == [t is not None and t.strip() != "" for t in TRICKY_TEXT]

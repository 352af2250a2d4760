"""The silver contracts on tiny frames: every rule fires on its own, valid rows pass."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

import pyarrow as pa

from features.registry import feature_set
from pipelines.config import ColumnConfig, CustomCheck, DatasetConfig, RangeRule, load_config
from validation import contract as contracts
from validation import gold

SAMPLE = load_config(["data_dir=/tmp/medallion-unused"]).datasets
CUTOFF = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
# the sample's transactions contract, derived from its declaration (examples/sample/conf/dataset)
TRANSACTIONS = contracts.build("transactions", SAMPLE["transactions"], CUTOFF,
                               known={"user_id": pa.array([1, 2], pa.int64())})
GOOD = {"tx_id": "t1", "user_id": "1", "merchant_id": "7", "amount": "12.50", "currency": "EUR", "channel": "web",
        "ts": "2026-01-31T23:59:59.999999Z", "_malformed_line": None}


def _table(rows, contract):
    names = contract.names + ["_malformed_line"]
    return pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in names})


def failures(**changes):
    failed = TRANSACTIONS.failures(_table([GOOD, {**GOOD, **changes}], TRANSACTIONS)).to_pylist()
    assert failed[0] is None  # the good row stays good
    return failed[1]


def test_the_sample_keeps_its_rule_names_in_their_order():
    assert TRANSACTIONS.rules == (
        "line_well_formed", "tx_id_present", "user_id_present", "user_id_parseable", "user_id_known",
        "merchant_id_parseable", "amount_parseable", "amount_in_range", "currency_known", "channel_known",
        "ts_parseable", "ts_not_before", "ts_not_after_cutoff")
    users = contracts.build("users", SAMPLE["users"])
    assert users.rules == ("line_well_formed", "user_id_parseable", "country_valid", "signup_ts_parseable")


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
        ({"merchant_id": None}, "merchant_id_parseable"),
        ({"amount": "0.00"}, "amount_in_range"),
        ({"amount": "-5"}, "amount_in_range"),
        ({"amount": "1000000.01"}, "amount_in_range"),
        ({"amount": "1.234"}, "amount_parseable"),
        ({"amount": "twelve"}, "amount_parseable"),
        ({"currency": "XXX"}, "currency_known"),
        ({"currency": " "}, "currency_known"),
        ({"channel": "fax"}, "channel_known"),
        ({"ts": "not-a-timestamp"}, "ts_parseable"),
        ({"ts": "2026-02-01T00:00:00Z"}, "ts_not_after_cutoff"),
        ({"ts": "1970-01-01T00:00:00Z"}, "ts_not_before"),  # epoch zero: a default value, not an event
        ({"ts": "2019-12-31T23:59:59.999999Z"}, "ts_not_before"),  # declared: not before 2020-01-01
        ({"ts": "2019-12-31T23:00:00-01:00"}, None),  # 2020-01-01T00:00Z: the bound itself is valid
        ({"currency": "XXX", "channel": "fax", "amount": "0"}, "amount_in_range;currency_known;channel_known"),
        ({"_malformed_line": "t9,1,2"}, "line_well_formed"),
        ({"_malformed_line": "t9,1,2", "tx_id": None, "user_id": None}, "line_well_formed"),
    ],
)
def test_each_rule(changes, rules):
    assert failures(**changes) == rules


def test_not_before_on_a_date_column_and_its_declaration_checks():
    from pipelines.declarations import validate_dataset
    from pipelines.errors import ConfigError

    declared = DatasetConfig(name="people", kind="files", path="/x", key="id", columns={
        "id": ColumnConfig(), "born": ColumnConfig(type="date", not_before="1900-01-01")})
    people = contracts.build("people", declared)
    rows = [{"id": "a", "born": "1900-01-01"}, {"id": "b", "born": "1899-12-31"}, {"id": "c", "born": None}]
    assert people.failures(_table(rows, people)).to_pylist() == [None, "born_not_before", None]
    for column, message in [
            (ColumnConfig(type="integer", not_before="1900-01-01"), "needs a date or timestamp column, not integer"),
            (ColumnConfig(type="date", not_before="last year"), "'last year' is not an ISO-8601 date or instant")]:
        bad = DatasetConfig(name="people", kind="files", path="/x", key="id", columns={"id": ColumnConfig(),
                                                                                        "born": column})
        with pytest.raises(ConfigError) as error:
            validate_dataset("people", bad, {"people": bad})
        assert str(error.value) == f"config error: datasets.people.columns.born.not_before: {message}"


def test_amount_boundaries_are_valid():
    assert failures(amount="1000000.00") is None and failures(amount="0.01") is None


def test_users_contract():
    users = contracts.build("users", SAMPLE["users"])
    table = pa.table({"user_id": ["1", "x", "3"], "email": [None, None, None], "full_name": [None, None, None],
                      "phone": [None, None, None], "birth_date": [None, None, None],
                      "country": ["DE", "Germany", "FR"],
                      "signup_ts": ["2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "soon"]})
    assert users.failures(table).to_pylist() == [None, "user_id_parseable;country_valid", "signup_ts_parseable"]


# --- the vocabulary on a dataset the sample does not have ------------------------------------------------
READINGS = DatasetConfig(
    name="readings", kind="files", path="/unused", null_tokens=["NA", "-"],
    columns={
        "site": ColumnConfig(required=True),
        "sensor": ColumnConfig(type="integer", required=True, range=RangeRule(min=1, max=99)),
        "taken_at": ColumnConfig(type="timestamp", required=True, naive="reject", not_after_cutoff=True),
        "celsius": ColumnConfig(type="decimal(5,1)"),
        "humidity": ColumnConfig(type="float", max_decimals=2, range=RangeRule(min=0, max=1, max_exclusive=True)),
        "ok": ColumnConfig(type="boolean"),
        "day": ColumnConfig(type="date"),
        "code": ColumnConfig(pattern="[A-Z]{3}-\\d+", allowed=["ABC-1", "XYZ-22"], rule_names={"allowed": "code_listed"}),
    },
    key=["site", "sensor", "taken_at"], event_time="taken_at",
    checks=[CustomCheck(name="warm_when_ok", function="unused:unused")])
READING = {"site": "s1", "sensor": "7", "taken_at": "2026-01-05T10:00:00+02:00", "celsius": "21.5",
           "humidity": "0.45", "ok": "true", "day": "2026-01-05", "code": "ABC-1", "_malformed_line": None}


def warm_when_ok(rows):
    """A custom check: a reading marked ok is above freezing."""
    return ~rows["ok"].fillna(False).astype(bool) | ~(rows["celsius"] <= 0)


READINGS_CONTRACT = contracts.build("readings", READINGS, CUTOFF, custom=[("warm_when_ok", warm_when_ok)])


def reading_failures(**changes):
    failed = READINGS_CONTRACT.failures(_table([READING, {**READING, **changes}], READINGS_CONTRACT)).to_pylist()
    assert failed[0] is None
    return failed[1]


@pytest.mark.parametrize(
    "changes, rules",
    [
        ({"site": "NA"}, "site_present"),  # a null token is no value
        ({"site": "-"}, "site_present"),
        ({"sensor": "NA", "site": " "}, "site_present;sensor_present"),
        ({"sensor": "100"}, "sensor_in_range"),
        ({"sensor": "7.0"}, "sensor_parseable"),
        ({"taken_at": "2026-01-05T10:00:00"}, "taken_at_parseable"),  # zone-less, and the policy rejects it
        ({"taken_at": "2026-02-01T00:00:00Z"}, "taken_at_not_after_cutoff"),
        ({"celsius": "NA"}, None),  # not required: a missing value passes
        ({"celsius": "21.55"}, "celsius_parseable"),  # decimal(5,1): one decimal
        ({"celsius": "12345.5"}, "celsius_parseable"),  # five digits before the point
        ({"humidity": "0.455"}, "humidity_decimals"),
        ({"humidity": "1"}, "humidity_in_range"),  # max exclusive
        ({"humidity": "4.5e-1"}, None),
        ({"humidity": "wet"}, "humidity_parseable"),
        ({"ok": "yes"}, None),
        ({"ok": "maybe"}, "ok_parseable"),
        ({"day": "2026-02-30"}, "day_parseable"),
        ({"code": "abc-1"}, "code_listed;code_pattern"),
        ({"code": "XYZ-3"}, "code_listed"),
        ({"celsius": "-2.0"}, "warm_when_ok"),
        ({"celsius": "-2.0", "ok": "false"}, None),
        ({"celsius": "-2.05"}, "celsius_parseable"),  # custom checks judge only rows the vocabulary passed
    ],
)
def test_the_rule_vocabulary(changes, rules):
    assert reading_failures(**changes) == rules


def test_types_and_composite_keys():
    rows = _table([READING, {**READING, "sensor": "07", "taken_at": "2026-01-05T08:00:00Z", "celsius": "NA"}],
                  READINGS_CONTRACT).append_column("_source_file", pa.array(["f", "f"]))
    rows = rows.append_column("_row_hash", pa.array(["h1", "h2"])).append_column("_run_id", pa.array(["r", "r"]))
    silver = READINGS_CONTRACT.to_silver(rows)
    assert silver.schema.field("celsius").type == pa.decimal128(5, 1)
    assert silver.column("celsius").to_pylist()[0] == __import__("decimal").Decimal("21.5")
    assert silver.column("celsius").to_pylist()[1] is None
    assert silver.column("ok").to_pylist() == [True, True]
    assert silver.column("day").to_pylist() == [dt.date(2026, 1, 5)] * 2
    # "07" and "7", +02:00 and Z: the same key once parsed, from the text as from silver's typed values
    raw_keys = READINGS_CONTRACT.key_text(rows, typed=False).to_pylist()
    assert raw_keys[0] == raw_keys[1] == READINGS_CONTRACT.key_text(silver, typed=True).to_pylist()[0]
    assert len(set(READINGS_CONTRACT.key_text(silver, typed=True).to_pylist())) == 1


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
    typed = TRANSACTIONS.typed(table)
    ints = [_python_number(t, r"-?\d{1,18}", int) for t in TRICKY_TEXT]  # exact, also past 2**53
    amounts = [_python_number(t, r"-?\d{1,16}(\.\d{1,2})?", float) for t in TRICKY_TEXT]
    assert typed.column("user_id").to_pylist() == ints
    assert typed.column("merchant_id").to_pylist() == ints
    assert typed.column("amount").to_pylist() == amounts
    assert typed.column("ts").to_pylist() == [_python_instant(t) for t in TRICKY_TEXT]
    assert list(TRANSACTIONS.present(table, "user_id")) == [t is not None and t.strip() != "" for t in TRICKY_TEXT]

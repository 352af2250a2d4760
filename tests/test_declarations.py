"""Misdeclared feature sets fail with one line naming the set and the problem: what a declaration says about
itself when it is built, what it reads from the tables at start-up."""

from __future__ import annotations

import dataclasses

import pytest

from features.declarations import Attribute, Derived, FeatureDeclarationError, Filter, WindowAggregation, validate
from features.registry import feature_set, feature_sets
from pipelines.config import load_config
from pipelines.declarations import column_kinds

SAMPLE = load_config(["data_dir=/tmp/medallion-unused"]).datasets

USER = feature_set("user_spend_daily")
MERCHANT = feature_set("merchant_activity")


def check(fs):
    validate(fs, column_kinds(SAMPLE["transactions"]), column_kinds(SAMPLE["users"]))


def with_extra(fs, *aggregations, derived=()):
    return dataclasses.replace(fs, aggregations=fs.aggregations + tuple(aggregations), derived=fs.derived + derived)


def test_shipped_feature_sets_are_valid():
    check(USER)
    check(MERCHANT)
    assert USER.feature_names() == (
        "spend_7d", "spend_30d", "spend_90d", "tx_count_7d", "tx_count_30d", "tx_count_90d", "avg_amount_30d",
        "distinct_merchants_30d", "days_since_last_tx", "tenure_days", "country")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: WindowAggregation("x", "amount", "median", ("7d",), "float64", ""),
         "feature 'x': unknown aggregation 'median' (known: sum, count, mean, min, max, count_distinct, last, "
         "days_since_last)"),
        (lambda: WindowAggregation("x", "amount", "sum", ("36h",), "float64", ""),
         "feature 'x': window '36h' is not a whole number of days (write e.g. '7d')"),
        (lambda: WindowAggregation("x", "amount", "sum", ("7d", "0d"), "float64", ""),
         "feature 'x': window '0d' is not a whole number of days (write e.g. '7d')"),
        (lambda: WindowAggregation("x", "amount", "sum", (), "float64", ""), "feature 'x': declares no window"),
        (lambda: WindowAggregation("x", "amount", "sum", ("7d", "30d"), "float64", "", suffix_window=False),
         "feature 'x': suffix_window=False needs exactly one window"),
        (lambda: WindowAggregation("x", None, "mean", ("7d",), "float64", ""), "feature 'x': mean needs a column"),
        (lambda: WindowAggregation("x", "amount", "sum", ("7d",), "float32", ""),
         "feature 'x': unknown dtype 'float32'"),
        (lambda: Derived("r", lambda spend_7d: spend_7d, "decimal", ""), "feature 'r': unknown dtype 'decimal'"),
        (lambda: Derived("r", "spend_7d / 2", "float64", ""),
         "feature 'r': derived from 'spend_7d / 2', which is not a function"),
        (lambda: Attribute("c", "country", "str", ""), "feature 'c': unknown dtype 'str'"),
        (lambda: Attribute("t", "signup_ts", "int64", "", transform="days"),
         "feature 't': unknown transform 'days' (known: value, days_until_as_of)"),
        (lambda: with_extra(USER, WindowAggregation("spend", "amount", "max", ("7d",), "float64", "")),
         "feature set 'user_spend_daily': duplicate feature name 'spend_7d' (declared by feature 'spend' and "
         "feature 'spend')"),
        (lambda: dataclasses.replace(USER, attributes=(Attribute("as_of", "country", "string", ""),)),
         "feature set 'user_spend_daily': duplicate feature name 'as_of' (declared by attribute 'as_of' and a key "
         "column)"),
        (lambda: with_extra(MERCHANT, derived=(
            Derived("ratio", lambda revenue_90d, revenue_7d: revenue_7d / revenue_90d, "float64", ""),)),
         "feature set 'merchant_activity': derived feature 'ratio' refers to missing feature 'revenue_90d'"),
        (lambda: dataclasses.replace(USER, aggregations=()),
         "feature set 'user_spend_daily': declares no window aggregation"),
        (lambda: dataclasses.replace(USER, entity_table=None),
         "feature set 'user_spend_daily': declares attributes but no entity table"),
    ],
    ids=["unknown-aggregation", "window-not-whole-days", "window-zero-days", "no-window", "suffix-several-windows",
         "column-missing", "unknown-dtype", "derived-unknown-dtype", "derived-not-a-function",
         "attribute-unknown-dtype", "attribute-unknown-transform", "duplicate-name", "name-of-a-key-column",
         "missing-derived-input", "no-aggregation", "attributes-without-entity-table"],
)
def test_misdeclaration_fails_when_built(build, message):
    with pytest.raises(FeatureDeclarationError) as raised:
        build()
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "broken, message",
    [
        (with_extra(USER, WindowAggregation("x", "amout", "sum", ("7d",), "float64", "typo")),
         "feature set 'user_spend_daily': feature 'x': unknown column 'amout' in 'transactions'"),
        (with_extra(USER, WindowAggregation("x", "currency", "mean", ("7d",), "float64", "")),
         "feature set 'user_spend_daily': feature 'x': mean needs a numeric column, 'currency' is string"),
        (with_extra(USER, WindowAggregation("x", "channel", "last", ("7d",), "float64", "")),
         "feature set 'user_spend_daily': feature 'x': last needs a numeric column, 'channel' is string"),
        (with_extra(USER, WindowAggregation("x", None, "count", ("7d",), "int64", "", where=Filter("chanel", "web"))),
         "feature set 'user_spend_daily': feature 'x': filter on unknown column 'chanel'"),
        (dataclasses.replace(USER, attributes=(Attribute("c", "land", "string", ""),)),
         "feature set 'user_spend_daily': attribute 'c': unknown column 'land' in 'users'"),
    ],
    ids=["unknown-column", "mean-of-text", "last-of-text", "filter-on-unknown-column", "unknown-entity-column"],
)
def test_column_misdeclaration_is_one_clear_line_at_start_up(broken, message):
    with pytest.raises(FeatureDeclarationError) as raised:
        check(broken)
    assert str(raised.value) == message


def test_a_module_with_a_misdeclared_feature_names_the_set(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "typo_set.py").write_text(
        "from features.declarations import Entity, FeatureSet, WindowAggregation\n"
        "FEATURE_SET = FeatureSet('typo_set', Entity('user', 'user_id'), 'transactions', 'ts', aggregations=(\n"
        "    WindowAggregation('spend', 'amount', 'sum', ('7x',), 'float64', ''),))\n")
    with pytest.raises(FeatureDeclarationError) as raised:
        feature_sets(["typo_set"], project=tmp_path)
    assert str(raised.value) == \
        "feature set 'typo_set': feature 'spend': window '7x' is not a whole number of days (write e.g. '7d')"


def _agg_changed(fs, aggregation, **changes):
    return dataclasses.replace(fs, aggregations=tuple(dataclasses.replace(a, **changes) if a.name == aggregation
                                                      else a for a in fs.aggregations))


def _redefined(before, after):
    old, new = before.feature_fingerprints(), after.feature_fingerprints()
    return sorted(name for name in old.keys() & new.keys() if old[name] != new[name])


def rounded_web_share_30d(web_revenue_30d, revenue_30d):
    return (web_revenue_30d / revenue_30d.where(revenue_30d != 0)).round(2)


AGGREGATED = ["avg_amount_30d", "days_since_last_tx", "distinct_merchants_30d", "spend_30d", "spend_7d", "spend_90d",
              "tx_count_30d", "tx_count_7d", "tx_count_90d"]


@pytest.mark.parametrize(
    "before, after, redefined",
    [
        (USER, _agg_changed(USER, "spend", agg="mean"), ["spend_30d", "spend_7d", "spend_90d"]),
        (USER, _agg_changed(USER, "tx_count", column="amount"), ["tx_count_30d", "tx_count_7d", "tx_count_90d"]),
        (USER, _agg_changed(USER, "days_since_last_tx", windows=("60d",)), ["days_since_last_tx"]),
        (USER, _agg_changed(USER, "avg_amount", dtype="int64"), ["avg_amount_30d"]),
        (MERCHANT, _agg_changed(MERCHANT, "web_revenue", where=Filter("channel", "app")),
         ["web_revenue_30d", "web_share_30d"]),
        (MERCHANT, dataclasses.replace(MERCHANT, derived=(
            Derived("web_share_30d", rounded_web_share_30d, "float64", ""),)), ["web_share_30d"]),
        (USER, dataclasses.replace(USER, attributes=(
            dataclasses.replace(USER.attributes[0], transform="value"), USER.attributes[1])), ["tenure_days"]),
        (USER, dataclasses.replace(USER, timestamp_column="booked_at"), AGGREGATED),
        (USER, dataclasses.replace(USER, source_table="payments"), AGGREGATED),
        (USER, dataclasses.replace(USER, entity_table="customers"), ["country", "tenure_days"]),
        (USER, dataclasses.replace(USER, entity=dataclasses.replace(USER.entity, dtype="string")),
         sorted(AGGREGATED + ["country", "tenure_days"])),
        (USER, _agg_changed(dataclasses.replace(USER, description="other", ttl_days=3), "spend", description="other"),
         []),
    ],
    ids=["sum-to-mean", "count-of-a-column", "window", "dtype", "filter-value", "derived-function",
         "attribute-transform", "timestamp-column", "source-table", "entity-table", "entity-key-type",
         "descriptions-and-ttl"],
)
def test_fingerprints_name_exactly_the_features_whose_values_change(before, after, redefined):
    assert _redefined(before, after) == redefined
    assert (after.fingerprint() == before.fingerprint()) == (not redefined)


def test_fingerprints_are_the_same_in_another_process():
    import subprocess
    import sys

    script = "from features.registry import feature_set; print(feature_set('merchant_activity').fingerprint())"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == MERCHANT.fingerprint()


def _typed_in(body):
    """A derived function with no source file (as if typed into a REPL): fingerprinted by its code."""
    namespace = {}
    exec(compile(f"def share(web_revenue_30d, revenue_30d):\n    return {body}\n", "<typed>", "exec"), namespace)
    return dataclasses.replace(MERCHANT, derived=(Derived("web_share_30d", namespace["share"], "float64", ""),))


def test_a_derived_function_without_source_is_fingerprinted_by_its_code():
    divided = "(web_revenue_30d / revenue_30d).round(2)"
    assert _redefined(_typed_in(divided), _typed_in(divided)) == []
    assert _redefined(_typed_in(divided), _typed_in("(web_revenue_30d / revenue_30d).round(3)")) == ["web_share_30d"]
    assert _redefined(_typed_in("web_revenue_30d.clip(revenue_30d)"), _typed_in("web_revenue_30d.max(revenue_30d)")) \
        == ["web_share_30d"]


def test_unknown_feature_set_name():
    with pytest.raises(FeatureDeclarationError, match=r"^unknown feature set 'nope': no module .*features/nope\.py$"):
        feature_sets(["nope"])


def test_features_package_imports_no_infrastructure():
    import ast
    from pathlib import Path

    banned = {"ray", "pyiceberg", "feast", "mlflow"}
    for path in Path("features").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & banned, f"{path} imports {names}"

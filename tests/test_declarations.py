"""Misdeclared feature sets fail at start-up with one line naming the set and the problem."""

from __future__ import annotations

import dataclasses

import pytest

from features.declarations import Derived, FeatureDeclarationError, WindowAggregation, validate
from features.registry import feature_set, feature_sets
from validation import transactions, users

USER = feature_set("user_spend_daily")
MERCHANT = feature_set("merchant_activity")


def check(fs):
    validate(fs, transactions.COLUMN_KINDS, users.COLUMN_KINDS)


def with_extra(fs, *aggregations, derived=()):
    return dataclasses.replace(fs, aggregations=fs.aggregations + tuple(aggregations), derived=fs.derived + derived)


def test_shipped_feature_sets_are_valid():
    check(USER)
    check(MERCHANT)
    assert USER.feature_names() == (
        "spend_7d", "spend_30d", "spend_90d", "tx_count_7d", "tx_count_30d", "tx_count_90d", "avg_amount_30d",
        "distinct_merchants_30d", "days_since_last_tx", "tenure_days", "country")


@pytest.mark.parametrize(
    "broken, message",
    [
        (with_extra(USER, WindowAggregation("x", "amout", "sum", ("7d",), "float64", "typo")),
         "feature set 'user_spend_daily': feature 'x': unknown column 'amout' in 'transactions'"),
        (with_extra(USER, WindowAggregation("x", "amount", "median", ("7d",), "float64", "")),
         "feature set 'user_spend_daily': feature 'x': unknown aggregation 'median'"),
        (with_extra(USER, WindowAggregation("x", "amount", "sum", ("36h",), "float64", "")),
         "feature set 'user_spend_daily': feature 'x': window '36h' is not a whole number of days"),
        (with_extra(USER, WindowAggregation("spend", "amount", "max", ("7d",), "float64", "")),
         "feature set 'user_spend_daily': duplicate feature name 'spend_7d'"),
        (with_extra(MERCHANT, derived=(Derived("ratio", lambda revenue_90d, revenue_7d: revenue_7d / revenue_90d,
                                               "float64", ""),)),
         "feature set 'merchant_activity': derived feature 'ratio' refers to missing feature 'revenue_90d'"),
    ],
    ids=["unknown-column", "unknown-aggregation", "window-not-whole-days", "duplicate-name", "missing-derived-input"],
)
def test_misdeclaration_is_one_clear_line(broken, message):
    with pytest.raises(FeatureDeclarationError) as raised:
        check(broken)
    text = str(raised.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_unknown_feature_set_name():
    with pytest.raises(FeatureDeclarationError, match="unknown feature set 'nope': no module features/nope.py"):
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

"""One registry of aggregation kinds (`features.aggregations`): each kind's definition, and the declarations'
checks, the engine's dispatch, the gold contract and the README's table all following it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from features.aggregations import KINDS, AggregationKind
from features.declarations import Entity, FeatureDeclarationError, FeatureSet, WindowAggregation, validate
from features.docs import render_aggregations
from features.engine import IMPLEMENTATIONS, build_features
from tests.test_engine import EVERY_KIND
from validation import gold

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EVENT_COLUMNS = {"user_id": "numeric", "amount": "numeric", "currency": "string", "ts": "timestamp"}
MEDIAN = AggregationKind("median", True, True, True, "Middle value, null when there is none",
                         lambda values: None)


def test_each_kind_reduces_a_window_by_its_definition():
    cents = [Decimal("0.10"), Decimal("0.20"), Decimal("0.20")]  # in event order, oldest first
    ages = [5, 1, 3]  # whole days from each event's date to the as-of date
    reduced = {name: kind.reduce(ages if not kind.needs_column else cents) for name, kind in KINDS.items()}
    assert reduced == {"sum": 0.5, "count": 3, "mean": 0.5 / 3, "min": 0.1, "max": 0.2, "count_distinct": 2,
                       "last": 0.2, "days_since_last": 1}
    assert {name: kind.reduce([]) for name, kind in KINDS.items()} == {
        "sum": 0.0, "count": 0, "mean": None, "min": None, "max": None, "count_distinct": 0, "last": None,
        "days_since_last": None}


def test_every_kind_has_an_engine_implementation_and_is_tested_against_the_oracle():
    assert list(IMPLEMENTATIONS) == list(KINDS)
    assert {agg.agg for agg in EVERY_KIND.aggregations} == set(KINDS)


def _with_median(column: str) -> FeatureSet:
    return FeatureSet("medians", Entity("user", "user_id"), "transactions", "ts",
                      (WindowAggregation("med", column, "median", ("7d",), "float64", ""),))


def test_a_kind_added_to_the_registry_is_declarable_checked_and_documented(monkeypatch):
    monkeypatch.setitem(KINDS, "median", MEDIAN)
    fs = _with_median("amount")
    validate(fs, EVENT_COLUMNS)
    with pytest.raises(FeatureDeclarationError, match="^feature set 'medians': feature 'med': median needs a numeric "
                                                      "column, 'currency' is string$"):
        validate(_with_median("currency"), EVENT_COLUMNS)
    assert [c.name for c in gold.contract(fs).columns["med_7d"].checks] == ["med_7d_non_negative"]
    assert render_aggregations().splitlines()[-1] == \
        "| `median` | numeric | Middle value, null when there is none | yes |"


def test_the_engine_refuses_a_registered_kind_it_has_no_implementation_for(monkeypatch):
    monkeypatch.setitem(KINDS, "median", MEDIAN)
    events = pd.DataFrame({"user_id": [1], "amount": [2.0],
                           "ts": pd.to_datetime(["2026-03-01T10:00:00Z"])})
    with pytest.raises(NotImplementedError) as raised:
        build_features(events, _with_median("amount"), dt.date(2026, 3, 2), dt.date(2026, 3, 2))
    assert str(raised.value) == "feature 'med': the engine has no implementation of aggregation 'median'"


def test_readme_lists_the_registered_kinds():
    assert render_aggregations() in README

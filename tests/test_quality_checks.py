"""The quality rules on figures worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from pipelines.quality import checks


def test_completeness_against_its_threshold():
    failed = checks.completeness("transactions", "amount", 90, 100, 0.95, "fail")
    assert (failed.value, failed.passed, failed.blocks, failed.threshold) == (0.9, False, True, ">= 0.95")
    assert failed.summary() == "completeness.transactions.amount=0.9 (threshold >= 0.95)"
    assert checks.completeness("transactions", "amount", 95, 100, 0.95, "fail").passed
    warned = checks.completeness("transactions", "amount", 1, 2, 0.95, "warn")
    assert not warned.passed and not warned.blocks
    assert checks.completeness("transactions", "amount", 0, 0, 0.95, "fail").passed  # nothing arrived


def test_range_counts_the_share_outside():
    result = checks.value_range("transactions", "amount", 3, 200, 0.01, 2000.0, 0.01, "fail")
    assert result.value == 0.015 and not result.passed
    assert result.threshold == "<= 0.01 of rows outside [0.01, 2000]"
    assert checks.value_range("transactions", "amount", 2, 200, 0.01, None, 0.01, "fail").passed


def test_row_count_band_around_the_median_of_history():
    history = [100.0, 300.0, 200.0]  # median 200, band 30% -> [140, 260]
    assert checks.row_count("transactions", 140.0, history, 0.3, "fail").passed
    half = checks.row_count("transactions", 100.0, history, 0.3, "fail")
    assert not half.passed and half.threshold == "in [140, 260] (median 200 of 3 runs +-30%)"
    assert not checks.row_count("transactions", 261.0, history, 0.3, "fail").passed
    assert checks.row_count("transactions", 5.0, [], 0.3, "fail").passed  # the first run has nothing to compare


D = dt.date


def test_baseline_days_are_the_same_weekday_or_every_day_within_the_window():
    day = D(2026, 1, 29)  # a Thursday
    eligible = {D(2026, 1, 22), D(2026, 1, 15), D(2026, 1, 8), D(2026, 1, 1), D(2026, 1, 28), D(2025, 12, 25)}
    assert checks.baseline_days(day, eligible, "same_weekday", 28) == [D(2026, 1, 22), D(2026, 1, 15),
                                                                       D(2026, 1, 8), D(2026, 1, 1)]
    assert checks.baseline_days(day, eligible, "same_weekday", 21) == [D(2026, 1, 22), D(2026, 1, 15), D(2026, 1, 8)]
    assert checks.baseline_days(day, eligible, "rolling", 7) == [D(2026, 1, 28), D(2026, 1, 22)]
    assert checks.baseline_days(day, eligible - {D(2026, 1, 22)}, "same_weekday", 14) == [D(2026, 1, 15)]


# Four weeks of a weekly rhythm: weekdays 100 rows, Saturday and Sunday 200 (5 to 30 January 2026;
# 2026-01-05 is a Monday), a few days off the rhythm
WEEKS = {D(2026, 1, 5) + dt.timedelta(days=i): (200 if (D(2026, 1, 5) + dt.timedelta(days=i)).weekday() >= 5
                                                else 100) for i in range(26)}
WEEKS.update({D(2026, 1, 10): 190, D(2026, 1, 17): 230, D(2026, 1, 24): 210})  # Saturdays: median 210


def test_a_weekend_day_passes_against_its_weekday_and_fails_against_every_day():
    rows = {**WEEKS, D(2026, 1, 31): 220}  # Saturday 31 January
    eligible = set(WEEKS)
    result, outside = checks.day_row_count("tx", rows, [D(2026, 1, 31)], eligible, "same_weekday", 28, 3, 0.3,
                                           "fail")
    assert (result.value, result.passed, outside) == (220.0, True, [])
    assert result.threshold == "in [147, 273] (median 210 of 3 same weekdays +-30%, 2026-01-31)"
    rolling, outside = checks.day_row_count("tx", rows, [D(2026, 1, 31)], eligible, "rolling", 28, 3, 0.3, "fail")
    # 26 earlier days in the window (5 to 30 January): 20 weekdays at 100, so the median is 100
    assert (rolling.value, rolling.passed, rolling.blocks, outside) == (220.0, False, True, [D(2026, 1, 31)])
    assert rolling.threshold == "in [70, 130] (median 100 of 26 days +-30%, 2026-01-31)"


def test_half_a_weekday_fails_and_the_worst_day_is_reported():
    rows = {**WEEKS, D(2026, 1, 31): 205, D(2026, 2, 2): 50, D(2026, 2, 3): 68}  # Sat fine; Mon, Tue low
    judged = [D(2026, 1, 31), D(2026, 2, 2), D(2026, 2, 3)]
    result, outside = checks.day_row_count("tx", rows, judged, set(WEEKS), "same_weekday", 28, 3, 0.3, "fail")
    assert (result.value, result.passed, result.blocks) == (50.0, False, True)
    assert outside == [D(2026, 2, 2), D(2026, 2, 3)]
    assert result.threshold == "in [70, 130] (median 100 of 4 same weekdays +-30%, 2026-02-02)"
    assert result.detail == ("3 day(s) judged; out of band: 2026-02-02 (Mon) 50 rows vs median 100, "
                             "2026-02-03 (Tue) 68 rows vs median 100")


def test_a_baseline_being_learnt_can_only_warn_and_no_baseline_is_not_judged():
    rows = {D(2026, 1, 7): 100, D(2026, 1, 14): 110, D(2026, 1, 21): 40}
    learning, outside = checks.day_row_count("tx", rows, [D(2026, 1, 21)], {D(2026, 1, 7), D(2026, 1, 14)},
                                             "same_weekday", 28, 3, 0.3, "fail")
    assert (learning.value, learning.passed, learning.severity, learning.blocks) == (40.0, False, "warn", False)
    assert outside == [D(2026, 1, 21)]
    assert learning.detail.endswith("baseline being learnt for 2026-01-21: 2 of 3 same weekdays, judged as warn")
    first, outside = checks.day_row_count("tx", rows, sorted(rows), set(), "same_weekday", 28, 3, 0.3, "fail")
    assert (first.value, first.passed, outside) == (None, True, [])
    assert first.detail.startswith("no baseline yet for 3 day(s) (2026-01-07..2026-01-21)")
    nothing, _ = checks.day_row_count("tx", rows, [], set(rows), "same_weekday", 28, 3, 0.3, "fail")
    assert (nothing.value, nothing.passed, nothing.detail) == (None, True, "no new rows on any event day")


def test_freshness_in_hours_before_the_cutoff():
    cutoff = dt.datetime(2026, 1, 21, tzinfo=dt.timezone.utc)
    ok = checks.freshness("transactions", cutoff - dt.timedelta(hours=47, minutes=30), cutoff, 48, "warn")
    assert ok.value == 47.5 and ok.passed
    stale = checks.freshness("transactions", cutoff - dt.timedelta(hours=49), cutoff, 48, "warn")
    assert not stale.passed and not stale.blocks


def test_psi_by_hand():
    previous = np.array([1, 2, 3, 4] * 25, dtype=float)  # quartile edges 1, 1.75, 2.5, 3.25, 4
    current = np.array([1] * 40 + [2] * 10 + [3] * 25 + [4] * 25, dtype=float)
    value, edges, prev_counts, cur_counts = checks.psi(previous, current, bins=4)
    assert edges == [1.0, 1.75, 2.5, 3.25, 4.0]
    assert prev_counts == [25, 25, 25, 25] and cur_counts == [40, 10, 25, 25]
    expected = (0.40 - 0.25) * math.log(0.40 / 0.25) + (0.10 - 0.25) * math.log(0.10 / 0.25)
    assert value == pytest.approx(expected, rel=1e-12)
    same, *_ = checks.psi(previous, previous, bins=4)
    assert same == 0.0


def test_psi_puts_values_beyond_the_edges_in_the_outer_bins_and_handles_a_constant():
    value, edges, prev_counts, cur_counts = checks.psi(np.array([5.0] * 10), np.array([5.0] * 5 + [500.0] * 5), 10)
    assert edges == [4.0, 4.5, 5.5, 6.0] and prev_counts == [0, 10, 0] and cur_counts == [0, 5, 5]
    assert value == pytest.approx((0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))
    value, _, _, cur_counts = checks.psi(np.arange(100.0), np.arange(100.0) * 100, 10)
    assert cur_counts == [1] + [0] * 8 + [99]
    assert value > 1.0


def test_a_share_of_fewer_than_min_rows_is_reported_not_judged():
    # one malformed line in a 6-row file: 5/6 = 0.83 < 0.95, but 6 rows say nothing about the source
    small = checks.completeness("transactions", "amount", 5, 6, 0.95, "fail", min_rows=100)
    assert (small.value, small.passed) == (5 / 6, True)
    assert small.detail == "5 of 6 rows have a value; not judged: 6 rows, fewer than quality.min_rows=100"
    assert not checks.completeness("transactions", "amount", 94, 100, 0.95, "fail", min_rows=100).passed
    few = checks.value_range("transactions", "amount", 3, 10, 0.01, 2000.0, 0.01, "fail", min_rows=100)
    assert (few.value, few.passed) == (0.3, True) and few.detail.endswith("fewer than quality.min_rows=100")


def test_row_count_history_holds_only_runs_that_passed_every_check(tmp_path):
    from types import SimpleNamespace

    import pyarrow as pa

    from pipelines.quality.gate import HISTORY, _history
    from tests.test_lake import lake_at

    lake = lake_at(tmp_path)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    runs = [  # (run, gate passed, [(check, value, passed)])
        ("r1", True, [("row_count.tx", 1000.0, True), ("drift.f.x", 0.1, True)]),
        ("r2", True, [("row_count.tx", 5.0, False), ("drift.f.x", 0.1, True)]),  # row count let through by warn
        ("r3", True, [("row_count.tx", 4.0, True), ("completeness.tx.a", 0.8, False)]),  # another check warned
        ("r4", False, [("row_count.tx", 900.0, True), ("drift.f.x", 0.9, False)]),  # the gate failed
        ("r5", True, [("row_count.tx", 1100.0, True), ("drift.f.x", None, True)]),
    ]
    rows = [{"run_id": run, "checked_at": at + dt.timedelta(days=i), "gate_passed": gate, "name": name,
             "kind": name.split(".")[0], "table": "bronze.tx", "value": value, "threshold": "", "severity": "warn",
             "passed": passed, "detail": ""} for i, (run, gate, checked) in enumerate(runs)
            for name, value, passed in checked]
    lake.commit_arrow(pa.Table.from_pylist(rows, schema=HISTORY.schema), HISTORY, {})
    assert _history(SimpleNamespace(lake=lake), "row_count.tx", 5) == [("r1", 1000.0), ("r5", 1100.0)]
    assert _history(SimpleNamespace(lake=lake), "row_count.tx", 1) == [("r5", 1100.0)]

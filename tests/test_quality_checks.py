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

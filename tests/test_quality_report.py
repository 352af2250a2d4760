"""The HTML quality report: self-contained, well-formed SVG plots, figures printed exactly, data escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from pipelines.quality.report import render_report
from pipelines.quality.results import CheckResult, Distribution, ReportData

CHECKS = [
    CheckResult("completeness.transactions.amount", "completeness", "bronze.transactions", 0.987654321,
                ">= 0.95", "fail", True),
    CheckResult("row_count.silver.transactions", "row_count", "silver.transactions", 900.0,
                "in [0.7, 1.3] x median 1650", "fail", False, "too few rows"),
    CheckResult("drift.user_spend_daily.spend_sum_7d", "drift", "gold.user_spend_daily", 0.2345678,
                "<= 0.2", "warn", False),
    CheckResult("freshness.bronze.transactions", "freshness", "bronze.transactions", None, "<= 2 h", "warn", True),
]


def _data() -> ReportData:
    return ReportData(
        run_id="run-2026-01-15",
        passed=False,
        checks=CHECKS,
        null_rates={"bronze.transactions": {"amount": 0.1, "currency": 0.0, "<b>&x": 0.0123},
                    "bronze.users": {"größe": 1.0}},
        row_counts={"silver.transactions": [("r1", 1600), ("r2", 1700), ("run-2026-01-15", 900)],
                    "bronze.users": [("run-2026-01-15", 0)]},
        distributions=[
            Distribution("user_spend_daily.spend_sum_7d", [0.0, 10.0, 10.0, 50.0], [5, 0, 15], [10, 2, 8], 0.123456),
            Distribution("merchant_activity.n_tx", [0.0, 1.0, 2.0], [0, 0], [0, 0], None),
        ],
    )


def _svgs(page: str) -> dict:
    """Each <svg> parsed as XML, by its <title>."""
    out = {}
    for fragment in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        svg = ET.fromstring(fragment)
        assert svg.get("role") == "img" and svg.get("class") == "plot" and svg.get("viewBox")
        title = svg.find("title").text
        assert title not in out
        out[title] = svg
    return out


class _Cells(HTMLParser):
    """The text of every table cell, rows grouped."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append({"class": dict(attrs).get("class"), "cells": []})
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1]["cells"].append(self._cell)
            self._cell = None


def _rows(page: str):
    parser = _Cells()
    parser.feed(page)
    return parser.rows


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(_data())


def test_page_is_self_contained_html(page):
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    for banned in ("http://", "https://", "<script", "<link"):
        assert banned not in page.lower()


def test_one_svg_per_plot_with_exact_titles(page):
    assert set(_svgs(page)) == {
        "Null rates: bronze.transactions", "Null rates: bronze.users",
        "Row counts: silver.transactions", "Row counts: bronze.users",
        "Distribution: user_spend_daily.spend_sum_7d", "Distribution: merchant_activity.n_tx",
    }
    assert page.count("<svg") == 6


def test_bar_counts(page):
    svgs = _svgs(page)
    rects = {title: len(svg.findall(".//rect")) for title, svg in svgs.items()}
    assert rects["Null rates: bronze.transactions"] == 3
    assert rects["Null rates: bronze.users"] == 1
    assert rects["Row counts: silver.transactions"] == 3
    assert rects["Row counts: bronze.users"] == 1
    assert rects["Distribution: user_spend_daily.spend_sum_7d"] == 6
    assert rects["Distribution: merchant_activity.n_tx"] == 4
    last = svgs["Row counts: silver.transactions"].findall(".//rect")[-1]
    assert "current" in last.get("class")
    texts = [t.text for t in svgs["Row counts: silver.transactions"].iter("text")]
    assert {"1600", "1700", "900", "r1", "r2", "run-2026-01-15"} <= set(texts)


def test_histogram_has_legend_and_caption(page):
    svg = _svgs(page)["Distribution: user_spend_daily.spend_sum_7d"]
    texts = [t.text for t in svg.iter("text")]
    assert "previous snapshot" in texts and "this run" in texts
    assert "PSI 0.1235" in page and "PSI n/a" in page
    # normalised: previous 15/20 = 0.75 is the tallest bar, current 8/20 = 0.4 smaller
    heights = [float(r.get("height")) for r in svg.findall(".//rect")]
    assert heights[4] == max(heights) and heights[5] < heights[4]
    assert heights[2] == 0.0  # empty previous bin in the zero-width bin [10, 10]


def test_check_table(page):
    rows = [r for r in _rows(page) if r["cells"] and r["cells"][0] in {c.name for c in CHECKS}]
    by_name = {r["cells"][0]: r for r in rows}
    assert set(by_name) == {c.name for c in CHECKS}
    assert by_name["completeness.transactions.amount"]["cells"][3:5] == ["0.987654", ">= 0.95"]
    assert by_name["row_count.silver.transactions"]["cells"][3:5] == ["900", "in [0.7, 1.3] x median 1650"]
    assert by_name["drift.user_spend_daily.spend_sum_7d"]["cells"][3] == "0.234568"
    assert by_name["freshness.bronze.transactions"]["cells"][3] == "n/a"
    assert [by_name[c.name]["cells"][6] for c in CHECKS] == ["passed", "failed", "warned", "passed"]
    assert by_name["row_count.silver.transactions"]["class"] == "failed"
    assert by_name["completeness.transactions.amount"]["class"] == "passed"


def test_header_verdict_and_counts(page):
    assert "FAILED" in page and "PASSED" not in page
    assert "4 checks: 2 passed, 1 failed, 1 warned" in page
    assert "PASSED" in render_report(ReportData("ok", True, CHECKS[:1]))


def test_percentages_with_two_decimals(page):
    cells = [c for r in _rows(page) for c in r["cells"]]
    for pct in ("10.00%", "0.00%", "1.23%", "100.00%"):
        assert pct in cells
    texts = [t.text for t in _svgs(page)["Null rates: bronze.transactions"].iter("text")]
    assert {"10.00%", "0.00%", "1.23%"} <= set(texts)


def test_text_from_data_is_escaped(page):
    assert "<b>&x" not in page
    assert "&lt;b&gt;&amp;x" in page
    labels = [t.text for t in _svgs(page)["Null rates: bronze.transactions"].iter("text")]
    assert "<b>&x" in labels  # escaped in the source, the original text once parsed
    assert "größe" in page


def test_empty_inputs_say_no_data():
    page = render_report(ReportData("empty-run", True, []))
    assert "<svg" not in page
    assert page.count("no data") == 4  # checks, null rates, row counts, distributions
    assert "PASSED" in page and "0 checks" in page
    # empty tables inside the dicts count as no data too
    page = render_report(ReportData("r", True, [], null_rates={"t": {}}, row_counts={"t": []}))
    assert "<svg" not in page and page.count("no data") == 4

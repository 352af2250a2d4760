"""The data-quality report of one run: a single self-contained HTML page.

Plots are hand-drawn inline SVG rather than matplotlib images: the page then needs no plotting
dependency, loads no external resource (no script, stylesheet or font), and opens the same in any
browser, offline, and as an MLflow artifact. Every text taken from the data goes through `html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import Iterable, List, Optional, Sequence

from pipelines.quality.results import CheckResult, Distribution, ReportData

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
tr.failed td { background: #fde2e2; }
tr.warned td { background: #fff4d6; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 0.3em; color: #fff; }
.verdict.passed { background: #2e7d32; }
.verdict.failed { background: #c62828; }
svg.plot { max-width: 100%; height: auto; display: block; }
svg.plot text { font-size: 11px; fill: #333; }
rect.bar { fill: #4c78a8; }
rect.bar.current { fill: #f58518; }
figure { margin: 1em 0; }
figcaption { font-weight: bold; }
.nodata { color: #777; font-style: italic; }
"""


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _pct(fraction: float) -> str:
    return f"{100.0 * fraction:.2f}%"


def _outcome(check: CheckResult) -> str:
    if check.passed:
        return "passed"
    return "failed" if check.severity == "fail" else "warned"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], row_classes: Optional[List[str]] = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _svg(title: str, width: float, height: float, body: List[str]) -> str:
    return (f'<svg class="plot" role="img" viewBox="0 0 {width:g} {height:g}" width="{width:g}" height="{height:g}">'
            f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _hbar_chart(title: str, labels: Sequence[str], fractions: Sequence[float]) -> str:
    """Horizontal bars on a 0..1 axis, each labelled with its percentage."""
    left, plot_w, bar_h, gap, top = 160, 300, 18, 6, 10
    height = top + len(labels) * (bar_h + gap) + 24
    axis_y = height - 20
    body = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#333"/>',
            f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>']
    for tick in (0.0, 0.5, 1.0):
        body.append(_text(left + tick * plot_w, axis_y + 14, f"{tick:g}", "middle"))
    for i, (label, frac) in enumerate(zip(labels, fractions)):
        y = top + i * (bar_h + gap)
        w = max(0.0, min(1.0, frac)) * plot_w
        body.append(_text(left - 6, y + bar_h - 5, label, "end"))
        body.append(f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}"/>')
        body.append(_text(left + w + 4, y + bar_h - 5, _pct(frac)))
    return _svg(title, left + plot_w + 70, height, body)


def _column_chart(title: str, labels: Sequence[str], values: Sequence[int]) -> str:
    """Vertical bars, one per run, the last one (this run) highlighted."""
    slot, bar_w, top, plot_h, left = 70, 44, 20, 160, 20
    width = left * 2 + len(labels) * slot
    peak = max(max(values, default=0), 1)
    base = top + plot_h
    body = [f'<line x1="{left}" y1="{base}" x2="{width - left}" y2="{base}" stroke="#333"/>']
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + i * slot + (slot - bar_w) / 2
        h = max(0, value) / peak * plot_h
        cls = "bar current" if i == len(labels) - 1 else "bar"
        body.append(f'<rect class="{cls}" x="{x:.1f}" y="{base - h:.1f}" width="{bar_w}" height="{h:.1f}"/>')
        body.append(_text(x + bar_w / 2, base - h - 4, str(value), "middle"))
        body.append(_text(x + bar_w / 2, base + 14, label, "middle"))
    return _svg(title, width, base + 24, body)


def _fractions(counts: Sequence[int], n: int) -> List[float]:
    total = sum(counts)
    return [(counts[i] / total if total and i < len(counts) else 0.0) for i in range(n)]


def _histogram(title: str, edges: Sequence[float], previous: Sequence[int], current: Sequence[int]) -> str:
    """Grouped bars per bin (previous vs current), as fractions of each total; bins are equal-width slots."""
    n = max(len(previous), len(current))
    slot, bar_w, top, plot_h, left = 60, 22, 30, 150, 20
    width = max(left * 2 + n * slot, 260)
    prev, cur = _fractions(previous, n), _fractions(current, n)
    peak = max(prev + cur + [1e-12])
    base = top + plot_h
    body = [f'<line x1="{left}" y1="{base}" x2="{left + n * slot}" y2="{base}" stroke="#333"/>',
            f'<circle cx="{left + 5}" cy="12" r="5" fill="#4c78a8"/>', _text(left + 14, 16, "previous snapshot"),
            f'<circle cx="{left + 135}" cy="12" r="5" fill="#f58518"/>', _text(left + 144, 16, "this run")]
    for i in range(n):
        x = left + i * slot + (slot - 2 * bar_w) / 2
        for j, (frac, cls) in enumerate(((prev[i], "bar"), (cur[i], "bar current"))):
            h = frac / peak * plot_h
            body.append(f'<rect class="{cls}" x="{x + j * bar_w:.1f}" y="{base - h:.1f}" '
                        f'width="{bar_w}" height="{h:.1f}"/>')
        if i < len(edges):
            body.append(_text(left + i * slot, base + 14, _fmt(edges[i]), "middle"))
    if n and n < len(edges):
        body.append(_text(left + n * slot, base + 14, _fmt(edges[n]), "middle"))
    return _svg(title, width, base + 24, body)


def _null_rates(data: ReportData) -> str:
    parts = [f"<h3>{escape(t)}</h3>" + _hbar_chart(f"Null rates: {t}", list(cols), list(cols.values()))
             + _table(["column", "fraction null"], [(c, _pct(f)) for c, f in cols.items()])
             for t, cols in data.null_rates.items() if cols]
    return "".join(parts) or '<p class="nodata">no data</p>'


def _row_counts(data: ReportData) -> str:
    parts = [f"<h3>{escape(t)}</h3>" + _column_chart(f"Row counts: {t}", [r for r, _ in runs], [n for _, n in runs])
             + _table(["day" if "per event day" in t else "run", "rows"], runs) for t, runs in data.row_counts.items() if runs]
    return "".join(parts) or '<p class="nodata">no data</p>'


def _at(seq: Sequence, i: int, fmt=str) -> str:
    return fmt(seq[i]) if i < len(seq) else ""


def _distribution(d: Distribution) -> str:
    psi = "n/a" if d.psi is None else f"{d.psi:.4f}"
    rows = [(i, _at(d.edges, i, _fmt), _at(d.edges, i + 1, _fmt), _at(d.previous, i), _at(d.current, i))
            for i in range(max(len(d.previous), len(d.current)))]
    return (f"<figure>{_histogram(f'Distribution: {d.feature}', d.edges, d.previous, d.current)}"
            f"<figcaption>{escape(d.feature)} &#8212; PSI {psi}</figcaption></figure>"
            + _table(["bin", "from", "to", "previous snapshot", "this run"], rows))


def render_report(data: ReportData) -> str:
    """The complete HTML page of one run's quality report."""
    outcomes = [_outcome(c) for c in data.checks]
    counts = ", ".join(f"{outcomes.count(o)} {o}" for o in ("passed", "failed", "warned"))
    verdict = "PASSED" if data.passed else "FAILED"
    rows = [(c.name, c.kind, c.table, _fmt(c.value), c.threshold, c.severity, o, c.detail)
            for c, o in zip(data.checks, outcomes)]
    headers = ["name", "kind", "table", "value", "threshold", "severity", "outcome", "detail"]
    checks = _table(headers, rows, outcomes) if rows else '<p class="nodata">no data</p>'
    dists = "".join(_distribution(d) for d in data.distributions) or '<p class="nodata">no data</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Data quality report: {escape(data.run_id)}</title><style>{_CSS}</style></head>
<body>
<header><h1>Data quality report</h1>
<p>Run <code>{escape(data.run_id)}</code>: <span class="verdict {verdict.lower()}">{verdict}</span></p>
<p>{len(data.checks)} checks: {counts}</p></header>
<h2>Checks</h2>{checks}
<h2>Null rates</h2>{_null_rates(data)}
<h2>Row counts over the last days or runs</h2>{_row_counts(data)}
<h2>Feature distributions against the previous snapshot</h2>{dists}
</body>
</html>
"""

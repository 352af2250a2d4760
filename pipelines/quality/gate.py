"""The quality gate: measure what this run refined and built, judge it, record it, alert, and stop a bad
batch before it reaches the feature store.

Runs after gold is built and before anything is published. When a check of severity `fail` fails, every
table the run wrote (bronze included) is rolled back to its snapshot from before the run, nothing is
published, the MLflow run ends FAILED with the check results and the report, every failed check becomes
an alert, and the run exits non-zero. The batch itself stays where it arrived, so a rerun judges it again
and fails the same way until the files are replaced (a changed file is a new unit) or the check is
relaxed (for example `quality.drift.severity=warn`).

Every check of every run is appended to `quality.check_results`. Row counts are judged per event day, not
per file (files vary): each day the run added rows to, its rows in silver against the median of the same
weekday over the last four weeks (partition metadata: no data read), leaving out the days of this run and
the days a `warn` let through although they were out of band or failed a completeness or range check
(`quality.day_rows`), so neither a rejected batch nor an odd one becomes the norm. While fewer than
`min_baseline_days` such days exist, the check can only warn. A dataset without an event time is judged
by rows per file against the runs that passed every check. A share (completeness, values outside a
range) of fewer than `quality.min_rows` rows is reported, not judged.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pyiceberg.expressions import EqualTo, In

from features.declarations import FeatureSet
from pipelines import logs
from pipelines.context import RunContext
from pipelines.errors import PipelineError
from pipelines.io.lake import TableSpec
from pipelines.quality import checks
from pipelines.quality.report import render_report
from pipelines.quality.results import CheckResult, Distribution, ReportData

HISTORY = TableSpec("quality.check_results", pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("checked_at", pa.timestamp("us", tz="UTC")),
    pa.field("gate_passed", pa.bool_()),
    pa.field("name", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("table", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("threshold", pa.string()),
    pa.field("severity", pa.string()),
    pa.field("passed", pa.bool_()),
    pa.field("detail", pa.string()),
]))


# Per dataset, the event days each run changed and their rows in silver afterwards; `suspect`: the day was
# out of its row-count band, or a completeness or range check of the dataset failed in that run. A suspect
# day that a `warn` let through is left out of every later baseline.
DAY_ROWS = TableSpec("quality.day_rows", pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
    pa.field("dataset", pa.string()),
    pa.field("day", pa.date32()),
    pa.field("rows", pa.int64()),
    pa.field("suspect", pa.bool_()),
    pa.field("gate_passed", pa.bool_()),
]))


class QualityGateError(PipelineError):
    """A check of severity `fail` failed: the run stopped before publishing."""

    exit_code = 3


@dataclass
class Refined:
    """What the gate needs to know about one dataset refined in this run."""

    dataset: str
    columns: List[str]  # the declared source columns
    bronze_runs: List[str]
    rows: int  # bronze rows refined
    present: Dict[str, int]  # per declared column, rows with a value (counted while refining)


@dataclass
class GateResult:
    passed: bool
    checks: List[CheckResult]
    report_path: Path
    alerts: int = 0
    extra: Dict[str, object] = field(default_factory=dict)


# --- measuring ------------------------------------------------------------------------------------
def _outside_counts(batch: pd.DataFrame, column: str, low: Optional[float], high: Optional[float]) -> pd.DataFrame:
    values = batch[column].astype("float64")
    outside = np.zeros(len(values), dtype=bool)
    if low is not None:
        outside |= (values < low).to_numpy()
    if high is not None:
        outside |= (values > high).to_numpy()
    return pd.DataFrame([{"_rows": len(batch), "outside": int(outside.sum())}])


def _sum(ctx: RunContext, identifier: str, runs: List[str], read: List[str], fn, **kwargs) -> pd.Series:
    """Per-batch counts computed on Ray over the rows of the given bronze runs, summed on the driver."""
    ds = ctx.lake.read_ray(identifier, In("_run_id", runs), read)
    parts = ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pandas").to_pandas()
    return parts.sum(numeric_only=True) if len(parts) else pd.Series(dtype="int64")


def _units(ctx: RunContext, dataset: str, runs: Sequence[str]) -> int:
    from pipelines.commit_record import history

    return sum(len(r.units) for r in history(ctx.lake, f"bronze.{dataset}") if r.run_id in set(runs))


def _history(ctx: RunContext, name: str, runs: int) -> List[tuple]:
    """(run id, value) of the check in the last `runs` runs that passed every check, oldest first: a run
    let through by a `warn` (a few odd small files, a check relaxed for one run) is not a norm to learn."""
    if not ctx.lake.exists(HISTORY.identifier):
        return []
    rows = ctx.lake.read_arrow(HISTORY.identifier, columns=["run_id", "checked_at", "gate_passed", "name", "value",
                                                            "passed"]).to_pandas()
    clean = rows.groupby("run_id")["passed"].all()
    rows = rows[(rows["name"] == name) & rows["gate_passed"] & rows["run_id"].map(clean) & rows["value"].notna()]
    rows = rows.sort_values("checked_at")
    return list(rows[["run_id", "value"]].tail(runs).itertuples(index=False, name=None))


def _suspect_days(ctx: RunContext, dataset: str) -> set:
    """Days a run let through although they were suspect (see DAY_ROWS)."""
    if not ctx.lake.exists(DAY_ROWS.identifier):
        return set()
    rows = ctx.lake.read_arrow(DAY_ROWS.identifier, EqualTo("dataset", dataset), ["day", "suspect", "gate_passed"])
    return {d for d, s, g in zip(*(rows.column(c).to_pylist() for c in ("day", "suspect", "gate_passed"))) if s and g}


def _day_volume(ctx: RunContext, item: Refined, event_time: str, before: Dict[str, Optional[int]],
                report: ReportData) -> Dict[dt.date, int]:
    """The row-count check of a dataset with an event time (`checks.day_row_count`); the days this run
    changed with their rows now, for DAY_ROWS."""
    q = ctx.cfg.quality.row_count
    silver = f"silver.{item.dataset}"
    now = ctx.lake.rows_by_day(silver, event_time)
    before_run = before.get(silver)  # before the run (and any run it resumes); None: created by it
    then = ctx.lake.rows_by_day(silver, event_time, before_run) if before_run is not None else {}
    changed = sorted(d for d in set(now) | set(then) if now.get(d, 0) != then.get(d, 0))
    eligible = set(now) - set(changed) - _suspect_days(ctx, item.dataset)
    check, outside = checks.day_row_count(item.dataset, now, changed, eligible, q.baseline, q.window_days,
                                          q.min_baseline_days, q.band, q.severity)
    report.checks.append(check)
    if changed:
        shown = [d for d in sorted(now) if changed[-1] - dt.timedelta(days=q.window_days + 7) <= d <= changed[-1]]
        report.row_counts[f"{silver} (rows per event day)"] = [(d.isoformat(), now[d]) for d in shown]
    report.suspect_days[item.dataset] = set(outside)
    return {d: now.get(d, 0) for d in changed}


def _drift(ctx: RunContext, fs: FeatureSet, previous_snapshot: Optional[int], as_of: dt.date):
    """One check per numeric feature: `as_of` now against the same weekday a week before or the previous
    snapshot's latest as-of day (`quality.drift.baseline`), both read from the snapshot before this run."""
    q = ctx.cfg.quality.drift
    identifier = f"gold.{fs.name}"
    if previous_snapshot is None:
        return [checks.drift(f"{fs.name}.{name}", identifier, None, q.threshold, q.severity,
                             "no previous snapshot") for name in fs.feature_names()], []
    table = ctx.lake.table(identifier)
    previous = table.snapshot_by_id(previous_snapshot)
    if previous is None or "as_of_last" not in previous.summary.additional_properties \
            or ctx.lake.replaced_after(identifier, previous_snapshot):  # rebuilt: other columns or definitions
        return [checks.drift(f"{fs.name}.{name}", identifier, None, q.threshold, q.severity,
                             "table rebuilt: no previous snapshot of this declaration")
                for name in fs.feature_names()], []
    props = previous.summary.additional_properties
    reference = dt.date.fromisoformat(props["as_of_last"])  # the previous snapshot's last as-of day
    if q.baseline == "same_weekday":  # a weekly rhythm is not drift: a week back, as gold held it before
        week_before = as_of - dt.timedelta(days=7)
        if week_before > reference:
            return [checks.drift(f"{fs.name}.{name}", identifier, None, q.threshold, q.severity,
                                 f"no as-of day {week_before} (a week before {as_of}) before this run")
                    for name in fs.feature_names()], []
        reference = week_before

    def day(d: dt.date, snapshot: Optional[int]) -> pd.DataFrame:
        at = dt.datetime.combine(d, dt.time(), dt.timezone.utc).isoformat()
        return ctx.lake.read_arrow(identifier, EqualTo(fs.as_of_column, at), snapshot_id=snapshot).to_pandas()

    before, now = day(reference, previous_snapshot), day(as_of, None)
    results, distributions = [], []
    for name in fs.feature_names():
        if not (pd.api.types.is_numeric_dtype(before[name]) and pd.api.types.is_numeric_dtype(now[name])):
            continue
        old, new = before[name].dropna().to_numpy(float), now[name].dropna().to_numpy(float)
        if len(old) == 0 or len(new) == 0:
            results.append(checks.drift(f"{fs.name}.{name}", identifier, None, q.threshold, q.severity, "no values"))
            continue
        bins = max(2, min(q.bins, min(len(old), len(new)) // q.min_rows_per_bin))
        value, edges, old_counts, new_counts = checks.psi(old, new, bins)
        detail = f"as_of {reference} (snapshot {previous_snapshot}) vs as_of {as_of}, {bins} bins"
        results.append(checks.drift(f"{fs.name}.{name}", identifier, value, q.threshold, q.severity, detail))
        distributions.append(Distribution(f"{fs.name}.{name}", edges, old_counts, new_counts, value))
    return results, distributions


def measure(ctx: RunContext, refined: List[Refined], built: Dict[str, object], sets: List[FeatureSet],
            before: Dict[str, Optional[int]]) -> ReportData:
    q = ctx.cfg.quality
    report = ReportData(ctx.run_id, True, [])
    for item in refined:
        declared = ctx.cfg.datasets[item.dataset]
        bronze = f"bronze.{item.dataset}"
        rows = item.rows
        overrides = declared.quality.completeness
        report.null_rates[bronze] = {c: 1 - item.present[c] / rows if rows else 0.0 for c in item.columns}
        for column in item.columns:
            report.checks.append(checks.completeness(item.dataset, column, item.present[column], rows,
                                                     overrides.get(column, q.completeness.threshold),
                                                     q.completeness.severity, q.min_rows))
        change_feed = bool(declared.watermark_column)
        rebuilt = not item.bronze_runs  # a backfill re-refines what bronze holds: no files arrived
        if declared.event_time and not change_feed and not rebuilt:
            report.day_rows[item.dataset] = _day_volume(ctx, item, declared.event_time, before, report)
        else:
            units = _units(ctx, item.dataset, item.bronze_runs)
            name = f"row_count.{item.dataset}"
            history = _history(ctx, name, q.row_count.history_runs)
            report.checks.append(checks.row_count(item.dataset, rows / units if units else None,
                                                  [v for _, v in history], q.row_count.band, q.row_count.severity,
                                                  "rows past a watermark: a change feed has no usual size"
                                                  if change_feed else "a backfill: no new files" if rebuilt else None))
            report.row_counts[f"{bronze} (rows per file)"] = [(r, int(v)) for r, v in history] \
                + [(ctx.run_id, int(rows / units) if units else 0)]
        for column, bounds in declared.quality.ranges.items():
            silver = f"silver.{item.dataset}"
            got = _sum(ctx, silver, item.bronze_runs, [column], _outside_counts, column=column, low=bounds.min,
                       high=bounds.max)
            report.checks.append(checks.value_range(item.dataset, column, int(got.get("outside", 0)),
                                                    int(got.get("_rows", 0)), bounds.min, bounds.max,
                                                    bounds.max_outside_fraction, bounds.severity, q.min_rows))
        sla = declared.quality.freshness
        if sla is not None and declared.event_time:
            latest = ctx.lake.upper_bound(f"silver.{item.dataset}", declared.event_time)
            report.checks.append(checks.freshness(item.dataset, latest, ctx.cfg.cutoff_ts, sla.max_age_hours,
                                                  sla.severity))
    for fs in sets:
        result = built.get(fs.name)
        if result is None or result.last_as_of is None:  # type: ignore[attr-defined]
            continue
        drift_checks, distributions = _drift(ctx, fs, before.get(f"gold.{fs.name}"), result.last_as_of)  # type: ignore[attr-defined]
        report.checks += drift_checks
        report.distributions += distributions
    report.passed = not any(c.blocks for c in report.checks)
    return report


# --- recording, alerting, rolling back --------------------------------------------------------------
def record(ctx: RunContext, report: ReportData, run_ids: Sequence[str] = ()) -> None:
    """Append the verdict; with `run_ids` (a resumed run's chain), replace what those runs recorded."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = pa.Table.from_pylist([
        {"run_id": ctx.run_id, "checked_at": now, "gate_passed": report.passed, "name": c.name, "kind": c.kind,
         "table": c.table, "value": c.value, "threshold": c.threshold, "severity": c.severity, "passed": c.passed,
         "detail": c.detail} for c in report.checks], schema=HISTORY.schema)
    replaces = In("run_id", list(run_ids)) if len(run_ids) > 1 else None
    ctx.lake.commit_arrow(rows, HISTORY, ctx.commit_properties(), replaces)
    failed = {c.name for c in report.checks if not c.passed}
    days = [{"run_id": ctx.run_id, "recorded_at": now, "dataset": dataset, "day": day, "rows": count,
             "suspect": day in report.suspect_days.get(dataset, set()) or any(
                 n.startswith((f"completeness.{dataset}.", f"range.{dataset}.")) for n in failed),
             "gate_passed": report.passed}
            for dataset, counts in report.day_rows.items() for day, count in counts.items()]
    if days or replaces is not None:
        ctx.lake.commit_arrow(pa.Table.from_pylist(days, schema=DAY_ROWS.schema), DAY_ROWS, ctx.commit_properties(),
                              replaces)


def alert(ctx: RunContext, failed: List[CheckResult]) -> int:
    """One JSON line per failed check in the alert file; one POST per run to the webhook, if configured."""
    if not failed:
        return 0
    log = logs.get()
    sinks = ctx.cfg.quality.alerts
    events = [{"run_id": ctx.run_id, "check": c.name, "table": c.table, "value": c.value, "threshold": c.threshold,
               "severity": c.severity, "detail": c.detail} for c in failed]
    if sinks.file:
        path = Path(sinks.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            for event in events:
                handle.write(json.dumps(event) + "\n")
    if sinks.webhook_url:
        body = json.dumps({"run_id": ctx.run_id, "failed_checks": events}).encode()
        request = urllib.request.Request(sinks.webhook_url, data=body, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except Exception as exc:  # an unreachable sink must not hide the failure it reports
            log.error("alert webhook failed", url=sinks.webhook_url, error=str(exc).splitlines()[0])
    log.warning("alerts sent", count=len(events), file=sinks.file, webhook=bool(sinks.webhook_url))
    return len(events)


def roll_back(ctx: RunContext, before: Dict[str, Optional[int]]) -> List[str]:
    """Put every table back to its snapshot from before the run (drop the ones the run created)."""
    undone = []
    # downstream first: a crash half-way leaves bronze intact and silver/gold at most rolled back further
    # than bronze, which the resumed run simply refines and builds again
    downstream_first = {"gold": 0, "silver": 1, "quarantine": 1, "bronze": 2}
    for identifier, snapshot in sorted(before.items(), key=lambda kv: downstream_first.get(kv[0].split(".")[0], 0)):
        if not ctx.lake.exists(identifier):
            continue
        if snapshot is None or ctx.lake.table(identifier).snapshot_by_id(snapshot) is None:
            ctx.lake.catalog.drop_table(identifier)  # created in this run
            undone.append(identifier)
        elif ctx.lake.current_snapshot_id(identifier) != snapshot:
            ctx.lake.roll_back(identifier, snapshot)  # with its schema and properties (a rebuilt gold table)
            undone.append(identifier)
    return undone


def run_gate(ctx: RunContext, refined: List[Refined], built: Dict[str, object], sets: List[FeatureSet],
             before: Dict[str, Optional[int]], run_ids: Sequence[str] = ()) -> GateResult:
    """Measure, record, report (file + MLflow artifact), alert; on a blocking failure roll back and raise."""
    import mlflow

    log = logs.get()
    report = measure(ctx, refined, built, sets, before)
    record(ctx, report, run_ids)
    report_path = Path(ctx.cfg.data_dir) / "reports" / f"{ctx.run_id}.html"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(render_report(report), encoding="utf-8")
    mlflow.log_artifact(str(report_path), artifact_path="quality")
    mlflow.log_dict({"passed": report.passed, "checks": [c.as_dict() for c in report.checks]},
                    "quality/checks.json")
    mlflow.log_metrics({f"quality.{c.name}": float(c.value) for c in report.checks if c.value is not None})
    mlflow.log_metric("quality.gate_passed", float(report.passed))
    failed = [c for c in report.checks if not c.passed]
    for check in failed:
        log.warning("check failed", check=check.name, value=check.value, threshold=check.threshold,
                    severity=check.severity)
    sent = alert(ctx, failed)
    if report.passed:
        log.info("quality gate passed", checks=len(report.checks), warnings=len(failed))
        return GateResult(True, report.checks, report_path, sent)
    blocking = [c for c in failed if c.blocks]
    undone = roll_back(ctx, before)
    log.error("quality gate failed", failed=[c.name for c in blocking], rolled_back=undone)
    raise QualityGateError(
        f"quality gate failed ({len(blocking)} check(s)): " + "; ".join(c.summary() for c in blocking)
        + f". Nothing was published; {', '.join(undone) or 'no table'} rolled back to the previous snapshot; "
        f"report: {report_path}")

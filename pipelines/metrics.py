"""Prometheus metrics of a run and of the sources, in the text exposition format (`prometheus_client`).

What is measured (every dataset and feature set of the declarations, none known by name):
- per run (`pipeline` = run | backfill): status, exit code, failed, finish time, total and per-stage seconds,
  new data, the last success time (only a run that succeeded sets it), the quality gate (passed, checks
  failed) and the schedule the run is expected on (`metrics.schedule_seconds`, for the "no success" alert);
- per dataset: rows in (bronze rows refined), valid (silver rows added), quarantined, duplicates dropped,
  bronze rows ingested, files per outcome (ingested, rejected, already_ingested, empty, ...);
- per feature set: gold rows written, online rows (entities) written;
- per table: the time of its current snapshot (its last successful write: a failed gate rolls back);
- per source (from `pipelines.inventory`, metadata only): newest event, freshness lag (now - newest event),
  freshness SLA, last arrival, and each declared SLA met (1) or breached (0).

Where they go: `metrics.file` (the node-exporter textfile-collector convention; written atomically) and/or
`metrics.pushgateway_url` (a batch job's convention: job `metrics.job`, grouped by project). Both merge the
way the Pushgateway's POST does: a metric family written now replaces the same family, others are kept. So
a failed run leaves the last success time alone, and `medallion probe` (the sources' metrics only) leaves
the run's metrics alone. A push that fails (gateway down, timeout) is logged as a warning and counted in
the result and in `medallion_metrics_push_failures` of the next write: it never fails or blocks a run.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

SUCCEEDED = ("succeeded", "succeeded_with_rejections")
FAILED = ("failed", "gate_failed")
_push_failures = 0  # this process's failed pushes (a probe loop or a long-lived caller carries them on)

# count key suffix -> (metric, help); the key is `<dataset or feature set>.<suffix>`
DATASET_COUNTS = {
    "bronze_rows_refined": ("medallion_dataset_rows_in", "Bronze rows refined in the run (rows in)"),
    "silver_rows_added": ("medallion_dataset_rows_valid", "Valid rows added to silver in the run"),
    "quarantined": ("medallion_dataset_rows_quarantined", "Rows quarantined in the run"),
    "duplicates_dropped": ("medallion_dataset_rows_duplicates", "Duplicate rows dropped in the run"),
    "bronze_rows_ingested": ("medallion_dataset_rows_ingested", "Rows ingested into bronze in the run"),
    "bytes_ingested": ("medallion_dataset_bytes_ingested", "Bytes ingested into bronze in the run"),
}
SET_COUNTS = {
    "gold_rows_written": ("medallion_feature_set_gold_rows_written", "Gold rows written in the run"),
    "online_entities_written": ("medallion_feature_set_online_rows_written",
                                "Rows (entities) written to the online store in the run"),
    "online_check_mismatches": ("medallion_feature_set_online_mismatches",
                                "Online values that differ from gold's after publishing (the run's check)"),
}


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: Dict[str, str], value: float,
           cache: Dict[str, Gauge]) -> None:
    gauge = cache.get(name)
    if gauge is None:
        gauge = cache[name] = Gauge(name, doc, list(labels), registry=registry)
    (gauge.labels(**labels) if labels else gauge).set(value)


def _ts(iso: Optional[str]) -> Optional[float]:
    if not iso:
        return None
    value = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()


def _checks_failed(summary: Dict[str, Any]) -> Optional[int]:
    quality = summary.get("quality")
    if not quality:
        return None
    if "checks_failed" in quality:
        return int(quality["checks_failed"])
    return len(quality.get("failed_checks") or [])


def run_metrics(registry: CollectorRegistry, summary: Dict[str, Any], now: float,
                schedule_seconds: Optional[float] = None, table_times: Optional[Dict[str, float]] = None,
                cache: Optional[Dict[str, Gauge]] = None) -> None:
    """A run's metrics from its summary (a failed run's: see `failure_summary`)."""
    cache = {} if cache is None else cache
    pipeline = {"pipeline": summary.get("kind", "run")}
    status = summary.get("status", "succeeded")
    _gauge(registry, "medallion_run_status", "The last run's status (1 for its status)",
           {**pipeline, "status": status}, 1, cache)
    _gauge(registry, "medallion_run_exit_code", "The last run's exit code", pipeline,
           int(summary.get("exit_code", 0)), cache)
    _gauge(registry, "medallion_run_failed", "1 if the last run failed (an error or the quality gate)", pipeline,
           int(status in FAILED), cache)
    _gauge(registry, "medallion_run_finished_timestamp_seconds", "When the last run ended (Unix time)", pipeline,
           now, cache)
    if status in SUCCEEDED:
        _gauge(registry, "medallion_last_success_timestamp_seconds", "When the last successful run ended",
               pipeline, now, cache)
    if "new_data" in summary:
        _gauge(registry, "medallion_run_new_data", "1 if the last run wrote new data", pipeline,
               int(bool(summary["new_data"])), cache)
    if schedule_seconds:
        _gauge(registry, "medallion_run_schedule_seconds", "How often the pipeline is scheduled to succeed",
               pipeline, float(schedule_seconds), cache)
    seconds = summary.get("seconds") or {}
    for stage_name, value in seconds.items():
        _gauge(registry, "medallion_stage_duration_seconds", "Seconds each stage of the last run took",
               {**pipeline, "stage": stage_name}, float(value), cache)
    total = summary.get("duration_seconds", sum(seconds.values()) if seconds else None)
    if total is not None:
        _gauge(registry, "medallion_run_duration_seconds", "Seconds the last run took", pipeline, float(total),
               cache)
    failed = _checks_failed(summary)
    passed = bool(summary["quality"].get("passed")) if failed is not None else None
    if failed is None and status in SUCCEEDED:  # nothing to judge: no gate failed (a fixed delivery clears it)
        failed, passed = 0, True
    if failed is not None:
        _gauge(registry, "medallion_quality_gate_passed", "1 unless the last run failed the quality gate",
               pipeline, int(bool(passed)), cache)
        _gauge(registry, "medallion_quality_checks_failed", "Checks the last judged run failed (any severity)",
               pipeline, failed, cache)
    for key, value in (summary.get("counts") or {}).items():
        owner, _, suffix = key.rpartition(".")
        if suffix in DATASET_COUNTS:
            name, doc = DATASET_COUNTS[suffix]
            _gauge(registry, name, doc, {"dataset": owner}, value, cache)
        elif suffix in SET_COUNTS:
            name, doc = SET_COUNTS[suffix]
            _gauge(registry, name, doc, {"feature_set": owner}, value, cache)
    for dataset, outcomes in (summary.get("files") or {}).items():
        for outcome, count in (outcomes or {}).items():
            _gauge(registry, "medallion_dataset_files", "Files under the source's location in the last run, by "
                   "outcome (ingested, rejected, already_ingested, empty, ...)",
                   {"dataset": dataset, "outcome": outcome}, count, cache)
    for table, at in sorted((table_times or {}).items()):
        _gauge(registry, "medallion_table_last_success_timestamp_seconds",
               "Commit time of the table's current snapshot (its last successful write)", {"table": table}, at, cache)


def source_metrics(registry: CollectorRegistry, entries: List[Dict[str, Any]], now: float,
                   cache: Optional[Dict[str, Gauge]] = None,
                   freshness_sla_hours: Optional[Dict[str, float]] = None) -> None:
    """The sources' metrics from `pipelines.inventory.inventory` entries, measured at `now`."""
    cache = {} if cache is None else cache
    _gauge(registry, "medallion_source_probe_timestamp_seconds", "When the sources were last measured", {}, now,
           cache)
    for entry in entries:
        ds = {"dataset": entry["dataset"]}
        newest = _ts(entry.get("newest_event"))
        if newest is not None:
            _gauge(registry, "medallion_source_newest_event_timestamp_seconds", "The source's newest event time",
                   ds, newest, cache)
            _gauge(registry, "medallion_source_freshness_lag_seconds", "Now minus the source's newest event time",
                   ds, round(now - newest, 3), cache)
        arrival = _ts(entry.get("last_arrival"))
        if arrival is not None:
            _gauge(registry, "medallion_source_last_arrival_timestamp_seconds", "When the source last delivered",
                   ds, arrival, cache)
        hours = (freshness_sla_hours or {}).get(entry["dataset"])
        if hours is not None:
            _gauge(registry, "medallion_source_freshness_sla_seconds", "The source's freshness SLA: the newest "
                   "event at most this old", ds, float(hours) * 3600, cache)
        for sla in entry.get("slas") or []:
            if sla.get("met") is not None:
                _gauge(registry, "medallion_source_sla_met", "1 if the source meets the SLA, 0 if breached",
                       {**ds, "sla": sla["name"]}, int(bool(sla["met"])), cache)


def text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def failure_summary(kind: str, run_id: str, error: BaseException, seconds: float) -> Dict[str, Any]:
    """What a run that raised has to report: its status and exit code (and the gate's failed checks)."""
    from pipelines.errors import PipelineError

    exit_code = getattr(error, "exit_code", 2 if isinstance(error, PipelineError) else 1)
    status = {3: "gate_failed", 4: "locked"}.get(exit_code, "failed")
    summary: Dict[str, Any] = {"run_id": run_id, "kind": kind, "status": status, "exit_code": exit_code,
                               "duration_seconds": round(seconds, 3)}
    if status == "gate_failed":
        found = re.search(r"\((\d+) check\(s\)\)", str(error))
        summary["quality"] = {"passed": False, "checks_failed": int(found.group(1)) if found else 1}
    return summary


# --- where they go ---------------------------------------------------------------------------------

def _family(line: str, current: Optional[str]) -> Optional[str]:
    if line.startswith("# HELP ") or line.startswith("# TYPE "):
        return line.split()[2]
    if line and not line.startswith("#"):
        return re.split(r"[{ ]", line, 1)[0]
    return current


def merge_text(old: str, new: str, pipeline: Optional[str] = None) -> str:
    """`new`'s families replace `old`'s of the same name, except the samples of another pipeline (a
    backfill must not erase the run's last success): those stay, inside their family's block. `old`'s
    other families are kept whole."""
    names = {f.name for f in text_string_to_metric_families(new)}
    kept: List[str] = []
    others: Dict[str, List[str]] = {}  # family -> samples of other pipelines
    family = None
    for line in old.splitlines():
        family = _family(line, family)
        if family is None or not line:
            continue
        if family not in names:
            kept.append(line)
        elif pipeline and not line.startswith("#") and 'pipeline="' in line and f'pipeline="{pipeline}"' not in line:
            others.setdefault(family, []).append(line)
    out: List[str] = []
    family = None
    for line in new.splitlines():
        now = _family(line, family)
        if now != family and family in others:
            out += others.pop(family)
        family = now
        out.append(line)
    if family in others:
        out += others.pop(family)
    return "\n".join(out + kept) + "\n"


def write_file(path: str | Path, registry: CollectorRegistry, pipeline: Optional[str] = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = text(registry)
    if path.exists():
        body = merge_text(path.read_text(), body, pipeline)
    # atomic: the textfile collector must never read half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".medallion-", suffix=".prom.tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def project_name(cfg) -> str:
    return Path(cfg.project).name or "default"


def publish(cfg, registry: CollectorRegistry, warn: Callable[..., None], pipeline: Optional[str] = None) -> Dict[str, Any]:
    """Write and/or push `registry` as configured; never raises (a failure is warned about and counted).
    `pipeline` (run, backfill, probe) is part of the Pushgateway group, so one pipeline's push does not
    replace another's series of the same metric."""
    global _push_failures
    from prometheus_client import pushadd_to_gateway

    settings = cfg.metrics
    result: Dict[str, Any] = {"file": None, "pushed": None}
    if settings.pushgateway_url:
        try:
            pushadd_to_gateway(settings.pushgateway_url, job=settings.job, registry=registry,
                               grouping_key={"project": project_name(cfg), **({"pipeline": pipeline} if pipeline else {})},
                               timeout=settings.timeout_seconds)
            result["pushed"] = True
        except Exception as exc:  # noqa: BLE001 - the gateway being down must never fail the run
            _push_failures += 1
            result["pushed"] = False
            warn("metrics push failed", pushgateway=settings.pushgateway_url, error=str(exc).splitlines()[0][:300],
                 push_failures=_push_failures)
    elif cfg.profile != "local" and not settings.file:
        warn("metrics: neither metrics.pushgateway_url nor metrics.file is set: no metrics were published")
    if _push_failures:  # in the file now, and in the next push of this process
        Gauge("medallion_metrics_push_failures", "Failed pushes to the Pushgateway by this process",
              registry=registry).set(_push_failures)
    if settings.file:
        try:
            write_file(settings.file, registry, pipeline)
            result["file"] = str(settings.file)
        except Exception as exc:  # noqa: BLE001 - an unreadable old file must not fail a committed run
            warn("metrics file not written", file=str(settings.file), error=str(exc))
    result["push_failures"] = _push_failures
    return result


# --- measuring ------------------------------------------------------------------------------------

def _freshness_slas(cfg) -> Dict[str, float]:
    return {name: ds.quality.freshness.max_age_hours for name, ds in cfg.datasets.items()
            if ds.quality.freshness is not None and ds.event_time}


def _sources(cfg, lake, registry, cache, now: float, warn) -> None:
    from pipelines.inventory import inventory

    try:
        entries = inventory(cfg, lake, dt.datetime.fromtimestamp(now, dt.timezone.utc))
    except Exception as exc:  # noqa: BLE001 - metrics never fail the run
        warn("metrics: sources not measured", error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))
        return
    source_metrics(registry, entries, now, cache, _freshness_slas(cfg))


def _table_times(lake, summary: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for identifier in summary.get("tables") or {}:
        table = lake.table(identifier)
        snapshot = table.current_snapshot()
        if snapshot is not None:
            out[identifier] = snapshot.timestamp_ms / 1000
    return out


def emit_run(cfg, summary: Dict[str, Any]) -> Dict[str, Any]:
    """The end of a run (succeeded or not): its metrics and the sources', written and/or pushed."""
    from pipelines import logs

    log = logs.get()
    if not cfg.metrics.enabled:
        return {"file": None, "pushed": None, "push_failures": _push_failures}
    now = time.time()
    registry, cache = CollectorRegistry(), {}
    lake = None
    try:
        from pipelines.io.lake import Lake

        lake = Lake(cfg.catalog)
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics: catalog not opened", error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))
    tables: Dict[str, float] = {}
    if lake is not None and summary.get("status") in SUCCEEDED:
        try:
            tables = _table_times(lake, summary)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: table times not read", error=str(exc)[:300])
    run_metrics(registry, summary, now, cfg.metrics.schedule_seconds if summary.get("kind") == "run" else None,
                tables, cache)
    if lake is not None:
        _sources(cfg, lake, registry, cache, now, log.warning)
    result = publish(cfg, registry, log.warning, summary.get("kind"))
    log.info("metrics published", **result)
    return result


@contextmanager
def reported(cfg, kind: str, run_id: str) -> Iterator[Callable[[Dict[str, Any]], Dict[str, Any]]]:
    """Around a run: `report(summary)` publishes a finished run's metrics (and adds `metrics` to its
    summary); a run that raises publishes its failure (status, exit code, gate) and re-raises."""
    start = time.perf_counter()

    def report(summary: Dict[str, Any]) -> Dict[str, Any]:
        summary.setdefault("duration_seconds", round(time.perf_counter() - start, 3))
        began = time.perf_counter()
        try:
            summary["metrics"] = emit_run(cfg, summary)
        except Exception as exc:  # noqa: BLE001 - the run has committed: metrics must not turn it into a failure
            from pipelines import logs

            logs.get().warning("metrics not published", error=(str(exc).splitlines() or [repr(exc)])[0][:300])
            summary["metrics"] = {"file": None, "pushed": None, "push_failures": _push_failures,
                                  "error": type(exc).__name__}
        summary["metrics"]["seconds"] = round(time.perf_counter() - began, 3)  # its cost, in the summary
        summary.pop("duration_seconds", None)
        return summary

    try:
        yield report
    except BaseException as exc:
        if isinstance(exc, Exception):  # not a Ctrl-C or a kill: those end no run (a rerun resumes it)
            try:
                emit_run(cfg, failure_summary(kind, run_id, exc, time.perf_counter() - start))
            except Exception:  # noqa: BLE001 - never hide the run's own error
                pass
        raise


def probe(cfg) -> Dict[str, Any]:
    """`medallion probe`: the sources' metrics only (no run, no lock, metadata only), written and/or pushed."""
    import structlog

    from pipelines.io.lake import open_lake

    log = structlog.get_logger("medallion.probe")
    now = time.time()
    registry, cache = CollectorRegistry(), {}
    from pipelines.inventory import inventory

    try:
        entries = inventory(cfg, open_lake(cfg.catalog), dt.datetime.fromtimestamp(now, dt.timezone.utc))
    except Exception as exc:  # noqa: BLE001 - a catalog that cannot be read is what the probe must report
        error = (str(exc).strip().splitlines() or [repr(exc)])[0][:300]
        log.warning("probe: sources not measured", error=error)
        _gauge(registry, "medallion_source_probe_success", "1 if the last probe measured the sources", {}, 0, cache)
        result = publish(cfg, registry, log.warning, "probe") if cfg.metrics.enabled else {}
        return {"probed_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(), "error": error, **result}
    _gauge(registry, "medallion_source_probe_success", "1 if the last probe measured the sources", {}, 1, cache)
    source_metrics(registry, entries, now, cache, _freshness_slas(cfg))
    result = publish(cfg, registry, log.warning, "probe") if cfg.metrics.enabled else {}
    lags = {e["dataset"]: round(now - _ts(e["newest_event"]), 3) if e.get("newest_event") else None
            for e in entries}
    return {"probed_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(), "freshness_lag_seconds": lags,
            "breached": {e["dataset"]: e["breached"] for e in entries if e["breached"]}, **result}

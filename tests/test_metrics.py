"""Prometheus metrics of a run and of the sources (pipelines/metrics.py): exact text for a known summary,
the merge that keeps what a write does not carry (a failed run keeps the last success), a failed run's
status, and a Pushgateway that is down (warned and counted, never raised). No service needed."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipelines import metrics
from pipelines.errors import PipelineError
from pipelines.quality.gate import QualityGateError

SUMMARY = {"kind": "run", "status": "succeeded_with_rejections", "exit_code": 5, "new_data": True,
           "seconds": {"plan": 0.5, "ingest": 2.25, "quality": 1.0},
           "quality": {"passed": True, "failed_checks": [{"name": "freshness.events"}]},
           "counts": {"events.bronze_rows_ingested": 110, "events.units_ingested": 3, "events.files_ingested": 3,
                      "events.bronze_rows_refined": 110, "events.silver_rows_added": 100, "events.quarantined": 7,
                      "events.duplicates_dropped": 3, "daily.gold_rows_written": 40,
                      "daily.online_entities_written": 12, "daily.online_check_mismatches": 0},
           "files": {"events": {"ingested": 3, "rejected": 1}}}
SOURCES = [{"dataset": "events", "newest_event": "1970-01-01T00:10:00+00:00", "last_arrival": "1970-01-01T00:15:00Z",
            "slas": [{"name": "freshness", "met": False}, {"name": "completeness", "met": True},
                     {"name": "validity", "met": None}], "breached": ["freshness"]},
           {"dataset": "users", "newest_event": None, "last_arrival": None, "slas": [], "breached": []}]

EXPECTED = """\
medallion_run_status{pipeline="run",status="succeeded_with_rejections"} 1.0
medallion_run_exit_code{pipeline="run"} 5.0
medallion_run_failed{pipeline="run"} 0.0
medallion_run_finished_timestamp_seconds{pipeline="run"} 1000.0
medallion_last_success_timestamp_seconds{pipeline="run"} 1000.0
medallion_run_new_data{pipeline="run"} 1.0
medallion_run_schedule_seconds{pipeline="run"} 3600.0
medallion_stage_duration_seconds{pipeline="run",stage="plan"} 0.5
medallion_stage_duration_seconds{pipeline="run",stage="ingest"} 2.25
medallion_stage_duration_seconds{pipeline="run",stage="quality"} 1.0
medallion_run_duration_seconds{pipeline="run"} 3.75
medallion_quality_gate_passed{pipeline="run"} 1.0
medallion_quality_checks_failed{pipeline="run"} 1.0
medallion_dataset_rows_ingested{dataset="events"} 110.0
medallion_dataset_rows_in{dataset="events"} 110.0
medallion_dataset_rows_valid{dataset="events"} 100.0
medallion_dataset_rows_quarantined{dataset="events"} 7.0
medallion_dataset_rows_duplicates{dataset="events"} 3.0
medallion_feature_set_gold_rows_written{feature_set="daily"} 40.0
medallion_feature_set_online_rows_written{feature_set="daily"} 12.0
medallion_feature_set_online_mismatches{feature_set="daily"} 0.0
medallion_dataset_files{dataset="events",outcome="ingested"} 3.0
medallion_dataset_files{dataset="events",outcome="rejected"} 1.0
medallion_table_last_success_timestamp_seconds{table="silver.events"} 900.5
medallion_source_probe_timestamp_seconds 1000.0
medallion_source_newest_event_timestamp_seconds{dataset="events"} 600.0
medallion_source_freshness_lag_seconds{dataset="events"} 400.0
medallion_source_last_arrival_timestamp_seconds{dataset="events"} 900.0
medallion_source_freshness_sla_seconds{dataset="events"} 360.0
medallion_source_sla_met{dataset="events",sla="freshness"} 0.0
medallion_source_sla_met{dataset="events",sla="completeness"} 1.0
"""


def _samples(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line and not line.startswith("#"))


def _known() -> str:
    registry, cache = CollectorRegistry(), {}
    metrics.run_metrics(registry, SUMMARY, 1000.0, 3600, {"silver.events": 900.5}, cache)
    metrics.source_metrics(registry, SOURCES, 1000.0, cache, {"events": 0.1})
    return metrics.text(registry)


def test_known_summary_gives_exact_lines():
    text = _known()
    assert _samples(text) == EXPECTED
    assert "# TYPE medallion_dataset_rows_quarantined gauge" in text


def _cfg(tmp_path, pushgateway=None):
    return SimpleNamespace(profile="local", project=str(tmp_path / "proj"),
                           metrics=SimpleNamespace(enabled=True, file=str(tmp_path / "metrics" / "medallion.prom"),
                                                   pushgateway_url=pushgateway, job="medallion",
                                                   timeout_seconds=0.5, schedule_seconds=None))


def test_a_failed_gate_keeps_the_last_success_and_the_sources(tmp_path):
    cfg = _cfg(tmp_path)
    registry, cache = CollectorRegistry(), {}
    metrics.run_metrics(registry, SUMMARY, 1000.0, None, {}, cache)
    metrics.source_metrics(registry, SOURCES, 1000.0, cache, {})
    metrics.publish(cfg, registry, lambda *a, **k: None)
    failed = metrics.failure_summary("run", "r2", QualityGateError("quality gate failed (2 check(s)): a; b"), 4.5)
    assert failed == {"run_id": "r2", "kind": "run", "status": "gate_failed", "exit_code": 3,
                      "duration_seconds": 4.5, "quality": {"passed": False, "checks_failed": 2}}
    registry = CollectorRegistry()
    metrics.run_metrics(registry, failed, 2000.0)
    metrics.publish(cfg, registry, lambda *a, **k: None)
    lines = _samples((tmp_path / "metrics" / "medallion.prom").read_text()).splitlines()
    assert 'medallion_run_status{pipeline="run",status="gate_failed"} 1.0' in lines
    assert not any('status="succeeded_with_rejections"' in line for line in lines)  # the family is replaced
    assert 'medallion_run_failed{pipeline="run"} 1.0' in lines
    assert 'medallion_quality_gate_passed{pipeline="run"} 0.0' in lines
    assert 'medallion_quality_checks_failed{pipeline="run"} 2.0' in lines
    assert 'medallion_run_duration_seconds{pipeline="run"} 4.5' in lines
    assert 'medallion_last_success_timestamp_seconds{pipeline="run"} 1000.0' in lines  # kept
    assert 'medallion_source_freshness_lag_seconds{dataset="events"} 400.0' in lines  # kept


def test_a_backfill_keeps_the_runs_series_of_the_same_metric(tmp_path):
    cfg = _cfg(tmp_path)
    for pipeline, at in (("run", 1000.0), ("backfill", 2000.0)):
        registry = CollectorRegistry()
        metrics.run_metrics(registry, {**SUMMARY, "kind": pipeline}, at)
        metrics.publish(cfg, registry, lambda *a, **k: None, pipeline)
    text = (tmp_path / "metrics" / "medallion.prom").read_text()
    lines = _samples(text).splitlines()
    assert 'medallion_last_success_timestamp_seconds{pipeline="run"} 1000.0' in lines
    assert 'medallion_last_success_timestamp_seconds{pipeline="backfill"} 2000.0' in lines
    # still valid exposition text: each family once, its samples together
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families)
    success = next(f for f in families if f.name == "medallion_last_success_timestamp_seconds")
    assert sorted(s.labels["pipeline"] for s in success.samples) == ["backfill", "run"]


def test_failure_statuses():
    assert metrics.failure_summary("run", "r", PipelineError("x"), 1)["status"] == "failed"
    assert metrics.failure_summary("run", "r", PipelineError("x"), 1)["exit_code"] == 2
    assert metrics.failure_summary("run", "r", RuntimeError("x"), 1)["exit_code"] == 1
    locked = type("Locked", (PipelineError,), {"exit_code": 4})("held")
    assert metrics.failure_summary("backfill", "r", locked, 1)["status"] == "locked"


def test_a_pushgateway_that_is_down_is_warned_about_and_counted(tmp_path):
    cfg = _cfg(tmp_path, pushgateway="http://127.0.0.1:9")  # discard port: nothing listens
    warnings = []
    registry = CollectorRegistry()
    metrics.run_metrics(registry, SUMMARY, 1000.0)
    before = metrics._push_failures
    result = metrics.publish(cfg, registry, lambda event, **kw: warnings.append((event, kw)))
    assert result["pushed"] is False and result["push_failures"] == before + 1
    assert result["file"] == cfg.metrics.file  # the file is still written
    assert warnings and warnings[0][0] == "metrics push failed"
    assert f"medallion_metrics_push_failures {float(before + 1)}" in (tmp_path / "metrics" / "medallion.prom").read_text()


def test_config_defaults(tmp_path):
    from pipelines.config import load_config

    local = load_config([f"data_dir={tmp_path}"])
    assert local.metrics.file == f"{tmp_path}/metrics/medallion.prom" and local.metrics.pushgateway_url is None
    assert local.metrics.job == "medallion"


DEPLOY = __import__("pathlib").Path(__file__).resolve().parents[1] / "deploy"


def _tool(name: str):
    import shutil

    import subprocess

    if shutil.which(name) is None:  # installed as the prod tests' stack is started: never skipped
        installed = subprocess.run([str(DEPLOY.parent / "scripts" / "monitoring_stack.sh"), "install"],
                                   capture_output=True, text=True)
        assert installed.returncode == 0, installed.stderr[-2000:]
    path = shutil.which(name)
    assert path is not None, f"{name} not on PATH after scripts/monitoring_stack.sh install"
    return path


def test_alert_rules_fire_as_specified():
    """deploy/prometheus/rules_test.yml: freshness, no success within the schedule, quarantine rate."""
    import subprocess

    out = subprocess.run([_tool("promtool"), "test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_config_is_valid():
    import subprocess

    out = subprocess.run([_tool("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 receivers" in out.stdout

"""The quality gate on real runs: three bad batches each fail with the named check, nothing is published,
every table is back at its previous snapshot, each failure is one alert line, and the report is in MLflow."""

from __future__ import annotations

import gc
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from pyiceberg.catalog import load_catalog

from tests.conftest import run_small_sample, small_config

pytestmark = pytest.mark.e2e
NEXT_DAY = "cutoff=2026-01-22T00:00:00Z"  # the bad batches are the events of 2026-01-21


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_session):
    cfg, summary = run_small_sample(tmp_path_factory.mktemp("gate"))
    assert summary["quality"]["passed"]
    folder = Path(cfg.sample['output_dir']) / "transactions"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".parquet"))
    return {"cfg": cfg, "summary": summary, "folder": folder, "base_rows_per_file":
            summary["counts"]["transactions.bronze_rows_ingested"] / len(files)}


def _next_day(base) -> pd.DataFrame:
    """A plausible 2026-01-21: the rows of 2026-01-19 (a CSV day), two days later, with new ids."""
    day = pd.read_csv(base["folder"] / "2026-01-19.csv", dtype=str, keep_default_na=False)
    day["tx_id"] = "b" + day["tx_id"]
    day["ts"] = day["ts"].str.replace("2026-01-19", "2026-01-21")
    return day


def _state(base):
    from features.registry import feature_set
    from serving.publish import online_values, open_store

    cfg = base["cfg"]
    summary = base["summary"]
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    snapshots = {i: catalog.load_table(i).current_snapshot().snapshot_id for i in summary["tables"]}
    store = open_store(cfg)
    online = {name: online_values(store, feature_set(name), list(range(1, 41)) if name == "merchant_activity"
                                  else list(range(1, 151))).to_dict("list")
              for name in ("user_spend_daily", "merchant_activity")}
    return snapshots, online


def _alerts(base):
    path = Path(base["cfg"].quality.alerts.file)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fails(base, day: pd.DataFrame, expected: set, *overrides: str):
    from pipelines.quality.gate import QualityGateError
    from pipelines.run import run

    before, alerts_before, failed_before = _state(base), _alerts(base), _failed_runs(base)
    path = base["folder"] / "2026-01-21.csv"
    day.to_csv(path, index=False)
    try:
        with pytest.raises(QualityGateError) as stopped:
            run(small_config(base["cfg"].data_dir, NEXT_DAY, *overrides))
    finally:
        path.unlink()
    message = str(stopped.value)
    assert gc.get_freeze_count() == 0  # a stopped run leaves nothing frozen (pipelines.run)
    failed = {c["check"] for c in _alerts(base)[len(alerts_before):] if c["severity"] == "fail"}
    assert expected <= failed, (expected, failed, message)
    assert all(name in message for name in failed)
    assert _state(base) == before  # same snapshots everywhere, online values unchanged
    new_alerts = _alerts(base)[len(alerts_before):]
    assert len(new_alerts) == len({a["check"] for a in new_alerts})  # one line per failed check
    # the stopped run is FAILED in MLflow, with its check results
    (failed_run,) = [r for r in _failed_runs(base).values() if r.info.run_id not in failed_before]
    assert failed_run.data.metrics["quality.gate_passed"] == 0.0
    client = mlflow_client(base)
    assert {a.path for a in client.list_artifacts(failed_run.info.run_id, "quality")} >= {"quality/checks.json"}
    return message, new_alerts


def mlflow_client(base):
    import mlflow

    return mlflow.tracking.MlflowClient(base["cfg"].tracking.tracking_uri)


def _failed_runs(base) -> dict:
    """The pipeline's FAILED MLflow runs by run id."""
    client = mlflow_client(base)
    experiment = client.get_experiment_by_name(base["cfg"].tracking.experiment)
    if experiment is None:
        return {}
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")}


def test_ten_percent_null_amounts_fail_completeness(base):
    day = _next_day(base)
    day.loc[day.index % 10 == 0, "amount"] = ""
    present = int((day["amount"] != "").sum())
    message, alerts = _fails(base, day, {"completeness.transactions.amount"})
    (alert,) = [a for a in alerts if a["check"] == "completeness.transactions.amount"]
    assert alert["value"] == present / len(day) and alert["threshold"] == ">= 0.95"
    assert f"completeness.transactions.amount={present / len(day):.6g} (threshold >= 0.95)" in message


class _Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        _Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_):
        pass


def _silver_ids_by_day(base) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    summary = base["summary"]
    table = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"]).load_table(
        "silver.transactions").scan(selected_fields=("tx_id", "ts")).to_arrow()
    days = pc.cast(table.column("ts"), pa.date32()).to_pylist()
    by_day: dict = {}
    for tx_id, day in zip(table.column("tx_id").to_pylist(), days):
        by_day.setdefault(day.isoformat(), set()).add(tx_id)
    return by_day


def test_half_the_usual_rows_fail_the_row_count_and_alert_the_webhook(base):
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    day = _next_day(base).iloc[::2]
    try:  # two earlier Wednesdays (14 and 7 January) are enough to judge by here
        message, alerts = _fails(base, day, {"row_count.transactions"},
                                 f"quality.alerts.webhook_url=http://127.0.0.1:{server.server_port}/hook",
                                 "quality.row_count.min_baseline_days=2")
    finally:
        server.shutdown()
    (posted,) = _Webhook.received
    assert posted["failed_checks"] == alerts
    (alert,) = [a for a in alerts if a["check"] == "row_count.transactions"]
    # the day's rows in silver: those whose original row (2026-01-19) reached silver, once per id
    by_day = _silver_ids_by_day(base)
    assert alert["value"] == len({t for t in day["tx_id"] if t[1:] in by_day["2026-01-19"]})
    usual = (len(by_day["2026-01-14"]) + len(by_day["2026-01-07"])) / 2
    assert alert["threshold"] == (f"in [{usual * 0.7:.6g}, {usual * 1.3:.6g}] (median {usual:.6g} of 2 same "
                                  "weekdays +-30%, 2026-01-21)")


def test_amounts_at_a_hundred_times_the_scale_fail_range_and_drift(base):
    day = _next_day(base)
    numeric = pd.to_numeric(day["amount"], errors="coerce")
    day["amount"] = [f"{v * 100:.2f}" if pd.notna(v) else raw for v, raw in zip(numeric, day["amount"])]
    _fails(base, day, {"range.transactions.amount", "drift.user_spend_daily.spend_7d"})


def test_drift_against_the_same_weekday_reads_the_as_of_day_a_week_before(base):
    # a plausible day, but the 30-day windows over 20 days of history are still filling: a week's growth
    # reads as drift where a day's does not (the default baseline, previous snapshot, passes this day)
    message, alerts = _fails(base, _next_day(base), {"drift.user_spend_daily.spend_30d"},
                             "quality.drift.baseline=same_weekday")
    (alert,) = [a for a in alerts if a["check"] == "drift.user_spend_daily.spend_30d"]
    week_before, now = alert["detail"].split(" vs ")
    assert week_before.startswith("as_of 2026-01-15 (snapshot ") and now.startswith("as_of 2026-01-22, ")


def test_a_good_day_passes_and_the_report_is_in_mlflow(base):
    from pipelines.run import run

    (base["folder"] / "2026-01-21.csv").write_text(_next_day(base).to_csv(index=False))
    summary = run(small_config(base["cfg"].data_dir, NEXT_DAY))
    assert summary["quality"]["passed"] and summary["counts"]["user_spend_daily.online_entities_written"] > 0
    report = Path(summary["quality"]["report"]).read_text()
    for title in ("Null rates: bronze.transactions", "Row counts: silver.transactions (rows per event day)",
                  "Distribution: user_spend_daily.spend_7d", "Distribution: merchant_activity.revenue_7d"):
        assert f"<title>{title}</title>" in report
    checks = {c["name"]: c for c in json.loads(
        mlflow.artifacts.load_text(f"runs:/{summary['mlflow']['run_id']}/quality/checks.json"))["checks"]}
    assert checks["completeness.transactions.amount"]["passed"]
    assert f"{checks['completeness.transactions.amount']['value']:.6g}" in report
    assert f"{checks['drift.user_spend_daily.spend_7d']['value']:.4f}" in report
    client = mlflow.tracking.MlflowClient(base["cfg"].tracking.tracking_uri)
    run_info = client.get_run(summary["mlflow"]["run_id"])
    assert run_info.data.metrics["quality.gate_passed"] == 1.0
    assert {a.path for a in client.list_artifacts(run_info.info.run_id, "quality")} == {
        "quality/checks.json", f"quality/{Path(summary['quality']['report']).name}"}

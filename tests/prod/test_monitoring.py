"""Alerts end to end on real servers: runs and `medallion probe` push to a Pushgateway, Prometheus scrapes it
and evaluates deploy/prometheus/rules.yml, Alertmanager (deploy/alertmanager/alertmanager.yml) delivers
to a webhook receiver listening in this test. Only the monitoring part of the stand-in stack is needed
(scripts/monitoring_stack.sh: started here if not up, stopped again afterwards); the pipeline runs are
local-profile runs of a `medallion init` project with fresh events, pushing to the stack's Pushgateway.

Each detection time (breach, or the push that shows it, to the notification's arrival) is printed, not
asserted: it depends on the intervals (1 s here; see the module's notes in the report).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import pytest

pytestmark = [pytest.mark.prod, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "scripts" / "monitoring_stack.sh"
STACK_DIR = Path(os.environ.get("MEDALLION_STACK_DIR", "/tmp/medallion-stack"))
SCHEDULE_SECONDS = 25.0


class Receiver:
    """A webhook, Slack and PagerDuty Events v2 endpoint in one: every POST kept with its arrival time."""

    def __init__(self, port: int):
        self.received: List[Dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    payload = {"raw": body.decode(errors="replace")}
                receiver.received.append({"at": time.time(), "path": self.path, "payload": payload})
                self.send_response(200 if not self.path.startswith("/pagerduty") else 202)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success", "message": "Event processed"}' if
                                 self.path.startswith("/pagerduty") else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def webhook_alerts(self, alertname: str, project: str, status: str = "firing") -> List[Dict]:
        """(arrival, alert) of each alert in a generic-webhook notification."""
        out = []
        for item in self.received:
            if item["path"] != "/webhook":
                continue
            for alert in item["payload"].get("alerts", []):
                labels = alert.get("labels", {})
                if labels.get("alertname") == alertname and labels.get("project") == project \
                        and alert.get("status") == status:
                    out.append({"at": item["at"], **alert})
        return out

    def wait_for(self, alertname: str, project: str, after: float = 0.0) -> Dict:
        """The first such alert arriving after `after` (epoch seconds), once it has arrived (no deadline:
        how long detection takes is measured and printed, not asserted; an alert that never comes leaves
        the test waiting, visibly)."""
        while True:
            found = [a for a in self.webhook_alerts(alertname, project) if a["at"] > after]
            if found:
                return found[0]
            time.sleep(0.1)


@pytest.fixture(scope="module")
def monitoring():
    status = subprocess.run([str(MONITORING), "status"], capture_output=True, text=True)
    started_here = status.returncode != 0
    if started_here:
        up = subprocess.run([str(MONITORING), "up"], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr[-2000:]
    env = {}
    for line in (STACK_DIR / "monitoring" / "env").read_text().splitlines():
        key, _, value = line[len("export "):].partition("=")
        env[key] = value
    receiver = Receiver(int(env["MEDALLION_ALERT_WEBHOOK_PORT"]))
    yield env, receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    if started_here:
        subprocess.run([str(MONITORING), "down"], capture_output=True, text=True)


def _orders(day: dt.datetime, rows: List[tuple]) -> str:
    lines = ["order_id,customer_id,amount,channel,ordered_at"]
    lines += [f"{oid},{customer},{amount},{channel},{at:%Y-%m-%dT%H:%M:%SZ}" for oid, customer, amount, channel, at in rows]
    return "\n".join(lines) + "\n"


class Project:
    def __init__(self, root: Path, pushgateway: str):
        from pipelines.project_template import write_project

        self.name = f"mon_{uuid.uuid4().hex[:8]}"  # the Pushgateway's `project` grouping label
        self.dir = write_project(root / self.name)
        self.pushgateway = pushgateway
        declaration = self.dir / "conf" / "dataset" / "orders.yaml"  # a declared freshness SLA (a probe
        declaration.write_text(declaration.read_text() + "  freshness: {max_age_hours: 24}\n")  # overrides it)
        shutil.rmtree(self.dir / "landing" / "orders")
        (self.dir / "landing" / "orders").mkdir()
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.newest = now - dt.timedelta(seconds=30)
        rows = [(f"o-{n}", 1 + n % 3, f"{10 + n}.50", "web" if n % 2 else "app",
                 self.newest - dt.timedelta(minutes=5 * (5 - n))) for n in range(6)]
        (self.dir / "landing" / "orders" / "first.csv").write_text(_orders(now, rows))
        self.cutoff = (now + dt.timedelta(days=2)).date().isoformat() + "T00:00:00Z"

    def overrides(self, *extra: str) -> List[str]:
        return ["--project", str(self.dir), f"cutoff={self.cutoff}", "quality.min_rows=1",
                f"metrics.pushgateway_url={self.pushgateway}", f"metrics.schedule_seconds={SCHEDULE_SECONDS}",
                "metrics.timeout_seconds=5", *extra]

    def pushed(self, metric: str) -> float:
        """A value as the last run or probe wrote (and pushed) it: the local profile's file holds the same."""
        for line in (self.dir / "data" / "metrics" / "medallion.prom").read_text().splitlines():
            if line.startswith(metric + "{") or line.startswith(metric + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{metric} not written")

    def medallion(self, command: str, *extra: str):
        return self.medallion_env({}, command, *extra)

    def medallion_env(self, variables: Dict[str, str], command: str, *extra: str):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", **variables}
        return subprocess.run([sys.executable, "-m", "pipelines", command, *self.overrides(*extra)],
                              capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def delivered(monitoring, tmp_path_factory):
    """A project whose first delivery ran successfully and pushed its metrics."""
    env, receiver = monitoring
    project = Project(tmp_path_factory.mktemp("monitoring"), env["MEDALLION_PUSHGATEWAY"])
    out = project.medallion("run")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["metrics"]["pushed"] is True, summary["metrics"]
    project.succeeded_at = project.pushed("medallion_last_success_timestamp_seconds")  # its push, not its exit
    return project, receiver, summary


def test_freshness_alert_from_a_probe_with_no_run(delivered):
    """The source stops delivering: once its newest event is older than the SLA, `medallion probe` (no run)
    pushes the lag and the freshness alert reaches the webhook."""
    project, receiver, _ = delivered
    assert not receiver.webhook_alerts("MedallionFreshnessSLABreached", project.name)
    # the SLA is breached 3 s from now: the newest event is `age` old, the SLA `age + 3 s`
    breach = time.time() + 3
    sla_hours = (breach - project.newest.timestamp()) / 3600
    time.sleep(max(0.0, breach - time.time()) + 0.5)
    probed = time.time()
    out = project.medallion("probe", f"datasets.orders.quality.freshness.max_age_hours={sla_hours}")
    pushed = time.time()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["pushed"] is True and result["breached"] == {"orders": ["freshness"]}, result
    alert = receiver.wait_for("MedallionFreshnessSLABreached", project.name)
    assert alert["labels"]["dataset"] == "orders" and alert["labels"]["job"] == "medallion"
    print(f"\nfreshness: breach -> webhook {alert['at'] - breach:.1f} s; probe start -> webhook "
          f"{alert['at'] - probed:.1f} s; probe's push done -> webhook {alert['at'] - pushed:.1f} s "
          f"(the probe itself took {pushed - probed:.1f} s)")
    # the other receivers got the page too (PagerDuty Events v2 and Slack-compatible payloads)
    deadline = time.time() + 10
    while time.time() < deadline and not {"/slack", "/pagerduty/v2/enqueue"} <= {r["path"] for r in receiver.received}:
        time.sleep(0.1)
    pagerduty = [r["payload"] for r in receiver.received if r["path"] == "/pagerduty/v2/enqueue"]
    assert pagerduty and pagerduty[0]["routing_key"] == "stand-in-routing-key"
    assert pagerduty[0]["event_action"] == "trigger" and pagerduty[0]["dedup_key"]
    assert any("text" in r["payload"] or "attachments" in r["payload"] for r in receiver.received
               if r["path"] == "/slack")


def test_no_successful_run_within_the_schedule(delivered):
    """metrics.schedule_seconds (25 s here): a run killed mid-way (SIGKILL after its plan: no clean-up, no
    push) leaves the last success where it was, and once that is older than the schedule the alert fires."""
    project, receiver, _ = delivered
    # a fresh success first: an episode of this alert that began earlier in the module (a busy host can
    # make the earlier tests outlast the schedule) resolves, so the alert awaited below is this scenario's
    fresh = project.medallion("run")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    project.succeeded_at = project.pushed("medallion_last_success_timestamp_seconds")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    killed_file = project.dir / "landing" / "orders" / "killed.csv"
    killed_file.write_text(_orders(now, [("k-1", 1, "12.50", "web", now - dt.timedelta(minutes=1))]))
    killed = project.medallion_env({"MEDALLION_CRASH_AT": "planned:1"}, "run")
    assert killed.returncode == -9, killed.stderr[-3000:]  # killed before anything was written
    killed_file.unlink()  # (the next test's delivery is its own)
    assert project.pushed("medallion_last_success_timestamp_seconds") == project.succeeded_at
    breach = project.succeeded_at + SCHEDULE_SECONDS
    alert = receiver.wait_for("MedallionNoSuccessWithinSchedule", project.name, after=breach)
    assert alert["labels"]["pipeline"] == "run"
    print(f"\nno success within schedule: breach -> webhook {alert['at'] - breach:.1f} s "
          f"(breach = the success's push + {SCHEDULE_SECONDS:g} s)")


def test_a_failed_gate_pages_once_also_after_a_repeated_run(delivered):
    """A delivery failing the gate (a column empty: completeness) pages once; the same run repeated (the
    file is still there, judged again, failing again) does not page again within repeat_interval."""
    project, receiver, _ = delivered
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    rows = [(f"b-{n}", 1 + n % 3, f"{20 + n}.50", "NA", now - dt.timedelta(minutes=n)) for n in range(6)]
    (project.dir / "landing" / "orders" / "second.csv").write_text(_orders(now, rows))
    out = project.medallion("run")
    assert out.returncode == 3, out.stderr[-3000:]
    ended = project.pushed("medallion_run_finished_timestamp_seconds")  # the failed run's push
    assert "completeness.orders.channel" in out.stderr
    alert = receiver.wait_for("MedallionGateFailed", project.name)
    print(f"\ngate failed: the failed run's push -> webhook {alert['at'] - ended:.1f} s")
    again = project.medallion("run")
    assert again.returncode == 3, again.stderr[-3000:]
    time.sleep(10)  # several evaluation, group_wait and group_interval periods
    assert len(receiver.webhook_alerts("MedallionGateFailed", project.name)) == 1
    # a failed gate is a failed run too: inhibited, so the page is the gate's alone
    assert not receiver.webhook_alerts("MedallionRunFailed", project.name)

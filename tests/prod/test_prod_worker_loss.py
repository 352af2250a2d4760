"""A worker node dies in the middle of a prod run: the run completes with the exact result, or stops with
a one-line error and a rerun completes it exactly.

The node is killed for real (SIGKILL to its whole process group: the raylet, its worker processes and
the objects in its store vanish at once) while a task of the run is running on it, during refine.
Ray retries the lost tasks on the surviving worker node and Ray Data recomputes lost blocks; if that ever
fails, the run must stop with a one-line error and a rerun, which resumes from the committed tables,
must give the exact result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prod.conftest import ROOT, STACK, assert_gold_equals_local, summary_of

pytestmark = pytest.mark.prod


def _stage_started(data_dir: Path, stage: str) -> bool:
    for path in (data_dir / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # the line being written
                continue
            if event.get("event") == "stage started" and event.get("stage") == stage:
                return True
    return False


def _worker_node_id(address: str, n: int) -> str:
    from ray.util.state import list_nodes

    ids = [node.node_id for node in list_nodes(address=address, detail=True)
           if node.state == "ALIVE" and f"worker_node_{n}" in (node.resources_total or {})]
    assert len(ids) == 1, f"worker node {n} is not alive in the cluster"
    return ids[0]


def _job_id(address: str, driver_pid: int):
    from ray.util.state import list_jobs

    jobs = [j.job_id for j in list_jobs(address=address)
            if j.driver_info is not None and j.driver_info.pid == str(driver_pid)]
    return jobs[0] if jobs else None


def _tasks_on(address: str, job_id: str, node_id: str, state: str | None = None):
    from ray.util.state import list_tasks

    filters = [("job_id", "=", job_id), ("node_id", "=", node_id)] + ([("state", "=", state)] if state else [])
    return list_tasks(address=address, filters=filters, limit=10_000, raise_on_missing_output=False)


def test_a_worker_node_lost_mid_run(prod, stack, pipeline_run, tmp_path):
    address = stack["MEDALLION_RAY_DASHBOARD"]
    victim = _worker_node_id(address, 1)
    data_dir = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines", "run", *prod.overrides("worker_loss", data_dir)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=prod.env)
        try:
            # wait for refine (bronze is committed), then for one of the run's tasks running on the victim
            job_id, running = None, []
            while proc.poll() is None and not running:
                time.sleep(0.5)
                if not _stage_started(data_dir, "refine"):
                    continue
                job_id = job_id or _job_id(address, proc.pid)
                running = _tasks_on(address, job_id, victim, "RUNNING") if job_id else []
            assert proc.poll() is None, "the run ended before a task of it ran on worker node 1 during refine"
            kill = subprocess.run([str(STACK), "stop-worker", "1"], capture_output=True, text=True)
            assert kill.returncode == 0, kill.stderr
            stdout, _ = proc.communicate()
            err = stderr_path.read_text()
            if proc.returncode == 0:
                summary = summary_of(subprocess.CompletedProcess(proc.args, 0, stdout, err))
            else:
                # a failure must say what happened in one line, and a rerun must finish the work exactly
                assert proc.returncode == 2, err[-3000:]
                last = err.strip().splitlines()[-1]
                assert last.startswith("error: "), last
                summary = summary_of(prod.run("worker_loss", data_dir))
        finally:
            if proc.poll() is None:
                proc.kill()
            restart = subprocess.run([str(STACK), "start-worker", "1"], capture_output=True, text=True)
            assert restart.returncode == 0, restart.stderr
    assert_gold_equals_local(summary, stack, pipeline_run["summary"])
    # the node the run was using really died mid-run (it came back as a new node)
    from ray.util.state import list_nodes

    states = {n.node_id: n.state for n in list_nodes(address=address, detail=True)}
    assert states[victim] == "DEAD"
    print(f"worker node 1 killed during refine; the run {'completed' if proc.returncode == 0 else 'failed, the rerun completed'}")

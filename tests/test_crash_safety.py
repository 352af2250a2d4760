"""Crash safety: the pipeline process is killed with SIGKILL at 20 points across every stage, then rerun;
each time the result equals an uninterrupted run's. Afterwards `maintain` leaves no unreferenced data file.

Each killed run is a separate `medallion run` process (SIGKILL spares nothing: no `finally`, no atexit)
joined to the session's Ray runtime, so a run costs its work rather than a Ray start-up. The reruns that
recover, and the uninterrupted reference, run in this process (`pipelines.run.run`, what the CLI calls):
a process start-up (imports, Ray workers for a new job) costs more than the small run itself, and the
killed runs' state is all on disk. The last rerun is a `medallion run` process again.
The second test raises an error at the same 20 points instead (MEDALLION_FAIL_AT): the next plain run
completes and the tables equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pytest

from tests.conftest import SMALL, small_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (point, n): the n-th time the run passes `point` (pipelines/faults.py). Commits of a full run, in order:
# 1 bronze.transactions (Ray), 2 bronze.users (Ray), 3 quarantine.users, 4 silver.users,
# 5 quarantine.transactions (Ray), 6 silver.transactions (Ray), 7 gold.user_spend_daily (Ray),
# 8 gold.merchant_activity (Ray), 9 quality.check_results. `before_commit` of a Ray write is inside
# write_iceberg: the data files are written, the commit is not made.
CRASH_POINTS = [
    ("before_commit", 1), ("after_commit", 1), ("before_commit", 2), ("ingested", 1),
    ("before_commit", 3), ("after_commit", 3), ("before_commit", 4), ("after_commit", 4),
    ("before_commit", 5), ("after_commit", 5), ("before_commit", 6), ("refined", 1),
    ("before_commit", 7), ("after_commit", 7), ("before_commit", 8), ("built", 1),
    ("before_commit", 9), ("gated", 1), ("published_one", 1), ("tracking", 1),
]
ACCOUNTING = ("bronze_rows_ingested", "units_ingested", "bronze_rows_refined", "silver_rows_added", "quarantined",
              "duplicates_dropped")
SILVER_KEYS = {"silver.transactions": ["tx_id"], "silver.users": ["user_id"]}


def _overrides(data_dir: Path, sample_dir: Path) -> List[str]:
    # one MLflow store for all of them: a new SQLite store spends seconds creating its schema
    tracking = sample_dir.parent / "mlflow"
    return [f"data_dir={data_dir}", *SMALL, f"sample.output_dir={sample_dir}",
            f"tracking.tracking_uri=sqlite:///{tracking}/mlflow.db",
            f"tracking.artifact_location=file://{tracking}/artifacts"]


def _run(data_dir: Path, sample_dir: Path, ray_address: str, crash_at: str | None = None):
    """`medallion run` as a process of its own (killed at `crash_at` if given)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MEDALLION_CRASH_AT", None)
    if crash_at:
        env["MEDALLION_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "run", *_overrides(data_dir, sample_dir), f"ray.address={ray_address}"],
        env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)


def _run_here(data_dir: Path, sample_dir: Path) -> dict:
    """The same run in this process, on the session's Ray runtime: its summary."""
    from pipelines.config import load_config
    from pipelines.run import run

    return json.loads(json.dumps(run(load_config(_overrides(data_dir, sample_dir))), default=str))


def _summary(completed) -> dict:
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _state(data_dir: Path, sample_dir: Path) -> Dict[str, object]:
    """What must equal an uninterrupted run's: row counts of every table, key uniqueness, online values."""
    from pipelines.io.lake import Lake
    from serving import publish
    from features.registry import feature_sets

    cfg = small_config(data_dir, f"sample.output_dir={sample_dir}")
    lake = Lake(cfg.catalog)
    rows = {}
    for namespace in ("bronze", "silver", "quarantine", "gold"):
        for table in lake.catalog.list_tables(namespace):
            identifier = ".".join(table)
            rows[identifier] = lake.read_arrow(identifier).num_rows
    sets = feature_sets(cfg.features.sets)
    keys_of = {**SILVER_KEYS, **{f"gold.{fs.name}": [fs.entity.join_key, fs.as_of_column] for fs in sets}}
    duplicates = {}
    for identifier, keys in keys_of.items():
        data = lake.read_arrow(identifier, columns=keys)
        duplicates[identifier] = data.num_rows - data.group_by(keys).aggregate([]).num_rows
    store = publish.open_store(cfg)
    online = {}
    for fs in sets:
        keys = pc.unique(lake.read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key])
                         .column(fs.entity.join_key)).to_pylist()
        values = publish.online_values(store, fs, sorted(keys))
        online[fs.name] = values.sort_values(fs.entity.join_key).reset_index(drop=True).to_dict("list")
    return {"rows": rows, "duplicates": duplicates, "online": online}


def _unreferenced_data_files(data_dir: Path, sample_dir: Path) -> List[str]:
    """Parquet files under any table's location that no snapshot of the table references."""
    from pipelines.io.lake import Lake
    from pipelines.maintenance import _files_of, _fs_path, _tables

    lake = Lake(small_config(data_dir, f"sample.output_dir={sample_dir}").catalog)
    out = []
    for identifier in _tables(lake):
        table = lake.table(identifier)
        referenced = {_fs_path(f) for f in _files_of(table, {s.snapshot_id for s in table.snapshots()})}
        fs, root = pafs.FileSystem.from_uri(table.location())
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.path.endswith(".parquet") and info.path not in referenced:
                out.append(info.path)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_session):
    import ray

    from examples.sample.generate import generate

    root = tmp_path_factory.mktemp("crash")
    sample_dir = root / "sample"
    (root / "mlflow").mkdir()
    generate(small_config(root / "ref", f"sample.output_dir={sample_dir}").sample)
    address = ray.get_runtime_context().gcs_address
    summary = _run_here(root / "ref", sample_dir)
    return {"root": root, "sample": sample_dir, "address": address, "summary": summary,
            "state": _state(root / "ref", sample_dir)}


def test_sigkill_at_20_points_then_rerun_equals_an_uninterrupted_run(reference):
    from pipelines.config import load_config
    from pipelines.run import maintain

    ref_summary, ref_state = reference["summary"], reference["state"]
    assert ref_state["rows"]["silver.transactions"] > 0 and all(v == 0 for v in ref_state["duplicates"].values())
    expected_counts = {k: v for k, v in ref_summary["counts"].items() if k.split(".", 1)[1] in ACCOUNTING}

    def killed_run(point: tuple):
        crash_at = "{}:{}".format(*point)
        data_dir = reference["root"] / "crash-{}-{}".format(*point)
        return crash_at, data_dir, _run(data_dir, reference["sample"], reference["address"], crash_at)

    orphans_before_maintain = 0
    recovered = []
    # the next killed run goes on while this thread recovers and checks the last one; more at once make
    # the runs wait on each other for the session's 2 CPUs and for Ray workers of their own (a new job
    # cannot use another job's workers): on a 2-core AMD machine 2 killed runs at a time took 21 min here
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for crash_at, data_dir, killed in pool.map(killed_run, CRASH_POINTS):
            assert killed.returncode == -9, f"{crash_at}: the run was not killed there " \
                                            f"(rc {killed.returncode})\n" + killed.stderr[-2000:]
            summary = _run_here(data_dir, reference["sample"])
            recovered.append((data_dir, summary))
            assert summary["resumed"], crash_at  # the open-run record survived the kill and was taken over
            assert summary["gold_digests"] == ref_summary["gold_digests"], crash_at
            counts = {k: v for k, v in summary["counts"].items() if k in expected_counts}
            assert counts == expected_counts, crash_at
            assert _state(data_dir, reference["sample"]) == ref_state, crash_at
            # maintenance removes what the killed attempt left behind, and changes no content
            orphans_before_maintain += len(_unreferenced_data_files(data_dir, reference["sample"]))
            maintain(load_config([f"data_dir={data_dir}", *SMALL, f"sample.output_dir={reference['sample']}",
                                  "retention.orphan_min_age_hours=0"]))
            assert _unreferenced_data_files(data_dir, reference["sample"]) == [], crash_at
            assert _state(data_dir, reference["sample"]) == ref_state, crash_at
    finally:  # a failure is reported now, not after the killed runs still queued
        pool.shutdown(cancel_futures=True)
    assert orphans_before_maintain > 0  # killed writes did leave files behind: the clean-up was exercised

    # a further rerun after recovery, as a `medallion run` process, finds nothing to do and changes nothing
    data_dir, summary = recovered[0]
    again = _summary(_run(data_dir, reference["sample"], reference["address"]))
    assert again["new_data"] is False and not again["resumed"]
    assert {k: v["rows"] for k, v in again["tables"].items()} == {k: v["rows"] for k, v in summary["tables"].items()}


def test_an_error_at_each_of_the_20_points_then_a_plain_run_equals_an_uninterrupted_run(reference, monkeypatch):
    """The same points, an error instead of a kill (what a storage outage or a failing service does: the run
    ends with one line, its `finally` blocks run, the open-run record stays): the next plain run resumes it."""
    from pipelines import faults

    ref_summary, ref_state = reference["summary"], reference["state"]
    expected_counts = {k: v for k, v in ref_summary["counts"].items() if k.split(".", 1)[1] in ACCOUNTING}
    for point in CRASH_POINTS:
        fail_at = "{}:{}".format(*point)
        data_dir = reference["root"] / "fail-{}-{}".format(*point)
        monkeypatch.setenv(faults.FAIL_ENV, fail_at)
        with pytest.raises(faults.InjectedFault, match=f"^injected fault at {fail_at} "):
            _run_here(data_dir, reference["sample"])
        monkeypatch.delenv(faults.FAIL_ENV)
        summary = _run_here(data_dir, reference["sample"])
        assert summary["resumed"], fail_at
        assert summary["gold_digests"] == ref_summary["gold_digests"], fail_at
        assert {k: v for k, v in summary["counts"].items() if k in expected_counts} == expected_counts, fail_at
        assert _state(data_dir, reference["sample"]) == ref_state, fail_at

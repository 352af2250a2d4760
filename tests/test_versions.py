"""Finding versions (serving/versions.py; `medallion versions`, `runs`, `lineage`) on three real runs of the
small standard case in a folder of its own: a first run over half the days, a second over the next quarter,
and a third whose quality gate fails (its snapshots rolled back). Every expectation is computed here from
pyiceberg, pyarrow and MLflow directly; datasets and feature sets come from the config and declarations."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any, Dict, List

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import SMALL, small_config

pytestmark = pytest.mark.e2e
UTC = dt.timezone.utc
LAYERS = ("bronze", "silver", "quarantine", "gold", "quality")


@pytest.fixture(scope="module")
def history(tmp_path_factory, ray_session):
    """Three runs on one catalog: days [0, d/2), [d/2, 3d/4) (both pass), [3d/4, d) (the gate fails)."""
    from examples.sample.generate import generate
    from pipelines.quality.gate import QualityGateError
    from pipelines.run import run

    data_dir = tmp_path_factory.mktemp("versions")
    base = small_config(data_dir)
    start, days = dt.date.fromisoformat(str(base.sample["start_date"])), int(base.sample["days"])
    cuts = [0, days // 2, days * 3 // 4, days]

    def deliver(part: int, *extra: str):
        cfg = small_config(data_dir, f"cutoff={start + dt.timedelta(days=cuts[part + 1])}T00:00:00Z", *extra)
        generate(cfg.sample, days=list(range(cuts[part], cuts[part + 1])))
        return cfg

    summaries = [run(deliver(0))]
    # windows longer than the history are still filling: their growth is no drift to stop on
    summaries.append(run(deliver(1, "quality.drift.severity=warn")))
    with pytest.raises(QualityGateError) as failed:  # no value is ever that complete: the gate fails
        run(deliver(2, "quality.completeness.threshold=1.01"))
    return {"cfg": base, "data_dir": data_dir, "summaries": summaries, "gate_failure": str(failed.value),
            "overrides": [f"data_dir={data_dir}", *SMALL]}


def _catalog(summary: Dict[str, Any]):
    from pyiceberg.catalog import load_catalog

    return load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])


def _ancestry(table) -> List[int]:
    """The current snapshot and its parents, by walking parent ids (not pyiceberg's helper)."""
    out, snapshot = [], table.current_snapshot()
    while snapshot is not None:
        out.append(snapshot.snapshot_id)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return out


def _tables(catalog) -> List[str]:
    names = []
    for layer in LAYERS:
        if (layer,) in catalog.list_namespaces():
            names += [".".join(t) for t in catalog.list_tables(layer)]
    return names


def _cli(capsys, *argv: str) -> Any:
    from pipelines.cli import main

    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _cli_error(capsys, *argv: str) -> str:
    from pipelines.cli import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- versions ------------------------------------------------------------------------------------------
def test_versions_are_the_snapshots_pyiceberg_lists(history, capsys):
    from serving.versions import versions

    cfg, summaries = history["cfg"], history["summaries"]
    catalog = _catalog(summaries[0])
    result = versions(cfg)
    expected_tables = _tables(catalog)
    for name in cfg.datasets:  # every declared dataset's layers are there, and every feature set's gold
        assert {f"bronze.{name}", f"silver.{name}", f"quarantine.{name}"} <= set(expected_tables)
    from features.registry import feature_sets

    sets = feature_sets(cfg.features.sets, cfg.project)
    assert {f"gold.{fs.name}" for fs in sets} <= set(expected_tables)
    assert sorted(t["table"] for t in result["tables"]) == sorted(expected_tables)

    for entry in result["tables"]:
        table = catalog.load_table(entry["table"])
        in_history = set(_ancestry(table))
        snapshots = sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number), reverse=True)
        expected = [{
            "snapshot_id": s.snapshot_id, "parent_id": s.parent_snapshot_id,
            "committed_at": dt.datetime.fromtimestamp(s.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds"),
            "operation": s.summary.operation.value,
            "run_id": s.summary.additional_properties.get("run_id"),
            "rows_added": int(s.summary.additional_properties.get("added-records", 0)),
            "rows_total": int(s.summary.additional_properties["total-records"]),
            "current": s.snapshot_id == table.current_snapshot().snapshot_id,
            "in_history": s.snapshot_id in in_history,
        } for s in snapshots]
        got = [{k: row[k] for k in expected[0]} for row in entry["snapshots"]]
        assert got == expected, entry["table"]
        assert entry["current_snapshot_id"] == table.current_snapshot().snapshot_id

    # what each run wrote: the runs' own summaries name the same snapshots
    by_table = {t["table"]: t["snapshots"] for t in result["tables"]}
    for summary in summaries:
        for identifier, snapshot_id in summary["tables_written"].items():
            row = next(r for r in by_table[identifier] if r["snapshot_id"] == snapshot_id)
            assert row["run_id"] == summary["run_id"] and row["in_history"]
    # the failed run's writes are listed, out of the history: gold holds one snapshot per run
    for fs in sets:
        rows = by_table[f"gold.{fs.name}"]
        assert [r["in_history"] for r in rows] == [False, True, True]
        assert [r["run_id"] for r in rows[1:]] == [summaries[1]["run_id"], summaries[0]["run_id"]]
        assert rows[1]["current"] and rows[1]["rows_total"] == summaries[1]["tables"][f"gold.{fs.name}"]["rows"]

    # one table, a bare name (every layer of it), the CLI's JSON and its table for people
    gold_id = f"gold.{sets[0].name}"
    assert versions(cfg, gold_id)["tables"] == [t for t in result["tables"] if t["table"] == gold_id]
    dataset = next(iter(cfg.datasets))
    assert [t["table"] for t in versions(cfg, dataset)["tables"]] == \
        [f"{layer}.{dataset}" for layer in ("bronze", "silver", "quarantine")]
    assert json.loads(_cli(capsys, "versions", "--json", *history["overrides"])) == json.loads(json.dumps(result))
    text = _cli(capsys, "versions", "--table", gold_id, *history["overrides"]).splitlines()
    assert text[0].split() == ["TABLE", "SNAPSHOT", "COMMITTED", "(UTC)", "OPERATION", "RUN", "ADDED", "TOTAL", "NOTE"]
    assert [line.split()[1] for line in text[1:]] == [str(r["snapshot_id"]) for r in by_table[gold_id]]
    assert "rolled back" in text[1] and "current" in text[2]
    err = _cli_error(capsys, "versions", "--table", "gold.no_such_table", *history["overrides"])
    assert "unknown table 'gold.no_such_table'" in err and gold_id in err


# --- runs ----------------------------------------------------------------------------------------------
def test_runs_list_every_run_with_its_status_and_snapshots(history, capsys):
    from mlflow.tracking import MlflowClient

    from serving.versions import runs

    cfg, summaries = history["cfg"], history["summaries"]
    catalog = _catalog(summaries[0])
    wrote: Dict[str, Dict[str, List[int]]] = {}
    rolled_back: Dict[str, Dict[str, List[int]]] = {}
    for identifier in _tables(catalog):
        table = catalog.load_table(identifier)
        in_history = set(_ancestry(table))
        for s in sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number)):
            run_id = s.summary.additional_properties["run_id"]
            wrote.setdefault(run_id, {}).setdefault(identifier, []).append(s.snapshot_id)
            if s.snapshot_id not in in_history:
                rolled_back.setdefault(run_id, {}).setdefault(identifier, []).append(s.snapshot_id)
    assert len(wrote) == 3 and {s["run_id"] for s in summaries} < set(wrote)
    failed_run = next(r for r in wrote if r not in {s["run_id"] for s in summaries})
    assert failed_run in history["gate_failure"]  # the report's path names the run

    client = MlflowClient(cfg.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    tracked = {r.data.tags["pipeline_run_id"]: r for r in client.search_runs([experiment.experiment_id])
               if "pipeline_run_id" in r.data.tags}
    assert set(tracked) == set(wrote)

    result = runs(cfg)
    assert [r["run_id"] for r in result] == [failed_run, summaries[1]["run_id"], summaries[0]["run_id"]]
    by_id = {r["run_id"]: r for r in result}
    for run_id, entry in by_id.items():
        mlflow_run = tracked[run_id]
        assert entry["snapshots"] == wrote[run_id]
        assert entry["rolled_back"] == rolled_back.get(run_id, {})
        assert entry["mlflow_run_id"] == mlflow_run.info.run_id and entry["kind"] == "run"
        assert entry["started_at"] == dt.datetime.fromtimestamp(mlflow_run.info.start_time / 1000, UTC).isoformat(
            timespec="seconds")
        assert entry["duration_s"] == round((mlflow_run.info.end_time - mlflow_run.info.start_time) / 1000, 1)
    for summary in summaries:
        entry = by_id[summary["run_id"]]
        assert entry["status"] == "succeeded" and tracked[summary["run_id"]].info.status == "FINISHED"
        assert entry["rolled_back"] == {}
        assert {t: ids[-1] for t, ids in entry["snapshots"].items() if t in summary["tables_written"]} == \
            summary["tables_written"]
    failed = by_id[failed_run]
    assert failed["status"] == "gate failed" and tracked[failed_run].info.status == "FAILED"
    for name in cfg.datasets:  # what the gate rolled back: every table of the run but the quality records
        for layer in ("bronze", "silver", "quarantine"):
            if f"{layer}.{name}" in failed["snapshots"]:
                assert failed["rolled_back"][f"{layer}.{name}"] == failed["snapshots"][f"{layer}.{name}"]
    assert all(t.startswith("quality.") for t in set(failed["snapshots"]) - set(failed["rolled_back"]))

    assert json.loads(_cli(capsys, "runs", "--json", *history["overrides"])) == json.loads(json.dumps(result))
    text = _cli(capsys, "runs", *history["overrides"])
    assert text.splitlines()[0].split()[:3] == ["RUN", "KIND", "STATUS"]
    assert f"{failed_run}  run   gate failed" in text
    for summary in summaries:
        for identifier, snapshot_id in summary["tables_written"].items():
            assert f"wrote {identifier}: " in text and str(snapshot_id) in text


# --- lineage -------------------------------------------------------------------------------------------
def _sum_features(fs) -> List[tuple]:
    """(feature, column, window days, filter) of every sum over a column the set declares."""
    return [(name, agg.column, days, agg.where) for agg in fs.aggregations if agg.agg == "sum" and agg.column
            for name, days in zip(agg.feature_names(), agg.window_days())]


def _by_hand(catalog, fs, key: Any, as_of: dt.date) -> pa.Table:
    """The silver events of the entity with as_of - W days <= ts < as_of (W the longest window), filtered
    with pyarrow from the whole current silver table."""
    silver = catalog.load_table(f"silver.{fs.source_table}").scan().to_arrow()
    ts = silver.column(fs.timestamp_column)
    low = dt.datetime.combine(as_of - dt.timedelta(days=fs.max_window_days()), dt.time(), UTC)
    high = dt.datetime.combine(as_of, dt.time(), UTC)
    mask = pc.and_(pc.equal(silver.column(fs.entity.join_key), key),
                   pc.and_(pc.greater_equal(ts, pa.scalar(low, ts.type)), pc.less(ts, pa.scalar(high, ts.type))))
    return silver.filter(mask)


def _check_lineage(history, capsys, fs, as_of: dt.date, writer_run: int) -> None:
    from serving.versions import lineage

    cfg, summaries = history["cfg"], history["summaries"]
    catalog = _catalog(summaries[0])
    key = fs.entity.join_key
    gold_table = catalog.load_table(f"gold.{fs.name}")
    gold = gold_table.scan().to_arrow().to_pylist()
    name, column, days, where = _sum_features(fs)[0]
    candidates = sorted((r for r in gold if r[fs.as_of_column].date() == as_of and r[name]), key=lambda r: r[key])
    assert candidates, (fs.name, as_of)
    row = candidates[len(candidates) // 2]
    entity = row[key]

    result = lineage(cfg, fs.name, f"{key}={entity}", as_of.isoformat())
    expected = _by_hand(catalog, fs, entity, as_of)
    assert expected.num_rows > 0
    got = result["events"]["rows"]
    identity = lambda r: (r["_row_hash"], r["_run_id"], r["_source_file"])  # noqa: E731
    assert sorted(map(identity, got)) == sorted(map(identity, expected.to_pylist()))
    assert len(got) == expected.num_rows
    for mine, theirs in zip(sorted(got, key=identity), sorted(expected.to_pylist(), key=identity)):
        assert mine[fs.timestamp_column] == theirs[fs.timestamp_column].isoformat()
        assert mine[key] == theirs[key]

    # each row's file and its sha256 as bronze holds them (the bronze row of the same run, file and hash)
    def bronze_sha(dataset: str) -> Dict[tuple, str]:
        bronze = catalog.load_table(f"bronze.{dataset}").scan().to_arrow()
        return {(r["_run_id"], r["_source_file"], r["_row_hash"]): r["_source_file_sha256"] for r in
                bronze.select(["_run_id", "_source_file", "_row_hash", "_source_file_sha256"]).to_pylist()}

    events_sha = bronze_sha(fs.source_table)
    for mine in got:
        assert mine["_source_file_sha256"] == events_sha[(mine["_run_id"], mine["_source_file"], mine["_row_hash"])]
    files: Dict[tuple, int] = {}
    for mine in got:
        file_key = (f"silver.{fs.source_table}", mine["_source_file"], mine["_source_file_sha256"], mine["_run_id"])
        files[file_key] = files.get(file_key, 0) + 1
    if fs.attributes:
        entity_rows = catalog.load_table(f"silver.{fs.entity_table}").scan().to_arrow()
        entity_rows = entity_rows.filter(pc.equal(entity_rows.column(key), entity)).to_pylist()
        assert [(r["_row_hash"], r["_run_id"]) for r in result["attributes"]["rows"]] == \
            [(r["_row_hash"], r["_run_id"]) for r in entity_rows]
        entity_sha = bronze_sha(fs.entity_table)
        for r in entity_rows:
            sha = entity_sha[(r["_run_id"], r["_source_file"], r["_row_hash"])]
            file_key = (f"silver.{fs.entity_table}", r["_source_file"], sha, r["_run_id"])
            files[file_key] = files.get(file_key, 0) + 1
    assert {(f["table"], f["file"], f["sha256"], f["bronze_run_id"]): f["rows"] for f in result["source_files"]} \
        == files
    assert len(result["source_files"]) == len(files)

    # every sum feature of the set: the returned rows' values over its window (and filter) add up to gold's
    for name, column, days, where in _sum_features(fs):
        low = dt.datetime.combine(as_of - dt.timedelta(days=days), dt.time(), UTC)
        values = [r[column] for r in expected.to_pylist() if r[fs.timestamp_column] >= low
                  and r[column] is not None and (where is None or str(r[where.column]) == where.value)]
        total = sum(values, Decimal(0)) if values and isinstance(values[0], Decimal) else sum(values)
        assert float(total) == row[name], (fs.name, name, entity, as_of)
        assert next(f for f in result["features"] if f["feature"] == name)["value"] == row[name]

    # the gold snapshot: current, the row written by the run that last computed this as-of day, and silver
    # read as it was then
    assert result["gold"]["snapshot_id"] == gold_table.current_snapshot().snapshot_id
    summary = summaries[writer_run]
    assert result["gold"]["written_by"]["run_id"] == summary["run_id"]
    assert result["gold"]["written_by"]["snapshot_id"] == summary["tables_written"][f"gold.{fs.name}"]
    assert result["events"]["snapshot_id"] == summary["tables"][f"silver.{fs.source_table}"]["snapshot_id"]
    assert result["gold"]["row"][name] == row[name] and result["window_days"] == fs.max_window_days()

    overrides = history["overrides"]
    argv = ["lineage", "--feature-set", fs.name, "--key", f"{key}={entity}", "--as-of", as_of.isoformat()]
    assert json.loads(_cli(capsys, *argv, "--json", *overrides)) == json.loads(json.dumps(result))
    text = _cli(capsys, *argv, *overrides)
    assert f"gold.{fs.name} row {key}={entity} as of {as_of}" in text
    assert f"{expected.num_rows} row(s)" in text and all(f["file"] in text for f in result["source_files"])


def _sets_with_sums(cfg):
    from features.registry import feature_sets

    sets = [fs for fs in feature_sets(cfg.features.sets, cfg.project) if _sum_features(fs)]
    assert sets, "no feature set declares a sum over a column"
    return sets


def test_lineage_returns_the_silver_rows_of_a_gold_row(history, capsys):
    """For a row the first run wrote (silver read as it was then) and one the second run wrote, in every set."""
    cfg, summaries = history["cfg"], history["summaries"]
    for fs in _sets_with_sums(cfg):
        first_run = summaries[0]["gold_as_of"][fs.name]
        second_run = summaries[1]["gold_as_of"][fs.name]
        _check_lineage(history, capsys, fs, dt.date.fromisoformat(first_run[1]), 0)
        _check_lineage(history, capsys, fs, dt.date.fromisoformat(second_run[1]), 1)


def test_lineage_refuses_bad_requests_in_one_line(history, capsys):
    cfg = history["cfg"]
    fs = _sets_with_sums(cfg)[0]
    key, overrides = fs.entity.join_key, history["overrides"]
    as_of = history["summaries"][0]["gold_as_of"][fs.name][1]

    def lineage(*argv: str) -> str:
        return _cli_error(capsys, "lineage", *argv, *overrides)

    assert "unknown feature set 'no_such_set'" in lineage("--feature-set", "no_such_set", "--key", f"{key}=1",
                                                          "--as-of", as_of)
    assert "<join key>=<value>" in lineage("--feature-set", fs.name, "--key", key, "--as-of", as_of)
    assert f"keyed by {key!r}" in lineage("--feature-set", fs.name, "--key", f"{key}_other=1", "--as-of", as_of)
    if fs.entity.dtype == "int64":
        assert "is not" in lineage("--feature-set", fs.name, "--key", f"{key}=abc", "--as-of", as_of)
    assert "YYYY-MM-DD" in lineage("--feature-set", fs.name, "--key", f"{key}=1", "--as-of", "2026-02-30")
    assert "has no row" in lineage("--feature-set", fs.name, "--key", f"{key}=1", "--as-of", "1999-01-01")
    assert "lineage needs" in lineage("--feature-set", fs.name, "--key", f"{key}=1")


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, never listening: a connection to it is refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_catalog_or_mlflow_server_that_does_not_answer_is_one_line(tmp_path, monkeypatch, capsys):
    """The read commands against a catalog database or an MLflow server that is down: exit 2 and one
    line naming what did not answer, not a SQLAlchemy or MLflow traceback."""
    from pipelines.cli import main

    port = _closed_port()
    monkeypatch.setenv("MEDALLION_WAREHOUSE", f"file://{tmp_path}/wh")
    monkeypatch.setenv("MEDALLION_CATALOG_URI", f"postgresql+psycopg2://nobody@127.0.0.1:{port}/catalog")
    for command in ("versions", "sources"):
        assert main([command, "catalog=postgres", f"data_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: the database did not answer: ")
        assert f'"127.0.0.1", port {port} failed: Connection refused' in err[0]

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow retries for minutes by default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    (tmp_path / "catalog.db").touch()  # the local catalog is there; MLflow is not
    assert main(["runs", "tracking=server", f"data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the MLflow server did not answer: API request to "
                                               f"http://127.0.0.1:{port}/")

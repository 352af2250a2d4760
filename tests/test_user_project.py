"""Bring your own data: a project outside the repository, with two datasets and a feature set the code has
never seen (tests/user_project.py), run by the installed `medallion` CLI, checked against an independent
oracle (the rules restated in plain Python; gold by tests/oracle.py's brute force).

Runs (each a `medallion` process, ~30-60 s): one project through its life (first run, a new batch, a run
with nothing new, two identical backfills), and a fresh copy killed mid-run and resumed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import pytest

from tests.user_project import (CUTOFF, ExpectedSilver, Project, add_batch, build_project, expected_entities,
                                expected_gold, expected_silver, is_missing, new_project, write_file)

MEDALLION = Path(sys.executable).parent / "medallion"
ACCOUNTING = ("bronze_rows_refined", "silver_rows_added", "quarantined", "duplicates_dropped")
LAYER_NAMESPACES = ("bronze", "silver", "quarantine", "gold")
USER_TABLES = {"bronze.readings", "bronze.sensors", "silver.readings", "silver.sensors", "quarantine.readings",
               "quarantine.sensors", "gold.sensor_daily"}
SAMPLE_NAMES = {"transactions", "users", "user_spend_daily", "merchant_activity"}
READ = ("gold.sensor_daily", "silver.readings", "silver.sensors", "quarantine.readings", "quarantine.sensors")
BACKFILL = ("2026-03-02", "2026-03-05")  # event days [start, end): the re-delivered key and the late event
CRASH_AT = "before_commit:3"  # inside the 3rd Iceberg commit (pipelines/faults.py): mid-run, some layers done
UTC = dt.timezone.utc


# ------------------------------------------------------------------------------------------- helpers
def medallion(project: Project, command: str, *overrides: str, crash_at: Optional[str] = None):
    """The installed CLI as a process of its own, run from the project directory (outside the repo)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
    env.setdefault("PIPELINE_PII_KEY", "test-only-pii-key")
    for name in ("MEDALLION_CRASH_AT", "MEDALLION_PROJECT", "PIPELINE_DATA_DIR"):
        env.pop(name, None)
    if crash_at:
        env["MEDALLION_CRASH_AT"] = crash_at
    return subprocess.run([str(MEDALLION), command, "--project", str(project.root),
                           f"data_dir={project.data_dir}", *overrides],
                          env=env, cwd=project.root, capture_output=True, text=True, timeout=1500)


def summary_of(completed: subprocess.CompletedProcess) -> dict:
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stderr[-4000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


def read_state(catalog_info: dict) -> dict:
    """What the catalog holds now: every table's identifier and current snapshot, and the rows of READ."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.transforms import DayTransform

    catalog = load_catalog(catalog_info["name"], **catalog_info["properties"])
    snapshots = {}
    for namespace in catalog.list_namespaces():
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            snapshot = table.current_snapshot()
            snapshots[".".join(identifier)] = snapshot.snapshot_id if snapshot else None
    state = {"snapshots": snapshots}
    for identifier in READ:
        arrow = catalog.load_table(identifier).scan().to_arrow()
        state[identifier] = {"columns": arrow.schema.names, "rows": arrow.to_pylist()}
    silver = catalog.load_table("silver.readings")
    source = silver.schema().find_field("reading_time").field_id
    state["silver_day_partitioned"] = any(isinstance(f.transform, DayTransform) and f.source_id == source
                                          for f in silver.spec().fields)
    return state


def _null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT or (
        not isinstance(value, (str, bytes)) and pd.api.types.is_scalar(value) and pd.isna(value))


def _close(got: float, want: float) -> bool:
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)


def _utc(value) -> dt.datetime:
    value = value.to_pydatetime() if isinstance(value, pd.Timestamp) else value
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def assert_gold(state: dict, project: Project, upto_batch: Optional[int] = None) -> None:
    """Gold equals the oracle row for row: keys and as_of exactly, floats to 1e-9 relative, ints exactly,
    strings exactly, nulls as nulls; columns: join key, as_of, then the features in declaration order."""
    fs = project.feature_set()
    key, as_of = fs.entity.join_key, fs.as_of_column
    table = state[f"gold.{fs.name}"]
    assert table["columns"] == [key, as_of, *fs.feature_names()]
    got = sorted(table["rows"], key=lambda r: (r[key], _utc(r[as_of])))
    want = expected_gold(project, fs, upto_batch).to_dict("records")
    got_keys, want_keys = [(r[key], _utc(r[as_of])) for r in got], [(r[key], _utc(r[as_of])) for r in want]
    assert got_keys == want_keys, (f"gold rows differ: {len(got_keys)} vs {len(want_keys)} expected; only in gold: "
                                   f"{sorted(set(got_keys) - set(want_keys))[:20]}, missing from gold: "
                                   f"{sorted(set(want_keys) - set(got_keys))[:20]}")
    dtypes = fs.feature_dtypes()
    problems = []
    for g, w in zip(got, want):
        for name, dtype in dtypes.items():
            a, b = g[name], w[name]
            if _null(b):
                ok = _null(a)
            elif _null(a):
                ok = False
            elif dtype == "float64":
                ok = _close(a, b)
            elif dtype == "int64":
                ok = float(b).is_integer() and isinstance(a, int) and a == int(b)
            else:
                ok = a == b
            if not ok:
                problems.append(f"{key}={g[key]} as_of={_utc(g[as_of]).date()} {name}: got {a!r}, want {b!r}")
    assert not problems, f"{len(problems)} gold value(s) differ from the oracle:\n" + "\n".join(problems[:40])


def _silver_tuple(row: dict) -> tuple:
    return (row["site"], row["sensor_id"], _utc(row["reading_time"]))


def assert_silver(state: dict, expected: ExpectedSilver) -> None:
    """silver.readings holds exactly the expected events, typed: one row per key, the winning copy's values."""
    got = sorted(state["silver.readings"]["rows"], key=_silver_tuple)
    want = sorted(expected.silver, key=_silver_tuple)
    got_keys, want_keys = [_silver_tuple(r) for r in got], [_silver_tuple(r) for r in want]
    assert got_keys == want_keys, (f"silver keys differ: {len(got_keys)} vs {len(want_keys)} expected; only in "
                                   f"silver: {sorted(set(got_keys) - set(want_keys))[:20]}, missing from silver: "
                                   f"{sorted(set(want_keys) - set(got_keys))[:20]}")
    problems = []
    for g, w in zip(got, want):
        if g["temperature"] is None or Decimal(str(g["temperature"])) != w["temperature"]:
            problems.append((_silver_tuple(g), "temperature", g["temperature"], w["temperature"]))
        if (w["humidity"] is None) != _null(g["humidity"]) or (
                w["humidity"] is not None and not _close(g["humidity"], w["humidity"])):
            problems.append((_silver_tuple(g), "humidity", g["humidity"], w["humidity"]))
        if (None if _null(g["status"]) else g["status"]) != w["status"]:
            problems.append((_silver_tuple(g), "status", g["status"], w["status"]))
    assert not problems, f"{len(problems)} silver value(s) differ:\n" + "\n".join(map(str, problems[:40]))


def _file_name(source_file: str) -> str:
    return str(source_file).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def quarantine_rows(state: dict, expected: ExpectedSilver, columns: List[str]) -> Counter:
    """(identity, _failed_rules) of every row of quarantine.<dataset>, matched as the oracle's identities:
    source file name and fields (a missing value in any spelling as None), or the malformed line."""
    out = Counter()
    for row in state[f"quarantine.{expected.dataset}"]["rows"]:
        file = _file_name(row["_source_file"])
        if not _null(row.get("_malformed_line")):
            identity = (file, "malformed", row["_malformed_line"])
        else:
            identity = (file, "row", tuple(None if _null(row[c]) or is_missing(str(row[c]), expected.null_tokens)
                                           else row[c] for c in columns))
        out[(identity, row["_failed_rules"])] += 1
    return out


def assert_quarantine(state: dict, project: Project, expected: ExpectedSilver) -> None:
    columns = list(project.declarations[expected.dataset]["columns"])
    got, want = quarantine_rows(state, expected, columns), expected.quarantine()
    assert got == want, ("quarantine differs from the oracle:\n  only in quarantine: "
                         f"{sorted((got - want).items())}\n  missing from quarantine: {sorted((want - got).items())}")


def assert_sensors(state: dict, project: Project, upto_batch: Optional[int] = None) -> None:
    """silver.sensors is the current state: the newest valid row of each sensor."""
    got = {r["sensor_id"]: (None if _null(r["model"]) else r["model"],
                            None if _null(r["installed_at"]) else _utc(r["installed_at"]))
           for r in state["silver.sensors"]["rows"]}
    assert len(got) == len(state["silver.sensors"]["rows"]), "a sensor twice in silver.sensors"
    want = {k: (v["model"], v["installed_at"]) for k, v in expected_entities(project, upto_batch).items()}
    assert got == want
    assert_quarantine(state, project, expected_silver(project, "sensors", upto_batch))


def assert_counts(summary: dict, expected: Dict[str, int], dataset: str = "readings") -> None:
    counts = {k: summary["counts"].get(f"{dataset}.{k}") for k in ACCOUNTING}
    assert counts == expected, (counts, expected)
    assert counts["bronze_rows_refined"] == counts["silver_rows_added"] + counts["quarantined"] + \
        counts["duplicates_dropped"]


def assert_accounting_adds_up(counts: dict, dataset: str) -> None:
    values = [counts.get(f"{dataset}.{k}") for k in ACCOUNTING]
    assert None not in values, (dataset, counts)
    assert values[0] == values[1] + values[2] + values[3], (dataset, values)


def assert_no_sample_dataset(state: dict) -> None:
    names = {identifier.split(".", 1)[1] for identifier in state["snapshots"]}
    assert not names & SAMPLE_NAMES, sorted(state["snapshots"])
    layers = {i for i in state["snapshots"] if i.split(".", 1)[0] in LAYER_NAMESPACES}
    assert layers == USER_TABLES


def _layer_snapshots(state: dict) -> dict:
    return {i: s for i, s in state["snapshots"].items() if i.split(".", 1)[0] in LAYER_NAMESPACES}


# -------------------------------------------------------------------------------- the oracle, by hand
def test_oracle_on_hand_written_rows(tmp_path):
    """The oracle against reasons, values, winners and counts worked out by hand from the rule text."""
    project = new_project(tmp_path / "hand")
    write_file(project, "readings", "a.csv", 0, [
        "north,1,2026-03-01T10:00:00Z,21.50,40.5,ok",  # 2 valid
        "north,NA,2026-03-01T10:00:00Z,21.50,40.5,ok",  # 3
        "north,2,2026-03-01T10:00:00Z,21.345,NA,NA",  # 4 three decimals
        "north,2,2026-03-01T11:00:00Z,60.01,,degraded",  # 5
        "  ,x,soon,warm,high,OK",  # 6
        "north,3,2026-03-08T00:00:00Z,-60,4.5e1,ok",  # 7 at the cutoff
        "north,1,2026-03-01",  # 8 three fields
        "north,1,2026-03-01T12:00:00+02:00,99.99,40.5,ok",  # 9 key of line 2, but invalid: quarantined
        "north,3,2026-03-07T23:30:00-01:00,10,,ok",  # 10 = 03-08T00:30Z
        "south,3,2026-03-07T23:59:59.999999Z,10,,",  # 11 valid, 1 us before the cutoff
        "south,4,2026-03-02T00:00:00Z,1e1,40,ok",  # 12 no exponent in a decimal
    ])
    write_file(project, "readings", "b.csv", 0, [
        "north,01,2026-03-01T10:00:00,22.00,41,ok",  # 2 = key of a.csv:2 (01 = 1, zone-less = UTC), other values
        '"east,annex",4,2026-03-02T00:00:00+00:00,0,NA,degraded',  # 3 valid, a comma in a quoted site
    ])
    write_file(project, "readings", "c.csv", 1, [
        "north,1,2026-03-01T10:00:00Z,23.00,42,ok",  # 2 silver holds the key from batch 0, other values
        "west,5,2026-03-03T05:00:00Z,5.5,NA,ok",  # 3 valid
        "south,4,2026-03-04T21:00:00Z,24.00,60.0,ok",  # 4 row hash b13e0c88b697914d
        "south,4,2026-03-04T23:00:00+02:00,25.00,61.0,ok",  # 5 same key, other values, same file: no winner
    ])
    write_file(project, "sensors", "s1.csv", 0, [
        "1,m-100,2025-06-01T00:00:00Z", "2,NA,", "x,m,2025-01-01T00:00:00Z", "3,m-3,2025-02-30T00:00:00Z"])
    write_file(project, "sensors", "s2.csv", 1, ["1,m-200,2025-06-01T00:00:00Z", "3,m-300,2025-07-01T00:00:00+02:00"])

    first, both = expected_silver(project, upto_batch=0), expected_silver(project)
    assert both.outcome == {
        ("a.csv", 2): "valid",
        ("a.csv", 3): "sensor_id_present",
        ("a.csv", 4): "temperature_parseable",
        ("a.csv", 5): "temperature_in_range",
        ("a.csv", 6): "site_present;sensor_id_parseable;reading_time_parseable;temperature_parseable;"
                      "humidity_parseable;status_allowed",
        ("a.csv", 7): "reading_time_not_after_cutoff",
        ("a.csv", 8): "line_well_formed",
        ("a.csv", 9): "temperature_in_range",
        ("a.csv", 10): "reading_time_not_after_cutoff",
        ("a.csv", 11): "valid",
        ("a.csv", 12): "temperature_parseable",
        ("b.csv", 2): "key_conflict",
        ("b.csv", 3): "valid",
        ("c.csv", 2): "key_conflict",
        ("c.csv", 3): "valid",
        ("c.csv", 4): "key_conflict",
        ("c.csv", 5): "key_conflict",
    }
    hashes = {(r.file, r.number): r.hash for r in both.rows}
    assert hashes[("c.csv", 4)] == "b13e0c88b697914d" and hashes[("c.csv", 5)] == "ae84e0e5ce950758"
    assert first.counts == {0: {"bronze_rows_refined": 13, "silver_rows_added": 3, "quarantined": 10,
                                "duplicates_dropped": 0}}
    assert both.counts[1] == {"bronze_rows_refined": 4, "silver_rows_added": 1, "quarantined": 3,
                              "duplicates_dropped": 0}

    def at(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)

    assert sorted(both.silver, key=_silver_tuple) == [
        {"site": "east,annex", "sensor_id": 4, "reading_time": at("2026-03-02T00:00:00"),
         "temperature": Decimal("0"), "humidity": None, "status": "degraded"},
        {"site": "north", "sensor_id": 1, "reading_time": at("2026-03-01T10:00:00"),
         "temperature": Decimal("21.50"), "humidity": 40.5, "status": "ok"},
        {"site": "south", "sensor_id": 3, "reading_time": at("2026-03-07T23:59:59.999999"),
         "temperature": Decimal("10"), "humidity": None, "status": None},
        {"site": "west", "sensor_id": 5, "reading_time": at("2026-03-03T05:00:00"),
         "temperature": Decimal("5.5"), "humidity": None, "status": "ok"},
    ]
    # quarantine identities: file + fields with every spelling of "missing" as None, or the malformed line
    assert both.quarantine()[(("a.csv", "row", ("north", "2", "2026-03-01T11:00:00Z", "60.01", None, "degraded")),
                              "temperature_in_range")] == 1
    assert both.quarantine()[(("a.csv", "malformed", "north,1,2026-03-01"), "line_well_formed")] == 1
    assert both.quarantine()[(("c.csv", "row", ("south", "4", "2026-03-04T21:00:00Z", "24.00", "60.0", "ok")),
                              "key_conflict")] == 1
    assert sum(both.quarantine().values()) == 13

    sensors = expected_silver(project, "sensors")
    assert sensors.outcome == {("s1.csv", 2): "replaced", ("s1.csv", 3): "valid", ("s1.csv", 4): "sensor_id_parseable",
                               ("s1.csv", 5): "installed_at_parseable", ("s2.csv", 2): "valid", ("s2.csv", 3): "valid"}
    assert expected_entities(project) == {1: {"model": "m-200", "installed_at": at("2025-06-01T00:00:00")},
                                          2: {"model": None, "installed_at": None},
                                          3: {"model": "m-300", "installed_at": at("2025-06-30T22:00:00")}}
    assert expected_entities(project, upto_batch=0)[1]["model"] == "m-100"

    gold = expected_gold(project).set_index(["sensor_id", "as_of"])
    assert len(gold) == 7 + 1 + 6 + 5  # sensor 1: 03-02..03-08, 3: 03-08, 4: 03-03..03-08, 5: 03-04..03-08
    day = lambda d: pd.Timestamp(f"2026-03-{d:02d}T00:00Z")  # noqa: E731
    row = gold.loc[(1, day(2))]
    assert (row["temp_sum_1d"], row["temp_max_1d"], row["readings_1d"], row["humidity_max_3d"]) == (21.5, 21.5, 1, 40.5)
    assert (row["model"], row["age_days"]) == ("m-200", 274)  # 2025-06-01 -> 2026-03-02
    row = gold.loc[(1, day(8))]  # 03-01T10:00 is in the 7-day window of 03-08 only
    assert (row["readings_1d"], row["readings_7d"], row["temp_sum_1d"], row["temp_sum_7d"]) == (0, 1, 0.0, 21.5)
    assert pd.isna(row["temp_max_1d"]) and row["temp_max_7d"] == 21.5
    row = gold.loc[(4, day(5))]  # 03-02T00:00 (east,annex; temperature 0, humidity missing); 03-04T21:00 conflicted
    assert (row["readings_3d"], row["sites_7d"], row["temp_sum_3d"], row["humidity_sum_3d"]) == (1, 1, 0.0, 0.0)
    assert pd.isna(row["model"]) and pd.isna(row["age_days"])  # sensor 4 is not in sensors
    row = gold.loc[(3, day(8))]
    assert (row["readings_1d"], row["temp_sum_1d"], row["humidity_sum_3d"], row["age_days"]) == (1, 10.0, 0.0, 251)
    assert pd.isna(row["humidity_max_3d"]) and row["model"] == "m-300"  # 2025-06-30T22:00Z -> 2026-03-08


def test_oracle_agrees_with_the_planted_dirt(tmp_path):
    """The generated project: each planted line gets the fate noted when it was written; the data covers
    every rule of the spec that the declaration uses, and rows in = silver + quarantined + duplicates."""
    project = build_project(tmp_path / "p")
    add_batch(project)
    for dataset in ("readings", "sensors"):
        expected = expected_silver(project, dataset)
        by_line = {(r.file, r.text): r for r in expected.rows}
        for planted in (p for p in project.planted if p["file"] in {f.name for f in project.files_of(dataset)}):
            row = by_line[(planted["file"], planted["line"])]
            got = expected.outcome[(row.file, row.number)]
            assert got == planted["expect"], (planted, got)
    readings = expected_silver(project)
    for counts in readings.counts.values():
        assert counts["bronze_rows_refined"] == counts["silver_rows_added"] + counts["quarantined"] + \
            counts["duplicates_dropped"]
    assert readings.counts[0]["duplicates_dropped"] >= 2 and readings.counts[1]["duplicates_dropped"] == 1
    conflicts = Counter(r.batch for r in readings.rows if r.rules == ["key_conflict"])
    assert conflicts == {0: 4, 1: 1}  # planted: 2 re-deliveries + a pair in one file; 1 re-delivery
    rules = {rule for r in readings.rows for rule in r.rules}
    assert rules == {"line_well_formed", "site_present", "sensor_id_present", "sensor_id_parseable",
                     "reading_time_present", "reading_time_parseable", "reading_time_not_after_cutoff",
                     "temperature_present", "temperature_parseable", "temperature_in_range",
                     "humidity_parseable", "status_allowed", "key_conflict"}
    # the one key written twice, differently, in the file that first delivers it: no winner, both conflicts
    pair = [r for r in readings.rows if r.file == "readings_2026-03-04.csv" and r.text.startswith("south,4,")
            and r.typed.get("reading_time") == dt.datetime(2026, 3, 4, 21, tzinfo=UTC)]
    assert len(pair) == 2
    assert [readings.outcome[(r.file, r.number)] for r in pair] == ["key_conflict", "key_conflict"]
    # the project is deterministic, and its timestamps come in every spelling the spec names
    again = build_project(tmp_path / "q")
    assert [f.lines for f in again.files] == [f.lines for f in project.files_of("readings", 0) +
                                              project.files_of("sensors", 0)]
    texts = [r.fields[2] for r in readings.rows if r.fields and not r.rules]
    assert any(t.endswith("Z") for t in texts) and any(t[-6] in "+-" for t in texts)
    assert any(len(t) in (19, 23) for t in texts)  # zone-less
    assert expected_gold(project).shape[0] > expected_gold(project, upto_batch=0).shape[0]
    assert CUTOFF == "2026-03-08T00:00:00Z" and project.cutoff == dt.datetime(2026, 3, 8, tzinfo=UTC)


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    project = build_project(tmp_path_factory.mktemp("user_project") / "sensors_project")
    summary = summary_of(medallion(project, "run"))
    return {"project": project, "summary": summary, "state": read_state(summary["catalog"])}


@pytest.fixture(scope="module")
def second_run(first_run):
    """The next delivery, then a run with nothing new."""
    project = first_run["project"]
    add_batch(project)
    summary = summary_of(medallion(project, "run"))
    state = read_state(summary["catalog"])
    third = summary_of(medallion(project, "run"))
    return {"project": project, "summary": summary, "state": state, "third": third,
            "third_state": read_state(third["catalog"])}


@pytest.fixture(scope="module")
def backfilled(second_run, first_run):
    project = second_run["project"]
    interval = [f"backfill.start={BACKFILL[0]}", f"backfill.end={BACKFILL[1]}"]
    once = summary_of(medallion(project, "backfill", *interval))
    after_once = read_state(first_run["summary"]["catalog"])
    twice = summary_of(medallion(project, "backfill", *interval))
    return {"project": project, "once": once, "twice": twice, "after_once": after_once,
            "state": read_state(first_run["summary"]["catalog"])}


def _status(summary: dict) -> str:
    """What a run's status must be, by its own row accounting (files are never rejected in this project)."""
    assert summary["rejected_files"] == [] and summary["exit_code"] == 0
    return "succeeded_with_rejections" if sum(summary["quarantined"].values()) else "succeeded"


@pytest.mark.e2e
@pytest.mark.slow
def test_first_run_of_a_new_project_equals_the_oracle(first_run):
    project, summary, state = first_run["project"], first_run["summary"], first_run["state"]
    # rows missing their key are quarantined: a run with rejections (of rows; exit code 0)
    assert summary["status"] == "succeeded_with_rejections" and summary["new_data"] is True
    assert summary["rejections"] == {"files": 0, "rows": sum(summary["quarantined"].values())}
    assert_no_sample_dataset(state)
    assert {i for i in summary["tables"] if i.split(".", 1)[0] in LAYER_NAMESPACES} == USER_TABLES
    assert state["silver_day_partitioned"]

    expected = expected_silver(project, upto_batch=0)
    assert_counts(summary, expected.counts[0])
    assert summary["quarantined"]["readings"] == expected.counts[0]["quarantined"]
    assert summary["duplicates"]["readings"] == expected.counts[0]["duplicates_dropped"]
    assert_accounting_adds_up(summary["counts"], "sensors")
    assert summary["tables"]["silver.readings"]["rows"] == len(expected.silver)
    assert summary["tables"]["quarantine.readings"]["rows"] == expected.counts[0]["quarantined"]
    assert summary["tables"]["bronze.readings"]["rows"] == expected.counts[0]["bronze_rows_refined"]

    assert_silver(state, expected)
    assert_quarantine(state, project, expected)
    assert_sensors(state, project, upto_batch=0)
    assert_gold(state, project, upto_batch=0)
    assert summary["tables"]["gold.sensor_daily"]["rows"] == len(expected_gold(project, upto_batch=0))


@pytest.mark.e2e
@pytest.mark.slow
def test_sources_of_a_new_project_with_one_sla_breached_and_one_met(first_run):
    """`medallion sources` knows the project's datasets from their declarations alone: a latency SLA of
    a millisecond is breached, a validity SLA of one half is met."""
    from pyiceberg.catalog import load_catalog

    project, summary = first_run["project"], first_run["summary"]
    entries = {e["dataset"]: e for e in summary_of(medallion(
        project, "sources", "--json", "datasets.readings.sla.latency_minutes=0.00002",
        "datasets.readings.sla.validity=0.5"))}
    assert set(entries) == {"readings", "sensors"}
    readings = entries["readings"]
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    newest = max(catalog.load_table("silver.readings").scan(selected_fields=("reading_time",)).to_arrow()
                 .column("reading_time").to_pylist())
    # completeness is breached too: the project's readings lack humidity often (its gate only warns)
    assert readings["newest_event"] == newest.isoformat() and readings["breached"] == ["latency", "completeness"]
    slas = {s["name"]: s for s in readings["slas"]}
    assert slas["completeness"]["measured"] < 0.95 and slas["completeness"]["detail"].startswith("lowest: ")
    assert slas["latency"]["measured"] > 0.00002 and slas["latency"]["since"] is not None
    valid, quarantined = summary["tables"]["silver.readings"]["rows"], summary["tables"]["quarantine.readings"]["rows"]
    assert (slas["validity"]["met"], slas["validity"]["measured"]) == (True, round(valid / (valid + quarantined), 6))
    assert [s["name"] for s in entries["sensors"]["slas"]] == ["completeness"]  # no event time: no freshness


@pytest.mark.e2e
@pytest.mark.slow
def test_a_new_batch_is_added_incrementally_and_a_rerun_finds_nothing_new(second_run):
    project, summary, state = second_run["project"], second_run["summary"], second_run["state"]
    assert summary["status"] == _status(summary) and summary["new_data"] is True
    expected = expected_silver(project)
    assert_counts(summary, expected.counts[1])  # this run's batch: the new day file
    assert summary["quarantined"]["readings"] == expected.counts[1]["quarantined"]
    assert summary["duplicates"]["readings"] == expected.counts[1]["duplicates_dropped"]
    assert_accounting_adds_up(summary["counts"], "sensors")
    assert_silver(state, expected)
    assert_quarantine(state, project, expected)
    assert_sensors(state, project)
    assert_gold(state, project)
    assert_no_sample_dataset(state)

    third = second_run["third"]
    assert third["status"] == "succeeded" and third["new_data"] is False
    assert _layer_snapshots(second_run["third_state"]) == _layer_snapshots(state)  # nothing was written
    assert {i: t["rows"] for i, t in third["tables"].items() if i in USER_TABLES} == \
        {i: t["rows"] for i, t in summary["tables"].items() if i in USER_TABLES}


@pytest.mark.e2e
@pytest.mark.slow
def test_backfill_twice_writes_once_and_gold_still_equals_the_oracle(backfilled):
    project, once, twice = backfilled["project"], backfilled["once"], backfilled["twice"]
    assert once["status"] == _status(once) and isinstance(once["tables_written"], dict)
    assert_accounting_adds_up(once["counts"], "readings")
    assert twice["status"] == _status(twice)
    assert twice["tables_written"] == {}
    assert _layer_snapshots(backfilled["state"]) == _layer_snapshots(backfilled["after_once"])
    state, expected = backfilled["state"], expected_silver(project)
    assert_silver(state, expected)
    assert_quarantine(state, project, expected)
    assert_sensors(state, project)
    assert_gold(state, project)


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_mid_run_then_resumed_equals_the_oracle(tmp_path):
    project = build_project(tmp_path / "crash_project")
    killed = medallion(project, "run", crash_at=CRASH_AT)
    assert killed.returncode != 0, f"MEDALLION_CRASH_AT={CRASH_AT} did not stop the run:\n{killed.stdout[-2000:]}"
    summary = summary_of(medallion(project, "run"))
    assert summary["status"] == _status(summary)
    expected = expected_silver(project)
    assert_counts(summary, expected.counts[0])  # the resumed run accounts for the whole batch
    assert_accounting_adds_up(summary["counts"], "sensors")
    state = read_state(summary["catalog"])
    assert_no_sample_dataset(state)
    assert_silver(state, expected)
    assert_quarantine(state, project, expected)
    assert_sensors(state, project)
    assert_gold(state, project)

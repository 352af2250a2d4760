"""Training sets (serving/training_set.py): the point-in-time join against a brute-force oracle, the
as-known-at rule, every bad-labels case as one line, and end to end on real Ray, Iceberg and MLflow: the
Iceberg path equals the pure path, and late data changes point-in-time rows but neither the rebuild of an
earlier training set nor what was served at the time."""

from __future__ import annotations

import datetime as dt
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import labels as label_checks
from serving import pit_index
from serving import pit_join as pit

UTC = dt.timezone.utc
US = dt.timedelta(microseconds=1)
BASE = dt.datetime(2026, 1, 10, tzinfo=UTC)
DAYS = 8
SPEC_FEATURES = (("n", "int64"), ("x", "float64"), ("s", "string"))


def _spec(ttl_days: int) -> pit.SetSpec:
    return pit.SetSpec("fs", "user_id", "int64", "as_of", SPEC_FEATURES, ttl_days)


# --- the oracle: a loop over labels, scanning every gold row -------------------------------------
def oracle(labels: List[Tuple[int, dt.datetime]], gold: List[tuple], ttl_days: int) -> List[tuple]:
    """Per label, the features of the row of its entity with the greatest as_of in [t - ttl, t] (ttl 0: no
    lower bound), else nulls. Straight from the definition; shares nothing with the implementation."""
    out = []
    for key, t in labels:
        best = None
        for row in gold:
            if row[0] != key or row[1] > t:
                continue
            if ttl_days and row[1] < t - dt.timedelta(days=ttl_days):
                continue
            if best is None or row[1] > best[1]:
                best = row
        out.append(tuple(best[2:]) if best else (None, None, None))
    return out


def _gold_table(rows: List[tuple]) -> pa.Table:
    return pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                     "as_of": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
                     "n": pa.array([r[2] for r in rows], pa.int64()),
                     "x": pa.array([r[3] for r in rows], pa.float64()),
                     "s": pa.array([r[4] for r in rows], pa.string())})


def _labels_table(labels: List[Tuple[int, dt.datetime]]) -> pa.Table:
    return pa.table({"user_id": pa.array([k for k, _ in labels], pa.int64()),
                     "ts": pa.array([t for _, t in labels], pa.timestamp("us", tz="UTC")),
                     "target": pa.array(range(len(labels)), pa.int64())})


midnights = st.integers(-3, DAYS + 3).map(lambda d: BASE + dt.timedelta(days=d))
label_times = st.one_of(
    midnights,  # exactly on an as-of instant
    midnights.map(lambda m: m - US),  # one microsecond before it
    st.tuples(midnights, st.integers(0, 86_400_000_000 - 1)).map(lambda p: p[0] + p[1] * US),
    st.just(BASE - dt.timedelta(days=40)),  # long before the first feature day
)
gold_instants = st.one_of(  # gold's grain is a midnight; the join takes any instant
    st.integers(0, DAYS - 1).map(lambda d: BASE + dt.timedelta(days=d)),
    st.tuples(st.integers(0, DAYS - 1), st.integers(0, 86_400_000_000 - 1)).map(
        lambda p: BASE + dt.timedelta(days=p[0]) + p[1] * US))
gold_rows = st.lists(
    st.tuples(st.integers(1, 4), gold_instants,
              st.none() | st.integers(-5, 5), st.none() | st.floats(-1e6, 1e6, allow_nan=False),
              st.none() | st.text(max_size=3)),
    unique_by=lambda r: (r[0], r[1]), max_size=25)


@st.composite
def label_lists(draw):
    base = draw(st.lists(st.tuples(st.integers(1, 6), label_times), max_size=25))  # 5, 6: unknown entities
    duplicates = draw(st.lists(st.sampled_from(base), max_size=5)) if base else []
    return draw(st.permutations(base + duplicates))


@contextmanager
def dense_limit(cells_per_row: int):
    """`match` through its dense table (a high limit) or its sorted cells (0)."""
    kept = pit.DENSE_CELLS_PER_ROW
    pit.DENSE_CELLS_PER_ROW = cells_per_row
    try:
        yield
    finally:
        pit.DENSE_CELLS_PER_ROW = kept


@pytest.mark.parametrize("cells_per_row", [10**9, 0], ids=["dense", "sorted"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gold=gold_rows, labels=label_lists(), ttl_days=st.sampled_from([0, 1, 2, 7]))
def test_point_in_time_join_equals_the_oracle(cells_per_row, gold, labels, ttl_days):
    with dense_limit(cells_per_row):
        out = pit.features_for(_labels_table(labels), "ts", _gold_table(gold), _spec(ttl_days))
    assert out.schema == _spec(ttl_days).feature_schema()
    assert [tuple(r.values()) for r in out.to_pylist()] == oracle(labels, gold, ttl_days)


def features_by_index(labels: pa.Table, gold: pa.Table, spec: pit.SetSpec) -> pa.Table:
    """`pit.features_for` through `pit_index`: gold laid out once, then each label's row looked up."""
    layout, order = pit_index.layout(gold.column("user_id").combine_chunks(), gold.column("as_of").combine_chunks())
    stored = gold.take(pa.array(order, pa.int64()))  # the rows in the layout's order, as the index keeps them
    found = pit_index.lookup(layout, labels.column("user_id").combine_chunks(), labels.column("ts").combine_chunks(),
                             spec.ttl_us)
    return pit.take_features(found, lambda positions: stored.take(pa.array(positions)), spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gold=gold_rows, labels=label_lists(), ttl_days=st.sampled_from([0, 1, 2, 7]),
       keyless=st.lists(st.tuples(st.none() | st.integers(1, 4), st.none() | gold_instants), max_size=3))
def test_the_index_join_equals_the_oracle(gold, labels, ttl_days, keyless):
    """Also with gold rows lacking a key or an as-of (they join nothing: the oracle never sees them)."""
    broken = [(k, t, 99, 99.0, "broken") for k, t in keyless if k is None or t is None]
    out = features_by_index(_labels_table(labels), _gold_table(gold + broken), _spec(ttl_days))
    assert out.schema == _spec(ttl_days).feature_schema()
    assert [tuple(r.values()) for r in out.to_pylist()] == oracle(labels, gold, ttl_days)


@pytest.mark.parametrize("way", ["dense", "sorted", "index"])
def test_a_cell_held_twice_gives_the_row_read_last(way):
    """Gold holds one row per entity and as-of; should it hold two, the later one read is joined, by
    every way of matching (so a rebuild is the same whichever way it went)."""
    day = BASE + dt.timedelta(days=1)
    gold = _gold_table([(1, day, 1, 1.0, "first"), (2, day, 2, 2.0, "other"), (1, day, 3, 3.0, "second")])
    labels = _labels_table([(1, day), (2, day + US)])
    if way == "index":
        out = features_by_index(labels, gold, _spec(1))
    else:
        with dense_limit(10**9 if way == "dense" else 0):
            out = pit.features_for(labels, "ts", gold, _spec(1))
    assert out.column("s").to_pylist() == ["second", "other"]


def test_the_index_with_string_keys_by_hand():
    """A string join key goes through a hash lookup instead of a binary search: "007" is not "7"."""
    day = BASE + dt.timedelta(days=1)
    gold = pa.table({"user_id": ["007", "7", "b"], "as_of": pa.array([day] * 3, pa.timestamp("us", tz="UTC")),
                     "n": [1, 2, 3], "x": [1.0, 2.0, 3.0], "s": ["a", "b", "c"]})
    labels = pa.table({"user_id": ["7", "007", "c", "b"],
                       "ts": pa.array([day, day, day, day - US], pa.timestamp("us", tz="UTC"))})
    spec = pit.SetSpec("fs", "user_id", "string", "as_of", SPEC_FEATURES, 1)
    assert features_by_index(labels, gold, spec).column("n").to_pylist() == [2, 1, None, None]


def test_point_in_time_boundaries_by_hand():
    day = lambda d: BASE + dt.timedelta(days=d)  # noqa: E731
    gold = [(1, day(0), 10, 1.0, "d0"), (1, day(1), 11, 2.0, "d1"), (2, day(1), 20, 3.0, "u2")]
    labels = [(1, day(1)), (1, day(1) - US), (1, day(0) - US), (1, day(3)), (1, day(2) + 3 * US), (3, day(1)),
              (1, day(1))]
    out = pit.features_for(_labels_table(labels), "ts", _gold_table(gold), _spec(1))
    assert out.column("s").to_pylist() == ["d1", "d0", None, None, None, None, "d1"]
    # ttl 1 day includes its lower end (Feast: as_of + ttl >= t): a label exactly one day after as_of
    edge = pit.features_for(_labels_table([(1, day(2))]), "ts", _gold_table(gold), _spec(1))
    assert edge.column("s").to_pylist() == ["d1"]
    unlimited = pit.features_for(_labels_table([(1, day(30))]), "ts", _gold_table(gold), _spec(0))
    assert unlimited.column("s").to_pylist() == ["d1"]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 2**62), max_size=40) | st.lists(st.integers(0, 5), max_size=40))
def test_sorted_order_is_a_stable_argsort(values):
    """Both ways `sorted_order` sorts (packed with the position when that fits in 63 bits, else numpy's
    stable argsort: the large values) give numpy's stable argsort."""
    array = np.array(values, dtype=np.int64)
    assert pit.sorted_order(array).tolist() == np.argsort(array, kind="stable").tolist()


# --- as known at ---------------------------------------------------------------------------------
def test_served_timeline_rule():
    parent = {1: None, 2: 1, 3: 2, 4: 3, 5: 3}
    run_of = {1: "r1", 2: "r2", 3: "r2", 4: "r3", 5: "r4"}
    # 2 -> 3: one run's delete and append; 4: a run whose gate rolled back to 3; 5: the next run
    log = [(1000, 1), (2000, 2), (2005, 3), (3000, 4), (3500, 3), (4000, 5)]
    assert pit.served_timeline(log, parent, run_of, 5) == [(1_000_000, 1), (2_005_000, 3), (4_000_000, 5)]
    assert pit.served_timeline(log, parent, run_of, 3) == [(1_000_000, 1), (2_005_000, 3)]
    assert pit.served_timeline(log, parent, run_of, 1) == [(1_000_000, 1)]
    # without run ids every logged snapshot stands
    assert pit.served_timeline(log[:3], parent, {}, 3) == [(1_000_000, 1), (2_000_000, 2), (2_005_000, 3)]
    line = [(1_000_000, 1), (2_005_000, 3)]
    times = pa.array([999_999, 1_000_000, 2_004_999, 2_005_000, 9_000_000], pa.timestamp("us", tz="UTC"))
    assert pit.served_ids(times, line).tolist() == [-1, 1, 1, 3, 3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots=st.lists(gold_rows, min_size=1, max_size=3), labels=label_lists(),
       offsets=st.lists(st.integers(-3, DAYS + 3), min_size=3, max_size=3, unique=True),
       ttl_days=st.sampled_from([0, 1]))
def test_as_known_at_equals_the_oracle(snapshots, labels, offsets, ttl_days):
    starts = sorted(offsets)[:len(snapshots)]
    line = [((BASE + dt.timedelta(days=d) - dt.datetime(1970, 1, 1, tzinfo=UTC)) // US, 100 + i)
            for i, d in enumerate(starts)]
    gold = {100 + i: _gold_table(rows) for i, rows in enumerate(snapshots)}
    out = pit.features_as_known_at(_labels_table(labels), "ts", line, gold, _spec(ttl_days))
    expected = []
    for key, t in labels:
        served = [i for i, d in enumerate(starts) if BASE + dt.timedelta(days=d) <= t]
        expected += oracle([(key, t)], snapshots[served[-1]], ttl_days) if served else [(None, None, None)]
    assert [tuple(r.values()) for r in out.to_pylist()] == expected


# --- labels: checks and normalization (no catalog, no Ray) -----------------------------------------
def _one_line_error(call) -> str:
    from pipelines.errors import PipelineError

    with pytest.raises(PipelineError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


KEYS = {"user_id": ("int64", "user_spend_daily")}


def test_label_checks_cast_what_is_lossless():
    table, ts = label_checks.prepare(
        pd.DataFrame({"user_id": ["42", "007"], "ts": pd.to_datetime(["2026-01-02", "2026-01-02T12:00:00.000001"],
                                                                      format="ISO8601"), "y": [1, 0]}), KEYS, None)
    assert ts == "ts"
    assert table.schema == pa.schema([("user_id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("y", pa.int64())])
    assert table.column("user_id").to_pylist() == [42, 7]
    assert table.column("ts").to_pylist() == [dt.datetime(2026, 1, 2, tzinfo=UTC),
                                              dt.datetime(2026, 1, 2, 12, 0, 0, 1, tzinfo=UTC)]
    # naive = UTC; another zone is the same instant in UTC; floats that are whole numbers are keys
    berlin = pd.DataFrame({"user_id": [42.0], "ts": [pd.Timestamp("2026-01-02T01:00:00", tz="Europe/Berlin")]})
    naive = pd.DataFrame({"user_id": [42], "ts": [pd.Timestamp("2026-01-02T00:00:00")]})
    assert label_checks.prepare(berlin, KEYS, None)[0].equals(label_checks.prepare(naive, KEYS, None)[0])
    text = pa.table({"user_id": ["42"], "when": ["2026-01-02T00:00:00Z"]})
    when = label_checks.prepare(text, KEYS, "when")[0].column("when")
    assert when.to_pylist() == [dt.datetime(2026, 1, 2, tzinfo=UTC)]
    strings = label_checks.prepare(pa.table({"k": [42], "ts": naive["ts"]}), {"k": ("string", "s")}, None)[0]
    assert strings.column("k").to_pylist() == ["42"]
    # each text value by itself: a zone on one row does not shift the zone-less (UTC) row after it
    mixed = pa.table({"user_id": ["42", "43"], "when": ["2026-01-02T00:00:00+02:00", "2026-01-02T00:00:00"]})
    assert label_checks.prepare(mixed, KEYS, "when")[0].column("when").to_pylist() == [
        dt.datetime(2026, 1, 1, 22, tzinfo=UTC), dt.datetime(2026, 1, 2, tzinfo=UTC)]
    text_ns = pa.table({"user_id": ["42"], "when": ["2026-01-02T00:00:00.000000001Z"]})
    assert _one_line_error(lambda: label_checks.prepare(text_ns, KEYS, "when")) == (
        "labels column 'when': 2026-01-02T00:00:00.000000001Z (row 0) has nanoseconds; gold is kept in "
        "microseconds, so truncate or round the label times first")


def test_each_bad_label_is_one_line_naming_the_column():
    ts = pd.to_datetime(["2026-01-02", "2026-01-03"])
    prepare = label_checks.prepare
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": ["42", "abc"], "ts": ts}), KEYS, None)) == \
        "labels column 'user_id': 'abc' (row 1) does not convert to the join key's type int64 without loss"
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1.0, 2.5], "ts": ts}), KEYS, None)) == \
        "labels column 'user_id': 2.5 (row 1) does not convert to the join key's type int64 without loss"
    assert _one_line_error(lambda: prepare(pd.DataFrame({"uid": [1, 2], "ts": ts}), KEYS, None)) == \
        "labels have no column 'user_id', the join key of feature set 'user_spend_daily' (columns: ['uid', 'ts'])"
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1, None], "ts": ts}), KEYS, None)) == \
        "labels column 'user_id' (join key) has 1 missing value(s), the first in row 1"
    ns = pd.to_datetime(["2026-01-02T00:00:00.000001000", "2026-01-02T23:59:59.999999001"], format="ISO8601")
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1, 2], "ts": ns}), KEYS, None)) == \
        ("labels column 'ts': 2026-01-02T23:59:59.999999001+00:00 (row 1) has nanoseconds; gold is kept in "
         "microseconds, so truncate or round the label times first")
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1, 2], "day": ["a", "b"]}), KEYS, None)) == \
        ("labels have no timestamp column (no column of timestamp type): name one with timestamp_column "
         "(columns: ['user_id', 'day'])")
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1, 2], "ts": ts, "seen": ts}), KEYS, None)) \
        == "labels have several timestamp columns ['ts', 'seen']: name the label time with timestamp_column"
    assert _one_line_error(lambda: prepare(pd.DataFrame({"user_id": [1, 2], "ts": ts}), KEYS, "when")) == \
        "labels have no timestamp column 'when' (columns: ['user_id', 'ts'])"
    # whole microseconds in nanosecond precision are cast, not refused
    whole = pd.to_datetime(["2026-01-02T00:00:00.000001000"], format="ISO8601")
    assert prepare(pd.DataFrame({"user_id": [1], "ts": whole}), KEYS, None)[0].column("ts").type == \
        pa.timestamp("us", tz="UTC")


def test_unknown_feature_sets_and_colliding_columns_are_refused(tmp_path):
    from serving.training_set import build_training_set
    from tests.conftest import small_config

    cfg = small_config(tmp_path)
    labels = pd.DataFrame({"user_id": [1], "ts": pd.to_datetime(["2026-01-02"])})
    assert _one_line_error(lambda: build_training_set(cfg, labels, ["user_spend", "merchant_activity_service"])) == \
        ("unknown feature set(s) or service(s) ['user_spend'] (valid: merchant_activity, user_spend_daily, "
         "merchant_activity_service, user_spend_daily_service)")
    assert _one_line_error(lambda: build_training_set(cfg, labels, ["user_spend_daily", "user_spend_daily_service"])) \
        == "feature set(s) ['user_spend_daily'] named twice (a set and its service are the same features)"
    clash = labels.assign(spend_7d=1.0)
    assert _one_line_error(lambda: build_training_set(cfg, clash, ["user_spend_daily"])) == \
        "feature 'spend_7d' of 'user_spend_daily' has the name of a label column: rename that label column"
    assert _one_line_error(lambda: build_training_set(cfg, labels, ["user_spend_daily"], mode="asof")) == \
        "unknown training-set mode 'asof' (known: point_in_time, as_known_at)"
    assert _one_line_error(lambda: build_training_set(cfg, labels, ["user_spend_daily"])) == \
        "gold.user_spend_daily does not exist: run the pipeline first"


def test_cli_reports_a_bad_feature_name_in_one_line(tmp_path, capsys):
    from pipelines.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,ts\n42,2026-01-02T00:00:00Z\n")
    code = main(["training-set", "--labels", str(labels), "--features", "nope", "--out", str(tmp_path / "o.parquet"),
                 f"data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: unknown feature set(s) or service(s) ['nope'] (valid: ")
    assert err.count("\n") == 1


# --- end to end: a late event between two runs -------------------------------------------------------
HEADER = "tx_id,user_id,merchant_id,amount,currency,channel,ts"
SET = "user_spend_daily"


def _iso_day(day: dt.date, clock: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{clock}+00:00")


def expected_spend(rows: List[dict], user: int, at: dt.datetime) -> Tuple[Optional[float], Optional[int]]:
    """(spend_7d, tx_count_7d) of the gold row a label of `user` at `at` reads, from the raw rows written,
    by the definitions: ttl 1 day, so the row of the midnight at or before `at` (for these rows no label
    at a midnight lacks that row while having the day before's); gold has a row for as-of days from the
    first data day + 1 to the last data day + 1 on which the user has an event in the last 90 days."""
    as_of = dt.datetime.combine(at.date(), dt.time(), UTC)
    first, last = min(r["ts"].date() for r in rows), max(r["ts"].date() for r in rows)
    if not first + dt.timedelta(days=1) <= as_of.date() <= last + dt.timedelta(days=1):
        return None, None
    if not any(r["user"] == user and as_of - dt.timedelta(days=90) <= r["ts"] < as_of for r in rows):
        return None, None
    week = [r for r in rows if r["user"] == user and as_of - dt.timedelta(days=7) <= r["ts"] < as_of]
    return float(sum(r["amount"] for r in week)), len(week)


@pytest.fixture(scope="module")
def late_lake(tmp_path_factory, ray_session):
    """Run A on three days, a training set (and one by the CLI), then a late event of an earlier day, run B."""
    from examples.sample.generate import generate
    from pipelines.cli import main
    from pipelines.config import load_config
    from pipelines.io.lake import Lake
    from pipelines.run import run
    from serving import training_set

    root = tmp_path_factory.mktemp("training_set")
    today = dt.datetime.now(UTC).date()
    staging, landing = root / "staging", root / "landing"
    landing.mkdir()
    overrides = [f"data_dir={root / 'data'}", f"sample.output_dir={staging}", f"datasets.transactions.path={landing}",
                 "sample.n_transactions=50", "sample.n_users=12", "sample.days=3", "sample.n_merchants=5",
                 f"sample.start_date={today - dt.timedelta(days=40)}", f"features.sets=[{SET}]",
                 f"cutoff={today + dt.timedelta(days=1)}T00:00:00Z", "quality.row_count.severity=warn",
                 "quality.drift.severity=warn"]
    cfg = load_config(overrides)
    generate(cfg.sample)  # the users table; its transactions stay in staging, ours are delivered
    day = lambda n: today - dt.timedelta(days=n)  # noqa: E731
    rows_a = [dict(tx="a1", user=1, amount=10.00, ts=_iso_day(day(3), "09:00:00")),
              dict(tx="a2", user=2, amount=20.00, ts=_iso_day(day(3), "10:00:00")),
              dict(tx="a3", user=1, amount=1.50, ts=_iso_day(day(3), "23:59:59.999999")),
              dict(tx="a4", user=1, amount=5.25, ts=_iso_day(day(1), "00:00:00")),
              dict(tx="a5", user=3, amount=7.00, ts=_iso_day(day(1), "12:00:00")),
              dict(tx="a6", user=1, amount=2.00, ts=_iso_day(day(0), "00:00:00"))]
    late = [dict(tx="late1", user=1, amount=100.00, ts=_iso_day(day(2), "08:00:00"))]

    def write(name: str, rows: List[dict]) -> None:
        lines = [f"{r['tx']},{r['user']},1,{r['amount']:.2f},EUR,web,{r['ts'].strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
                 for r in rows]
        (landing / name).write_text("\n".join([HEADER, *lines]) + "\n")

    for n in (3, 1, 0):
        write(f"{day(n)}.csv", [r for r in rows_a if r["ts"].date() == day(n)])
    summary_a = run(cfg)
    snapshot_a = summary_a["tables"][f"gold.{SET}"]["snapshot_id"]
    at = lambda n, clock: _iso_day(day(n), clock)  # noqa: E731
    labels = pd.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 9, 1, 1, 1],
        "ts": [at(2, "00:00:00"), at(1, "00:00:00") - US, at(1, "12:00:00"), at(0, "00:00:00"), at(1, "06:00:00"),
               at(0, "00:00:00"), at(5, "00:00:00"), at(-3, "00:00:00"), at(1, "12:00:00")],
        "target": [1, 0, 1, 0, 1, 0, 1, 0, 1]})
    first = training_set.build(cfg, labels, [SET])
    csv = root / "labels.csv"
    csv.write_text("user_id,ts,target\n" + "".join(f"{k},{t.strftime('%Y-%m-%dT%H:%M:%S.%fZ')},{y}\n"
                                                    for k, t, y in zip(labels.user_id, labels.ts, labels.target)))
    cli_out = root / "cli.parquet"
    assert main(["training-set", "--labels", str(csv), "--features", f"{SET}_service", "--out", str(cli_out),
                 *overrides]) == 0
    log_a = list(Lake(cfg.catalog).table(f"gold.{SET}").metadata.snapshot_log)
    write("late.csv", late)
    summary_b = run(cfg)
    return dict(cfg=cfg, overrides=overrides, root=root, rows_a=rows_a, rows_b=rows_a + late, labels=labels,
                first=first, snapshot_a=snapshot_a, snapshot_b=summary_b["tables"][f"gold.{SET}"]["snapshot_id"],
                log_a=log_a, cli_out=cli_out, today=today)


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _features(table: pa.Table) -> List[Tuple[Optional[float], Optional[int]]]:
    return list(zip(table.column("spend_7d").to_pylist(), table.column("tx_count_7d").to_pylist()))


@pytest.mark.e2e
def test_late_data_changes_point_in_time_rows_but_not_the_record_or_what_was_served(late_lake):
    from pipelines.io.lake import Lake
    from serving import training_set

    cfg, labels, first = late_lake["cfg"], late_lake["labels"], late_lake["first"]
    times = [t.to_pydatetime() for t in labels.ts]
    old = [expected_spend(late_lake["rows_a"], k, t) for k, t in zip(labels.user_id, times)]
    new = [expected_spend(late_lake["rows_b"], k, t) for k, t in zip(labels.user_id, times)]
    # by hand: user 1's week before today's midnight held 10 + 1.50 + 5.25, and 100 more arrived late;
    # a label one day and 3 days past the last as-of day is beyond the ttl; before the first day, nothing
    assert old == [(11.5, 2), (11.5, 2), (11.5, 2), (16.75, 3), (20.0, 1), (None, None), (None, None),
                   (None, None), (11.5, 2)]
    assert new == [(11.5, 2), (11.5, 2), (111.5, 3), (116.75, 4), (20.0, 1), (None, None), (None, None),
                   (None, None), (111.5, 3)]

    # run A's training set: exactly one row per label, labels first, old values
    assert first.table.num_rows == len(labels)
    assert first.table.column_names[:3] == ["user_id", "ts", "target"]
    assert first.table.column("target").to_pylist() == labels.target.tolist()
    assert _features(first.table) == old
    assert first.snapshots == {SET: [late_lake["snapshot_a"]]}
    # the CLI, from a CSV whose keys are text ("1" -> 1), built the same frame
    assert pq.read_table(late_lake["cli_out"]).equals(first.table)

    # after run B: the rebuild from MLflow is bit-identical; point in time over latest is corrected
    rebuilt = training_set.training_set_from_run(cfg, first.mlflow_run_id)
    assert rebuilt.schema == first.table.schema and rebuilt.equals(first.table)
    assert _ipc(rebuilt) == _ipc(first.table)
    latest = training_set.build_training_set(cfg, labels, [SET])
    assert _features(latest) == new
    pinned = training_set.build_training_set(cfg, labels, [SET], version=f"gold@{late_lake['snapshot_a']}")
    assert _ipc(pinned) == _ipc(first.table)

    # as known at: between A's gold commit and B's, what A served; after B's, the correction; before any
    # gold snapshot, nothing
    log = Lake(cfg.catalog).table(f"gold.{SET}").metadata.snapshot_log
    a_ms = max(e.timestamp_ms for e in late_lake["log_a"])
    b_entries = [e for e in log if e.timestamp_ms > a_ms]
    assert b_entries and b_entries[-1].snapshot_id == late_lake["snapshot_b"]
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    between = epoch + dt.timedelta(milliseconds=(a_ms + b_entries[0].timestamp_ms) // 2)
    after = epoch + dt.timedelta(milliseconds=b_entries[-1].timestamp_ms + 1)
    yesterday = _iso_day(late_lake["today"] - dt.timedelta(days=1), "12:00:00")
    known = pd.DataFrame({"user_id": [1, 1, 1, 2], "ts": [between, after, yesterday, between]})
    served = training_set.build(cfg, known, [SET], mode="as_known_at")
    assert _features(served.table) == [expected_spend(late_lake["rows_a"], 1, between),
                                       expected_spend(late_lake["rows_b"], 1, after), (None, None),
                                       expected_spend(late_lake["rows_a"], 2, between)]
    assert served.snapshots == {SET: sorted({late_lake["snapshot_a"], late_lake["snapshot_b"]})}
    assert training_set.training_set_from_run(cfg, served.mlflow_run_id).equals(served.table)


@pytest.mark.e2e
def test_training_runs_are_recorded_in_mlflow(late_lake):
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving import training_set
    from serving.tracking import IcebergDatasetSource

    cfg, first = late_lake["cfg"], late_lake["first"]
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    prepared, _ = label_checks.prepare(late_lake["labels"], KEYS, None)
    params = run.data.params
    assert params["training_set.labels_sha256"] == label_checks.canonical_digest(prepared)
    assert params["training_set.output_sha256"] == label_checks.canonical_digest(first.table)
    assert params["training_set.mode"] == "point_in_time"
    assert params["training_set.feature_sets"] == SET
    assert params[f"training_set.snapshot.{SET}"] == str(late_lake["snapshot_a"])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "training_set")) == \
        ["training_set/labels.parquet", "training_set/spec.json"]
    inputs = [(IcebergDatasetSource.from_dict(json.loads(i.dataset.source)).uri, [t.value for t in i.tags])
              for i in run.inputs.dataset_inputs]
    assert inputs == [(f"iceberg://lake/gold.{SET}?snapshot_id={late_lake['snapshot_a']}", ["training"])]

    # inside the caller's active run, the training set is logged there
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    with mlflow.start_run() as active:
        built = training_set.build(cfg, late_lake["labels"], [SET], version=f"gold@{late_lake['snapshot_a']}")
    assert built.mlflow_run_id == active.info.run_id
    assert client.get_run(active.info.run_id).data.params["training_set.labels_sha256"] == \
        params["training_set.labels_sha256"]


@pytest.mark.e2e
def test_the_iceberg_path_equals_the_pure_path_and_reads_only_what_labels_need(late_lake):
    from pipelines.io.lake import Lake
    from serving import training_index, training_set

    cfg = late_lake["cfg"]
    lake = Lake(cfg.catalog)
    spec = training_set.resolve_sets(cfg, [SET])[0]
    today = late_lake["today"]
    times = [dt.datetime.combine(today, dt.time(), UTC) + dt.timedelta(hours=h) - dt.timedelta(microseconds=u)
             for h in range(-24 * 5, 24 * 3, 7) for u in (0, 1)]
    labels = pd.DataFrame({"user_id": [1 + i % 12 for i in range(len(times))], "ts": times})
    prepared, ts = training_set.prepare_labels(labels, [spec], None)
    indexes = training_set.index_root(cfg)
    uuid = str(lake.table(f"gold.{SET}").metadata.table_uuid)
    for snapshot in (late_lake["snapshot_a"], late_lake["snapshot_b"]):
        whole = lake.read_arrow(f"gold.{SET}", snapshot_id=snapshot)
        pure = pit.features_for(prepared, ts, whole, spec)
        expected = pa.Table.from_arrays(prepared.columns + pure.columns, prepared.column_names + pure.column_names)
        built = training_set.build_training_set(cfg, labels, [SET], version=f"gold@{snapshot}")
        assert built.equals(expected)
        # each run indexed the snapshot it published, and both ways of reading give those rows
        assert training_index.open_index(indexes, uuid, snapshot, spec) is not None
        for way in (None, indexes):
            table, _ = training_set.assemble(lake, [spec], prepared, ts, "point_in_time", {SET: snapshot}, {}, way)
            assert table.equals(expected)
        # the scan held only the labels' entities in their as-of range
        subset = training_set.prepare_labels(pd.DataFrame({
            "user_id": [1, 2], "ts": [dt.datetime.combine(today, dt.time(12), UTC),
                                      dt.datetime.combine(today - dt.timedelta(days=1), dt.time(3), UTC)]}),
            [spec], None)[0]
        read = training_set.gold_scan(lake, spec, snapshot, subset, ts)[0].read(["user_id", "as_of"])
        low = min(subset.column(ts).to_pylist()) - dt.timedelta(days=spec.ttl_days)
        high = max(subset.column(ts).to_pylist())
        wanted = [(r["user_id"], r["as_of"]) for r in whole.to_pylist()
                  if r["user_id"] in set(subset.column("user_id").to_pylist()) and low <= r["as_of"] <= high]
        assert sorted(zip(read.column("user_id").to_pylist(), read.column("as_of").to_pylist())) == sorted(wanted)
        assert 0 < read.num_rows < whole.num_rows


@pytest.mark.e2e
def test_cli_rebuilds_from_an_mlflow_run(late_lake, capsys):
    from pipelines.cli import main

    out = late_lake["root"] / "rebuilt.parquet"
    code = main(["training-set", "--mlflow-run", late_lake["first"].mlflow_run_id, "--out", str(out),
                 *late_lake["overrides"]])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    assert json.loads(line) == {"rows": 9, "mlflow_run_id": late_lake["first"].mlflow_run_id,
                                "snapshots": {SET: [late_lake["snapshot_a"]]}, "out": str(out.resolve())}
    assert pq.read_table(out).equals(late_lake["first"].table)
    code = main(["training-set", "--mlflow-run", "x", "--features", SET, "--out", str(out), *late_lake["overrides"]])
    assert code == 2
    assert capsys.readouterr().err == \
        "error: training-set --mlflow-run rebuilds what that run recorded: drop --features\n"


FEAST_HISTORICAL = """
import json, sys
import numpy as np
import pandas as pd
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
labels = pd.DataFrame(json.loads(sys.argv[2]))
labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], utc=True, format="ISO8601")
frame = store.get_historical_features(entity_df=labels, features=store.get_feature_service(sys.argv[3])).to_df()
frame["event_timestamp"] = frame["event_timestamp"].map(lambda t: t.isoformat())
print(json.dumps(frame[["user_id", "event_timestamp", "spend_7d", "tx_count_7d", "country"]].to_dict("records")))
"""


@pytest.mark.e2e
def test_point_in_time_rows_are_the_rows_feast_picks(late_lake):
    """Feast's own get_historical_features (its DuckDB store reading gold through IcebergSource), in a
    process of its own as a user would run it, against our point-in-time join over the latest snapshot."""
    import subprocess
    import sys

    from serving import applied, training_set

    cfg = late_lake["cfg"]
    midnight = dt.datetime.combine(late_lake["today"], dt.time(), UTC)
    times = [midnight + dt.timedelta(hours=h) + d for h in range(-24 * 4, 24 * 3, 6)
             for d in (dt.timedelta(0), -US, dt.timedelta(days=1))]
    labels = pd.DataFrame({"user_id": [1 + i % 4 for i in range(len(times))], "event_timestamp": times})
    ours = training_set.build_training_set(cfg, labels, [f"{SET}_service"])
    ours_rows = sorted((r["user_id"], r["event_timestamp"].isoformat(), r["spend_7d"], r["tx_count_7d"], r["country"])
                       for r in ours.to_pylist())
    payload = json.dumps([{"user_id": int(k), "event_timestamp": t.isoformat()} for k, t in zip(labels.user_id, times)])
    done = subprocess.run([sys.executable, "-c", FEAST_HISTORICAL, str(applied.repo_path(cfg)), payload, f"{SET}_service"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    feast = json.loads(done.stdout.strip().splitlines()[-1])
    nan = lambda v: None if isinstance(v, float) and v != v else v  # noqa: E731
    feast_rows = sorted((r["user_id"], r["event_timestamp"], nan(r["spend_7d"]),
                         None if nan(r["tx_count_7d"]) is None else int(r["tx_count_7d"]), nan(r["country"]))
                        for r in feast)
    assert len(ours_rows) == len(times)
    assert sum(r[2] is not None for r in ours_rows) > 10
    assert feast_rows == ours_rows


# --- placing joined rows in label order ------------------------------------------------------------
PLACE_TYPES = {"int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)), "int32": (pa.int32(), st.integers(-5, 5)),
               "float64": (pa.float64(), st.floats(allow_nan=False)), "float32": (pa.float32(), st.just(1.5)),
               "string": (pa.string(), st.text(max_size=3)), "large_string": (pa.large_string(), st.text(max_size=3)),
               "bool": (pa.bool_(), st.booleans()),
               "timestamp": (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(UTC)))}


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(PLACE_TYPES)), data=st.data())
def test_place_puts_each_row_where_its_slot_says(kind, data):
    """`pit.place(values, slot)` is `[values[s] if s >= 0 else None for s in slot]`, whatever the type,
    nulls, slicing (a non-zero offset) or chunking of `values`."""
    arrow_type, cells = PLACE_TYPES[kind]
    raw = data.draw(st.lists(st.none() | cells, max_size=12))
    skip = data.draw(st.integers(0, min(2, len(raw))))
    values = pa.array(raw, arrow_type).slice(skip)
    cut = data.draw(st.integers(0, len(values)))
    chunked = pa.chunked_array([values.slice(0, cut), values.slice(cut)], arrow_type)
    slot = np.array(data.draw(st.lists(st.integers(-1, len(values) - 1), max_size=15)), dtype=np.int64)
    placed = pit.place(chunked, slot)
    placed.validate(full=True)
    assert placed.type == arrow_type
    assert placed.to_pylist() == [values[int(s)].as_py() if s >= 0 else None for s in slot]


@settings(max_examples=300, deadline=None)
@given(found=st.lists(st.integers(-1, 8), max_size=30))
def test_distinct_rows_are_the_rows_found_each_once(found):
    needed, slot = pit.distinct_rows(np.array(found, dtype=np.int64))
    assert needed.tolist() == sorted({f for f in found if f >= 0})
    assert [int(needed[s]) if s >= 0 else -1 for s in slot] == found


@pytest.mark.e2e
def test_versions_show_which_gold_snapshots_have_a_training_index(late_lake):
    """Runs A and B each indexed the gold snapshot they published (and keep: 2 kept both); the snapshots
    an overwrite commits on the way (its delete) have none."""
    from serving import versions

    cfg = late_lake["cfg"]
    listed = versions.versions(cfg, f"gold.{SET}")
    rows = listed["tables"][0]["snapshots"]
    assert {r["snapshot_id"] for r in rows if r["training_index"]} == {late_lake["snapshot_a"],
                                                                      late_lake["snapshot_b"]}
    assert len(rows) > 2
    text = versions.format_versions(listed)
    assert sum("training index" in line for line in text.splitlines()) == 2

"""Online reads that tell stale from fresh (serving/online.py) and each feature set's freshness
(serving/freshness.py, the run summary's `freshness`), on the session's end-to-end pipeline run.

Expected values come from gold read whole (the newest row of each entity, picked here with pandas), not
from the publishing code; ages are judged against instants chosen relative to gold's as-of days."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Dict, List

import pandas as pd
import pytest

from serving.online import AS_OF_SUFFIX, STATUS_SUFFIX, OnlineReadError, cast_key, get_online_features

pytestmark = pytest.mark.e2e

US = dt.timedelta(microseconds=1)


@pytest.fixture(scope="module")
def served(pipeline_run):
    """(cfg, feature sets, lake, store, {set: gold's newest row per entity, indexed by join key})."""
    from features.registry import feature_sets
    from pipelines.io.lake import Lake
    from serving.publish import open_store

    cfg = pipeline_run["cfg"]
    sets = feature_sets(cfg.features.sets, cfg.project)
    lake = Lake(cfg.catalog)
    newest = {}
    for fs in sets:
        rows = lake.read_arrow(f"gold.{fs.name}").to_pandas()
        rows = rows.sort_values([fs.entity.join_key, fs.as_of_column], kind="mergesort")
        newest[fs.name] = rows.groupby(fs.entity.join_key).tail(1).set_index(fs.entity.join_key)
    return cfg, sets, lake, open_store(cfg), newest


def _last(gold: pd.DataFrame, fs) -> pd.Timestamp:
    return pd.Timestamp(gold[fs.as_of_column].max()).tz_convert("UTC")


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _assert_read(frame: pd.DataFrame, fs, gold: pd.DataFrame, keys: List[int], stale: Dict[int, bool]) -> None:
    """Each key's row: PRESENT with gold's values and as-of, STALE with nulls, NOT_FOUND when gold lacks it."""
    key = fs.entity.join_key
    assert frame[key].tolist() == keys
    for i, k in enumerate(keys):
        row = frame.iloc[i]
        if k not in gold.index:
            expected_status = "NOT_FOUND"
            assert pd.isna(row[fs.name + AS_OF_SUFFIX])
        else:
            expected_status = "STALE" if stale[k] else "PRESENT"
            assert row[fs.name + AS_OF_SUFFIX] == pd.Timestamp(gold.at[k, fs.as_of_column]).tz_convert("UTC")
        for name in fs.feature_names():
            assert row[name + STATUS_SUFFIX] == expected_status, (fs.name, k, name)
            want = gold.at[k, name] if expected_status == "PRESENT" else None
            assert _same(row[name], want), (fs.name, k, name, row[name], want)


def test_feast_itself_serves_lapsed_rows_as_present(served):
    """What this module exists for: Feast's own online read ignores the view's ttl."""
    cfg, sets, _, store, newest = served
    from serving.online_sqlite import feast_sqlite_timestamps

    fs = sets[0]
    gold = newest[fs.name]
    view = store.get_feature_view(fs.name)
    # the sample's rows are from early 2026, far older than the ttl by the wall clock: lapsed rows
    assert pd.Timestamp.now(tz="UTC") - _last(gold, fs) > pd.Timedelta(view.ttl)
    feast_sqlite_timestamps()
    response = store.get_online_features(features=[f"{fs.name}:{n}" for n in fs.feature_names()],
                                         entity_rows=[{fs.entity.join_key: k} for k in gold.index[:5]])
    statuses = {s for result in response.proto.results[1:] for s in result.statuses}
    assert statuses == {1}  # FieldStatus.PRESENT, months after the ttl lapsed


def test_fresh_read_equals_gold_newest_row(served):
    cfg, sets, _, _, newest = served
    for fs in sets:
        gold = newest[fs.name]
        keys = gold.index.tolist() + [int(gold.index.max()) + 1]  # and one entity gold does not have
        now = _last(gold, fs)
        oldest = pd.Timestamp(gold[fs.as_of_column].min()).tz_convert("UTC")
        frame = get_online_features(cfg, fs.name, [{fs.entity.join_key: k} for k in keys], now=now,
                                    max_age=(now - oldest).to_pytimedelta())
        _assert_read(frame, fs, gold, keys, {k: False for k in keys})
        # and through the feature service, from a FeatureStore, naive `now` read as UTC
        again = get_online_features(served[3], f"{fs.name}_service", [{fs.entity.join_key: k} for k in keys],
                                    now=now.tz_localize(None).to_pydatetime(), max_age=(now - oldest).to_pytimedelta())
        pd.testing.assert_frame_equal(again, frame)
    # every set at once, columns named <set>__<feature>
    row = {fs.entity.join_key: int(newest[fs.name].index[0]) for fs in sets}
    both = get_online_features(cfg, [fs.name for fs in sets], [row], max_age=dt.timedelta(days=3650),
                               now=max(_last(newest[fs.name], fs) for fs in sets), full_feature_names=True)
    for fs in sets:
        gold = newest[fs.name].iloc[0]
        for name in fs.feature_names():
            assert both.at[0, f"{fs.name}__{name}{STATUS_SUFFIX}"] == "PRESENT"
            assert _same(both.at[0, f"{fs.name}__{name}"], gold[name])


def test_stale_marking_follows_the_ttl_exactly(served):
    """Stale when now - as_of > ttl (an age equal to the ttl is fresh), as the point-in-time join reads it."""
    cfg, sets, _, store, newest = served
    for fs in sets:
        gold = newest[fs.name]
        keys = gold.index.tolist()
        rows = [{fs.entity.join_key: k} for k in keys]
        ttl = pd.Timedelta(days=fs.ttl_days)
        assert store.get_feature_view(fs.name).ttl == ttl.to_pytimedelta()
        as_of = gold[fs.as_of_column].map(lambda t: pd.Timestamp(t).tz_convert("UTC"))
        for now in (_last(gold, fs), _last(gold, fs) + ttl, _last(gold, fs) + ttl + US,
                    _last(gold, fs) + pd.Timedelta(days=200)):
            frame = get_online_features(cfg, fs.name, rows, now=now)
            _assert_read(frame, fs, gold, keys, {k: now - as_of[k] > ttl for k in keys})
        # far after the last as-of, everything is stale; the as-of column still says when each row is from
        far = get_online_features(cfg, fs.name, rows, now=_last(gold, fs) + pd.Timedelta(days=200))
        assert set(far[[n + STATUS_SUFFIX for n in fs.feature_names()]].stack()) == {"STALE"}
        assert far[list(fs.feature_names())].isna().all().all()
        assert far[fs.name + AS_OF_SUFFIX].notna().all()


def test_an_explicit_max_age_overrides_the_ttl(served):
    cfg, sets, _, _, newest = served
    for fs in sets:
        gold = newest[fs.name]
        last = _last(gold, fs)
        on_last = [{fs.entity.join_key: k} for k in gold.index[gold[fs.as_of_column] == gold[fs.as_of_column].max()]]
        for max_age, status in ((dt.timedelta(hours=1), "STALE"), (dt.timedelta(hours=2), "PRESENT")):
            frame = get_online_features(cfg, fs.name, on_last, max_age=max_age, now=last + pd.Timedelta(hours=2))
            assert set(frame[[n + STATUS_SUFFIX for n in fs.feature_names()]].stack()) == {status}
    # per view: the first set held to one hour, the others keep their ttl
    first = sets[0]
    now = max(_last(newest[fs.name], fs) for fs in sets) + pd.Timedelta(hours=2)
    row = [{fs.entity.join_key: int(newest[fs.name].index[-1]) for fs in sets}]
    frame = get_online_features(cfg, [fs.name for fs in sets], row, max_age={first.name: dt.timedelta(hours=1)}, now=now)
    for fs in sets:
        age = now - pd.Timestamp(newest[fs.name][fs.as_of_column].iloc[-1]).tz_convert("UTC")
        stale = age > (pd.Timedelta(hours=1) if fs is first else pd.Timedelta(days=fs.ttl_days))
        assert set(frame[[n + STATUS_SUFFIX for n in fs.feature_names()]].stack()) == {"STALE" if stale else "PRESENT"}
    with pytest.raises(OnlineReadError, match="not asked for"):
        get_online_features(cfg, first.name, [{first.entity.join_key: 1}], max_age={"no_such_set": dt.timedelta(hours=1)})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_names_fail_in_one_line_naming_the_valid_ones(served):
    cfg, sets, _, _, _ = served
    fs = sets[0]
    row = [{fs.entity.join_key: 1}]
    with pytest.raises(OnlineReadError) as exc:
        get_online_features(cfg, f"{fs.name}:no_such_feature", row)
    message = _one_line(exc)
    assert "'no_such_feature'" in message and all(name in message for name in fs.feature_names())
    with pytest.raises(OnlineReadError) as exc:
        get_online_features(cfg, ["no_such_set"], row)
    message = _one_line(exc)
    assert all(s.name in message and f"{s.name}_service" in message for s in sets)
    with pytest.raises(OnlineReadError) as exc:
        get_online_features(cfg, fs.name, [{"not_a_key": 1}])
    assert fs.entity.join_key in _one_line(exc)


def test_join_keys_are_cast_when_lossless_and_refused_otherwise(served):
    cfg, sets, _, _, newest = served
    fs = next(s for s in sets if s.entity.dtype == "int64")
    key = int(newest[fs.name].index[0])
    as_int = get_online_features(cfg, fs.name, [{fs.entity.join_key: key}])
    for given in (str(key), float(key), f"+{key}"):
        pd.testing.assert_frame_equal(get_online_features(cfg, fs.name, [{fs.entity.join_key: given}]), as_int)
    for bad in (f"{key}.5", key + 0.5, True, "x", "", 2**64, None):
        with pytest.raises(OnlineReadError) as exc:
            get_online_features(cfg, fs.name, [{fs.entity.join_key: key}, {fs.entity.join_key: bad}])
        message = _one_line(exc)
        assert message.startswith(f"entity row 1: {fs.entity.join_key}={bad!r}"), message
    # a string join key (none in the sample: the rule alone)
    from feast.value_type import ValueType

    assert cast_key("code", ValueType.STRING, 42) == "42" and cast_key("code", ValueType.STRING, "ab") == "ab"
    with pytest.raises(OnlineReadError):
        cast_key("code", ValueType.STRING, 4.2)


def test_freshness_from_gold_and_online_agree_and_reach_the_run_summary(served, pipeline_run):
    from serving import freshness

    cfg, sets, lake, store, newest = served
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    from_gold = freshness.report(lake, sets, now=now)
    from_online = freshness.report(lake, sets, now=now, store=store)
    summary = pipeline_run["summary"]["freshness"]
    for fs in sets:
        last = _last(newest[fs.name], fs).to_pydatetime()
        for entry, origin in ((from_gold[fs.name], "gold"), (from_online[fs.name], "online")):
            assert entry["as_of_last"] == last.isoformat() and entry["from"] == origin
            assert entry["age_hours"] == round((now - last).total_seconds() / 3600, 3)
            assert entry["ttl_hours"] == 24 * fs.ttl_days and entry["stale"] is True
        at_last = freshness.report(lake, [fs], now=last + dt.timedelta(days=fs.ttl_days))[fs.name]
        assert at_last["stale"] is False and at_last["age_hours"] == 24 * fs.ttl_days
        # the run's own figure: gold's newest as-of when that run ended (later tests may add days since)
        ran, ran_last = summary[fs.name], dt.datetime.fromisoformat(
            pipeline_run["summary"]["gold_as_of"][fs.name][1]).replace(tzinfo=dt.timezone.utc)
        assert ran["as_of_last"] == ran_last.isoformat() and ran["from"] == "gold"
        measured = dt.datetime.fromisoformat(ran["measured_at"])
        assert ran["age_hours"] == round((measured - ran_last).total_seconds() / 3600, 3)
    absent = dataclasses.replace(sets[0], name="no_such_set")
    assert freshness.report(lake, [absent], now=now, store=store)["no_such_set"]["as_of_last"] is None

"""The tiled window engine against the brute-force oracle, on hand-made and random event sets."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.declarations import Entity, FeatureSet, Filter, WindowAggregation
from features.engine import build_features, events_from_arrow, to_arrow
from features.registry import feature_set
from tests.oracle import oracle

UTC = dt.timezone.utc
START = dt.datetime(2026, 3, 1, tzinfo=UTC)
US = dt.timedelta(microseconds=1)

EVERY_KIND = FeatureSet(
    name="every_kind",
    entity=Entity("user", "user_id"),
    source_table="transactions",
    timestamp_column="ts",
    aggregations=(
        WindowAggregation("s", "amount", "sum", ("1d", "3d", "7d"), "float64", ""),
        WindowAggregation("n", None, "count", ("1d", "7d"), "int64", ""),
        WindowAggregation("avg", "amount", "mean", ("3d",), "float64", ""),
        WindowAggregation("lo", "amount", "min", ("2d", "7d"), "float64", ""),
        WindowAggregation("hi", "amount", "max", ("2d", "7d"), "float64", ""),
        WindowAggregation("m", "merchant_id", "count_distinct", ("1d", "3d", "7d"), "int64", ""),
        WindowAggregation("last_amount", "amount", "last", ("3d",), "float64", ""),
        WindowAggregation("web", "amount", "sum", ("7d",), "float64", "", where=Filter("channel", "web")),
        WindowAggregation("ago", None, "days_since_last", ("7d",), "int64", "", suffix_window=False),
    ),
)


def events_table(rows):
    return pa.table({
        "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
        "merchant_id": pa.array([r["merchant_id"] for r in rows], pa.int64()),
        "amount": pa.array([r["amount"] for r in rows], pa.decimal128(18, 2)),
        "channel": pa.array([r["channel"] for r in rows], pa.string()),
        "ts": pa.array([r["ts"] for r in rows], pa.timestamp("us", tz="UTC")),
    })


def engine(rows, fs, first, last, entities=None):
    events, scales = events_from_arrow(events_table(rows))
    return build_features(events, fs, first, last, entities, scales)


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, fs: FeatureSet):
    key = fs.entity.join_key
    actual = actual.sort_values([key, fs.as_of_column]).reset_index(drop=True)
    expected = expected.sort_values([key, fs.as_of_column]).reset_index(drop=True)
    assert list(actual[key]) == list(expected[key])
    assert list(actual[fs.as_of_column]) == list(expected[fs.as_of_column])
    for name in fs.feature_names():
        got = actual[name].astype(object).where(actual[name].notna(), None).tolist()
        want = expected[name].astype(object).where(expected[name].notna(), None).tolist()
        assert got == want, f"{name}: {got} != {want}"


def event(user, ts, amount="1.00", merchant=1, channel="web"):
    return {"user_id": user, "merchant_id": merchant, "amount": Decimal(amount), "channel": channel, "ts": ts}


def test_window_boundaries_by_hand():
    """as_of 2026-03-08: a 7-day window holds [03-01 00:00, 03-08 00:00)."""
    as_of = dt.datetime(2026, 3, 8, tzinfo=UTC)
    rows = [
        event(1, as_of - dt.timedelta(days=7), "1.00"),  # exactly 7 days before: inside the 7d window
        event(1, as_of - dt.timedelta(days=7) - US, "2.00"),  # 1us earlier: outside the 7d window
        event(1, as_of - US, "4.00"),  # 1us before midnight: inside
        event(1, as_of, "8.00"),  # at the as-of instant: never inside that as-of's windows
    ]
    out = engine(rows, EVERY_KIND, as_of.date(), as_of.date())
    assert out["s_7d"].tolist() == [5.0]
    assert out["s_1d"].tolist() == [4.0]
    assert out["n_7d"].tolist() == [2]
    assert out["ago"].tolist() == [1]
    assert out["lo_7d"].tolist() == [1.0] and out["hi_7d"].tolist() == [4.0]


def test_user_spend_daily_by_hand():
    fs = feature_set("user_spend_daily")
    rows = [event(7, dt.datetime(2026, 1, 1, 10, tzinfo=UTC), "10.10", merchant=1),
            event(7, dt.datetime(2026, 1, 5, 23, 59, 59, 999999, tzinfo=UTC), "0.20", merchant=2),
            event(7, dt.datetime(2026, 1, 6, tzinfo=UTC), "5.00", merchant=1)]
    users = pd.DataFrame({"user_id": [7], "country": ["SE"], "signup_ts": [pd.Timestamp("2025-12-31T22:00Z")]})
    out = engine(rows, fs, dt.date(2026, 1, 6), dt.date(2026, 1, 6), users)
    assert out.loc[0, ["spend_7d", "tx_count_7d", "distinct_merchants_30d", "days_since_last_tx"]].tolist() == \
        [10.3, 2, 2, 1]
    assert out.loc[0, "avg_amount_30d"] == 10.3 / 2
    assert out.loc[0, "tenure_days"] == 6 and out.loc[0, "country"] == "SE"


# Timestamps that hit the edges: midnight, 1us before midnight, noon, and random microseconds.
edge_times = st.sampled_from([dt.timedelta(0), dt.timedelta(days=1) - US, dt.timedelta(hours=12)]) | \
    st.integers(0, 86_400_000_000 - 1).map(lambda us: dt.timedelta(microseconds=us))
random_event = st.builds(
    event,
    user=st.integers(1, 3),
    ts=st.builds(lambda d, t: START + dt.timedelta(days=d) + t, st.integers(0, 12), edge_times),
    amount=st.integers(-500, 100_000).map(lambda c: str(Decimal(c) / 100)),
    merchant=st.integers(1, 4),
    channel=st.sampled_from(["web", "app"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(random_event, min_size=1, max_size=40), duplicate=st.booleans())
def test_every_aggregation_equals_oracle(rows, duplicate):
    if duplicate:  # duplicate timestamps
        rows = rows + [dict(rows[0], amount=rows[0]["amount"] + 1, merchant_id=9)]
    first, last = dt.date(2026, 3, 2), dt.date(2026, 3, 16)
    assert_same(engine(rows, EVERY_KIND, first, last), oracle(rows, EVERY_KIND, first, last), EVERY_KIND)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(random_event, min_size=1, max_size=40))
def test_shipped_feature_sets_equal_oracle(rows):
    first, last = dt.date(2026, 3, 2), dt.date(2026, 3, 16)
    users = {u: {"country": "DE", "signup_ts": dt.datetime(2026, 2, 1, 5, tzinfo=UTC)} for u in (1, 2, 3)}
    frame = pd.DataFrame([{"user_id": u, **v} for u, v in users.items()])
    for fs in (feature_set("user_spend_daily"), feature_set("merchant_activity")):
        entities = frame if fs.attributes else None
        assert_same(engine(rows, fs, first, last, entities), oracle(rows, fs, first, last, users), fs)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(random_event, min_size=2, max_size=30), data=st.data())
def test_no_leakage_from_future_events(rows, data):
    """Changing only events at or after an as-of day never changes that day's row."""
    as_of = data.draw(st.dates(dt.date(2026, 3, 2), dt.date(2026, 3, 12)))
    cut = dt.datetime.combine(as_of, dt.time(), UTC)
    past = [r for r in rows if r["ts"] < cut]
    future = [dict(r, amount=r["amount"] * 3 + 1, merchant_id=r["merchant_id"] + 10) for r in rows if r["ts"] >= cut]
    extra = [event(1, cut, "999.99"), event(2, cut + dt.timedelta(days=2), "5.00")]
    before = engine(past + [r for r in rows if r["ts"] >= cut], EVERY_KIND, as_of, as_of)
    after = engine(past + future + extra, EVERY_KIND, as_of, as_of)
    assert_same(after[after["user_id"].isin(before["user_id"])], before, EVERY_KIND)


def test_row_order_and_block_split_do_not_matter():
    rng = np.random.default_rng(3)
    rows = [event(int(rng.integers(1, 20)), START + dt.timedelta(microseconds=int(rng.integers(0, 20 * 86_400_000_000))),
                  f"{int(rng.integers(1, 99999)) / 100:.2f}", int(rng.integers(1, 9))) for _ in range(800)]
    first, last = dt.date(2026, 3, 5), dt.date(2026, 3, 21)
    whole = to_arrow(engine(rows, EVERY_KIND, first, last), EVERY_KIND)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    again = to_arrow(engine(shuffled, EVERY_KIND, first, last), EVERY_KIND)
    assert whole.equals(again)
    # split by entity into arbitrary groups, computed separately: the concatenation is the same rows
    parts = [engine([r for r in rows if r["user_id"] % 3 == k], EVERY_KIND, first, last) for k in range(3)]
    combined = pd.concat(parts).sort_values(["user_id", "as_of"]).reset_index(drop=True)
    assert to_arrow(combined, EVERY_KIND).equals(whole)


def test_empty_events_give_no_rows():
    rows = [event(1, dt.datetime(2026, 1, 1, tzinfo=UTC))]  # far before the window of any as-of day
    out = engine(rows, EVERY_KIND, dt.date(2026, 3, 2), dt.date(2026, 3, 3))
    assert len(out) == 0
    assert list(to_arrow(out, EVERY_KIND).schema.names)[:2] == ["user_id", "as_of"]


@given(columns=st.integers(1, 5), rows=st.integers(0, 60), spread=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_sort_order_equals_numpy_lexsort(columns, rows, spread, seed):
    """The engine's two-key sort with tie-breaking equals np.lexsort (small spreads force many ties)."""
    from features.engine import sort_order

    rng = np.random.default_rng(seed)
    keys = [rng.integers(-spread, spread, rows) for _ in range(columns)]
    assert sort_order(keys).tolist() == np.lexsort(keys[::-1]).tolist()


def test_gold_in_slices_of_entities_equals_gold_in_one_piece(ray_session):
    """The driver path's slicing by entity hash changes nothing, whether the slices are computed here or
    as Ray tasks: same rows, same values; regrouped by days for the write, the same rows again, each day
    in one table and the tables in day order."""
    from pipelines import digest
    from pipelines.stages.gold import by_day_ranges, compute_in_slices, compute_local

    rng = np.random.default_rng(7)
    n = 5000
    start = np.datetime64("2026-01-01", "us")
    events = pa.table({
        "user_id": rng.integers(1, 60, n), "merchant_id": rng.integers(1, 9, n),
        "ts": pa.array(start + rng.integers(0, 40 * 86_400_000_000, n).astype("timedelta64[us]"),
                       pa.timestamp("us", tz="UTC")),
        "amount": pa.array([f"{c / 100:.2f}" for c in rng.integers(1, 50_000, n)]).cast(pa.decimal128(18, 2)),
        "channel": rng.choice(["web", "app", "store"], n)})
    users = pd.DataFrame({"user_id": np.arange(1, 60), "signup_ts": pd.Timestamp("2025-06-01", tz="UTC"),
                          "country": "DE"})
    for name in ("user_spend_daily", "merchant_activity"):
        fs = feature_set(name)
        entities = users if fs.attributes else None
        first, last = dt.date(2026, 1, 2), dt.date(2026, 2, 15)
        whole = compute_local(events, fs, first, last, entities)
        sliced = compute_in_slices(events, fs, first, last, entities, slice_events=700)
        assert len(sliced) == 8
        assert pa.concat_tables(sliced).num_rows == whole.num_rows > 0
        assert digest.table_digest(pa.concat_tables(sliced)) == digest.table_digest(whole)
        on_ray = compute_in_slices(events, fs, first, last, entities, slice_events=700, workers=3)
        assert len(on_ray) == 9  # 8 slices rounded up to a multiple of the workers
        assert digest.table_digest(pa.concat_tables(on_ray)) == digest.table_digest(whole)
        pieces = by_day_ranges(on_ray, fs.as_of_column, 3)
        days = [sorted(set(p.column(fs.as_of_column).to_pylist())) for p in pieces]
        assert len(pieces) == 3 and all(days)
        assert [d for piece in days for d in piece] == sorted(set(whole.column(fs.as_of_column).to_pylist()))
        assert digest.table_digest(pa.concat_tables(pieces)) == digest.table_digest(whole)

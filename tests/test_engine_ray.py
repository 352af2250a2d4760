"""The Ray path (hash-partitioned by entity, any number of blocks) equals the pandas path exactly."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import ray

from features.engine import build_features, events_from_arrow, to_arrow
from features.registry import feature_set
from pipelines.digest import table_digest
from pipelines.stages.gold import compute_on_ray

UTC = dt.timezone.utc


def random_events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-02-01T00:00:00", "us")
    ts = start + rng.integers(0, 40 * 86_400_000_000, n).astype("timedelta64[us]")
    ts[: n // 10] = ts[: n // 10].astype("datetime64[D]")  # a tenth exactly at midnight
    cents = rng.integers(1, 500_000, n)
    return pa.table({
        "user_id": pa.array(rng.integers(1, 60, n), pa.int64()),
        "merchant_id": pa.array(rng.integers(1, 15, n), pa.int64()),
        "amount": pa.array([f"{c // 100}.{c % 100:02d}" for c in cents]).cast(pa.decimal128(18, 2)),
        "channel": pa.array(rng.choice(["web", "app", "store"], n)),
        "ts": pa.array(pd.to_datetime(ts).tz_localize("UTC"), pa.timestamp("us", tz="UTC")),
    })


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n=st.integers(200, 3000))
@pytest.mark.parametrize("name", ["user_spend_daily", "merchant_activity"])
def test_ray_path_equals_pandas_path_for_any_block_count(ray_session, name, seed, n):
    fs = feature_set(name)
    table = random_events(n, seed=seed)
    users = pd.DataFrame({"user_id": np.arange(1, 60), "country": ["DE"] * 59,
                          "signup_ts": pd.Timestamp("2025-06-01T12:00Z")})
    entities = users if fs.attributes else None
    first, last = dt.date(2026, 2, 2), dt.date(2026, 3, 13)
    events, scales = events_from_arrow(table)
    expected = to_arrow(build_features(events, fs, first, last, entities, scales), fs)
    digests = set()
    for blocks, partitions in [(1, 1), (7, 3)]:
        ds = ray.data.from_arrow(table).repartition(blocks)
        got = pa.concat_tables(
            [pa.Table.from_pandas(b, preserve_index=False) for b in
             [compute_on_ray(ds, fs, first, last, entities, partitions).to_pandas()]])
        got = got.cast(expected.schema).sort_by([(fs.entity.join_key, "ascending"), ("as_of", "ascending")])
        assert got.equals(expected), (blocks, partitions)
        digests.add(table_digest(got))
    assert len(digests) == 1 and len(expected) > 0


def test_a_worker_killed_mid_transform_is_retried_by_ray_and_the_result_is_exact(ray_session, tmp_path):
    """The first task to run the transform kills its own worker process (SIGKILL, as the OOM killer
    would); Ray retries the task on a new worker and the gold rows equal the pandas path's exactly."""
    import os
    import signal

    fs = feature_set("user_spend_daily")
    table = random_events(2000, seed=11)
    first, last = dt.date(2026, 2, 2), dt.date(2026, 3, 13)
    events, scales = events_from_arrow(table)
    expected = to_arrow(build_features(events, fs, first, last, None, scales), fs)
    marker = tmp_path / "a-worker-was-killed"

    def kill_first_worker(batch: pa.Table) -> pa.Table:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # exactly one task, across worker processes
        except FileExistsError:
            return batch
        os.kill(os.getpid(), signal.SIGKILL)

    ds = ray.data.from_arrow(table).repartition(4).map_batches(kill_first_worker, batch_format="pyarrow")
    got = pa.Table.from_pandas(compute_on_ray(ds, fs, first, last, None, 3).to_pandas(), preserve_index=False)
    got = got.cast(expected.schema).sort_by([(fs.entity.join_key, "ascending"), ("as_of", "ascending")])
    assert marker.exists()  # the kill happened
    assert got.equals(expected) and len(expected) > 0

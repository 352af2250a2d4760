"""Shared fixtures: one Ray runtime per session (num_cpus=2) and one small end-to-end pipeline run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PIPELINE_PII_KEY", "test-only-pii-key")

# The small standard case used by the end-to-end tests: big enough for every kind of dirt.
SMALL = ["sample.n_transactions=6000", "sample.n_users=150", "sample.days=20", "sample.n_merchants=40",
         "sample.dirt_fraction=0.02", "ray.gold_partitions=4"]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipelines import ray_runtime
    from pipelines.config import RayConfig

    ray_runtime.start(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


def small_config(data_dir: Path, *extra: str):
    from pipelines.config import load_config

    return load_config([f"data_dir={data_dir}", *SMALL, *extra])


def run_small_sample(data_dir: Path):
    """Generate the small standard sample in `data_dir` and run the whole pipeline once: (cfg, summary)."""
    from pipelines.run import run
    from examples.sample.generate import generate

    cfg = small_config(data_dir)
    generate(cfg.sample)
    return cfg, run(cfg)


# Events on window boundaries for user 1, as_of 2026-01-15: at midnight, 1 microsecond before midnight,
# exactly 7 and 30 days before, and at the as-of instant itself (must not count for that as-of day).
BOUNDARY_LINES = [
    "btx-midnight,1,1,10.00,EUR,web,2026-01-14T00:00:00.000000Z",
    "btx-before-midnight,1,2,20.50,EUR,app,2026-01-14T23:59:59.999999Z",
    "btx-7d,1,3,7.07,EUR,store,2026-01-08T00:00:00.000000Z",
    "btx-7d-minus-1us,1,3,1.01,EUR,store,2026-01-07T23:59:59.999999Z",
    "btx-as-of,1,4,99.99,EUR,web,2026-01-15T00:00:00.000000Z",
    "btx-same-ts-a,2,5,3.00,EUR,web,2026-01-10T12:00:00.000000Z",
    "btx-same-ts-b,2,6,4.00,EUR,web,2026-01-10T12:00:00.000000Z",
]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, ray_session):
    """One run of the whole pipeline on the small standard case plus boundary events."""
    from pipelines.run import run
    from examples.sample.generate import generate

    data_dir = tmp_path_factory.mktemp("e2e")
    # every transform on Ray, as at scale (small inputs would otherwise be deduplicated and built on the
    # driver); the other end-to-end tests take the default and so cover the driver path
    cfg = small_config(data_dir, "ray.local_max_rows=0", "ray.gold_local_max_events=0")
    planted = generate(cfg.sample)
    header = "tx_id,user_id,merchant_id,amount,currency,channel,ts"
    (Path(cfg.sample['output_dir']) / "transactions" / "boundary.csv").write_text(
        "\n".join([header, *BOUNDARY_LINES]) + "\n")
    summary = run(cfg)
    return {"cfg": cfg, "summary": summary, "planted": planted, "data_dir": data_dir}


"""The benchmark suite's comparison code on a tiny case: the DuckDB baseline does the pipeline's work.

No timing assertions here (the suite measures; tests only check that what it compares is the same work):
the pipeline runs once on a small all-Parquet sample, the DuckDB baseline on the same landing files, and
its gold (both feature sets, row for row, exact values), quarantine (every tx_id with the same failed
rules) and silver/duplicate counts must equal ours; then the publish comparison's read-back check.
"""

from __future__ import annotations

import pytest

from benchmarks import baseline_duckdb, compare
from tests.conftest import small_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory, ray_session):
    from pipelines.run import run
    from examples.sample.generate import generate

    data_dir = tmp_path_factory.mktemp("bench")
    cfg = small_config(data_dir, "sample.parquet_every=1")
    generate(cfg.sample)
    return cfg, run(cfg), data_dir


def test_duckdb_baseline_equals_pipeline(parquet_run, tmp_path):
    cfg, summary, data_dir = parquet_run
    result = baseline_duckdb.run(data_dir / "sample", tmp_path / "duck", cfg.cutoff)
    assert result["counts"]["quarantined"] > 0 and result["counts"]["duplicates"] > 0  # the dirt is exercised
    assert compare.check_duckdb_baseline(data_dir, tmp_path / "duck", result["counts"], summary["counts"]) == []


def test_baseline_difference_is_reported(parquet_run, tmp_path):
    """The check is not vacuous: a changed gold value and a wrong count are named."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cfg, summary, data_dir = parquet_run
    out = tmp_path / "duck"
    result = baseline_duckdb.run(data_dir / "sample", out, cfg.cutoff)
    gold = pq.read_table(out / "gold_user_spend_daily.parquet")
    spend = gold.column("spend_7d")
    gold = gold.set_column(gold.schema.get_field_index("spend_7d"), "spend_7d", pc.add(spend, 0.01))
    pq.write_table(gold, out / "gold_user_spend_daily.parquet")
    problems = compare.check_duckdb_baseline(data_dir, out, {**result["counts"], "duplicates": -1}, summary["counts"])
    assert any("gold.user_spend_daily" in p for p in problems)
    assert any("duplicates_dropped" in p for p in problems)


def test_publish_matches_feast_materialize(parquet_run):
    from benchmarks import feast_materialize

    _, _, data_dir = parquet_run
    for side in feast_materialize.SIDES:
        assert feast_materialize.run_side(data_dir, side)["entities"] > 0
    checked = feast_materialize.compare(data_dir)
    assert checked["entities_checked"] > 0 and checked["mismatching_values"] == 0

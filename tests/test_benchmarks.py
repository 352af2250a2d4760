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


@pytest.mark.parametrize("in_pushdown_max_keys", [1_000, 0])  # the entities pushed into the scan, or kept in Arrow
def test_training_set_matches_feast_historical_features(parquet_run, monkeypatch, in_pushdown_max_keys):
    """The training-set benchmark's labels (unknown entities, midnights, a microsecond before) through our
    builder and Feast's get_historical_features give the same values, and its comparison sees a change."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks import training_set
    from serving import training_set as builder

    monkeypatch.setattr(builder, "IN_PUSHDOWN_MAX_KEYS", in_pushdown_max_keys)
    _, _, data_dir = parquet_run
    labels = training_set.make_labels(data_dir, 400, "user_spend_daily", seed=16)
    assert labels["unknown_entities"] > 0 and labels["at_midnight"] > 0 and labels["microsecond_before_midnight"] > 0
    for side in training_set.SIDES:
        assert training_set.run_side(data_dir, side, Path(labels["path"]), "user_spend_daily")["rows"] == 400
    checked = training_set.compare(data_dir, "user_spend_daily")
    assert checked["mismatching_values"] == 0 and checked["mismatching_label_values"] == 0
    assert 0 < checked["labels_with_features"] < 400

    ours_path = training_set.output_path(data_dir, "ours")
    ours = pq.read_table(ours_path)
    spend = ours.column("spend_7d").to_pylist()
    changed = next(i for i, v in enumerate(spend) if v is not None)
    spend[changed] += 0.01
    pq.write_table(ours.set_column(ours.schema.get_field_index("spend_7d"), "spend_7d", pa.array(spend)), ours_path)
    assert training_set.compare(data_dir, "user_spend_daily")["mismatching_by_feature"] == {"spend_7d": 1}

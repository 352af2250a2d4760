"""A changed feature declaration on real runs. Gold records each feature's fingerprint: a frozen gold stops
the run naming the features whose definitions changed (same column names, other values), evolve rebuilds
the table in place, and a quality gate that fails after such a rebuild puts the previous gold back."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from features import registry
from features.declarations import FeatureSet
from features.registry import feature_set
from tests.conftest import run_small_sample, small_config
from tests.test_pipeline_e2e import _assert_gold_equals_oracle

pytestmark = pytest.mark.e2e
GOLD = "gold.user_spend_daily"
NEXT_DAY = "cutoff=2026-01-22T00:00:00Z"  # the new batch holds the events of 2026-01-21
FROZEN = "(schema_policy.gold=freeze; set evolve to accept it)"


def _changed(fs: FeatureSet, aggregation: str, **changes) -> FeatureSet:
    return dataclasses.replace(fs, aggregations=tuple(dataclasses.replace(a, **changes) if a.name == aggregation
                                                      else a for a in fs.aggregations))


def _declare(monkeypatch, cfg, fs: FeatureSet) -> None:
    """From here on the registry finds `fs` as the project's declaration of its set, as if the set's module had
    been edited (the registry loads each module once per process, under this name)."""
    module = types.ModuleType(fs.name)
    module.FEATURE_SET = fs  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, registry.module_name(Path(cfg.project).resolve(), fs.name), module)


def _gold(cfg):
    """What a reader of gold sees: current snapshot, columns, fingerprint properties and every row."""
    from pipelines.io.lake import Lake

    table = Lake(cfg.catalog).table(GOLD)
    rows = table.scan().to_arrow()
    return {"snapshot": table.current_snapshot().snapshot_id, "columns": rows.column_names,
            "properties": {k: v for k, v in table.properties.items() if k.startswith("medallion.")},
            "rows": rows.sort_by([("user_id", "ascending"), ("as_of", "ascending")]).to_pylist()}


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_session):
    cfg, summary = run_small_sample(tmp_path_factory.mktemp("rebuild"))
    assert summary["quality"]["passed"]
    return cfg


def test_a_failed_gate_after_a_rebuild_puts_the_previous_gold_back(base, monkeypatch):
    from pipelines.quality.gate import QualityGateError
    from pipelines.run import run

    before = _gold(base)
    assert before["properties"]["medallion.declaration_fingerprint"] == feature_set("user_spend_daily").fingerprint()
    _declare(monkeypatch, base, _changed(feature_set("user_spend_daily"), "spend", windows=("7d", "14d", "30d", "90d")))
    folder = Path(base.sample['output_dir']) / "transactions"
    day = pd.read_csv(folder / "2026-01-19.csv", dtype=str, keep_default_na=False)  # a plausible next day
    day["tx_id"] = "r" + day["tx_id"]
    day["ts"] = day["ts"].str.replace("2026-01-19", "2026-01-21")
    day.to_csv(folder / "2026-01-21.csv", index=False)
    try:
        with pytest.raises(QualityGateError, match=r"gold\.user_spend_daily"):  # rebuilt, then rolled back
            run(small_config(base.data_dir, NEXT_DAY, "schema_policy.gold=evolve",
                             "quality.completeness.threshold=1.01"))  # no column is more than 100% complete
    finally:
        (folder / "2026-01-21.csv").unlink()
    assert _gold(base) == before  # the snapshot, the columns, the fingerprints and the rows from before the run


def test_a_redefined_feature_stops_a_frozen_gold_and_evolve_rebuilds_it(base, monkeypatch):
    from pipelines.run import run
    from validation.schema_policy import SchemaChangeError

    before = _gold(base)
    mean = _changed(feature_set("user_spend_daily"), "spend", agg="mean")  # same columns, other values
    _declare(monkeypatch, base, mean)
    with pytest.raises(SchemaChangeError) as stopped:
        run(small_config(base.data_dir))
    assert str(stopped.value) == (
        "schema change stopped the run: feature set 'user_spend_daily' has changed definition(s) of "
        f"['spend_7d', 'spend_30d', 'spend_90d'], and gold.user_spend_daily is frozen {FROZEN}")
    assert _gold(base) == before

    summary = run(small_config(base.data_dir, "schema_policy.gold=evolve"))
    _assert_gold_equals_oracle(summary, "user_spend_daily")  # every row by the new definition
    properties = _gold(base)["properties"]
    assert properties["medallion.declaration_fingerprint"] == mean.fingerprint()
    assert json.loads(properties["medallion.feature_fingerprints"]) == mean.feature_fingerprints()
    assert run(small_config(base.data_dir))["new_data"] is False  # frozen again, nothing changed: no rebuild


def test_a_backfill_under_a_changed_declaration_stops_before_any_write(base, monkeypatch):
    from pipelines.io.lake import Lake
    from pipelines.run import backfill
    from validation.schema_policy import SchemaChangeError

    lake = Lake(base.catalog)
    snapshots = {".".join(t): lake.table(".".join(t)).current_snapshot().snapshot_id
                 for ns in ("bronze", "silver", "quarantine", "gold") for t in lake.catalog.list_tables(ns)}
    # a window more: other than every declaration the tests above left gold built by
    _declare(monkeypatch, base, _changed(feature_set("user_spend_daily"), "spend", windows=("7d", "14d", "30d", "90d")))
    with pytest.raises(SchemaChangeError) as stopped:  # evolve too: a backfill rebuilds an interval, not the table
        backfill(small_config(base.data_dir, "schema_policy.gold=evolve", "backfill.start=2026-01-01",
                              "backfill.end=2026-02-01",
                              "datasets.transactions.columns.amount.range.max=150"))  # silver would change
    assert str(stopped.value) == (
        "backfill stopped: feature set 'user_spend_daily' is declared differently from what gold.user_spend_daily "
        "holds; `medallion run schema_policy.gold=evolve` rebuilds the table")
    lake = Lake(base.catalog)
    assert {i: lake.table(i).current_snapshot().snapshot_id for i in snapshots} == snapshots

"""The vectorised SQLite online write (serving/online_sqlite.py) stores exactly what Feast's own write stores."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from features.declarations import Attribute, Entity as DeclaredEntity, FeatureSet, WindowAggregation
from serving import online_sqlite

FS = FeatureSet(
    name="fv",
    entity=DeclaredEntity(name="thing", join_key="thing_id", dtype="int64", description="a thing"),
    source_table="transactions",
    timestamp_column="ts",
    entity_table="users",
    description="edge cases",
    aggregations=(
        WindowAggregation("total", "amount", "sum", ("7d",), "float64", "a float"),
        WindowAggregation("n", None, "count", ("7d",), "int64", "an int"),
    ),
    attributes=(Attribute("label", "country", "string", "a string"),),
)


def _store(repo: Path) -> FeatureStore:
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "t", "provider": "local", "offline_store": {"type": "file"},
        "registry": {"registry_type": "file", "path": str(repo / "registry.db")},
        "online_store": {"type": "sqlite", "path": str(repo / "online.db")},
        "entity_key_serialization_version": 3}))
    store = FeatureStore(repo_path=str(repo))
    entity = Entity(name="thing", join_keys=["thing_id"], value_type=ValueType.INT64)
    view = FeatureView(name="fv", entities=[entity], ttl=dt.timedelta(days=2), online=True,
                       source=FileSource(path=str(repo / "none.parquet"), timestamp_field="as_of"),
                       schema=[Field(name="thing_id", dtype=Int64), Field(name="total_7d", dtype=Float64),
                               Field(name="n_7d", dtype=Int64), Field(name="label", dtype=String)])
    store.apply([entity, view])
    return store


def _rows(store: FeatureStore):
    with sqlite3.connect(Path(store.config.online_store.path)) as con:
        return sorted(con.execute("SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
                                  "FROM t_fv").fetchall())


@pytest.fixture
def frame() -> pd.DataFrame:
    day = pd.Timestamp("2026-04-01", tz="UTC")
    return pd.DataFrame({
        "thing_id": [1, 2, 3, -5, 2**40, 7],
        "as_of": [day, day, day - pd.Timedelta(days=1), day, day, day],
        "total_7d": [1.5, np.nan, 0.0, -2.25, 100.0, 0.1 + 0.2],
        "n_7d": pd.array([1, None, 0, -3, 2**40, 127], dtype="Int64"),
        "label": pd.array(["DE", None, "", "é", "x" * 200, "SE"], dtype="string"),
    })


def test_same_bytes_as_feasts_write(tmp_path, frame):
    feast_side, ours = _store(tmp_path / "feast"), _store(tmp_path / "ours")
    feast_side.write_to_online_store("fv", frame)
    assert online_sqlite.supports(ours)
    online_sqlite.write_rows(ours, FS, frame)
    assert _rows(ours) == _rows(feast_side)


def test_read_back_through_feast_and_upsert(tmp_path, frame):
    store = _store(tmp_path / "ours")
    online_sqlite.write_rows(store, FS, frame.assign(total_7d=0.0))
    online_sqlite.write_rows(store, FS, frame)  # a second write replaces, never duplicates
    refs = ["fv:total_7d", "fv:n_7d", "fv:label"]
    got = store.get_online_features(features=refs, entity_rows=[{"thing_id": k} for k in frame["thing_id"]]).to_df()
    expected = frame.drop(columns="as_of")
    for name in ("total_7d", "n_7d", "label"):
        a, b = got[name].astype(object).to_numpy(), expected[name].astype(object).to_numpy()
        same = [(pd.isna(x) and pd.isna(y)) or x == y for x, y in zip(a, b)]
        assert all(same), (name, a, b)
    assert len(_rows(store)) == len(frame) * 3

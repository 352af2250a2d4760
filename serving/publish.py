"""Publishing gold to Feast: apply the derived objects, write the newest row of each changed entity to the
online store, then check online against offline values for a sample of those entities.

Into Feast's SQLite online store the rows are written by `serving.online_sqlite` (the same table and bytes
as Feast's `write_to_online_store`, vectorised: Feast's own write builds a protobuf and runs an upsert per
value, a few thousand entities per second); any other online store (Redis in prod) gets Feast's write."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pandas as pd
from feast import FeatureStore
from pyiceberg.expressions import AlwaysFalse, GreaterThanOrEqual, In

from features.declarations import FeatureSet
from pipelines.io.lake import Lake
from pipelines.config import PipelineConfig
from serving import applied, online_sqlite
from serving.online_sqlite import feast_sqlite_timestamps
from serving.applied import repo_path
from serving.feast_repo import feast_objects, render_feature_store_yaml

CONSISTENCY_SAMPLE = 25


@dataclass
class PublishResult:
    feature_set: str
    entities_written: int
    checked: int
    mismatches: int


def open_store(cfg: PipelineConfig) -> FeatureStore:
    render_feature_store_yaml(cfg)
    return FeatureStore(repo_path=str(repo_path(cfg)))


def apply(store: FeatureStore, sets: List[FeatureSet], cfg: PipelineConfig) -> None:
    """Apply the feature sets' Feast objects and record what was applied (`serving.applied`); the old
    record goes first, so an apply that is interrupted or fails leaves no claim behind."""
    applied.forget(cfg)
    store.apply([obj for fs in sets for obj in feast_objects(fs, cfg)])
    applied.record(cfg, sets)


def latest_rows(lake: Lake, fs: FeatureSet, since: dt.date) -> pd.DataFrame:
    """Newest gold row of every entity that has a row on or after `since`, sorted by entity.

    Two reads, so that only the rows published are read whole: the entity keys and as-of days of the
    interval (two columns), then the rows of the as-of days that are some entity's newest (mostly the
    last day: an entity's row exists on every as-of day its longest window sees an event)."""
    identifier, key, as_of = f"gold.{fs.name}", fs.entity.join_key, fs.as_of_column
    start = dt.datetime.combine(since, dt.time(), dt.timezone.utc).isoformat()
    index = lake.read_arrow(identifier, GreaterThanOrEqual(as_of, start), [key, as_of])
    newest = index.group_by(key).aggregate([(as_of, "max")]).to_pandas().rename(columns={f"{as_of}_max": as_of})
    if newest.empty:
        return lake.read_arrow(identifier, AlwaysFalse()).to_pandas()
    days = [ts.isoformat() for ts in sorted(newest[as_of].unique())]
    rows = lake.read_arrow(identifier, In(as_of, days)).to_pandas()
    rows = rows.merge(newest, on=[key, as_of], how="inner")
    return rows.sort_values(key, kind="mergesort").reset_index(drop=True)


def online_values(store: FeatureStore, fs: FeatureSet, keys: List[object]) -> pd.DataFrame:
    refs = [f"{fs.name}:{name}" for name in fs.feature_names()]
    rows = [{fs.entity.join_key: key} for key in keys]
    feast_sqlite_timestamps()
    return store.get_online_features(features=refs, entity_rows=rows).to_df()


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    both_null = a.isna().to_numpy() & b.isna().to_numpy()
    equal = (a.astype(object).to_numpy() == b.astype(object).to_numpy())
    return both_null | equal


def publish(store: FeatureStore, lake: Lake, fs: FeatureSet, since: dt.date) -> PublishResult:
    latest = latest_rows(lake, fs, since)
    if latest.empty:
        return PublishResult(fs.name, 0, 0, 0)
    if online_sqlite.supports(store):
        online_sqlite.write_rows(store, fs, latest)
    else:
        feast_sqlite_timestamps()
        store.write_to_online_store(fs.name, latest)
    sample = latest.sample(n=min(CONSISTENCY_SAMPLE, len(latest)), random_state=0)
    online = online_values(store, fs, sample[fs.entity.join_key].tolist())
    mismatches = 0
    for name in fs.feature_names():
        mismatches += int((~_same(sample[name].reset_index(drop=True), online[name])).sum())
    return PublishResult(fs.name, len(latest), len(sample), mismatches)


def summary(results: List[PublishResult]) -> Dict[str, int]:
    return {f"{r.feature_set}.online_entities_written": r.entities_written for r in results}

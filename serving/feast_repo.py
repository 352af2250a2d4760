"""The Feast repo, derived from the feature declarations and the Hydra config (never written by hand).

Feast reads gold straight from Iceberg (IcebergSource through the DuckDB offline store, via pyiceberg),
so the offline store and the gold table are one copy of the truth.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict, List

import yaml
from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.data_sources.contrib.iceberg_catalog.iceberg_source import IcebergSource
from feast.types import Float64, Int64, String

from features.declarations import FeatureSet
from pipelines.config import PipelineConfig
from serving.applied import repo_path

PROJECT = "medallion"
_FEAST_TYPES = {"float64": Float64, "int64": Int64, "string": String}
_VALUE_TYPES = {"int64": ValueType.INT64, "string": ValueType.STRING}


def render_feature_store_yaml(cfg: PipelineConfig) -> Path:
    repo = repo_path(cfg)
    repo.mkdir(parents=True, exist_ok=True)
    if cfg.online_store.type == "sqlite":
        online: Dict[str, str] = {"type": "sqlite", "path": cfg.online_store.path or str(repo / "online_store.db")}
    else:
        connection = cfg.online_store.connection_string or "localhost:6379"
        if cfg.online_store.password_env:  # Feast expands ${VAR} when it loads the file: no secret on disk
            connection += f",password=${{{cfg.online_store.password_env}}}"
        # skip_dedup: Feast's Redis store otherwise keeps a stored row whose event time is the same as the
        # new one, so a recomputed as-of day (late events) would never reach Redis. Publish writes gold's
        # newest row per entity, which is the truth: it must overwrite.
        online = {"type": "redis", "connection_string": connection, "skip_dedup": True}
    if cfg.registry.type == "sql":  # shared by every client of the feature store (cache: re-read each minute)
        registry: Dict[str, object] = {"registry_type": "sql", "path": cfg.registry.path, "cache_ttl_seconds": 60}
    else:
        registry = {"registry_type": "file", "path": str(repo / "registry.db")}
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": registry,
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
    }
    path = repo / "feature_store.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def gold_source(fs: FeatureSet, cfg: PipelineConfig) -> IcebergSource:
    return IcebergSource(
        name=f"gold_{fs.name}",
        warehouse=cfg.catalog.warehouse,
        namespace="gold",
        table=fs.name,
        catalog_type=cfg.catalog.type,
        catalog_name=cfg.catalog.name,
        # the same properties as the pipeline's catalog (object-store endpoint and region included)
        catalog_properties={"uri": cfg.catalog.uri, "warehouse": cfg.catalog.warehouse,
                            **cfg.catalog.extra_properties()},
        timestamp_field=fs.as_of_column,
        description=f"gold.{fs.name} in the Iceberg catalog {cfg.catalog.name}",
    )


def feast_objects(fs: FeatureSet, cfg: PipelineConfig) -> List[object]:
    entity = Entity(
        name=fs.entity.name,
        join_keys=[fs.entity.join_key],
        value_type=_VALUE_TYPES[fs.entity.dtype],
        description=fs.entity.description,
    )
    descriptions = fs.descriptions()
    view = FeatureView(
        name=fs.name,
        entities=[entity],
        ttl=dt.timedelta(days=fs.ttl_days),
        schema=[Field(name=fs.entity.join_key, dtype=_FEAST_TYPES[fs.entity.dtype])]
        + [Field(name=n, dtype=_FEAST_TYPES[d], description=descriptions[n]) for n, d in fs.feature_dtypes().items()],
        source=gold_source(fs, cfg),
        online=True,
        description=fs.description,
    )
    service = FeatureService(name=f"{fs.name}_service", features=[view], description=fs.description)
    return [entity, view, service]

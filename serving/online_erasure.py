"""Erasing one entity from the Feast online store. Feast has no delete-entity API, so this removes the
entity's stored rows the way each online store keys them (the same serialization Feast writes with)."""

from __future__ import annotations

import sqlite3
from typing import Dict, List

from feast.infra.online_stores.helpers import _redis_key, compute_table_id, serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features.registry import feature_sets
from pipelines.config import PipelineConfig
from serving.feast_repo import PROJECT

SERIALIZATION_VERSION = 3  # as rendered into feature_store.yaml


def _entity_key(join_key: str, key: str, dtype: str) -> EntityKeyProto:
    value = ValueProto(int64_val=int(key)) if dtype == "int64" else ValueProto(string_val=key)
    return EntityKeyProto(join_keys=[join_key], entity_values=[value])


def erase_online(cfg: PipelineConfig, join_key: str, key: str) -> Dict[str, int]:
    """Rows removed per feature view (for Redis: keys removed, one per entity for all its views)."""
    from serving.publish import open_store

    sets = [fs for fs in feature_sets(cfg.features.sets, cfg.project) if fs.entity.join_key == join_key]
    if not sets:
        return {}
    store = open_store(cfg)
    entity_key = _entity_key(join_key, key, sets[0].entity.dtype)
    serialized = serialize_entity_key(entity_key, entity_key_serialization_version=SERIALIZATION_VERSION)
    removed: Dict[str, int] = {}
    if cfg.online_store.type == "sqlite":
        path = store.config.online_store.path
        with sqlite3.connect(path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for fs in sets:
                view = store.get_feature_view(fs.name)
                table = compute_table_id(PROJECT, view, False)
                if table in tables:
                    removed[fs.name] = conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?',
                                                    (serialized,)).rowcount
    else:
        import redis

        client = redis.Redis.from_url(_redis_url(cfg.online_store.connection_string or "localhost:6379"))
        removed["redis_keys"] = int(client.delete(_redis_key(PROJECT, entity_key, SERIALIZATION_VERSION)))
    return removed


def _redis_url(connection_string: str) -> str:
    """Feast's `host:port,db=N,password=...` form as a redis:// URL."""
    parts: List[str] = connection_string.split(",")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    auth = f":{options['password']}@" if "password" in options else ""
    return f"redis://{auth}{parts[0]}/{options.get('db', '0')}"

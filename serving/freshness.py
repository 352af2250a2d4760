"""How fresh each feature set's published features are: the last as-of published and its age.

    from serving.freshness import report
    report(Lake(cfg.catalog), feature_sets(cfg.features.sets, cfg.project))            # from gold
    report(lake, sets, store=open_store(cfg))                                          # from the online store

Why: a feature view's ttl only says how old a row may be; whether the pipeline keeps up is a separate
question that nothing answered without reading rows. Each entry says when the newest as-of was computed
for (`as_of_last`, a midnight UTC), how old that is at `measured_at` (default: now), the view's ttl and
whether the newest row is already past it (`stale`: then every online read of the set is stale, see
`serving/online.py`). The run summary carries this (`freshness`), measured when the run ends.

Where the as-of comes from:
- the online store, when a store is given and it is Feast's SQLite store: the newest event time of the
  view's table, i.e. exactly what online reads see (`from: online`). Other stores (Redis) keep no index
  over event times, so they fall back to gold.
- gold otherwise (`from: gold`): the newest as-of from the data files' column bounds (no data read).
  Not the snapshot property `as_of_last`: a commit records the interval it recomputed (a backfill's is older than what gold holds), and `medallion
  maintain` expires the snapshots that carried it. Publishing writes gold's newest row per entity after
  the quality gate, so gold's newest as-of is the one published; after a crash between the two, the
  resuming run publishes it.
No Feast import unless a store is given: a run with nothing to publish never imports Feast.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional


from features.declarations import FeatureSet
from pipelines.io.lake import Lake


def report(lake: Lake, sets: List[FeatureSet], now: Optional[dt.datetime] = None,
           store: Any = None) -> Dict[str, Dict[str, Any]]:
    """Per feature set: as_of_last (ISO, None before anything was published), age_hours, ttl_hours,
    stale (age > ttl; a ttl of 0 never lapses), from (online | gold) and measured_at."""
    at = _utc(now) if now is not None else dt.datetime.now(dt.timezone.utc)  # naive: read as UTC
    out: Dict[str, Dict[str, Any]] = {}
    for fs in sets:
        last, origin = (online_as_of_last(store, fs), "online") if store is not None else (None, "gold")
        if last is None:
            last, origin = gold_as_of_last(lake, fs), "gold"
        ttl = dt.timedelta(days=fs.ttl_days)
        age = at - last if last is not None else None
        out[fs.name] = {
            "as_of_last": last.isoformat() if last is not None else None,
            "age_hours": round(age.total_seconds() / 3600, 3) if age is not None else None,
            "ttl_hours": fs.ttl_days * 24,
            "stale": bool(ttl and age > ttl) if age is not None else None,
            "from": origin,
            "measured_at": at.isoformat(),
        }
    return out


def gold_as_of_last(lake: Lake, fs: FeatureSet) -> Optional[dt.datetime]:
    """The newest as-of instant in gold.<set> (column bounds: no data read), None when absent or empty."""
    newest = lake.upper_bound(f"gold.{fs.name}", fs.as_of_column)
    return _utc(newest) if newest is not None else None


def online_as_of_last(store: Any, fs: FeatureSet) -> Optional[dt.datetime]:
    """The newest event time of the view's rows in Feast's SQLite online store; None for another store,
    or when the view has no rows yet."""
    from feast.errors import FeatureViewNotFoundException
    from feast.infra.online_stores.helpers import compute_table_id

    if store.config.online_store.type != "sqlite":
        return None
    try:
        view = store.get_feature_view(fs.name)
    except FeatureViewNotFoundException:  # never applied, so never published
        return None
    path = Path(store.config.online_store.path)
    path = path if path.is_absolute() else Path(store.repo_path) / path
    table = compute_table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            newest = con.execute(f'SELECT MAX(event_ts) FROM "{table}"').fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # no database or table yet: both come with the first write
        return None
    if newest is None:
        return None
    if isinstance(newest, (int, float)):  # Feast's sqlite3 adapter: epoch seconds
        return dt.datetime.fromtimestamp(newest, dt.timezone.utc)
    return _utc(dt.datetime.fromisoformat(str(newest)))


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)

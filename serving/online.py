"""Online reads that tell stale rows from fresh ones.

    from serving.online import get_online_features
    frame = get_online_features(cfg, ["<feature set>"], [{"<join key>": 42}])          # or a FeatureStore
    frame = get_online_features(store, "<feature set>_service", rows, max_age=dt.timedelta(hours=6))

Why: Feast 0.67's `FeatureStore.get_online_features` does not look at a feature view's ttl. Its read path
(`OnlineStore.get_online_features` -> `utils._populate_response_from_feature_data`) marks every row it
finds PRESENT, however old; only the pre-computed vectors of a `FeatureService(precompute_online=True)`
are checked against the ttl (OUTSIDE_MAX_AGE), and Redis's `key_ttl_seconds` expires whole keys, not by
view. Training sets do honour the ttl (`get_historical_features` and `serving/pit_join.py` keep a row
only while `as_of + ttl >= t`), so a model trained with nulls for lapsed rows would be served months-old
values as if they were current: a train/serve skew no error reports.

Policy (the same rule as the point-in-time join, so serving sees what training saw): a row is STALE when
`now - as_of > max_age`, `as_of` being the row's event timestamp (the gold as-of instant it was computed
for) and `max_age` the view's ttl unless given (a timedelta for every view, or {view: timedelta}); a ttl
of 0 means no limit, as Feast reads it. An age equal to max_age is still fresh. A stale row's values come
back null, as a lapsed row does in training, and each feature has a `<feature>__status` column:

    PRESENT     a fresh row (its value may itself be null, e.g. a mean over no events)
    STALE       a row older than max_age: the value is null (Feast's own name is OUTSIDE_MAX_AGE)
    NOT_FOUND   no online row for the entity

plus one `<view>__as_of` column per feature view (the row's as-of, NaT when not found), so the age of
any value is visible. `now` (default: the wall clock) only measures ages: the online store holds the newest
row of each entity, so a `now` before it is not time travel (such a row counts as fresh).

Requests are checked before Feast is asked, each problem one line: an unknown feature set, service or
feature names the valid ones; a join key is cast to the entity's type when nothing is lost ("42" -> 42,
42.0 -> 42, 42 -> "42" for a string key) and refused otherwise ("4.2", 4.7, True), where Feast itself
would silently truncate 4.7 to 4 and read True as 1.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.value_type import ValueType

from pipelines.config import PipelineConfig

STATUS_SUFFIX = "__status"
AS_OF_SUFFIX = "__as_of"
PRESENT, STALE, NOT_FOUND = "PRESENT", "STALE", "NOT_FOUND"
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_PANDAS_DTYPES = {ValueType.INT64: "Int64", ValueType.INT32: "Int64", ValueType.DOUBLE: "float64",
                  ValueType.FLOAT: "float64"}

MaxAge = Union[None, dt.timedelta, Mapping[str, dt.timedelta]]
# per store, (registry copy, request) -> resolved views: building Feast's objects from the registry costs
# more than a one-entity read itself (~7 ms against ~1 ms); dropped when Feast reloads its registry copy
_RESOLVED: "weakref.WeakKeyDictionary[FeatureStore, Dict[tuple, List[_View]]]" = weakref.WeakKeyDictionary()


class OnlineReadError(ValueError):
    """The request cannot be read as given; the message is one line naming what is valid."""


@dataclass(frozen=True)
class _View:
    name: str
    features: List[str]  # requested, in the view's order
    join_keys: Dict[str, ValueType]
    ttl: Optional[dt.timedelta]
    dtypes: Dict[str, ValueType]


def get_online_features(
    source: Union[PipelineConfig, FeatureStore],
    features: Union[str, Sequence[str]],
    entity_rows: Union[Sequence[Mapping[str, Any]], pd.DataFrame],
    max_age: MaxAge = None,
    now: Union[None, str, dt.datetime, pd.Timestamp] = None,
    full_feature_names: bool = False,
) -> pd.DataFrame:
    """One row per entity row, in order: the join keys (cast), each feature with its `__status`, and each
    view's `__as_of`. `features`: feature set names, `<set>_service`, `<set>:<feature>` or a feature
    name found in one set only. Given a config, the store is opened (and its yaml rendered) per call:
    for many reads, pass `serving.publish.open_store(cfg)` instead."""
    store = source if isinstance(source, FeatureStore) else _open(source)
    views = _resolved(store, [features] if isinstance(features, str) else list(features))
    _check(views, max_age, full_feature_names)
    rows = _cast_rows(entity_rows, views)
    limits = {v.name: _limit(v, max_age) for v in views}
    at = _instant(now)
    from serving.online_sqlite import feast_sqlite_timestamps  # Feast's sqlite3 converters, which pandas replaces

    feast_sqlite_timestamps()
    response = store.get_online_features(features=[f"{v.name}:{f}" for v in views for f in v.features],
                                         entity_rows=rows, full_feature_names=full_feature_names)
    proto, values = response.proto, response.to_dict()
    names = list(proto.metadata.feature_names.val)  # the response's order, not necessarily the request's
    out: Dict[str, Any] = {key: [row[key] for row in rows] for v in views for key in v.join_keys}
    for view in views:
        first = proto.results[names.index(_column(view.name, view.features[0], full_feature_names))]
        found = np.array([status == FieldStatus.PRESENT for status in first.statuses])
        micros = np.array([t.seconds * 1_000_000 + t.nanos // 1000 for t in first.event_timestamps], dtype=np.int64)
        as_of = pd.Series(pd.to_datetime(micros, unit="us", utc=True)).where(found)
        limit = limits[view.name]
        stale = found & ((at - as_of) > limit).to_numpy() if limit is not None else np.zeros(len(found), bool)
        status = np.where(stale, STALE, np.where(found, PRESENT, NOT_FOUND))
        for feature in view.features:
            column = _column(view.name, feature, full_feature_names)
            cells = [None if old else value for value, old in zip(values[column], stale)]
            out[column] = pd.Series(cells, dtype=_PANDAS_DTYPES.get(view.dtypes[feature], "object"))
            out[column + STATUS_SUFFIX] = status
        out[view.name + AS_OF_SUFFIX] = as_of
    return pd.DataFrame(out)


def _check(views: List["_View"], max_age: MaxAge, full_feature_names: bool) -> None:
    asked = [f for v in views for f in v.features]
    doubled = sorted({f for f in asked if asked.count(f) > 1})
    if doubled and not full_feature_names:
        raise OnlineReadError(f"feature(s) {doubled} asked for from several feature sets: pass "
                              "full_feature_names=True (columns <set>__<feature>)")
    unknown = sorted(set(max_age) - {v.name for v in views}) if isinstance(max_age, Mapping) else []
    if unknown:
        raise OnlineReadError(f"max_age names {unknown}, not asked for (asked: {', '.join(v.name for v in views)})")


def _column(view: str, feature: str, full_feature_names: bool) -> str:
    return f"{view}__{feature}" if full_feature_names else feature


def _open(cfg: PipelineConfig) -> FeatureStore:
    from serving.publish import open_store

    return open_store(cfg)


def _resolved(store: FeatureStore, asked: List[str]) -> List[_View]:
    """`_resolve`, remembered while Feast's cached copy of the registry is the same and still valid."""
    registry = store.registry
    stamp = getattr(registry, "cached_registry_proto_created", None)
    valid = getattr(registry, "is_cache_valid", None)
    if stamp is None or not callable(valid) or not valid():
        return _resolve(store, asked)
    known = _RESOLVED.setdefault(store, {})
    key = (stamp, tuple(asked))
    if key not in known:
        if len(known) > 256 or any(k[0] != stamp for k in known):
            known.clear()
        known[key] = _resolve(store, asked)
    return known[key]


def _resolve(store: FeatureStore, asked: List[str]) -> List[_View]:
    """The views and features asked for, in the order first asked; anything unknown stops here."""
    # Feast's cached copy of the registry, as its own online read uses (FeatureStore.list_* reload it)
    views = {fv.name: fv for fv in store.registry.list_feature_views(store.project, allow_cache=True)}
    services = {s.name: s for s in store.registry.list_feature_services(store.project, allow_cache=True)}
    if not asked:
        raise OnlineReadError(f"no features asked for (feature sets: {', '.join(sorted(views))})")
    wanted: Dict[str, List[str]] = {}

    def want(view: str, feature: str) -> None:
        chosen = wanted.setdefault(view, [])
        if feature not in chosen:
            chosen.append(feature)

    for item in asked:
        if item in views:
            for field in views[item].features:
                want(item, field.name)
        elif item in services:
            for projection in services[item].feature_view_projections:
                for field in projection.features:
                    want(projection.name, field.name)
        elif ":" in item:
            view, _, feature = item.partition(":")
            if view not in views:
                raise OnlineReadError(f"unknown feature set {view!r} in {item!r} (valid: {', '.join(sorted(views))})")
            valid = [f.name for f in views[view].features]
            if feature not in valid:
                raise OnlineReadError(f"unknown feature {feature!r} in feature set {view!r} (valid: {', '.join(valid)})")
            want(view, feature)
        else:
            holders = [name for name, fv in sorted(views.items()) if item in {f.name for f in fv.features}]
            if len(holders) != 1:
                known = sorted(views) + sorted(services) + [f"{n}:{f.name}" for n, fv in sorted(views.items())
                                                            for f in fv.features]
                what = f"ambiguous feature {item!r} (in {', '.join(holders)}: write <set>:{item})" if holders \
                    else f"unknown feature set, service or feature {item!r}"
                raise OnlineReadError(f"{what} (valid: {', '.join(known)})")
            want(holders[0], item)
    out = []
    for name, feats in wanted.items():
        fv = views[name]
        out.append(_View(name, feats, {c.name: c.dtype.to_value_type() for c in fv.entity_columns},
                         fv.ttl, {f.name: f.dtype.to_value_type() for f in fv.features}))
    return out


def _cast_rows(entity_rows: Union[Sequence[Mapping[str, Any]], pd.DataFrame], views: List[_View]) -> List[Dict[str, Any]]:
    rows = entity_rows.to_dict("records") if isinstance(entity_rows, pd.DataFrame) else list(entity_rows)
    keys: Dict[str, ValueType] = {k: t for v in views for k, t in v.join_keys.items()}
    if not rows:
        raise OnlineReadError(f"no entity rows given (join keys: {', '.join(keys)})")
    out = []
    for i, row in enumerate(rows):
        extra = sorted(set(row) - set(keys))
        missing = [k for k in keys if k not in row]
        if extra or missing:
            raise OnlineReadError(f"entity row {i} has keys {sorted(row)}; the features asked for join on "
                                  f"{', '.join(keys)}")
        out.append({k: cast_key(k, keys[k], row[k], i) for k in keys})
    return out


def cast_key(name: str, value_type: ValueType, value: Any, row: int = 0) -> Any:
    """`value` as the join key's type when nothing is lost; else one line naming the key and value."""
    def refuse(why: str) -> OnlineReadError:
        return OnlineReadError(f"entity row {row}: {name}={value!r} {why}")

    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise refuse("is missing")
    if isinstance(value, (bool, np.bool_)):
        raise refuse(f"is a boolean; the join key is {value_type.name.lower()}")
    if value_type == ValueType.STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        raise refuse("does not convert to the join key's type string without loss")
    if value_type != ValueType.INT64:  # the declarations give int64 or string keys only
        return value
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise refuse("does not convert to the join key's type int64 without loss")
    if not _INT64[0] <= number <= _INT64[1]:
        raise refuse("is out of the int64 range")
    return number


def _limit(view: _View, max_age: MaxAge) -> Optional[pd.Timedelta]:
    """The age above which a row of `view` is stale; None for no limit."""
    limit = max_age.get(view.name) if isinstance(max_age, Mapping) else max_age
    if limit is None:  # the view's ttl; none or 0 is no limit, as Feast reads a ttl
        if not view.ttl:
            return None
        limit = view.ttl
    if not isinstance(limit, dt.timedelta) or limit < dt.timedelta(0):
        raise OnlineReadError(f"max_age for {view.name!r} must be a timedelta >= 0, not {limit!r}")
    return pd.Timedelta(limit)


def _instant(now: Union[None, str, dt.datetime, pd.Timestamp]) -> pd.Timestamp:
    """`now` as a UTC instant; a naive one is read as UTC, as the pipeline reads naive times."""
    if now is None:
        return pd.Timestamp.now(tz="UTC")
    try:
        at = pd.Timestamp(now)
    except (ValueError, TypeError) as exc:
        raise OnlineReadError(f"now={now!r} is not an instant ({str(exc).splitlines()[0]})") from None
    return at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")

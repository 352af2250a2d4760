"""Build: silver events -> gold.<feature set>, one row per entity per as-of day.

Distribution: events are hash-partitioned by entity key (every event of an entity lands in one group)
and each group is computed by the pure engine in `features.engine`, vectorised over the whole group.

Idempotency and incrementality: gold records the bronze runs whose silver rows it reflects
(`bronze_runs`). New silver rows on event days d1..d2 change exactly the as-of days d1+1 .. d2+W (W the
longest window); that interval is recomputed from silver and replaces the same interval of gold in one
commit. A changed declaration (different gold columns, or a feature whose definition's fingerprint differs
from the one the table records) rebuilds the whole table, in place: the old snapshots stay reachable.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyiceberg.expressions import In
from ray.data.expressions import col

from features.declarations import FeatureSet
from features.engine import build_features, events_from_arrow, gold_arrow_schema, to_arrow
from pipelines import digest, logs, ray_runtime
from pipelines.commit_record import CommitRecord, history
from pipelines.config import DatasetConfig
from pipelines.context import RunContext
from pipelines.io.lake import TableSpec, day_range, midnight
from validation import schema_policy
from validation.gold import contract as gold_contract

DAY = dt.timedelta(days=1)
# Table properties of gold: a sha256 of the whole declaration, and one per feature (JSON), to name the
# features whose definitions changed (features.declarations.FeatureSet.fingerprint).
FINGERPRINT = "medallion.declaration_fingerprint"
FEATURE_FINGERPRINTS = "medallion.feature_fingerprints"
SLICE_EVENTS = 2_000_000  # events per slice of entities when the slices are cut in the driver process


@dataclass
class GoldResult:
    identifier: str
    first_as_of: Optional[dt.date] = None  # the recomputed interval (inclusive), None when nothing changed
    last_as_of: Optional[dt.date] = None
    rows_written: int = 0


def table_spec(fs: FeatureSet) -> TableSpec:
    """Gold's schema, and the fingerprints of the declaration it is computed from (table properties)."""
    fingerprints = {FINGERPRINT: fs.fingerprint(), FEATURE_FINGERPRINTS: json.dumps(fs.feature_fingerprints())}
    return TableSpec(f"gold.{fs.name}", gold_arrow_schema(fs), day_partition=fs.as_of_column, properties=fingerprints)


def _redefined(ctx: RunContext, spec: TableSpec) -> Tuple[str, ...]:
    """The features of both the table and the declaration whose definitions differ (by fingerprint). A table
    written before fingerprints were recorded has none to compare: its columns alone decide."""
    recorded = ctx.lake.table(spec.identifier).properties
    if recorded.get(FINGERPRINT, spec.properties[FINGERPRINT]) == spec.properties[FINGERPRINT]:
        return ()
    held = json.loads(recorded.get(FEATURE_FINGERPRINTS, "{}"))
    declared = json.loads(spec.properties[FEATURE_FINGERPRINTS])
    return tuple(name for name, fingerprint in declared.items() if held.get(name, fingerprint) != fingerprint)


def _declaration_changed(ctx: RunContext, spec: TableSpec) -> bool:
    return ctx.lake.columns(spec.identifier) != spec.schema.names or bool(_redefined(ctx, spec))


def silver_day_range(ctx: RunContext, events: DatasetConfig) -> Optional[Tuple[dt.date, dt.date]]:
    """First and last event day in an events dataset's silver, from partition metadata (no data read)."""
    days = ctx.lake.rows_by_day(f"silver.{events.name}", events.event_time)
    days = [d for d, rows in days.items() if rows]
    return (min(days), max(days)) if days else None


def _changed_days(ctx: RunContext, silver_id: str, runs: List[str], event_time: str) -> Optional[Tuple[dt.date, dt.date]]:
    """Event days of the silver rows of these bronze runs: from the silver commits' `refined` records
    (no data read); from the rows themselves for commits without one."""
    days, covered = [], set()
    for record in history(ctx.lake, silver_id):
        consumed = set(record.bronze_runs) & set(runs)
        if consumed and record.refined is not None:
            covered |= consumed
            days += [d for d in (record.refined.first_day, record.refined.last_day) if d is not None]
    if covered >= set(runs):
        return (min(days), max(days)) if days else None
    ds = ctx.lake.read_ray(silver_id, In("_run_id", runs), [event_time])
    if ds.count() == 0:
        return None
    return ds.min(event_time).date(), ds.max(event_time).date()


def compute_local(events_table: pa.Table, fs: FeatureSet, first: dt.date, last: dt.date,
                  entities: Optional[pd.DataFrame]) -> pa.Table:
    """Gold rows for as-of days [first, last] from these events, validated against the gold contract."""
    events, scales = events_from_arrow(events_table)
    frame = build_features(events, fs, first, last, entities, scales)
    gold_contract(fs).validate(frame)
    return to_arrow(frame, fs)


def compute_in_slices(events: pa.Table, fs: FeatureSet, first: dt.date, last: dt.date,
                      entities: Optional[pd.DataFrame], slice_events: int = SLICE_EVENTS,
                      workers: int = 0) -> List[pa.Table]:
    """`compute_local` over hash slices of entities: the same partitioning the Ray path uses (every event
    of an entity in one slice), so the engine's pandas working set is bounded by a slice (~2M events).
    The slices are cut here, in one process, instead of by a shuffle; with `workers` they are computed
    as that many Ray tasks at a time (the slice count rounded up to a multiple of it), else one after the
    other in this process. Returns the slices' gold rows."""
    slices = max(1, -(-events.num_rows // slice_events))
    if workers and slices > 1:
        slices = -(-slices // workers) * workers
    if slices == 1:
        return [compute_local(events, fs, first, last, entities)]
    bucket = _with_bucket(events.select([fs.entity.join_key]), fs.entity.join_key, slices).column("_bucket")
    parts = [events.filter(pc.equal(bucket, index)) for index in range(slices)]
    if not workers:
        return [compute_local(part, fs, first, last, entities) for part in parts]
    shared = ray.put(entities)
    _ship_by_value(fs)
    return ray.get([_compute_slice.remote(part, fs, first, last, shared) for part in parts])


def _ship_by_value(fs: FeatureSet) -> None:
    """A feature set's derived functions live in its project's module, loaded from a file: Ray tasks
    get them by value (a worker cannot import that module by name)."""
    ray_runtime.pickle_by_value(sorted({d.fn.__module__ for d in fs.derived}))


@ray.remote
def _compute_slice(events: pa.Table, fs: FeatureSet, first: dt.date, last: dt.date,
                   entities: Optional[pd.DataFrame]) -> pa.Table:
    return compute_local(events, fs, first, last, entities)


def by_day_ranges(parts: List[pa.Table], column: str, pieces: int) -> List[pa.Table]:
    """The rows of `parts` regrouped into `pieces` tables of consecutive days (about equal in rows): that
    many write tasks can run at once, and each day's rows are in one table (one data file per day)."""
    days = [part.column(column).cast(pa.date32()).cast(pa.int32()).to_numpy() for part in parts]
    values, counts = np.unique(np.concatenate(days), return_counts=True)
    if len(values) <= 1 or pieces <= 1:
        return [pa.concat_tables(parts)]
    # the day each piece starts on: where the running row count crosses each 1/pieces of the rows
    cuts = np.unique(values[np.searchsorted(np.cumsum(counts), np.arange(1, pieces) * counts.sum() / pieces)])
    edges = [values[0]] + [c for c in cuts if c > values[0]] + [values[-1] + 1]
    return [pa.concat_tables([part.filter(pa.array((day >= low) & (day < high))) for part, day in zip(parts, days)])
            for low, high in zip(edges[:-1], edges[1:])]


def _compute_group(group: pa.Table, fs: FeatureSet, first: dt.date, last: dt.date,
                   entities: Optional[pd.DataFrame]) -> pa.Table:
    return compute_local(group.drop_columns(["_bucket"]), fs, first, last, entities)


def _with_bucket(batch: pa.Table, key: str, partitions: int) -> pa.Table:
    """Hash partition of the entity key: the integer itself for integer keys, a stable hash otherwise."""
    column = batch.column(key)
    if pa.types.is_integer(column.type):
        hashed = np.abs(column.to_numpy(zero_copy_only=False).astype(np.int64)) % partitions
    else:
        hashed = pd.util.hash_pandas_object(column.to_pandas(), index=False).to_numpy() % partitions
    return batch.append_column("_bucket", pa.array(hashed.astype(np.int64)))


def compute_on_ray(events: ray.data.Dataset, fs: FeatureSet, first: dt.date, last: dt.date,
                   entities: Optional[pd.DataFrame], partitions: int) -> ray.data.Dataset:
    """Gold rows for as-of days [first, last]: hash-partition events by entity, compute each partition."""
    _ship_by_value(fs)
    return (
        events.map_batches(_with_bucket, fn_kwargs={"key": fs.entity.join_key, "partitions": partitions},
                           batch_format="pyarrow")
        .groupby("_bucket", num_partitions=partitions)
        .map_groups(_compute_group, fn_kwargs={"fs": fs, "first": first, "last": last,
                                               "entities": entities}, batch_format="pyarrow")
    )


def absorb(result: GoldResult, commits: List[CommitRecord]) -> None:
    """Widen `result` by the gold commits of interrupted runs (run_state): publish and the gate then cover
    the as-of days those runs recomputed too. An overwrite is two snapshots (delete, append) with the same
    properties; the rows written are the append's."""
    for record in commits:
        if record.as_of is None:
            continue
        first, last = record.as_of
        result.first_as_of = min(first, result.first_as_of) if result.first_as_of else first
        result.last_as_of = max(last, result.last_as_of) if result.last_as_of else last
        result.rows_written += record.added_records


def check_schema(ctx: RunContext, fs: FeatureSet) -> None:
    """Before any write: a declaration whose gold columns, or whose features' definitions (fingerprints),
    differ from the table's is a schema change. freeze stops the run naming them; evolve lets `build`
    rebuild the table."""
    spec = table_spec(fs)
    have = ctx.lake.columns(spec.identifier)
    if not have:
        return
    change = schema_policy.compare(spec.schema.names, have)
    where = f"feature set {fs.name!r}"
    if not change and have != spec.schema.names:
        where += " (same columns, new order)"
        change = schema_policy.ColumnChange(new=tuple(spec.schema.names))
    change = schema_policy.ColumnChange(change.new, change.missing, _redefined(ctx, spec))
    schema_policy.check_frozen("gold", spec.identifier, ctx.cfg.schema_policy.gold, where, change)


def check_backfill(ctx: RunContext, fs: FeatureSet) -> None:
    """Before a backfill writes anything (silver included): an interval recomputed by a changed declaration
    would sit among rows of the old one, whatever the gold policy; a run under evolve rebuilds all of it."""
    spec = table_spec(fs)
    if ctx.lake.exists(spec.identifier) and _declaration_changed(ctx, spec):
        raise schema_policy.SchemaChangeError(
            f"backfill stopped: feature set {fs.name!r} is declared differently from what {spec.identifier} "
            "holds; `medallion run schema_policy.gold=evolve` rebuilds the table")


def build(ctx: RunContext, fs: FeatureSet, events: DatasetConfig) -> GoldResult:
    """The as-of days that the silver rows of bronze runs gold has not seen change, recomputed and
    replaced in one commit (`events` is the declaration of the dataset the feature set aggregates)."""
    log = logs.get().bind(feature_set=fs.name)
    spec = table_spec(fs)
    silver_id = f"silver.{fs.source_table}"
    result = GoldResult(spec.identifier)
    data_days = silver_day_range(ctx, events)
    if data_days is None:
        log.info("silver is empty, nothing to build")
        return result
    silver_runs = list(dict.fromkeys(ctx.lake.recorded(silver_id, "bronze_runs")))
    full = not ctx.lake.exists(spec.identifier)
    # a changed declaration (check_schema let it through): every row is recomputed and the table's columns
    # and rows replaced in one commit, in place, so a failed quality gate can still roll back to the old table
    rebuild = not full and _declaration_changed(ctx, spec)
    if rebuild:
        log.warning("declaration changed, rebuilding gold", table=spec.identifier)
        full = True
    done = set() if full else set(ctx.lake.recorded(spec.identifier, "bronze_runs"))
    pending = [r for r in silver_runs if r not in done]
    if not pending:
        log.info("gold is up to date", table=spec.identifier)
        return result
    window = fs.max_window_days()
    lowest, highest = data_days[0] + DAY, data_days[1] + DAY  # the as-of days gold covers
    if full:
        first, last = lowest, highest
    else:
        changed = _changed_days(ctx, silver_id, pending, str(events.event_time))
        if changed is None:
            first = last = None
        else:
            first, last = max(lowest, changed[0] + DAY), min(highest, changed[1] + window * DAY)
    ctx.read(silver_id)
    if first is None or first > last:  # the pending runs added no silver rows: gold is unchanged
        return result
    gold = _compute(ctx, fs, first, last)
    result.rows_written = gold.count()
    replaces = (col(fs.as_of_column) >= midnight(first)) & (col(fs.as_of_column) <= midnight(last))
    properties = ctx.commit_properties(bronze_runs=tuple(pending), as_of=(first, last))
    snapshot = ctx.lake.replace(gold, spec, properties) if rebuild else \
        ctx.lake.write(gold, spec, properties, overwrite_filter=replaces)
    ctx.wrote(spec.identifier, snapshot)
    result.first_as_of, result.last_as_of = first, last
    log.info("gold written", table=spec.identifier, rows=result.rows_written, as_of_first=str(first),
             as_of_last=str(last), full_rebuild=full)
    return result


def _compute(ctx: RunContext, fs: FeatureSet, first: dt.date, last: dt.date) -> ray.data.Dataset:
    """Gold rows for as-of days [first, last] from silver (materialized). Up to `gold_local_max_events`
    the events are read into this process and cut into entity slices here (no shuffle), the slices
    computed as Ray tasks side by side; above it, hash-partitioned by a Ray shuffle."""
    silver_id = f"silver.{fs.source_table}"
    window = fs.max_window_days()
    needed = [fs.entity.join_key, fs.timestamp_column] + sorted(
        {a.column for a in fs.aggregations if a.column} | {a.where.column for a in fs.aggregations if a.where}
        - {fs.entity.join_key, fs.timestamp_column}
    )
    events_filter = day_range(fs.timestamp_column, first - window * DAY, last)
    entities = None
    if fs.attributes:
        entity_id = f"silver.{fs.entity_table}"
        ctx.read(entity_id)
        columns = [fs.entity.join_key] + sorted({a.column for a in fs.attributes})
        entities = ctx.lake.read_arrow(entity_id, columns=columns).to_pandas()
    silver_rows = ctx.lake.row_count(silver_id)
    if silver_rows <= ctx.cfg.ray.gold_local_max_events:  # slices cut in this process, no shuffle
        events = ctx.lake.read_arrow(silver_id, events_filter, needed)
        ray_runtime.ensure()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        parts = compute_in_slices(events, fs, first, last, entities, workers=cpus)
        del events
        return ray.data.from_arrow(by_day_ranges(parts, fs.as_of_column, cpus))
    ray_runtime.choose_shuffle(ctx.cfg.ray, silver_rows)
    events = ctx.lake.read_ray(silver_id, events_filter, needed)
    return compute_on_ray(events, fs, first, last, entities, ctx.cfg.ray.gold_partitions).materialize()


def rebuild(ctx: RunContext, fs: FeatureSet, events: DatasetConfig, start: dt.date, end: dt.date) -> GoldResult:
    """Backfill: recompute the as-of days that silver events on days [start, end) feed, and replace them in
    one commit, unless the recomputed rows equal what gold holds (then nothing is written)."""
    log = logs.get().bind(feature_set=fs.name)
    spec = table_spec(fs)
    silver_id = f"silver.{fs.source_table}"
    result = GoldResult(spec.identifier)
    data_days = silver_day_range(ctx, events)
    if data_days is None or not ctx.lake.exists(spec.identifier):
        log.info("nothing to backfill: run the pipeline first", table=spec.identifier)
        return result
    first = max(data_days[0] + DAY, start + DAY)
    last = min(data_days[1] + DAY, end - DAY + fs.max_window_days() * DAY)
    if first > last:
        return result
    ctx.read(silver_id)
    gold = _compute(ctx, fs, first, last)
    in_interval = day_range(fs.as_of_column, first, last + DAY)
    held = ctx.lake.read_ray(spec.identifier, in_interval)
    if digest.dataset_digest(gold, spec.schema) == digest.dataset_digest(held, spec.schema):
        log.info("gold unchanged by the backfill", table=spec.identifier, as_of_first=str(first),
                 as_of_last=str(last))
        return result
    replaces = (col(fs.as_of_column) >= midnight(first)) & (col(fs.as_of_column) <= midnight(last))
    snapshot = ctx.lake.write(gold, spec, ctx.commit_properties(backfill=(start, end), as_of=(first, last)),
                              overwrite_filter=replaces)
    ctx.wrote(spec.identifier, snapshot)
    result.first_as_of, result.last_as_of, result.rows_written = first, last, gold.count()
    log.info("gold backfilled", table=spec.identifier, rows=result.rows_written, as_of_first=str(first),
             as_of_last=str(last))
    return result


def content_digest(ctx: RunContext, identifier: str) -> str:
    """Digest of the whole table's content, independent of file and block layout. Streamed through the
    driver batch by batch (bounded memory): one Ray read task per data file cost ~10x more at 2M rows."""
    table = ctx.lake.table(identifier)
    schema = table.schema().as_arrow()
    partials = [digest.partial_digest(batch.cast(schema)) for batch in table.scan().to_arrow_batch_reader()
                if batch.num_rows]
    return digest.combine(pd.DataFrame({"rows": [p["rows"][0] for p in partials],
                                        "hash_sum": [p["hash_sum"][0] for p in partials]}), schema)

"""Refine: bronze rows -> typed, validated, deduplicated silver; failing rows -> quarantine with reasons.

Generic over declared datasets (pipelines/config.py `DatasetConfig`; the contract is derived from the
declaration by validation/contract.py). Two shapes:
- an **events** dataset (it declares `event_time`) accumulates: each bronze run's rows are refined once,
  on Ray, appended to silver (partitioned by event day) and deduplicated on the key against each other
  and against what silver holds (the first occurrence wins);
- a **state** dataset (no event time, e.g. a dimension table) holds the newest row of each key: refined
  on the driver, silver is replaced in one commit (by the latest full copy of a SQL source, or upserted).

Row accounting per bronze run: rows in = silver rows + quarantined rows + duplicates dropped.

Idempotency: silver and quarantine rows carry the bronze `_run_id` they came from, and each write
replaces exactly the rows of the bronze runs it processes (an overwrite filtered on `_run_id`), so
redoing a run's refinement converges instead of duplicating. The silver commit records the bronze runs
it consumed (`bronze_runs`); later runs only refine bronze runs not yet recorded.
"""

from __future__ import annotations

import datetime as dt
import gc
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, LessThan, NotIn
from ray.data.expressions import col

from pipelines import digest, logs
from pipelines.commit_record import Refined, history
from pipelines.config import DatasetConfig
from pipelines.context import RunContext
from pipelines.io import sources
from pipelines.io.lake import TableSpec, day_range, midnight
from pipelines.pii import protect
from pipelines.stages.bronze import pending_runs, silver_extras, table_spec as bronze_spec
from validation import schema_policy
from validation.contract import KEY_CONFLICT_RULE, Contract
from validation.parsing import parse_instants
from validation.rules import join_reasons

DAY = dt.timedelta(days=1)
VALIDATION_BATCH_ROWS = 250_000
# Bronze columns with one value per source file or run: dictionary-encoded in the annotated rows, which
# stay in the object store through silver's passes (measured: 309 MB -> 138 MB per 1M annotated rows)
REPEATED_COLUMNS = ("_source", "_source_file", "_source_file_sha256", "_run_id")


@dataclass
class SilverResult:
    rows_in: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates: int = 0
    first_day: dt.date | None = None  # event days touched by new silver rows
    last_day: dt.date | None = None
    bronze_runs: List[str] = field(default_factory=list)  # the bronze runs refined
    present: Dict[str, int] = field(default_factory=dict)  # per declared column, refined rows with a value

    def record(self) -> Refined:
        """What the silver commit records about itself (a resumed run reads it back: run_state)."""
        return Refined(self.rows_in, self.valid, self.quarantined, self.duplicates, dict(self.present),
                       self.first_day, self.last_day)

    def absorb(self, record: Refined, bronze_runs: List[str]) -> None:
        """Add the work an interrupted run committed (its silver commit's `record()`) to this result."""
        self.rows_in += record.rows_in
        self.valid += record.valid
        self.quarantined += record.quarantined
        self.duplicates += record.duplicates
        for column, count in record.present.items():
            self.present[column] = self.present.get(column, 0) + count
        days = [d for d in (self.first_day, self.last_day, record.first_day, record.last_day) if d is not None]
        if days:
            self.first_day, self.last_day = min(days), max(days)
        self.bronze_runs = list(bronze_runs) + [r for r in self.bronze_runs if r not in bronze_runs]

    def as_counts(self, dataset: str) -> Dict[str, int]:
        return {f"{dataset}.bronze_rows_refined": self.rows_in, f"{dataset}.silver_rows_added": self.valid,
                f"{dataset}.quarantined": self.quarantined, f"{dataset}.duplicates_dropped": self.duplicates}


def quarantine_spec(source: DatasetConfig, bronze: TableSpec | None = None, held: List[str] = ()) -> TableSpec:
    """Bronze's columns (as bronze holds them now) plus the reasons, in the order of the columns the table
    `held` already (a column bronze evolved to hold comes after `_failed_rules` then: Iceberg appends it)."""
    schema = (bronze.schema if bronze else sources.bronze_schema(source)).append(pa.field("_failed_rules", pa.string()))
    order = [c for c in held if c in schema.names] + [c for c in schema.names if c not in held]
    return TableSpec(f"quarantine.{source.name}", pa.schema([schema.field(c) for c in order]))


def silver_spec(source: DatasetConfig, contract: Contract, extras: List[str] = ()) -> TableSpec:
    """The contract's columns plus the source columns silver evolved to carry (as text); an events
    dataset is partitioned by its event day."""
    schema = pa.schema(list(contract.silver_schema) + [pa.field(c, pa.string()) for c in extras])
    return TableSpec(f"silver.{source.name}", schema, day_partition=source.event_time)


def refine(ctx: RunContext, source: DatasetConfig, contract: Contract, pii_key: bytes) -> SilverResult:
    """The pending bronze runs of one dataset into silver and quarantine."""
    if source.is_events:
        return _refine_events(ctx, source, contract, pii_key)
    return _refine_state(ctx, source, contract, pii_key)


def _present_counts(raw: pa.Table, contract: Contract) -> Dict[str, int]:
    """Per declared column, rows with a value (completeness), counted on the source text."""
    return {c: int(contract.present(raw, c).sum()) for c in contract.names}


# --- state datasets: the newest row of each key, refined on the driver --------------------------------
def _refine_state(ctx: RunContext, source: DatasetConfig, contract: Contract, pii_key: bytes) -> SilverResult:
    log = logs.get()
    bronze = bronze_spec(source)
    quarantine = quarantine_spec(source, held=ctx.lake.columns(f"quarantine.{source.name}"))
    silver = silver_spec(source, contract)
    pending = pending_runs(ctx, bronze.identifier, silver.identifier)
    if not pending:
        log.info("no new bronze rows", table=silver.identifier)
        return SilverResult()
    ctx.read(bronze.identifier)
    if source.full_copy:  # each bronze run holds the whole table: the latest copy replaces silver
        raw = ctx.lake.read_arrow(bronze.identifier, EqualTo("_run_id", pending[-1]))
    else:  # each bronze run holds rows that changed: the newest version of a key wins
        raw = ctx.lake.read_arrow(bronze.identifier, In("_run_id", pending))
    raw = raw.take(_arrival_order(raw, source))
    failures = contract.failures(raw)
    valid = pc.is_null(failures).to_numpy(zero_copy_only=False)
    keys = contract.key_text(raw, typed=False).to_numpy(zero_copy_only=False)
    duplicate = np.zeros(raw.num_rows, dtype=bool)
    duplicate[valid] = pd.Series(keys[valid]).duplicated(keep=source.winner).to_numpy()
    keep = valid & ~duplicate
    present = _present_counts(raw, contract)
    silver_rows = protect(contract.to_silver(raw.filter(pa.array(keep))), dict(contract.pii), pii_key)
    silver_rows = silver_rows.cast(silver.schema)
    if not source.full_copy and ctx.lake.exists(silver.identifier):  # keys not in this batch stay as they are
        held = ctx.lake.read_arrow(silver.identifier).cast(silver.schema)
        unchanged = pc.invert(pc.is_in(contract.key_text(held, typed=True),
                                       value_set=contract.key_text(silver_rows, typed=True).combine_chunks()))
        silver_rows = pa.concat_tables([held.filter(unchanged), silver_rows])
    silver_rows = silver_rows.sort_by([(k, "ascending") for k in contract.key])
    bad = raw.filter(pa.array(~valid)).append_column("_failed_rules", failures.filter(pa.array(~valid)))
    q_rows = protect(bad.select(quarantine.schema.names), dict(contract.pii), pii_key).cast(quarantine.schema)
    ctx.wrote(quarantine.identifier, ctx.lake.commit_arrow(q_rows, quarantine, ctx.commit_properties(),
                                                          overwrite_filter=In("_run_id", pending)))
    result = SilverResult(raw.num_rows, int(keep.sum()), int((~valid).sum()), int(duplicate.sum()),
                          bronze_runs=pending, present=present)
    snapshot = ctx.lake.replace_all(silver_rows, silver, ctx.commit_properties(bronze_runs=tuple(pending),
                                                                                refined=result.record()))
    ctx.wrote(silver.identifier, snapshot)
    log.info("silver written", table=silver.identifier, rows=result.valid, quarantined=result.quarantined,
             duplicates=result.duplicates)
    return result


def _arrival_order(raw: pa.Table, source: DatasetConfig) -> pa.Array:
    """Row order of arrival: by the watermark column's instant (a change feed), then bronze run (run ids
    sort by start time), source file and row hash. `keep: last` keeps the last of a key in this order."""
    keys = []
    if source.watermark_column:
        version = parse_instants(raw.column(source.watermark_column))
        keys.append(pc.cast(version, pa.int64()).fill_null(np.iinfo(np.int64).min))
    keys += [raw.column("_run_id"), raw.column("_source_file"), raw.column("_row_hash")]
    order = pa.table({f"k{i}": key for i, key in enumerate(keys)})
    return pc.sort_indices(order, sort_keys=[(f"k{i}", "ascending") for i in range(len(keys))])


# --- events datasets: accumulated, refined on Ray ------------------------------------------------------
def _annotate(batch: pa.Table, contract: Contract, schema: pa.Schema,
              discard_rows: Dict[str, object] | None = None) -> pa.Table:
    """Bronze rows plus `_failed_rules`, typed explicitly: an all-valid batch must still yield strings.
    With `discard_rows` (the discard_row schema policy) rows with a value in a new column or from a file
    lacking a declared column fail for that reason too."""
    failures = contract.failures(batch)
    if discard_rows:
        new = list(discard_rows["new"])  # type: ignore[arg-type]
        reasons = schema_policy.row_reasons({c: batch.column(c).to_numpy(zero_copy_only=False) for c in new}, new,
                                            batch.column("_source_file").to_numpy(zero_copy_only=False),
                                            discard_rows["missing_by_file"])  # type: ignore[arg-type]
        joined = join_reasons(reasons, pd.Series(failures.to_numpy(zero_copy_only=False), index=reasons.index))
        failures = pa.array(joined.to_numpy(), pa.string(), from_pandas=True)
    rows = pa.schema([f for f in schema if f.name != "_failed_rules"])
    table = _encode_repeated(batch.select(rows.names).cast(rows))
    return table.append_column(schema.field("_failed_rules"), failures)


def _encode_repeated(table: pa.Table) -> pa.Table:
    """REPEATED_COLUMNS dictionary-encoded (the annotated rows stay in the object store for silver's passes)."""
    for name in REPEATED_COLUMNS:
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table.column(name)))
    return table


def _quarantined(batch: pa.Table, schema: pa.Schema, pii: Mapping[str, str], pii_key: bytes) -> pa.Table:
    bad = batch.filter(pc.is_valid(batch.column("_failed_rules"))).select(schema.names)
    return protect(bad, pii, pii_key).cast(schema)


def _valid(batch: pa.Table, contract: Contract, extras: List[str], ids: pa.Array, keep: bool,
           pii_key: bytes) -> pa.Table:
    """The valid rows as silver rows: those whose key is in `ids` (keep=True) or all the others."""
    hit = pc.is_in(contract.key_text(batch, typed=False), value_set=ids)
    good = batch.filter(pc.and_(pc.is_null(batch.column("_failed_rules")), hit if keep else pc.invert(hit)))
    table = contract.to_silver(good)
    for column in extras:  # columns silver evolved to carry, as the text bronze holds
        table = table.append_column(pa.field(column, pa.string()), good.column(column).cast(pa.string()))
    return protect(table, dict(contract.pii), pii_key)


def _summarize(batch: pa.Table, contract: Contract) -> pa.Table:
    """One row per block: its rows, per declared column how many have a value (the completeness checks),
    and the keys of its valid rows (as silver will hold them), for deduplication."""
    valid = batch.filter(pc.is_null(batch.column("_failed_rules")))
    ids = contract.key_text(valid, typed=False).combine_chunks()
    return pa.table({"_rows": [batch.num_rows],
                     **{c: [int(contract.present(batch, c).sum())] for c in contract.names},
                     "_valid_ids": pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids)})


def _settle(group: pa.Table, held: pa.Table, contract: Contract) -> tuple:
    """Settle the rows of keys that occur more than once, or that silver already holds (`held`: their key
    text and row hash): (the winners, as silver rows; the (key, row hash) of the conflicts).
    Deliveries (a bronze run's source file) are taken in order: run (run ids sort by start time), then file.
    Per key, the first delivery that gives it one content wins (its first row); a later row of that content
    is a duplicate, dropped; a row of other content is a conflict, quarantined as `key_conflict` (an event
    is not silently replaced, nor its correction lost). A delivery that gives a key two contents before it
    has a winner is ambiguous: its rows are conflicts. Against silver, the row it holds is the winner."""
    keys = contract.key_text(group, typed=True).to_numpy(zero_copy_only=False)
    rows = pd.DataFrame({"key": keys, "run": group.column("_run_id").to_numpy(zero_copy_only=False),
                         "file": group.column("_source_file").to_numpy(zero_copy_only=False),
                         "hash": group.column("_row_hash").to_numpy(zero_copy_only=False)})
    rows = rows.sort_values(["key", "run", "file", "hash"], kind="stable")
    deliveries = rows.groupby(["key", "run", "file"], sort=True)["hash"].agg(["nunique", "first"]).reset_index()
    deliveries["order"] = np.arange(len(deliveries))
    rows = rows.reset_index().merge(deliveries[["key", "run", "file", "order"]], on=["key", "run", "file"])
    winning = deliveries[deliveries["nunique"] == 1].groupby("key").head(1).set_index("key")
    held_hash = pd.Series(held.column("_row_hash").to_numpy(zero_copy_only=False),
                          index=held.column("_key").to_numpy(zero_copy_only=False))
    held_hash = held_hash[~held_hash.index.duplicated()]
    is_held = rows["key"].isin(held_hash.index)
    winner_order = rows["key"].map(winning["order"])
    reference = rows["key"].map(held_hash).where(is_held, rows["key"].map(winning["first"]))
    before_winner = ~is_held & (winner_order.isna() | (rows["order"] < winner_order))
    conflict = before_winner | (rows["hash"] != reference)
    first_of_winner = ~is_held & (rows["order"] == winner_order) & ~rows.duplicated(["key", "order"])
    winners = group.take(pa.array(rows.loc[first_of_winner, "index"].to_numpy()))
    return winners, rows.loc[conflict, ["key", "hash"]]


def _conflicting(batch: pa.Table, contract: Contract, hashes: pa.Array, keys: pa.Array, schema: pa.Schema,
                 pii: Mapping[str, str], pii_key: bytes) -> pa.Table:
    """The valid bronze rows that lost to a different row of their key: quarantine rows (`key_conflict`)."""
    valid = batch.filter(pc.is_null(batch.column("_failed_rules")))
    hit = pc.and_(pc.is_in(valid.column("_row_hash"), value_set=hashes),
                  pc.is_in(contract.key_text(valid, typed=False), value_set=keys))
    rows = valid.filter(hit)
    rows = rows.set_column(rows.schema.get_field_index("_failed_rules"), "_failed_rules",
                           pa.array([KEY_CONFLICT_RULE] * rows.num_rows, pa.string()))
    return protect(rows.select(schema.names), pii, pii_key).cast(schema)


def contested_ids(ids: pa.ChunkedArray) -> pa.Array:
    """The keys that occur more than once."""
    counts = pc.value_counts(ids)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).cast(pa.string())


def _rows_with_ids(batch: pa.Table, ids: pa.Array, keep: bool, contract: Contract) -> pa.Table:
    """The silver rows whose key is in `ids` (keep=True) or not in it (keep=False)."""
    hit = pc.is_in(contract.key_text(batch, typed=True), value_set=ids)
    return batch.filter(hit if keep else pc.invert(hit))


def _arrow(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """A (small) dataset as one Arrow table on the driver."""
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]  # an empty block may have no columns
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


EMPTY = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # the edges of a block without rows
HELD_NONE = pa.table({"_key": pa.array([], pa.string()), "_row_hash": pa.array([], pa.string())})


@dataclass
class _Refined:
    bad: ray.data.Dataset  # quarantined rows, with their reasons
    silver: ray.data.Dataset  # valid rows, first occurrence of each key not already in silver
    rows_in: int
    valid: int
    present: Dict[str, int]  # per declared column, rows with a value
    first_day: dt.date | None  # event days of the valid rows
    last_day: dt.date | None
    conflicts: int = 0  # valid rows quarantined as key conflicts (in `bad`)


def _split_and_deduplicate(ctx: RunContext, checked: ray.data.Dataset, contract: Contract, extras: List[str],
                           quarantine: TableSpec, silver: TableSpec, event_time: str,
                           held_ids: Callable[[dt.date, dt.date], pa.Table], pii_key: bytes) -> _Refined:
    """Annotated bronze rows -> quarantine rows and deduplicated silver rows, in as few passes as possible
    (each pass over 10M rows costs seconds on Ray). One pass counts the rows and values and brings the
    valid rows' keys to the driver, which finds the keys that occur twice; duplicates are rare, so the
    rows with any other key become silver rows where they are (blocks, and so files, stay clustered by
    day) and only the contested rows are settled on the driver. `held_ids(first, last)` are the keys
    silver already holds for those event days, with their row hashes (a re-delivered row is not a new one;
    with other content it is a conflict). Small inputs are settled on the driver whole, by the same rule."""
    columns = contract.names
    summary = _arrow(checked.map_batches(_summarize, fn_kwargs={"contract": contract}, batch_format="pyarrow"),
                     pa.schema([pa.field("_rows", pa.int64())] + [pa.field(c, pa.int64()) for c in columns]
                               + [pa.field("_valid_ids", pa.list_(pa.string()))]))
    rows_in = int(pc.sum(summary.column("_rows")).as_py() or 0)
    present = {c: int(pc.sum(summary.column(c)).as_py() or 0) for c in columns}
    ids = pa.chunked_array([chunk.flatten() for chunk in summary.column("_valid_ids").chunks], pa.string())
    small = len(ids) <= ctx.cfg.ray.local_max_rows
    contested = ids.combine_chunks() if small else contested_ids(ids)  # small: every row is settled here
    bad = checked.map_batches(_quarantined, fn_kwargs={"schema": quarantine.schema, "pii": dict(contract.pii),
                                                       "pii_key": pii_key}, batch_format="pyarrow")
    valid_kwargs = {"contract": contract, "extras": extras, "ids": contested, "pii_key": pii_key}
    singles = checked.map_batches(_valid, fn_kwargs={**valid_kwargs, "keep": False}, batch_format="pyarrow")
    singles = singles.materialize()
    disputed = _arrow(checked.map_batches(_valid, fn_kwargs={**valid_kwargs, "keep": True}, batch_format="pyarrow"),
                      silver.schema) if len(contested) else silver.schema.empty_table()
    blocks = singles.to_arrow_refs()
    edges = _block_edges(blocks, event_time)
    ts = pc.cast(disputed.column(event_time), pa.int64()).to_numpy()
    instants = np.concatenate([edges[edges[:, 0] != EMPTY[0]].ravel(), ts])
    first_day = _utc_day(instants.min()) if len(instants) else None
    last_day = _utc_day(instants.max()) if len(instants) else None
    existing_rows = held_ids(first_day, last_day) if first_day else HELD_NONE
    existing_rows = existing_rows.cast(HELD_NONE.schema)  # as read back from silver: perhaps large strings
    existing = existing_rows.column("_key").combine_chunks()
    # a small look-up set (and no hash set of every key, ~1.5 s at 10M, when silver holds none of these days)
    held_here = (existing.filter(pc.is_in(existing, value_set=ids)).cast(pa.string()) if len(existing)
                 else pa.array([], pa.string()))
    singles_before = singles
    if len(held_here):
        singles = singles.map_batches(_rows_with_ids, fn_kwargs={"ids": held_here, "keep": False, "contract": contract},
                                      batch_format="pyarrow").materialize()
        blocks = singles.to_arrow_refs()  # re-blocked (Ray merges emptied blocks away): edges anew
        edges = _block_edges(blocks, event_time)
    if len(held_here):  # re-delivered rows: each is a duplicate or a conflict of the row silver holds
        redelivered = _arrow(singles_before.map_batches(
            _rows_with_ids, fn_kwargs={"ids": held_here, "keep": True, "contract": contract},
            batch_format="pyarrow"), silver.schema)
        disputed = pa.concat_tables([disputed, redelivered])
    winners, conflicts = _settle(disputed, existing_rows.filter(pc.is_in(existing_rows.column("_key"),
                                                                         value_set=held_here)), contract)
    deduped = _beside_their_days(blocks, edges[:, 0], winners, event_time) if winners.num_rows else singles
    if len(conflicts):
        logs.get().warning("rows quarantined as key conflicts: a key delivered again with other content",
                           rows=len(conflicts), keys=conflicts["key"].nunique())
        lost = checked.map_batches(_conflicting, fn_kwargs={
            "contract": contract, "hashes": pa.array(conflicts["hash"].unique(), pa.string()),
            "keys": pa.array(conflicts["key"].unique(), pa.string()), "schema": quarantine.schema,
            "pii": dict(contract.pii), "pii_key": pii_key}, batch_format="pyarrow")
        bad = bad.union(lost)
    return _Refined(bad.materialize(), deduped, rows_in, len(ids), present, first_day, last_day, len(conflicts))


@ray.remote
def _time_edges(block: pa.Table, event_time: str) -> tuple:
    """First and last event time of a block, as epoch microseconds."""
    if block.num_rows == 0:  # Ray may hand over an empty block without columns
        return EMPTY
    bounds = pc.min_max(pc.cast(block.column(event_time), pa.int64()))
    return (bounds["min"].as_py(), bounds["max"].as_py()) if bounds["min"].is_valid else EMPTY


def _block_edges(blocks: List[ray.ObjectRef], event_time: str) -> np.ndarray:
    """Per block, in the order given: first and last event time (EMPTY for a block without rows)."""
    return np.array(ray.get([_time_edges.remote(block, event_time) for block in blocks]),
                    dtype=np.int64).reshape(-1, 2)


def _utc_day(micros: int) -> dt.date:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(micros))).date()


def _beside_their_days(blocks: List[ray.ObjectRef], starts: np.ndarray, rows: pa.Table,
                       event_time: str) -> ray.data.Dataset:
    """The silver blocks, with each of `rows` (the few settled on the driver) in a small block right after
    the last block (by first event time, `starts`) that starts at or before the row's event time: the
    write concatenates neighbouring blocks, so those rows join their day's data file instead of making a
    tiny file on every day. Every row is placed once, whatever the blocks hold (empty ones included)."""
    if len(starts) != len(blocks):  # edges of another block list would place rows after no block at all
        raise ValueError(f"{len(starts)} block edges for {len(blocks)} blocks")
    kept = starts != EMPTY[0]  # blocks without rows are left out (Ray may hand them over without columns)
    blocks, starts = [block for block, keep in zip(blocks, kept) if keep], starts[kept]
    if not blocks:
        return ray.data.from_arrow(rows)
    order = np.argsort(starts, kind="stable")  # blocks by their first event time
    ts = pc.cast(rows.column(event_time), pa.int64()).to_numpy()
    home = order[np.clip(np.searchsorted(starts[order], ts, side="right") - 1, 0, len(blocks) - 1)]
    placed: List[ray.ObjectRef] = []
    for index, block in enumerate(blocks):
        placed.append(block)
        mine = np.flatnonzero(home == index)
        if len(mine):
            placed.append(ray.put(rows.take(pa.array(mine))))
    return ray.data.from_arrow_refs(placed)


def _refine_events(ctx: RunContext, source: DatasetConfig, contract: Contract, pii_key: bytes) -> SilverResult:
    log = logs.get()
    bronze = bronze_spec(source, ctx.lake)
    quarantine = quarantine_spec(source, bronze, ctx.lake.columns(f"quarantine.{source.name}"))
    held = silver_extras(ctx, source)
    pending = pending_runs(ctx, bronze.identifier, f"silver.{source.name}")
    if not pending:
        log.info("no new bronze rows", table=f"silver.{source.name}")
        return SilverResult()
    ctx.read(bronze.identifier)
    # Schema policy for what bronze holds beyond silver's columns (freeze was enforced when planning).
    policy = ctx.cfg.schema_policy.silver
    new = [c for c in sources.data_columns(bronze.schema) if c not in source.column_names + held]
    extras = held + new if policy == "evolve" else held
    silver = silver_spec(source, contract, extras)
    discard_rows = None
    if policy == "discard_row":
        units = [u for r in history(ctx.lake, bronze.identifier) if r.run_id in pending for u in r.units]
        missing = {u.uri: [c for c in source.column_names if c not in u.columns] for u in units if u.columns is not None}
        discard_rows = {"new": new, "missing_by_file": missing}
    checked = (
        ctx.lake.read_ray(bronze.identifier, In("_run_id", pending))
        # large batches: the fixed cost of each validation (pandera's report) dominates small blocks
        .map_batches(_annotate, fn_kwargs={"contract": contract, "schema": quarantine.schema,
                                           "discard_rows": discard_rows},
                     batch_format="pyarrow",
                     batch_size=VALIDATION_BATCH_ROWS)
        .materialize()
    )
    event_time = str(source.event_time)

    def held_ids(first_day: dt.date, last_day: dt.date) -> pa.Table:
        if not ctx.lake.exists(silver.identifier):
            return HELD_NONE
        rows = ctx.lake.read_arrow(silver.identifier, And(day_range(event_time, first_day, last_day + DAY),
                                                          NotIn("_run_id", pending)), list(contract.key) + ["_row_hash"])
        return pa.table({"_key": contract.key_text(rows, typed=True).combine_chunks(),
                         "_row_hash": rows.column("_row_hash").combine_chunks()})

    refined = _split_and_deduplicate(ctx, checked, contract, extras, quarantine, silver, event_time, held_ids, pii_key)
    # every bronze row is now in `bad` or `silver` (or dropped as a duplicate): free the object store (a
    # Dataset sits in reference cycles, so only the cycle collector releases its blocks)
    del checked
    gc.collect()
    rows_in, n_valid, n_silver = refined.rows_in, refined.valid - refined.conflicts, refined.silver.count()
    replaces = col("_run_id").is_in(pending)
    ctx.lake.ensure(quarantine, evolve=True)
    ctx.lake.ensure(silver, evolve=True)
    q_snapshot = ctx.lake.write(refined.bad, quarantine, ctx.commit_properties(), overwrite_filter=replaces)
    ctx.wrote(quarantine.identifier, q_snapshot)
    result = SilverResult(rows_in, n_silver, rows_in - n_valid, n_valid - n_silver, refined.first_day,
                          refined.last_day, pending, refined.present)
    properties = ctx.commit_properties(bronze_runs=tuple(pending), refined=result.record())
    # no new silver row (every row quarantined or a duplicate): the runs are still recorded as refined,
    # or each later run would refine them again (and count them again)
    s_snapshot = ctx.lake.write(refined.silver, silver, properties, overwrite_filter=replaces) if n_silver \
        else ctx.lake.record_only(silver, properties)
    ctx.wrote(silver.identifier, s_snapshot)
    log.info("silver written", table=silver.identifier, rows_in=rows_in, rows=n_silver,
             quarantined=result.quarantined, duplicates=result.duplicates)
    return result


# --- backfill: an events dataset's silver rebuilt from all of bronze for an interval of event days ----
def _in_interval(batch: pa.Table, event_time: str, zone_less: str, start: dt.datetime, end: dt.datetime) -> pa.Table:
    ts = parse_instants(batch.column(event_time), zone_less)
    inside = pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(end, ts.type)))
    return batch.filter(pc.fill_null(inside, False))


def rebuild(ctx: RunContext, source: DatasetConfig, contract: Contract, pii_key: bytes, start: dt.date,
            end: dt.date) -> SilverResult:
    """Re-refine every bronze row whose event time falls on days [start, end) with today's rules and
    replace that interval of silver (and those rows' quarantine entries), one commit per table, unless the
    result equals what the tables hold: then nothing is written (a second backfill is a no-op).
    Rows whose event time does not parse belong to no interval and stay as they are."""
    log = logs.get()
    event_time = str(source.event_time)
    zone_less = source.columns[event_time].naive
    bronze = bronze_spec(source, ctx.lake)
    quarantine = quarantine_spec(source, bronze, ctx.lake.columns(f"quarantine.{source.name}"))
    extras = silver_extras(ctx, source)
    silver = silver_spec(source, contract, extras)
    ctx.read(bronze.identifier)
    lo, hi = midnight(start), midnight(end)
    # bronze holds event times as the source's text: a wide text-range prefilter prunes files, the exact
    # test parses the text as silver does
    prefilter = And(GreaterThanOrEqual(event_time, (start - DAY).isoformat()),
                    LessThan(event_time, (end + DAY).isoformat()))
    interval = {"event_time": event_time, "zone_less": zone_less, "start": lo, "end": hi}
    checked = (
        ctx.lake.read_ray(bronze.identifier, prefilter)
        .map_batches(_in_interval, fn_kwargs=interval, batch_format="pyarrow")
        .map_batches(_annotate, fn_kwargs={"contract": contract, "schema": quarantine.schema},
                     batch_format="pyarrow", batch_size=VALIDATION_BATCH_ROWS)
        .materialize()
    )
    refined = _split_and_deduplicate(ctx, checked, contract, extras, quarantine, silver, event_time,
                                     lambda first_day, last_day: HELD_NONE, pii_key)
    bad, deduped = refined.bad, refined.silver
    n_silver = deduped.count()
    n_valid = refined.valid - refined.conflicts
    result = SilverResult(refined.rows_in, n_silver, refined.rows_in - n_valid, n_valid - n_silver,
                          start, end - DAY, present=refined.present)
    ctx.lake.ensure(silver, evolve=True)
    ctx.lake.ensure(quarantine, evolve=True)
    held_silver = ctx.lake.read_ray(silver.identifier, day_range(event_time, start, end))
    if digest.dataset_digest(deduped, silver.schema) != digest.dataset_digest(held_silver, silver.schema):
        replaces = (col(event_time) >= lo) & (col(event_time) < hi)
        ctx.wrote(silver.identifier, ctx.lake.write(deduped, silver, ctx.commit_properties(backfill=(start, end)),
                                                    overwrite_filter=replaces))
    held_bad = _in_interval(ctx.lake.read_arrow(quarantine.identifier, prefilter), event_time, zone_less, lo, hi)
    held_bad = held_bad.cast(quarantine.schema)
    if digest.dataset_digest(bad, quarantine.schema) != digest.table_digest(held_bad):
        hashes = held_bad.column("_row_hash").to_pylist()
        replaces = col("_row_hash").is_in(hashes) if hashes else None
        ctx.wrote(quarantine.identifier, ctx.lake.write(bad, quarantine,
                                                        ctx.commit_properties(backfill=(start, end)),
                                                        overwrite_filter=replaces))
    log.info("silver backfilled", table=silver.identifier, start=str(start), end=str(end), rows_in=result.rows_in,
             rows=result.valid, quarantined=result.quarantined, duplicates=result.duplicates,
             silver_changed=silver.identifier in ctx.tables_written,
             quarantine_changed=quarantine.identifier in ctx.tables_written)
    return result


def referenced_keys(ctx: RunContext, source: DatasetConfig, datasets: Mapping[str, DatasetConfig]) -> Dict[str, pa.Array]:
    """For each column with `references: <dataset>.<key>`: the keys that dataset's silver holds (typed)."""
    known: Dict[str, pa.Array] = {}
    for column, spec in source.columns.items():
        if not spec.references:
            continue
        target, _, key = spec.references.partition(".")
        identifier = f"silver.{datasets[target].name}"
        if not ctx.lake.exists(identifier):  # nothing is known yet: every present value fails the rule
            continue
        ctx.read(identifier)
        known[column] = ctx.lake.read_arrow(identifier, columns=[key]).column(key).combine_chunks()
    return known

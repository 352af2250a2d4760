"""Refine: bronze rows -> typed, validated, deduplicated silver; failing rows -> quarantine with reasons.

Row accounting per bronze run: rows in = silver rows + quarantined rows + duplicates dropped.

Idempotency: silver and quarantine rows carry the bronze `_run_id` they came from, and each write
replaces exactly the rows of the bronze runs it processes (an overwrite filtered on `_run_id`), so
redoing a run's refinement converges instead of duplicating. The silver commit records the bronze runs
it consumed (`bronze_runs`); later runs only refine bronze runs not yet recorded.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, LessThan, NotIn
from ray.data.expressions import col

from pipelines import digest, logs
from pipelines.config import SourceConfig
from pipelines.context import RunContext
from pipelines.io import sources
from pipelines.io.lake import TableSpec, day_range, midnight
from pipelines.pii import tokenize
from pipelines.stages.bronze import INGESTED_UNITS, pending_runs, silver_extras, table_spec as bronze_spec
from validation import transactions as tx_contract
from validation import schema_policy
from validation import rules
from validation.rules import join_reasons
from validation import users as users_contract

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

    def record(self) -> Dict[str, object]:
        """What the silver commit records about itself (a resumed run reads it back: run_state)."""
        return {"rows_in": self.rows_in, "valid": self.valid, "quarantined": self.quarantined,
                "duplicates": self.duplicates, "present": self.present,
                "first_day": self.first_day.isoformat() if self.first_day else None,
                "last_day": self.last_day.isoformat() if self.last_day else None}

    def absorb(self, record: Dict[str, object], bronze_runs: List[str]) -> None:
        """Add the work an interrupted run committed (its silver commit's `record()`) to this result."""
        self.rows_in += int(record["rows_in"])  # type: ignore[arg-type]
        self.valid += int(record["valid"])  # type: ignore[arg-type]
        self.quarantined += int(record["quarantined"])  # type: ignore[arg-type]
        self.duplicates += int(record["duplicates"])  # type: ignore[arg-type]
        for column, count in dict(record["present"]).items():  # type: ignore[call-overload]
            self.present[column] = self.present.get(column, 0) + int(count)
        days = [d for d in (self.first_day, self.last_day) if d is not None] + \
            [dt.date.fromisoformat(str(d)) for d in (record["first_day"], record["last_day"]) if d]
        if days:
            self.first_day, self.last_day = min(days), max(days)
        self.bronze_runs = list(bronze_runs) + [r for r in self.bronze_runs if r not in bronze_runs]

    def as_counts(self, dataset: str) -> Dict[str, int]:
        return {f"{dataset}.bronze_rows_refined": self.rows_in, f"{dataset}.silver_rows_added": self.valid,
                f"{dataset}.quarantined": self.quarantined, f"{dataset}.duplicates_dropped": self.duplicates}


def quarantine_spec(source: SourceConfig, bronze: TableSpec | None = None) -> TableSpec:
    """Bronze's columns (as bronze holds them now) plus the reasons."""
    schema = (bronze.schema if bronze else sources.bronze_schema(source)).append(pa.field("_failed_rules", pa.string()))
    return TableSpec(f"quarantine.{source.dataset}", schema)


def silver_transactions_spec(extras: List[str] = ()) -> TableSpec:
    """The contract's columns plus the source columns silver evolved to carry (as text)."""
    schema = pa.schema(list(tx_contract.SILVER_SCHEMA) + [pa.field(c, pa.string()) for c in extras])
    return TableSpec("silver.transactions", schema, day_partition="ts")


def silver_users_spec() -> TableSpec:
    return TableSpec("silver.users", users_contract.SILVER_SCHEMA)


# --- users: a small dimension, refreshed whole from its latest bronze copy --------------------------
def refine_users(ctx: RunContext, source: SourceConfig, pii_key: bytes) -> SilverResult:
    log = logs.get()
    bronze, silver, quarantine = bronze_spec(source), silver_users_spec(), quarantine_spec(source)
    pending = pending_runs(ctx, bronze.identifier, silver.identifier)
    if not pending:
        log.info("no new bronze rows", table=silver.identifier)
        return SilverResult()
    ctx.read(bronze.identifier)
    incremental = bool(source.watermark_column)
    if incremental:  # each bronze run holds the rows that changed: the newest version of a user wins
        raw = ctx.lake.read_arrow(bronze.identifier, In("_run_id", pending)).to_pandas()
        raw["_version"] = pd.to_datetime(raw[source.watermark_column], utc=True, errors="coerce", format="ISO8601")
        raw = raw.sort_values(["_version", "_run_id", "_row_hash"], kind="mergesort").reset_index(drop=True)
    else:  # each bronze run holds the whole table: the latest copy replaces silver
        raw = ctx.lake.read_arrow(bronze.identifier, EqualTo("_run_id", pending[-1])).to_pandas()
        raw = raw.sort_values(["_row_hash"], kind="mergesort").reset_index(drop=True)
    typed, failures = users_contract.check_users(raw)
    valid = failures.isna()
    duplicate = pd.Series(False, index=raw.index)
    duplicate[valid] = typed.loc[valid, "user_id"].duplicated(keep="last" if incremental else "first")
    keep = valid & ~duplicate
    columns = list(source.columns)  # counted before tokenizing, as for transactions
    present = {c: int(rules.present(pa.array(raw[c].astype("string"), pa.string())).sum()) for c in columns}
    for column in source.pii:  # raw PII never leaves bronze, quarantine included
        raw[column] = tokenize(raw[column], pii_key)
    silver_rows = pa.table(
        {
            "user_id": pa.array(typed.loc[keep, "user_id"].astype("int64"), pa.int64()),
            **{c: pa.array(raw.loc[keep, c], pa.string()) for c in ("email", "full_name", "phone", "birth_date")},
            "country": pa.array(typed.loc[keep, "country"], pa.string()),
            "signup_ts": pa.array(typed.loc[keep, "signup_ts"], pa.timestamp("us", tz="UTC")),
            "_row_hash": pa.array(raw.loc[keep, "_row_hash"], pa.string()),
            "_run_id": pa.array(raw.loc[keep, "_run_id"], pa.string()),
        },
        schema=silver.schema,
    ).sort_by("user_id")
    if incremental and ctx.lake.exists(silver.identifier):  # users not in this batch stay as they are
        held = ctx.lake.read_arrow(silver.identifier)
        unchanged = pc.invert(pc.is_in(held.column("user_id"), value_set=silver_rows.column("user_id")))
        silver_rows = pa.concat_tables([held.filter(unchanged).cast(silver.schema), silver_rows]).sort_by("user_id")
    bad = raw.loc[~valid].assign(_failed_rules=failures[~valid])
    q_rows = pa.Table.from_pandas(bad[quarantine.schema.names], schema=quarantine.schema, preserve_index=False)
    ctx.wrote(quarantine.identifier, ctx.lake.commit_arrow(q_rows, quarantine, ctx.commit_properties(),
                                                          overwrite_filter=In("_run_id", pending)))
    result = SilverResult(len(raw), int(keep.sum()), int((~valid).sum()), int(duplicate.sum()), bronze_runs=pending,
                          present=present)
    snapshot = ctx.lake.replace_all(silver_rows, silver, ctx.commit_properties(bronze_runs=pending,
                                                                                refined=result.record()))
    ctx.wrote(silver.identifier, snapshot)
    log.info("silver written", table=silver.identifier, rows=result.valid, quarantined=result.quarantined,
             duplicates=result.duplicates)
    return result


# --- transactions: the large fact table, refined on Ray ---------------------------------------------
def _annotate(batch: pa.Table, rules: tx_contract.TransactionRules, schema: pa.Schema,
              discard_rows: Dict[str, object] | None = None) -> pa.Table:
    """Bronze rows plus `_failed_rules`, typed explicitly: an all-valid batch must still yield strings.
    With `discard_rows` (the discard_row schema policy) rows with a value in a new column or from a file
    lacking a declared column fail for that reason too."""
    _, failures = tx_contract.check_transactions(batch, rules)
    if discard_rows:
        new = list(discard_rows["new"])  # type: ignore[arg-type]
        reasons = schema_policy.row_reasons({c: batch.column(c).to_numpy(zero_copy_only=False) for c in new}, new,
                                            batch.column("_source_file").to_numpy(zero_copy_only=False),
                                            discard_rows["missing_by_file"])  # type: ignore[arg-type]
        failures = join_reasons(reasons.set_axis(failures.index), failures)
    table = _encode_repeated(batch.select(schema.names[:-1]).cast(pa.schema(list(schema)[:-1])))
    return table.append_column(schema.field("_failed_rules"), pa.array(failures.to_numpy(), pa.string(), from_pandas=True))


def _encode_repeated(table: pa.Table) -> pa.Table:
    """REPEATED_COLUMNS dictionary-encoded (the annotated rows stay in the object store for silver's passes)."""
    for name in REPEATED_COLUMNS:
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table.column(name)))
    return table


def _quarantined(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column("_failed_rules"))).select(schema.names).cast(schema)


def _valid(batch: pa.Table, extras: List[str], ids: pa.Array, keep: bool) -> pa.Table:
    """The valid rows as silver rows: those whose tx_id is in `ids` (keep=True) or all the others."""
    hit = pc.is_in(rules.as_text(batch.column("tx_id")), value_set=ids)
    good = batch.filter(pc.and_(pc.is_null(batch.column("_failed_rules")), hit if keep else pc.invert(hit)))
    table = tx_contract.to_silver_arrow(good)
    for column in extras:  # columns silver evolved to carry, as the text bronze holds
        table = table.append_column(pa.field(column, pa.string()), good.column(column).cast(pa.string()))
    return table


def _summarize(batch: pa.Table, columns: List[str]) -> pa.Table:
    """One row per block: its rows, per declared column how many have a non-blank value (the completeness
    checks), and the tx_ids of its valid rows (as silver will hold them), for deduplication."""
    ids = rules.as_text(batch.filter(pc.is_null(batch.column("_failed_rules"))).column("tx_id")).combine_chunks()
    return pa.table({"_rows": [batch.num_rows],
                     **{c: [int(rules.present(batch.column(c)).sum())] for c in columns},
                     "_valid_ids": pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids)})


def _first_occurrences(group: pa.Table, existing: pa.Array) -> pa.Table:
    """Keep the first row of each tx_id not already in silver: the earliest bronze run's (run ids sort by
    start time), then by source file and row hash."""
    group = group.sort_by([("tx_id", "ascending"), ("_run_id", "ascending"), ("_source_file", "ascending"),
                           ("_row_hash", "ascending")])
    ids = group.column("tx_id").to_numpy(zero_copy_only=False)
    first = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, dtype=bool)
    known = pc.is_in(group.column("tx_id"), value_set=existing).to_numpy(zero_copy_only=False)
    return group.filter(pa.array(first & ~known))


def contested_ids(ids: pa.ChunkedArray) -> pa.Array:
    """The tx_ids that occur more than once."""
    counts = pc.value_counts(ids)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).cast(pa.string())


def _rows_with_ids(batch: pa.Table, ids: pa.Array, keep: bool) -> pa.Table:
    """The rows whose tx_id is in `ids` (keep=True) or not in it (keep=False)."""
    hit = pc.is_in(batch.column("tx_id"), value_set=ids)
    return batch.filter(hit if keep else pc.invert(hit))


def _rules(ctx: RunContext, known_user_ids: List[int]) -> tx_contract.TransactionRules:
    return tx_contract.TransactionRules(
        known_user_ids=known_user_ids,
        currencies=list(ctx.cfg.quality.currencies),
        channels=list(ctx.cfg.quality.channels),
        max_amount=ctx.cfg.quality.max_amount,
        cutoff=ctx.cfg.cutoff_ts,
    )


def _arrow(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """A (small) dataset as one Arrow table on the driver."""
    tables = ray.get(ds.to_arrow_refs())
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


EMPTY = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # the edges of a block without rows


@dataclass
class _Refined:
    bad: ray.data.Dataset  # quarantined rows, with their reasons
    silver: ray.data.Dataset  # valid rows, first occurrence of each tx_id not already in silver
    rows_in: int
    valid: int
    present: Dict[str, int]  # per declared column, rows with a value
    first_day: dt.date | None  # event days of the valid rows
    last_day: dt.date | None


def _split_and_deduplicate(ctx: RunContext, checked: ray.data.Dataset, columns: List[str], extras: List[str],
                           quarantine: TableSpec, silver: TableSpec,
                           held_ids: Callable[[dt.date, dt.date], pa.Array]) -> _Refined:
    """Annotated bronze rows -> quarantine rows and deduplicated silver rows, in as few passes as possible
    (each pass over 10M rows costs seconds on Ray). One pass counts the rows and values and brings the
    valid rows' tx_ids to the driver, which finds the ids that occur twice; duplicates are rare, so the
    rows with any other id become silver rows where they are (blocks, and so files, stay clustered by
    day) and only the contested rows are settled on the driver. `held_ids(first, last)` are the tx_ids
    silver already holds for those event days (a re-delivered row is not a new one). Small inputs are
    settled on the driver whole, by the same rule."""
    summary = _arrow(checked.map_batches(_summarize, fn_kwargs={"columns": columns}, batch_format="pyarrow"),
                     pa.schema([pa.field("_rows", pa.int64())] + [pa.field(c, pa.int64()) for c in columns]
                               + [pa.field("_valid_ids", pa.list_(pa.string()))]))
    rows_in = int(pc.sum(summary.column("_rows")).as_py() or 0)
    present = {c: int(pc.sum(summary.column(c)).as_py() or 0) for c in columns}
    ids = pa.chunked_array([chunk.flatten() for chunk in summary.column("_valid_ids").chunks], pa.string())
    small = len(ids) <= ctx.cfg.ray.local_max_rows
    contested = ids.combine_chunks() if small else contested_ids(ids)  # small: every row is settled here
    bad = checked.map_batches(_quarantined, fn_kwargs={"schema": quarantine.schema}, batch_format="pyarrow")
    valid_kwargs = {"extras": extras, "ids": contested}
    singles = checked.map_batches(_valid, fn_kwargs={**valid_kwargs, "keep": False}, batch_format="pyarrow")
    singles = singles.materialize()
    disputed = _arrow(checked.map_batches(_valid, fn_kwargs={**valid_kwargs, "keep": True}, batch_format="pyarrow"),
                      silver.schema) if len(contested) else silver.schema.empty_table()
    blocks = singles.to_arrow_refs()
    edges = _block_edges(blocks)
    ts = pc.cast(disputed.column("ts"), pa.int64()).to_numpy()
    instants = np.concatenate([edges[edges[:, 0] != EMPTY[0]].ravel(), ts])
    first_day = _utc_day(instants.min()) if len(instants) else None
    last_day = _utc_day(instants.max()) if len(instants) else None
    existing = held_ids(first_day, last_day) if first_day else pa.array([], pa.string())
    # a small look-up set (and no hash set of every id, ~1.5 s at 10M, when silver holds none of these days)
    held_here = (existing.filter(pc.is_in(existing, value_set=ids)).cast(pa.string()) if len(existing)
                 else pa.array([], pa.string()))
    if len(held_here):
        singles = singles.map_batches(_rows_with_ids, fn_kwargs={"ids": held_here, "keep": False},
                                      batch_format="pyarrow").materialize()
        blocks = singles.to_arrow_refs()  # re-blocked (Ray merges emptied blocks away): edges anew
        edges = _block_edges(blocks)
    winners = _first_occurrences(disputed, held_here)
    deduped = _beside_their_days(blocks, edges[:, 0], winners) if winners.num_rows else singles
    return _Refined(bad.materialize(), deduped, rows_in, len(ids), present, first_day, last_day)


@ray.remote
def _ts_edges(block: pa.Table) -> tuple:
    """First and last event time of a block, as epoch microseconds."""
    if block.num_rows == 0:  # Ray may hand over an empty block without columns
        return EMPTY
    bounds = pc.min_max(pc.cast(block.column("ts"), pa.int64()))
    return (bounds["min"].as_py(), bounds["max"].as_py()) if bounds["min"].is_valid else EMPTY


def _block_edges(blocks: List[ray.ObjectRef]) -> np.ndarray:
    """Per block, in the order given: first and last event time (EMPTY for a block without rows)."""
    return np.array(ray.get([_ts_edges.remote(block) for block in blocks]), dtype=np.int64).reshape(-1, 2)


def _utc_day(micros: int) -> dt.date:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(micros))).date()


def _beside_their_days(blocks: List[ray.ObjectRef], starts: np.ndarray, rows: pa.Table) -> ray.data.Dataset:
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
    ts = pc.cast(rows.column("ts"), pa.int64()).to_numpy()
    home = order[np.clip(np.searchsorted(starts[order], ts, side="right") - 1, 0, len(blocks) - 1)]
    placed: List[ray.ObjectRef] = []
    for index, block in enumerate(blocks):
        placed.append(block)
        mine = np.flatnonzero(home == index)
        if len(mine):
            placed.append(ray.put(rows.take(pa.array(mine))))
    return ray.data.from_arrow_refs(placed)


def refine_transactions(ctx: RunContext, source: SourceConfig, known_user_ids: List[int]) -> SilverResult:
    log = logs.get()
    bronze = bronze_spec(source, ctx.lake)
    quarantine = quarantine_spec(source, bronze)
    held = silver_extras(ctx, source)
    pending = pending_runs(ctx, bronze.identifier, "silver.transactions")
    if not pending:
        log.info("no new bronze rows", table="silver.transactions")
        return SilverResult()
    ctx.read(bronze.identifier)
    # Schema policy for what bronze holds beyond silver's columns (freeze was enforced when planning).
    policy = ctx.cfg.schema_policy.silver
    new = [c for c in sources.data_columns(bronze.schema) if c not in list(source.columns) + held]
    extras = held + new if policy == "evolve" else held
    silver = silver_transactions_spec(extras)
    discard_rows = None
    if policy == "discard_row":
        units = [u for p in ctx.lake.snapshot_properties(bronze.identifier) if p.get("run_id") in pending
                 for u in json.loads(p.get(INGESTED_UNITS, "[]"))]
        missing = {u["uri"]: [c for c in source.columns if c not in u["columns"]] for u in units if "columns" in u}
        discard_rows = {"new": new, "missing_by_file": missing}
    rules = _rules(ctx, known_user_ids)
    checked = (
        ctx.lake.read_ray(bronze.identifier, In("_run_id", pending))
        # large batches: pandera's fixed cost per validate() call (~0.3 s) dominates small blocks
        .map_batches(_annotate, fn_kwargs={"rules": rules, "schema": quarantine.schema, "discard_rows": discard_rows},
                     batch_format="pyarrow",
                     batch_size=VALIDATION_BATCH_ROWS)
        .materialize()
    )

    def held_ids(first_day: dt.date, last_day: dt.date) -> pa.Array:
        if not ctx.lake.exists(silver.identifier):
            return pa.array([], pa.string())
        return ctx.lake.read_arrow(silver.identifier, And(day_range("ts", first_day, last_day + DAY),
                                                          NotIn("_run_id", pending)),
                                   ["tx_id"]).column("tx_id").combine_chunks()

    refined = _split_and_deduplicate(ctx, checked, list(source.columns), extras, quarantine, silver, held_ids)
    # every bronze row is now in `bad` or `silver` (or dropped as a duplicate): free the object store (a
    # Dataset sits in reference cycles, so only the cycle collector releases its blocks)
    del checked
    gc.collect()
    rows_in, n_valid, n_silver = refined.rows_in, refined.valid, refined.silver.count()
    replaces = col("_run_id").is_in(pending)
    ctx.lake.ensure(quarantine, evolve=True)
    ctx.lake.ensure(silver, evolve=True)
    q_snapshot = ctx.lake.write(refined.bad, quarantine, ctx.commit_properties(), overwrite_filter=replaces)
    ctx.wrote(quarantine.identifier, q_snapshot)
    result = SilverResult(rows_in, n_silver, rows_in - n_valid, n_valid - n_silver, refined.first_day,
                          refined.last_day, pending, refined.present)
    s_snapshot = ctx.lake.write(refined.silver, silver, ctx.commit_properties(bronze_runs=pending, refined=result.record()),
                                overwrite_filter=replaces)
    ctx.wrote(silver.identifier, s_snapshot)
    log.info("silver written", table=silver.identifier, rows_in=rows_in, rows=n_silver,
             quarantined=result.quarantined, duplicates=result.duplicates)
    return result


# --- backfill: silver rebuilt from all of bronze for an interval of event days ----------------------
def _in_interval(batch: pa.Table, start: dt.datetime, end: dt.datetime) -> pa.Table:
    ts = tx_contract.parse_instants(batch.column("ts"))
    inside = pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(end, ts.type)))
    return batch.filter(pc.fill_null(inside, False))


def rebuild_transactions(ctx: RunContext, source: SourceConfig, known_user_ids: List[int], start: dt.date,
                         end: dt.date) -> SilverResult:
    """Re-refine every bronze row whose event time falls on days [start, end) with today's rules and
    replace that interval of silver (and those rows' quarantine entries), one commit per table, unless the
    result equals what the tables hold: then nothing is written (a second backfill is a no-op).
    Rows whose event time does not parse belong to no interval and stay as they are."""
    log = logs.get()
    bronze = bronze_spec(source, ctx.lake)
    quarantine = quarantine_spec(source, bronze)
    silver = silver_transactions_spec(silver_extras(ctx, source))
    ctx.read(bronze.identifier)
    lo, hi = midnight(start), midnight(end)
    # bronze holds event times as the source's text: a wide text-range prefilter prunes files, the exact
    # test parses the text as silver does
    prefilter = And(GreaterThanOrEqual("ts", (start - DAY).isoformat()), LessThan("ts", (end + DAY).isoformat()))
    checked = (
        ctx.lake.read_ray(bronze.identifier, prefilter)
        .map_batches(_in_interval, fn_kwargs={"start": lo, "end": hi}, batch_format="pyarrow")
        .map_batches(_annotate, fn_kwargs={"rules": _rules(ctx, known_user_ids), "schema": quarantine.schema},
                     batch_format="pyarrow", batch_size=VALIDATION_BATCH_ROWS)
        .materialize()
    )
    refined = _split_and_deduplicate(ctx, checked, list(source.columns), silver_extras(ctx, source), quarantine, silver,
                                     lambda first_day, last_day: pa.array([], pa.string()))
    bad, deduped = refined.bad, refined.silver
    n_silver = deduped.count()
    result = SilverResult(refined.rows_in, n_silver, refined.rows_in - refined.valid, refined.valid - n_silver,
                          start, end - DAY)
    ctx.lake.ensure(silver, evolve=True)
    ctx.lake.ensure(quarantine, evolve=True)
    held_silver = ctx.lake.read_ray(silver.identifier, day_range("ts", start, end))
    if digest.dataset_digest(deduped, silver.schema) != digest.dataset_digest(held_silver, silver.schema):
        replaces = (col("ts") >= lo) & (col("ts") < hi)
        ctx.wrote(silver.identifier, ctx.lake.write(deduped, silver, ctx.commit_properties(backfill=f"{start}..{end}"),
                                                    overwrite_filter=replaces))
    held_bad = _in_interval(ctx.lake.read_arrow(quarantine.identifier, prefilter), lo, hi).cast(quarantine.schema)
    if digest.dataset_digest(bad, quarantine.schema) != digest.table_digest(held_bad):
        hashes = held_bad.column("_row_hash").to_pylist()
        replaces = col("_row_hash").is_in(hashes) if hashes else None
        ctx.wrote(quarantine.identifier, ctx.lake.write(bad, quarantine,
                                                        ctx.commit_properties(backfill=f"{start}..{end}"),
                                                        overwrite_filter=replaces))
    log.info("silver backfilled", table=silver.identifier, start=str(start), end=str(end), rows_in=result.rows_in,
             rows=result.valid, quarantined=result.quarantined, duplicates=result.duplicates,
             silver_changed=silver.identifier in ctx.tables_written,
             quarantine_changed=quarantine.identifier in ctx.tables_written)
    return result


def known_user_ids(ctx: RunContext) -> List[int]:
    spec = silver_users_spec()
    if not ctx.lake.exists(spec.identifier):
        return []
    ctx.read(spec.identifier)
    return ctx.lake.read_arrow(spec.identifier, columns=["user_id"]).column("user_id").to_pylist()

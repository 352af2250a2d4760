"""Refine: bronze rows -> typed, validated, deduplicated silver; failing rows -> quarantine with reasons.

Row accounting per bronze run: rows in = silver rows + quarantined rows + duplicates dropped.

Idempotency: silver and quarantine rows carry the bronze `_run_id` they came from, and each write
replaces exactly the rows of the bronze runs it processes (an overwrite filtered on `_run_id`), so
redoing a run's refinement converges instead of duplicating. The silver commit records the bronze runs
it consumed (`bronze_runs`); later runs only refine bronze runs not yet recorded.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Dict, List

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
    table = batch.select(schema.names[:-1]).cast(pa.schema(list(schema)[:-1]))
    return table.append_column(schema.field("_failed_rules"), pa.array(failures.to_numpy(), pa.string(), from_pandas=True))


def _quarantined(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column("_failed_rules"))).select(schema.names)


def _valid(batch: pa.Table, extras: List[str]) -> pa.Table:
    good = batch.filter(pc.is_null(batch.column("_failed_rules")))
    table = tx_contract.to_silver_arrow(good)
    for column in extras:  # columns silver evolved to carry, as the text bronze holds
        table = table.append_column(pa.field(column, pa.string()), good.column(column).cast(pa.string()))
    return table


def _present_counts(batch: pa.Table, columns: List[str]) -> pa.Table:
    """One row: how many rows of the batch have a non-blank value, per column (the completeness checks)."""
    return pa.table({"_rows": [batch.num_rows],
                     **{c: [int(rules.present(batch.column(c)).sum())] for c in columns}})


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


def _deduplicate(ctx: RunContext, valid: ray.data.Dataset, existing: pa.Array) -> ray.data.Dataset:
    """First occurrences of each tx_id not in `existing`. Small inputs on the driver. Larger ones without
    a shuffle: duplicates are rare, so only the tx_id column comes to the driver to find the contested
    ids; rows with any other id stay where they are (keeping blocks, and so files, clustered by day), and
    the few contested rows are settled on the driver by the same rule."""
    rows = valid.count()
    if rows == 0:
        return valid
    if rows <= ctx.cfg.ray.local_max_rows:
        return ray.data.from_arrow(_first_occurrences(pa.concat_tables(ray.get(valid.to_arrow_refs())), existing))
    ids = pa.chunked_array([chunk for table in ray.get(valid.select_columns(["tx_id"]).to_arrow_refs())
                            for chunk in table.column("tx_id").chunks], pa.string())
    contested = contested_ids(ids)
    # only the held ids that occur in this input: each block's look-up set stays small
    held_here = existing.filter(pc.is_in(existing, value_set=ids)).cast(pa.string())
    dropped = pa.concat_arrays([contested, held_here])
    singles = valid.map_batches(_rows_with_ids, fn_kwargs={"ids": dropped, "keep": False}, batch_format="pyarrow")
    if len(contested) == 0:
        return singles.materialize()
    disputed = valid.map_batches(_rows_with_ids, fn_kwargs={"ids": contested, "keep": True}, batch_format="pyarrow")
    winners = _first_occurrences(pa.concat_tables(ray.get(disputed.to_arrow_refs())), existing)
    return singles.union(ray.data.from_arrow(winners)).materialize()


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
    rows_in = checked.count()
    # what the quality gate's completeness checks need, counted on the rows already in memory
    counted = checked.map_batches(_present_counts, fn_kwargs={"columns": list(source.columns)},
                                  batch_format="pyarrow").to_pandas()
    present = {c: int(counted[c].sum()) for c in source.columns}
    bad = checked.map_batches(_quarantined, fn_kwargs={"schema": quarantine.schema},
                              batch_format="pyarrow").materialize()
    valid = checked.map_batches(_valid, fn_kwargs={"extras": extras}, batch_format="pyarrow").materialize()
    del checked  # every bronze row is now in `bad` or `valid`: free the object store before deduplicating
    n_valid = valid.count()
    first_day = last_day = None
    existing = pa.array([], pa.string())
    if n_valid:
        first_day, last_day = _day_bounds(valid)
        if ctx.lake.exists(silver.identifier):
            existing = ctx.lake.read_arrow(silver.identifier, And(day_range("ts", first_day, last_day + DAY),
                                                                  NotIn("_run_id", pending)),
                                           ["tx_id"]).column("tx_id").combine_chunks()
    deduped = _deduplicate(ctx, valid, existing)
    n_silver = deduped.count()
    del valid
    replaces = col("_run_id").is_in(pending)
    ctx.lake.ensure(quarantine, evolve=True)
    ctx.lake.ensure(silver, evolve=True)
    q_snapshot = ctx.lake.write(bad, quarantine, ctx.commit_properties(), overwrite_filter=replaces)
    ctx.wrote(quarantine.identifier, q_snapshot)
    result = SilverResult(rows_in, n_silver, rows_in - n_valid, n_valid - n_silver, first_day, last_day, pending,
                          present)
    s_snapshot = ctx.lake.write(deduped, silver, ctx.commit_properties(bronze_runs=pending, refined=result.record()),
                                overwrite_filter=replaces)
    ctx.wrote(silver.identifier, s_snapshot)
    log.info("silver written", table=silver.identifier, rows_in=rows_in, rows=n_silver,
             quarantined=result.quarantined, duplicates=result.duplicates)
    return result


def _ts_bounds(batch: pa.Table) -> pa.Table:
    bounds = pc.min_max(batch.column("ts"))
    return pa.table({"first": [bounds["min"].as_py()], "last": [bounds["max"].as_py()]})


def _day_bounds(ds: ray.data.Dataset):
    """First and last event day: a min/max per block (Ray's global aggregate costs seconds more)."""
    bounds = ds.map_batches(_ts_bounds, batch_format="pyarrow").to_pandas()
    return bounds["first"].min().date(), bounds["last"].max().date()


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
    rows_in = checked.count()
    bad = checked.map_batches(_quarantined, fn_kwargs={"schema": quarantine.schema}, batch_format="pyarrow").materialize()
    valid = checked.map_batches(_valid, fn_kwargs={"extras": silver_extras(ctx, source)},
                                batch_format="pyarrow").materialize()
    deduped = _deduplicate(ctx, valid, pa.array([], pa.string()))
    result = SilverResult(rows_in, deduped.count(), bad.count(), valid.count() - deduped.count(), start, end - DAY)
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
    log.info("silver backfilled", table=silver.identifier, start=str(start), end=str(end), rows_in=rows_in,
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

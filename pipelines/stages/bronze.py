"""Ingest: each source into bronze.<dataset>, an exact copy (text stays text) plus ingest metadata.

Idempotency: a unit of input (a file, or the full result of a SQL query) is identified by its path and
content hash. Each bronze commit records the units it ingested in its snapshot properties
(`ingested_units`), atomically with the rows, so a unit already in bronze is never appended twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyiceberg.expressions import And, EqualTo, In


from pipelines import file_ledger, logs, ray_runtime
from pipelines.commit_record import INGESTED_UNITS, Unit, history
from pipelines.config import DatasetConfig
from pipelines.context import RunContext
from pipelines.io import row_hash, sources
from pipelines.io.lake import TableSpec
from validation import schema_policy



@dataclass
class BronzeResult:
    rows: int
    units: List[str]


def table_spec(source: DatasetConfig, lake=None, extras: Sequence[str] = ()) -> TableSpec:
    """bronze.<dataset>: the declared columns, metadata, and the columns it evolved to hold (read from
    the table when `lake` is given) plus `extras` about to be added."""
    base = sources.bronze_schema(source)
    held = [c for c in lake.columns(f"bronze.{source.name}") if c not in base.names] if lake else []
    return TableSpec(f"bronze.{source.name}", sources.bronze_schema(source, held + [c for c in extras
                                                                                         if c not in held]))


def _already_ingested(ctx: RunContext, spec: TableSpec) -> set:
    return {(u["uri"], u["sha256"]) for u in ctx.lake.recorded(spec.identifier, INGESTED_UNITS)}


@dataclass
class FilePlan:
    """What a files source will ingest in this run, decided before anything is written: every file under
    its location is in exactly one of new_files, already ingested, or not_ingested (new or judged before)."""

    name: str
    source: DatasetConfig
    new_files: List[sources.SourceFile]
    found: int
    columns_by_file: Dict[str, List[str]] = field(default_factory=dict)  # uri -> the file's columns
    new_columns: List[str] = field(default_factory=list)  # columns bronze evolves to hold in this run
    not_ingested: List[file_ledger.NotIngested] = field(default_factory=list)  # judged in this run
    files: Dict[str, int] = field(default_factory=dict)  # outcome -> number of files


def plan(ctx: RunContext, name: str, source: DatasetConfig):
    """Check a source can be read, decide what is new, and apply the schema policies of bronze and silver
    to the new files' columns: raises a one-line error before any write."""
    spec = table_spec(source, ctx.lake)
    if source.kind != "files":
        sources.probe_query(name, source)
        return None
    log = logs.get()
    listing = sources.list_files(name, source)
    seen = _already_ingested(ctx, spec) if ctx.lake.exists(spec.identifier) else set()
    before = file_ledger.judged(ctx.lake, name)
    good, columns_by_file, judged_now = [], {}, []
    counts = {"found": len(listing.files) + len(listing.unreadable), "ingested": 0, "already_ingested": 0,
              "rejected": 0, "empty": 0, "previously_rejected": 0, "previously_empty": 0}
    candidates = [(f, None) for f in listing.files] + [(None, r) for r in listing.unreadable]
    for file, unreadable in sorted(candidates, key=lambda c: (c[0] or c[1]).uri):  # type: ignore[union-attr]
        uri, sha = (file.uri, file.sha256) if file else (unreadable.uri, unreadable.sha256)  # type: ignore[union-attr]
        if (uri, sha) in seen:
            counts["already_ingested"] += 1
            continue
        if (uri, sha) in before:
            counts[f"previously_{before[(uri, sha)]}"] += 1
            continue
        reason, names = (unreadable.reason, []) if unreadable else sources.check_file(source.path or "", file)
        if reason is None:
            good.append(file)
            columns_by_file[uri] = names
            continue
        outcome = file_ledger.EMPTY if reason == sources.HEADER_ONLY else file_ledger.REJECTED
        counts[outcome] += 1
        judged_now.append(file_ledger.NotIngested(name, uri, sha, outcome, reason))
        if outcome == file_ledger.REJECTED:
            ctx.rejected_files.append({"source": name, "file": uri, "reason": reason})
            log.error("file rejected", source=name, file=uri, reason=reason)
        else:
            log.info("file has no rows, nothing to ingest", source=name, file=uri)
    counts["ingested"] = len(good)
    if counts["previously_rejected"]:
        log.warning("files rejected by an earlier run are still there", source=name,
                    files=counts["previously_rejected"], see=file_ledger.LEDGER.identifier)
    new_columns = _check_schema_policies(ctx, source, spec, columns_by_file)
    log.info("files listed", source=name, **counts)
    return FilePlan(name, source, good, counts["found"], columns_by_file, new_columns, judged_now, counts)


def _check_schema_policies(ctx: RunContext, source: DatasetConfig, spec: TableSpec,
                           columns_by_file: Dict[str, List[str]]) -> List[str]:
    """Stop on a change a frozen layer would receive; return the columns bronze evolves to hold."""
    policy = ctx.cfg.schema_policy
    bronze_columns = sources.data_columns(spec.schema)
    silver_columns = list(source.column_names) + silver_extras(ctx, source)
    new_columns: List[str] = []
    for uri, names in columns_by_file.items():
        change = schema_policy.compare(names, bronze_columns)
        schema_policy.check_frozen("bronze", spec.identifier, policy.bronze, f"file {uri}", change)
        reaching_silver = names if policy.bronze == "evolve" else [c for c in names if c in bronze_columns]
        schema_policy.check_frozen("silver", f"silver.{source.name}", policy.silver, f"file {uri}",
                                   schema_policy.compare(reaching_silver, silver_columns))
        if policy.bronze == "evolve":
            new_columns += [c for c in change.new if c not in new_columns]
        if change:
            logs.get().warning("schema change", file=uri, change=change.describe(), bronze_policy=policy.bronze,
                               silver_policy=policy.silver)
    return new_columns


def silver_extras(ctx: RunContext, source: DatasetConfig) -> List[str]:
    """Columns beyond the declared ones (and lineage) that silver.<dataset> evolved to carry."""
    from validation.contract import LINEAGE_FIELDS

    contracted = set(source.column_names) | {f.name for f in LINEAGE_FIELDS}
    return [c for c in ctx.lake.columns(f"silver.{source.name}") if c not in contracted]


def ingest(ctx: RunContext, name: str, source: DatasetConfig, file_plan: "FilePlan | None") -> BronzeResult:
    if source.kind == "files":
        return _ingest_files(ctx, file_plan)  # type: ignore[arg-type]
    spec = table_spec(source)
    ctx.lake.ensure(spec)
    return _ingest_query(ctx, name, source, spec)


def _ingest_files(ctx: RunContext, file_plan: FilePlan) -> BronzeResult:
    log = logs.get()
    good, name, source = file_plan.new_files, file_plan.name, file_plan.source
    spec = table_spec(source, ctx.lake, file_plan.new_columns)
    ctx.lake.ensure(spec, evolve=True)
    if not good:
        return BronzeResult(0, [])
    if file_plan.new_columns:
        log.warning("bronze evolved", table=spec.identifier, added_columns=file_plan.new_columns)

    def read(files: List[sources.SourceFile]):
        return sources.read_files(name, source, files, file_plan.columns_by_file, sources.data_columns(spec.schema),
                                  ctx.cfg.schema_policy.bronze, spec.schema, ctx.run_id, ctx.started_at).materialize()

    try:
        ds = read(good)
    except Exception as failure:  # a file the driver's checks let through failed in its read task: refuse it
        parts = _refuse_unreadable(ctx, file_plan, read, failure)
        good = file_plan.new_files
        if not good:
            return BronzeResult(0, [])
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    rows = ds.count()
    units = tuple(Unit(f.uri, f.sha256, tuple(file_plan.columns_by_file[f.uri])) for f in good)
    snapshot = ctx.lake.write(ds, spec, ctx.commit_properties(source=name, units=units))
    ctx.wrote(spec.identifier, snapshot)
    log.info("bronze written", source=name, table=spec.identifier, rows=rows, files=len(good))
    return BronzeResult(rows, [f.uri for f in good])


def _refuse_unreadable(ctx: RunContext, file_plan: FilePlan, read, failure: Exception) -> list:
    """Read each new file alone; the ones that fail are rejected (recorded, counted, one log line each) like
    the files the checks refuse, and the others' rows returned (each file is read once more, not twice).
    Nothing was committed: the read comes first."""
    log = logs.get()
    readable, parts, refused = [], [], []
    for file in file_plan.new_files:
        try:
            parts.append(read([file]))
            readable.append(file)
        except Exception as exc:
            refused.append(file_ledger.NotIngested(file_plan.name, file.uri, file.sha256, file_ledger.REJECTED,
                                                   f"cannot read {file.format} file: {_error_line(exc)}"))
    if not refused:
        raise failure  # not a file's fault
    file_ledger.record(ctx.lake, refused, ctx.run_id, ctx.commit_properties())
    for entry in refused:
        ctx.rejected_files.append({"source": file_plan.name, "file": entry.uri, "reason": entry.reason})
        log.error("file rejected", source=file_plan.name, file=entry.uri, reason=entry.reason)
    file_plan.not_ingested += refused
    file_plan.files["ingested"] -= len(refused)
    file_plan.files["rejected"] += len(refused)
    file_plan.new_files = readable
    return parts


def _error_line(exc: BaseException) -> str:
    """The original error of a failed Ray task, in one line (Ray wraps it in lines of its own)."""
    found = re.findall(r"^\s*(?:[\w]+\.)*(\w*(?:Error|Exception|Invalid)): (.+)$", str(exc), re.MULTILINE)
    own = [(kind, text) for kind, text in found if kind not in ("UserCodeException", "RayTaskError")]
    return f"{own[-1][0]}: {own[-1][1].strip()}" if own else str(exc).splitlines()[0]


def _last_watermark(ctx: RunContext, spec: TableSpec, name: str) -> Optional[str]:
    """The watermark the last committed ingest of this source recorded (advanced only by a commit)."""
    marks = [r.watermark for r in history(ctx.lake, spec.identifier) if r.source == name]
    return sources.latest_watermark(marks + [ctx.lake.table(spec.identifier).properties.get(
        f"recorded.watermark.{name}")])


def _ingest_query(ctx: RunContext, name: str, source: DatasetConfig, spec: TableSpec) -> BronzeResult:
    log = logs.get()
    columns = list(source.column_names)
    last = _last_watermark(ctx, spec, name) if source.watermark_column else None
    since = sources.shift_watermark(last, source.watermark_lag_seconds) if last else None
    rows = sources.read_query(name, source, since)
    unit_uri = f"{sources.redact_uri(source.uri or '')} :: {source.query}"
    # bronze's row hash covers the `_malformed_line` column too, null for database rows
    rows = rows.append_column("_malformed_line", pa.nulls(rows.num_rows, pa.string()))
    watermark: Optional[str] = None
    if source.watermark_column:
        # rows re-read inside the lag that bronze already holds are not appended again
        as_bronze = row_hash.row_hashes(rows, columns + ["_malformed_line"])
        held = pa.array([], pa.string())
        if rows.num_rows:
            same_rows = And(EqualTo("_source", name), In("_row_hash", as_bronze.to_pylist()))
            held = ctx.lake.read_arrow(spec.identifier, same_rows, ["_row_hash"]).column("_row_hash")
            held = held.combine_chunks().cast(pa.string())
        rows = rows.filter(pc.invert(pc.is_in(as_bronze, value_set=held)))
        if rows.num_rows == 0:
            log.info("no rows past the watermark", source=name, watermark=last, read_since=since)
            return BronzeResult(0, [])
        watermark = sources.latest_watermark([last] + rows.column(source.watermark_column).to_pylist()) or ""
    # The unit's content hash is the hash of its sorted row hashes: independent of row order.
    unit_hashes = row_hash.row_hashes(rows, columns).to_pylist() if rows.num_rows else []
    sha = hashlib.sha256("\n".join(sorted(unit_hashes)).encode()).hexdigest()
    if not source.watermark_column and (unit_uri, sha) in _already_ingested(ctx, spec):
        log.info("query result unchanged, nothing to ingest", source=name)
        return BronzeResult(0, [])
    if rows.num_rows == 0:  # nothing to write, so nothing is committed (nor recorded) and Ray is not needed
        log.info("query returned no rows, nothing to ingest", source=name)
        return BronzeResult(0, [])
    table = sources.with_metadata(rows, columns, name, unit_uri, sha, ctx.run_id, ctx.started_at, spec.schema)
    ray_runtime.ensure()
    snapshot = ctx.lake.write(ray.data.from_arrow(table), spec, ctx.commit_properties(
        source=name, units=(Unit(unit_uri, sha),), watermark=watermark))
    ctx.wrote(spec.identifier, snapshot)
    log.info("bronze written", source=name, table=spec.identifier, rows=table.num_rows, watermark=watermark)
    return BronzeResult(table.num_rows, [unit_uri])


def pending_runs(ctx: RunContext, bronze_identifier: str, consumer_identifier: str) -> List[str]:
    """Bronze run ids whose rows the consumer table has not yet processed (recorded as `bronze_runs`)."""
    produced = [r.run_id for r in history(ctx.lake, bronze_identifier) if r.run_id and r.units]
    consumed = set(ctx.lake.recorded(consumer_identifier, "bronze_runs"))
    return [r for r in dict.fromkeys(produced) if r not in consumed]



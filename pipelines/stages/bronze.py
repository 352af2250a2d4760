"""Ingest: each source into bronze.<dataset>, an exact copy (text stays text) plus ingest metadata.

Idempotency: a unit of input (a file, or the full result of a SQL query) is identified by its path and
content hash. Each bronze commit records the units it ingested in its snapshot properties
(`ingested_units`), atomically with the rows, so a unit already in bronze is never appended twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List


from pipelines import logs
from pipelines.config import SourceConfig
from pipelines.context import RunContext
from pipelines.io import sources
from pipelines.io.lake import TableSpec

INGESTED_UNITS = "ingested_units"


@dataclass
class BronzeResult:
    rows: int
    units: List[str]


def table_spec(source: SourceConfig) -> TableSpec:
    return TableSpec(f"bronze.{source.dataset}", sources.bronze_schema(source))


def _already_ingested(ctx: RunContext, spec: TableSpec) -> set:
    return {(u["uri"], u["sha256"]) for u in ctx.lake.recorded(spec.identifier, INGESTED_UNITS)}


@dataclass
class FilePlan:
    """What a files source will ingest in this run, decided before anything is written."""

    name: str
    source: SourceConfig
    new_files: List[sources.SourceFile]
    found: int


def plan(ctx: RunContext, name: str, source: SourceConfig):
    """Check a source can be read and decide what is new: raises a one-line SourceError before any write."""
    spec = table_spec(source)
    if source.kind != "files":
        sources.probe_query(name, source)
        return None
    log = logs.get()
    files = sources.list_files(name, source)
    seen = _already_ingested(ctx, spec) if ctx.lake.exists(spec.identifier) else set()
    new = [f for f in files if (f.uri, f.sha256) not in seen]
    good = []
    for file in new:
        reason = sources.check_file(source.path or "", file, list(source.columns))
        if reason:
            ctx.rejected_files.append({"source": name, "file": file.uri, "reason": reason})
            log.error("file rejected", source=name, file=file.uri, reason=reason)
        else:
            good.append(file)
    log.info("files listed", source=name, found=len(files), already_ingested=len(files) - len(new), new=len(good))
    return FilePlan(name, source, good, len(files))


def ingest(ctx: RunContext, name: str, source: SourceConfig, file_plan: "FilePlan | None") -> BronzeResult:
    spec = table_spec(source)
    ctx.lake.ensure(spec)
    if source.kind == "files":
        return _ingest_files(ctx, file_plan, spec)  # type: ignore[arg-type]
    return _ingest_query(ctx, name, source, spec)


def _ingest_files(ctx: RunContext, file_plan: FilePlan, spec: TableSpec) -> BronzeResult:
    log = logs.get()
    good, name, source = file_plan.new_files, file_plan.name, file_plan.source
    if not good:
        return BronzeResult(0, [])
    ds = sources.read_files(name, source, good, ctx.run_id, ctx.started_at).materialize()
    rows = ds.count()
    units = [{"uri": f.uri, "sha256": f.sha256} for f in good]
    snapshot = ctx.lake.write(ds, spec, ctx.commit_properties(**{INGESTED_UNITS: units, "source": name}))
    ctx.wrote(spec.identifier, snapshot)
    log.info("bronze written", source=name, table=spec.identifier, rows=rows, files=len(good))
    return BronzeResult(rows, [f.uri for f in good])


def _ingest_query(ctx: RunContext, name: str, source: SourceConfig, spec: TableSpec) -> BronzeResult:
    log = logs.get()
    raw = sources.read_query(name, source).materialize()
    columns = list(source.columns)
    unit_uri = f"{sources.redact_uri(source.uri or '')} :: {source.query}"
    # The unit's content hash is the hash of its sorted row hashes: independent of row order.
    hashed = raw.map_batches(
        lambda b: b.assign(_row_hash=sources.row_hashes(b, columns)), batch_format="pandas"
    ).materialize()
    row_hashes = sorted(hashed.to_pandas()["_row_hash"]) if hashed.count() else []
    sha = hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()
    if (unit_uri, sha) in _already_ingested(ctx, spec):
        log.info("query result unchanged, nothing to ingest", source=name)
        return BronzeResult(0, [])
    schema = spec.schema
    run_id, ingested_at = ctx.run_id, ctx.started_at

    def to_bronze(batch):
        import pyarrow as pa

        table = batch.select(columns).append_column("_malformed_line", pa.nulls(batch.num_rows, pa.string()))
        return sources.with_metadata(table, columns, name, unit_uri, sha, run_id, ingested_at, schema)

    ds = raw.map_batches(to_bronze, batch_format="pyarrow").materialize()
    rows = ds.count()
    snapshot = ctx.lake.write(ds, spec, ctx.commit_properties(**{INGESTED_UNITS: [{"uri": unit_uri, "sha256": sha}],
                                                                  "source": name}))
    ctx.wrote(spec.identifier, snapshot)
    log.info("bronze written", source=name, table=spec.identifier, rows=rows)
    return BronzeResult(rows, [unit_uri])


def pending_runs(ctx: RunContext, bronze_identifier: str, consumer_identifier: str) -> List[str]:
    """Bronze run ids whose rows the consumer table has not yet processed (recorded as `bronze_runs`)."""
    produced = [p["run_id"] for p in ctx.lake.snapshot_properties(bronze_identifier)
                if "run_id" in p and INGESTED_UNITS in p]
    consumed = set(ctx.lake.recorded(consumer_identifier, "bronze_runs"))
    return [r for r in dict.fromkeys(produced) if r not in consumed]



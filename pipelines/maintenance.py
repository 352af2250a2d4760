"""Maintenance of the lake: retention, erasure of one entity, snapshot expiry and file clean-up.

Deleting rows in Iceberg only writes a new snapshot: older snapshots (time travel) still reference the
data files that hold them. So retention and erasure both end the same way: every snapshot but the current
one is expired and each file no remaining snapshot references is deleted from storage. Then the data is
physically gone.

What the pipeline's idempotency records in snapshot properties (ingested files, consumed bronze runs) is
folded into a table property before the snapshots carrying it expire (see `Lake.recorded`), so an expired
history never makes a file look new again.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pyiceberg.expressions import EqualTo, LessThan
from pyiceberg.table import Table
from pyiceberg.types import IntegerType, LongType, StringType

from pipelines import logs
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.io.sources import latest_watermark
from pipelines.commit_record import RECORDED_KEYS, history
from pipelines.io.lake import Lake, commit_checked

LAYERS = ("bronze", "silver", "quarantine", "gold")


@dataclass
class TableReport:
    rows_deleted: int = 0
    snapshots_expired: int = 0
    files_deleted: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        return {"rows_deleted": self.rows_deleted, "snapshots_expired": self.snapshots_expired,
                "files_deleted": len(self.files_deleted)}


# --- snapshots and files ------------------------------------------------------------------------------
def _files_of(table: Table, snapshot_ids: Set[int]) -> Set[str]:
    """Every file the given snapshots reference: manifest lists, manifests, data and delete files."""
    io = table.io
    files: Set[str] = set()
    for snapshot in table.snapshots():
        if snapshot.snapshot_id not in snapshot_ids:
            continue
        files.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                files.add(entry.data_file.file_path)
    return files


def _fs_path(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else f"{parsed.netloc}{parsed.path}"


def expire_history(lake: Lake, identifier: str, orphan_min_age_s: float = 3600.0) -> TableReport:
    """Expire every snapshot but the current one, delete the files only they referenced, and delete
    orphans (files under the table's location that no snapshot references, e.g. from a crashed write)
    older than `orphan_min_age_s`, so an in-flight write of another run is never touched."""
    report = TableReport()
    table = lake.table(identifier)
    current = table.current_snapshot()
    if current is None:
        return report
    expired = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current.snapshot_id]
    if expired:
        _fold_records(lake, identifier)
        before = _files_of(table, set(expired) | {current.snapshot_id})
        table.maintenance.expire_snapshots().by_ids(expired).commit()
        table = lake.table(identifier)
        report.snapshots_expired = len(expired)
    live = {_fs_path(f) for f in _files_of(table, {current.snapshot_id})}
    dropped = {_fs_path(f) for f in before} - live if expired else set()
    # previous metadata versions name the expired snapshots; a newer one (a concurrent commit) is not here
    dropped |= {_fs_path(entry.metadata_file) for entry in table.metadata.metadata_log}
    fs, root = pafs.FileSystem.from_uri(table.location())
    keep = live | {_fs_path(table.metadata_location)}
    now = time.time()
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or info.path in keep:
            continue
        orphan_old_enough = info.mtime is not None and now - info.mtime.timestamp() >= orphan_min_age_s
        if info.path in dropped or (orphan_old_enough and not info.path.endswith(".metadata.json")):
            fs.delete_file(info.path)
            report.files_deleted.append(info.path)
    return report


def _fold_records(lake: Lake, identifier: str) -> None:
    """Copy the idempotency records of the whole history into table properties (set semantics)."""
    updates = {}
    for key in RECORDED_KEYS:
        values = lake.recorded(identifier, key)
        if values:
            unique = list({json.dumps(v, sort_keys=True): v for v in values}.values())
            updates[f"recorded.{key}"] = json.dumps(unique)
    # the last watermark of each watermarked source (bronze commits' `watermark`), likewise kept
    marks: Dict[str, List[str]] = {}
    for record in history(lake, identifier):
        if record.watermark and record.source:
            marks.setdefault(record.source, []).append(record.watermark)
    for source, values in marks.items():
        key = f"recorded.watermark.{source}"
        updates[key] = latest_watermark(values + [lake.table(identifier).properties.get(key)]) or ""
    if updates:
        with lake.table(identifier).transaction() as tx:
            tx.set_properties(**updates)


def _tables(lake: Lake) -> List[str]:
    out = []
    for layer in LAYERS:
        if (layer,) in lake.catalog.list_namespaces():
            out += [".".join(t) for t in lake.catalog.list_tables(layer)]
    return sorted(out)


def drop_training_indexes(cfg: PipelineConfig, lake: Lake) -> int:
    """Remove the training-set indexes (serving/training_index.py) of gold snapshots that no longer exist:
    an index is a copy of its snapshot, and erasure and retention promise the rows are physically gone.
    The number removed."""
    if not cfg.training_index.dir:
        return 0
    from pathlib import Path

    from serving import training_index

    removed = 0
    for identifier in (t for t in _tables(lake) if t.startswith("gold.")):
        table = lake.table(identifier)
        removed += len(training_index.prune(Path(cfg.training_index.dir), str(table.metadata.table_uuid),
                                            cfg.training_index.keep, training_index.lineage(table)))
    return removed


# --- retention ------------------------------------------------------------------------------------------
ARRIVAL_COLUMN = "_ingested_at"  # bronze and quarantine age by arrival


def _age_column(cfg: PipelineConfig, identifier: str, table: Table) -> Optional[str]:
    """What a table's rows age by: arrival (bronze, quarantine), the declared event time (silver of an
    events dataset), the as-of day (gold); None: kept whole (a state dataset's silver)."""
    layer, _, name = identifier.partition(".")
    names = [f.name for f in table.schema().fields]
    if layer == "gold":
        column = "as_of"
    elif layer == "silver":
        declared = cfg.datasets.get(name)
        column = declared.event_time if declared is not None else None
    else:
        column = ARRIVAL_COLUMN
    return column if column in names else None


def apply_retention(cfg: PipelineConfig, lake: Lake, reference: dt.datetime) -> Dict[str, Dict[str, object]]:
    """Delete the rows older than each layer's retention (days before `reference`), then make them
    physically gone. A table without an age column (the silver of a state dataset) is kept whole."""
    log = logs.get()
    out: Dict[str, Dict[str, object]] = {}
    for identifier in _tables(lake):
        layer = identifier.split(".")[0]
        days = getattr(cfg.retention, layer)
        table = lake.table(identifier)
        column = _age_column(cfg, identifier, table)
        if days is None or column is None:
            continue
        bound = reference - dt.timedelta(days=days)
        rows_before = lake.row_count(identifier)
        table.delete(LessThan(column, bound.isoformat()), snapshot_properties={"maintenance": "retention"})
        report = expire_history(lake, identifier)
        report.rows_deleted = rows_before - lake.row_count(identifier)
        out[identifier] = {"older_than": bound.isoformat(), **report.as_dict()}
        log.info("retention applied", table=identifier, older_than=bound.isoformat(), **report.as_dict())
    return out


# --- compaction ----------------------------------------------------------------------------------------
SMALL_FILE_BYTES = 32 * 1024 * 1024  # a data file below this is small
COMPACT_MIN_FILES = 4  # a partition is compacted once it holds this many small files
COMPACT_MAX_BYTES = 512 * 1024 * 1024  # ... and its small files add up to at most this (read on the driver)


def _partition_filter(table: Table, partition: Dict[str, object]):
    """pyiceberg filter selecting one partition's rows (day partitions: that day; unpartitioned: all)."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThan as Lt

    fields = table.spec().fields
    if not fields:
        return AlwaysTrue()
    field = fields[0]  # this project partitions by one day(<timestamp>) at most
    day = partition[field.name]
    day = dt.date(1970, 1, 1) + dt.timedelta(days=day) if isinstance(day, int) else day
    column = table.schema().find_field(field.source_id).name
    start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
    return And(GreaterThanOrEqual(column, start.isoformat()), Lt(column, (start + dt.timedelta(days=1)).isoformat()))


def compact(lake: Lake, identifier: str, run_id: str) -> Dict[str, int]:
    """Rewrite each partition holding many small data files as one file, in one commit for the table.
    The rows are the same (the content digest does not change); the old files go with snapshot expiry."""
    table = lake.table(identifier)
    snapshot = table.current_snapshot()
    if snapshot is None or not snapshot.manifests(table.io):  # (inspect.files() fails on an empty snapshot)
        return {"files_compacted": 0, "partitions_compacted": 0}
    files = table.inspect.files().select(["partition", "file_size_in_bytes", "content"]).to_pylist()
    by_partition: Dict[str, List[dict]] = {}
    for f in files:
        if f["content"] == 0 and f["file_size_in_bytes"] < SMALL_FILE_BYTES:  # data files only
            by_partition.setdefault(json.dumps(f["partition"], sort_keys=True, default=str), []).append(f)
    chosen = [(v[0]["partition"], v) for v in by_partition.values()
              if len(v) >= COMPACT_MIN_FILES and sum(f["file_size_in_bytes"] for f in v) <= COMPACT_MAX_BYTES]
    if not chosen:
        return {"files_compacted": 0, "partitions_compacted": 0}
    from pyiceberg.expressions import Or

    filters = [_partition_filter(table, partition) for partition, _ in chosen]
    row_filter = filters[0]
    for f in filters[1:]:
        row_filter = Or(row_filter, f)
    rows = table.scan(row_filter=row_filter).to_arrow()
    commit_checked(table, lambda t: t.overwrite(rows, overwrite_filter=row_filter,
                                                snapshot_properties={"run_id": run_id, "maintenance": "compaction"}),
                   run_id)
    compacted = sum(len(v) for _, v in chosen)
    logs.get().info("compacted", table=identifier, files=compacted, partitions=len(chosen), rows=rows.num_rows)
    return {"files_compacted": compacted, "partitions_compacted": len(chosen)}


def clean_up(lake: Lake, orphan_min_age_s: float, run_id: str = "maintenance") -> Dict[str, Dict[str, object]]:
    """Compact small files, expire old snapshots and delete unreferenced files, in every table."""
    out: Dict[str, Dict[str, object]] = {}
    for identifier in _tables(lake):
        compacted = compact(lake, identifier, run_id)
        out[identifier] = {**compacted, **expire_history(lake, identifier, orphan_min_age_s).as_dict()}
    return out


# --- erasure --------------------------------------------------------------------------------------------
def erase(cfg: PipelineConfig, lake: Lake, join_key: str, key: str) -> Dict[str, object]:
    """Remove every row of one entity (by its join key) from every table and from the online store, then
    expire the snapshots that held them. Returns what was removed."""
    log = logs.get()
    removed: Dict[str, Dict[str, object]] = {}
    for identifier in _tables(lake):
        table = lake.table(identifier)
        names = {f.name: f for f in table.schema().fields}
        if join_key not in names:
            continue
        field_type = names[join_key].field_type
        if isinstance(field_type, (IntegerType, LongType)):
            if not key.lstrip("-").isdigit():
                raise PipelineError(f"erase: {join_key}={key!r} is not an integer, as {identifier}.{join_key} is")
            value: object = int(key)
        elif isinstance(field_type, StringType):
            value = key
        else:
            continue
        rows_before = lake.row_count(identifier)
        table.delete(EqualTo(join_key, value), snapshot_properties={"maintenance": "erasure"})
        report = expire_history(lake, identifier)
        report.rows_deleted = rows_before - lake.row_count(identifier)
        removed[identifier] = report.as_dict()
    from serving.online_erasure import erase_online

    online = erase_online(cfg, join_key, key)
    log.info("entity erased", join_key=join_key, tables=len(removed), online=online)
    return {"join_key": join_key, "tables": removed, "online_store": online}

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
from pipelines.io.lake import RECORDED_KEYS, Lake

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
    for props in lake.snapshot_properties(identifier):
        if props.get("watermark") and props.get("source"):
            marks.setdefault(props["source"], []).append(props["watermark"])
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


# --- retention ------------------------------------------------------------------------------------------
AGE_COLUMNS = {"bronze": "_ingested_at", "quarantine": "_ingested_at", "silver": "ts"}


def _age_column(identifier: str, table: Table) -> Optional[str]:
    layer = identifier.split(".")[0]
    if layer == "gold":
        names = [f.name for f in table.schema().fields]
        return "as_of" if "as_of" in names else None
    column = AGE_COLUMNS.get(layer)
    return column if column in [f.name for f in table.schema().fields] else None


def apply_retention(cfg: PipelineConfig, lake: Lake, reference: dt.datetime) -> Dict[str, Dict[str, object]]:
    """Delete the rows older than each layer's retention (days before `reference`), then make them
    physically gone. A table without an age column (a dimension such as silver.users) is kept whole."""
    log = logs.get()
    out: Dict[str, Dict[str, object]] = {}
    for identifier in _tables(lake):
        layer = identifier.split(".")[0]
        days = getattr(cfg.retention, layer)
        table = lake.table(identifier)
        column = _age_column(identifier, table)
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


def clean_up(lake: Lake, orphan_min_age_s: float) -> Dict[str, Dict[str, object]]:
    """Expire old snapshots and delete unreferenced files in every table."""
    return {identifier: expire_history(lake, identifier, orphan_min_age_s).as_dict() for identifier in _tables(lake)}


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

"""The training-set index: each published gold snapshot kept on local disk in `pit_index`'s layout, so a
training set over it joins without decoding gold (`serving/training_set.py` uses it when it is there).

    <training_index.dir>/<table uuid>/<snapshot id>/
        manifest.json                      what the index is of (table, snapshot, join key, as-of, columns)
        entities.arrow instants.arrow cells.arrow
        column-<i>.arrow                   gold's other columns, one file each, rows in the layout's order

Written by the pipeline's publish stage for the snapshot each gold table is at (the snapshot the online
store now serves, after the quality gate), kept for the `keep` newest snapshots of each table. It is a
cache: derived from an immutable snapshot, so never stale; a missing, partial or foreign index is ignored
and the training set reads gold from Iceberg as before. Files are uncompressed Arrow IPC, memory-mapped
when read: a build touches only the pages of the rows its labels join, one column at a time, and the
snapshot's rows are never all decoded in memory (the peak stays a fraction of reading gold).

Crash safety: an index is written into a `.tmp-*` folder and renamed into place once every file is
synced, so its folder is either complete or absent; leftovers of a crash are removed by the next write
(writes happen only in a pipeline run, which holds the catalog's run lock).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from serving import pit_index
from serving.pit_join import SetSpec

FORMAT = 1
MANIFEST = "manifest.json"
# Gold is read a group of columns at a time, a group ~this many bytes decoded: every read plans and opens
# each data file again (most of a small table's cost), and one read of every column would hold gold whole.
READ_BYTES = 256 * 1024 * 1024
_KEY_TYPES = {"int64": pa.int64(), "string": pa.string()}
_UTC_US = pa.timestamp("us", tz="UTC")


class TrainingIndexError(Exception):
    """An index cannot be written for a snapshot (a missing or unreadable key or as-of column)."""


class SnapshotIndex:
    """An opened index: the layout (memory-mapped) and each gold column, read once, rows at positions."""

    def __init__(self, folder: Path, manifest: Dict, layout: pit_index.Layout,
                 columns: Dict[str, Tuple[pa.MemoryMappedFile, pa.Array]], mappings: List[pa.MemoryMappedFile]):
        self.folder = folder
        self.manifest = manifest
        self.layout = layout
        self._columns = columns
        self._mappings = mappings

    @property
    def column_names(self) -> List[str]:
        return list(self._columns)

    def take(self, names: Sequence[str], positions: np.ndarray) -> pa.Table:
        """These columns of the rows at `positions` (into the layout). Each column's mapping is released
        once its rows are taken, so at most one column's pages are resident at a time; a column can be
        taken once."""
        indices = pa.array(positions, type=pa.int64())
        arrays = []
        for name in names:
            source, values = self._columns.pop(name)
            arrays.append(values.take(indices))
            del values
            source.close()
        return pa.Table.from_arrays(arrays, names=list(names))

    def close(self) -> None:
        self._columns.clear()
        for source in self._mappings:
            source.close()


def folder_of(root: Path, table_uuid: str, snapshot_id: int) -> Path:
    return Path(root) / str(table_uuid) / str(int(snapshot_id))


def open_index(root: Path, table_uuid: str, snapshot_id: int, spec: SetSpec) -> Optional[SnapshotIndex]:
    """The index of this snapshot when one is there and made for this join (key, its type, as-of); None
    otherwise. Every file is mapped here, so an index pruned while it is being read stays readable."""
    folder = folder_of(root, table_uuid, snapshot_id)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if (manifest.get("format"), manifest.get("table_uuid"), manifest.get("snapshot_id")) \
            != (FORMAT, str(table_uuid), int(snapshot_id)) \
            or (manifest.get("join_key"), manifest.get("key_type"), manifest.get("as_of_column")) \
            != (spec.join_key, spec.key_dtype, spec.as_of_column):
        return None
    maps: List[pa.MemoryMappedFile] = []
    try:  # mapped and parsed (headers and footers only: no data page is touched), lengths checked
        arrays = []
        for name in ("entities.arrow", "instants.arrow", "cells.arrow", *(c["file"] for c in manifest["columns"])):
            maps.append(pa.memory_map(str(folder / name)))
            arrays.append(_single(maps[-1]))
        entities, instants, cells = arrays[:3]
        rows = manifest["rows"]
        if len(cells) != rows or any(len(values) != rows for values in arrays[3:]):
            raise ValueError("lengths")
        layout = pit_index.Layout(entities, instants.to_numpy(), cells.to_numpy())
        columns = {c["name"]: (maps[3 + i], arrays[3 + i]) for i, c in enumerate(manifest["columns"])}
    except (OSError, ValueError, KeyError, TypeError):  # pa.ArrowInvalid is a ValueError
        for source in maps:
            source.close()
        return None
    return SnapshotIndex(folder, manifest, layout, columns, maps)


def _single(source: pa.MemoryMappedFile) -> pa.Array:
    """The one column of an Arrow IPC file, without copying (zero-copy views of the mapping)."""
    table = pa.ipc.open_file(source).read_all()
    column = table.column(0)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def write(root: Path, table, snapshot_id: int, spec: SetSpec) -> Path:
    """Write the index of `table` (a pyiceberg table) at `snapshot_id` for joins on the spec's key and
    as-of; return its folder. Gold is read a group of columns at a time (`PinnedScan`, READ_BYTES), so the
    peak is the layout and one group."""
    from pyiceberg.expressions import AlwaysTrue

    from pipelines.io.pinned_scan import PinnedScan

    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None:
        raise TrainingIndexError(f"no snapshot {snapshot_id}")
    schema = next((s for s in table.schemas().values() if s.schema_id == snapshot.schema_id), table.schema())
    names = schema.column_names
    for needed in (spec.join_key, spec.as_of_column):
        if needed not in names:
            raise TrainingIndexError(f"snapshot {snapshot_id} has no column {needed!r}")
    target = folder_of(root, table.metadata.table_uuid, snapshot_id)
    if (target / MANIFEST).exists():
        return target  # a snapshot never changes: its index neither
    scan = PinnedScan(table, snapshot_id, AlwaysTrue())
    cell = scan.read([spec.join_key, spec.as_of_column])
    try:
        keys = cell.column(spec.join_key).combine_chunks().cast(_KEY_TYPES[spec.key_dtype])
        as_of = cell.column(spec.as_of_column).combine_chunks().cast(_UTC_US)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TrainingIndexError(f"snapshot {snapshot_id}: {str(exc).splitlines()[0]}") from None
    del cell
    layout, order = pit_index.layout(keys, as_of)
    keys_read = keys
    del as_of
    taken = pa.array(order)
    staging = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_array(staging / "entities.arrow", layout.entities)
        _write_array(staging / "instants.arrow", pa.array(layout.instants))
        _write_array(staging / "cells.arrow", pa.array(layout.cells))
        columns = []
        others = [n for n in names if n not in (spec.join_key, spec.as_of_column)]
        per_read = max(1, READ_BYTES // max(1, 8 * len(keys_read)))  # columns decoded together (~8 B a value)
        for start in range(0, len(others), per_read):
            group = others[start:start + per_read]
            read = scan.read([spec.join_key, *group])
            # each read must give the first one's rows in its order: cheap to check, fatal to get wrong
            if not read.column(spec.join_key).combine_chunks().cast(keys_read.type).equals(keys_read):
                raise TrainingIndexError(f"snapshot {snapshot_id}: rows came in another order reading {group}")
            for name in group:
                values = read.column(name).combine_chunks().take(taken)
                columns.append({"name": name, "file": f"column-{len(columns)}.arrow", "type": str(values.type)})
                _write_array(staging / columns[-1]["file"], values)
                del values
            del read
        manifest = {"format": FORMAT, "table_uuid": str(table.metadata.table_uuid), "snapshot_id": int(snapshot_id),
                    "snapshot_timestamp_ms": int(snapshot.timestamp_ms), "rows": layout.rows,
                    "join_key": spec.join_key, "key_type": spec.key_dtype, "as_of_column": spec.as_of_column,
                    "columns": columns}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _sync(staging / MANIFEST)
        _sync(staging)
        os.replace(staging, target)
        _sync(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_array(path: Path, values: pa.Array) -> None:
    table = pa.table({"values": values})
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(len(values), 1))
    _sync(path)


def _sync(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def indexed(root: Path, table_uuid: str) -> List[int]:
    """The snapshots of this table that have an index (a manifest: a complete one, `write` renames it in)."""
    folder = Path(root) / str(table_uuid)
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in folder.iterdir()
                  if entry.name.isdigit() and (entry / MANIFEST).is_file())


def lineage(table) -> List[int]:
    """The ids of the table's current snapshot and its ancestors: the snapshots a reader of the table's
    history can be served. One rolled back (a failed quality gate) stays in the metadata but not here."""
    ids: List[int] = []
    by_id = {s.snapshot_id: s for s in table.snapshots()}
    current = table.current_snapshot()
    cursor = current.snapshot_id if current is not None else None
    while cursor is not None and cursor in by_id and cursor not in ids:
        ids.append(cursor)
        cursor = by_id[cursor].parent_snapshot_id
    return ids


def prune(root: Path, table_uuid: str, keep: int, live: Sequence[int]) -> List[int]:
    """Remove the indexes of this table beyond the `keep` newest snapshots (by commit time) of `live`
    (`lineage`), those of other snapshots (expired, rolled back), and staging leftovers; the ids removed."""
    folder = Path(root) / str(table_uuid)
    if not folder.is_dir():
        return []
    for leftover in folder.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    indexed = []
    for entry in folder.iterdir():
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            indexed.append((int(manifest["snapshot_timestamp_ms"]), int(manifest["snapshot_id"]), entry))
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(entry, ignore_errors=True)  # not an index (a partial copy, say): nothing reads it
    indexed.sort(reverse=True)
    alive = {int(s) for s in live}
    kept = [sid for _, sid, _ in indexed if sid in alive][:keep]
    removed = []
    for _, sid, entry in indexed:
        if sid not in kept:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(sid)
    return removed

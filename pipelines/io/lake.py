"""Iceberg tables through pyiceberg (catalog, schemas, small reads) and Ray Data (bulk reads and writes).

Every write is one Iceberg commit that carries the run's snapshot properties (run id, config hash, code
version), so a reader can tell which run produced any snapshot. Writes state what they replace:
`append` adds rows; `overwrite` atomically replaces the rows matching a filter with the new ones, which is
what makes reruns converge instead of duplicating.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import ray
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import MAIN_BRANCH, SnapshotRefType
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.table.update import (
    AssertCurrentSchemaId,
    AssertRefSnapshotId,
    RemovePropertiesUpdate,
    SetCurrentSchemaUpdate,
    SetPropertiesUpdate,
    SetSnapshotRefUpdate,
)
from pyiceberg.transforms import DayTransform
from pyiceberg.io.pyarrow import _dataframe_to_data_files, pyarrow_to_schema  # pyiceberg is pinned (constraints.txt)
from pyiceberg.table.name_mapping import MappedField, NameMapping
from ray.data import SaveMode
from ray.data._internal.datasource.iceberg_datasink import IcebergDatasink  # ray is pinned (constraints.txt)

from pipelines import faults, ray_runtime
from pipelines.config import CatalogConfig
from pipelines.errors import PipelineError

ROWS_PER_FILE = 1_000_000
SQLITE_BUSY_TIMEOUT_MS = 30_000
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
    # A commit that loses an optimistic-concurrency race is retried by pyiceberg: it refreshes the table,
    # re-validates (an overwrite fails if rows it replaces were added concurrently) and commits again.
    "commit.retry.num-retries": "4",
    "commit.retry.min-wait-ms": "100",
    "commit.retry.max-wait-ms": "5000",
    # Every commit adds a manifest; without merging, a table's metadata grows by one manifest per run
    # forever (measured: 100 runs -> 100 manifests, benchmarks/manifests.py). With merge-append, pyiceberg
    # folds the manifests into one when a commit would leave this many or more.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}
# Snapshot property of a commit that replaced the table (`Lake.replace`): the table properties it changed,
# as they were before (JSON, null = absent), so that a rollback past it restores them.
REPLACED_PROPERTIES = "replaced_properties"


@dataclass(frozen=True)
class TableSpec:
    identifier: str  # "<layer>.<name>"
    schema: pa.Schema
    day_partition: Optional[str] = None  # timestamp column partitioned by day(...)
    properties: Dict[str, str] = field(default_factory=dict)  # table properties the writer records


class CommitConflictError(PipelineError):
    """Another writer changed a table under this run in a way a retry would silently override."""


def _intervening(table: Table, base: Optional[int]) -> Optional[List[Any]]:
    """Snapshots committed on top of `base`, oldest first; None when `base` is no longer in the current
    history (someone rolled the table back or replaced it)."""
    current = table.current_snapshot()
    if current is None:
        return [] if base is None else None
    newer = []
    for snapshot in ancestors_of(current, table.metadata):
        if snapshot.snapshot_id == base:
            return newer[::-1]
        newer.append(snapshot)
    return newer[::-1] if base is None else None


def _other_writers(table: Table, base: Optional[int], run_id: str) -> str:
    newer = _intervening(table, base)
    if newer is None:
        return "a rollback or replacement of the table"
    others = []
    for snapshot in newer:
        props = dict(snapshot.summary.additional_properties) if snapshot.summary else {}
        if props.get("run_id") != run_id:
            operation = snapshot.summary.operation.value if snapshot.summary else "unknown"
            others.append(f"{'run ' + props['run_id'] if props.get('run_id') else 'another writer'} ({operation}, "
                          f"snapshot {snapshot.snapshot_id})")
    return ", ".join(others) or "another writer"


def commit_checked(table: Table, commit: Callable[[Table], None], run_id: str, base: Optional[int] = None) -> None:
    """`commit(table)`, the one place a commit happens. Lost races are retried inside pyiceberg
    (TABLE_PROPERTIES); what it still refuses, a real conflict or too many lost races, is reported naming
    the writer that changed the table since `base` (default: the table's current snapshot)."""
    if base is None and table.current_snapshot() is not None:
        base = table.current_snapshot().snapshot_id
    faults.point("before_commit")
    try:
        commit(table)
    except (CommitFailedException, ValidationException) as exc:
        table = table.refresh()
        raise CommitConflictError(
            f"table {'.'.join(table.name()[-2:])} was changed by {_other_writers(table, base, run_id)} while run "
            f"{run_id} was writing it; nothing of this write was committed, and nothing was overwritten "
            f"({str(exc).splitlines()[0]})") from None
    faults.point("after_commit")


def _as_is(batch: pa.Table) -> pa.Table:
    return batch


class _CheckedIcebergSink(IcebergDatasink):
    """Ray's Iceberg sink, committing through `commit_checked`: a lost race is retried on the refreshed
    table with the data files the tasks wrote (never rewritten); a conflict is reported against the
    snapshot the write started from."""

    def __init__(self, run_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._run_id = run_id

    def on_write_start(self, schema: Any = None) -> None:
        super().on_write_start(schema)
        snapshot = self._table.current_snapshot()
        self._base_snapshot = snapshot.snapshot_id if snapshot else None

    def on_write_complete(self, write_result: Any) -> None:
        commit_checked(self._table, lambda _table: super(_CheckedIcebergSink, self).on_write_complete(write_result),
                       self._run_id, base=self._base_snapshot)


class Lake:
    """One Iceberg catalog: the tables of every layer live in it, one namespace per layer."""

    def __init__(self, catalog: CatalogConfig):
        self.name = catalog.name
        self.properties: Dict[str, str] = {"type": catalog.type, "uri": catalog.uri, "warehouse": catalog.warehouse,
                                           **catalog.extra_properties()}
        self.catalog: Catalog = load_catalog(self.name, **self.properties)
        if catalog.uri.startswith("sqlite"):
            _sqlite_for_concurrency(self.catalog)

    # --- catalog -------------------------------------------------------------------------------
    @property
    def ray_catalog_kwargs(self) -> Dict[str, str]:
        return {"name": self.name, **self.properties}

    def ensure(self, spec: TableSpec, evolve: bool = False) -> Table:
        """Create the table if it does not exist; refuse to write into one whose columns differ, except
        that with `evolve` the columns the spec adds at the end are added to the table (as nullable).
        The spec's properties are set on a new table, and on an existing one that lacks them."""
        namespace = spec.identifier.split(".")[0]
        self.catalog.create_namespace_if_not_exists(namespace)
        wanted = [f.name for f in spec.schema]
        try:
            table = self.catalog.load_table(spec.identifier)
        except NoSuchTableError:
            iceberg_schema = _iceberg_schema(spec.schema)
            partition = PartitionSpec()
            if spec.day_partition:
                source = iceberg_schema.find_field(spec.day_partition)
                partition = PartitionSpec(
                    PartitionField(source.field_id, 1000, DayTransform(), f"{spec.day_partition}_day")
                )
            return self.catalog.create_table(spec.identifier, schema=iceberg_schema, partition_spec=partition,
                                             properties={**TABLE_PROPERTIES, **spec.properties})
        missing = {k: v for k, v in spec.properties.items() if k not in table.properties}
        if missing:  # a table written before its writer recorded them: they describe what is written now
            with table.transaction() as tx:
                tx.set_properties(missing)
        have = [f.name for f in table.schema().fields]
        if evolve and wanted[: len(have)] == have and len(wanted) > len(have):
            with table.update_schema() as update:
                for f in spec.schema:
                    if f.name not in have:
                        update.add_column(f.name, _iceberg_schema(pa.schema([f])).fields[0].field_type)
            return self.table(spec.identifier)
        problem = self.schema_problem(spec, evolve)
        if problem:
            raise PipelineError(problem)
        return table

    def schema_problem(self, spec: TableSpec, evolve: bool = False) -> Optional[str]:
        """Why `ensure(spec, evolve)` would refuse the table as it is now (None: it would not). A run asks
        this of every table it will write before its first write, so it writes consistently or not at all."""
        have = self.columns(spec.identifier)
        wanted = [f.name for f in spec.schema]
        if not have or have == wanted or (evolve and wanted[: len(have)] == have):
            return None
        return (f"table {spec.identifier} has columns {have}, this code writes {wanted}: "
                "the schema is frozen for this layer (migrate or drop the table first)")

    def columns(self, identifier: str) -> List[str]:
        """The table's column names ([] when it does not exist)."""
        if not self.exists(identifier):
            return []
        return [f.name for f in self.table(identifier).schema().fields]

    def table(self, identifier: str) -> Table:
        return self.catalog.load_table(identifier)

    def exists(self, identifier: str) -> bool:
        return self.catalog.table_exists(identifier)

    # --- reads ---------------------------------------------------------------------------------
    def read_arrow(
        self,
        identifier: str,
        row_filter: BooleanExpression = AlwaysTrue(),
        columns: Sequence[str] = ("*",),
        snapshot_id: Optional[int] = None,
    ) -> pa.Table:
        """A small read on the driver (dimension tables, key look-ups)."""
        table = self.table(identifier)
        return table.scan(row_filter=row_filter, selected_fields=tuple(columns), snapshot_id=snapshot_id).to_arrow()

    def read_ray(
        self, identifier: str, row_filter: BooleanExpression = AlwaysTrue(), columns: Sequence[str] = ("*",)
    ) -> ray.data.Dataset:
        """A bulk read, split across Ray tasks by data file (filter and projection pushed to pyiceberg)."""
        ray_runtime.ensure()
        with warnings.catch_warnings():  # the parameters are deprecated in favour of lazy ops, which
            warnings.simplefilter("ignore", DeprecationWarning)  # do not prune files the same way yet
            return ray.data.read_iceberg(
                table_identifier=identifier,
                row_filter=row_filter,
                selected_fields=tuple(columns),
                catalog_kwargs=self.ray_catalog_kwargs,
            )

    # --- writes --------------------------------------------------------------------------------
    def write(
        self,
        ds: ray.data.Dataset,
        spec: TableSpec,
        snapshot_properties: Dict[str, str],
        overwrite_filter: Any = None,
    ) -> Optional[int]:
        """Append `ds` (or, with `overwrite_filter`, replace the matching rows by it) in one commit.

        Returns the new snapshot id. The dataset is materialized first: Ray 2.60's Iceberg sink takes the
        schema from the first *input* bundle of a fused read->map stage, so a dataset read by
        `read_parquet` leaks its internal `__file_chunk_metadata` column into the table schema and
        fails ("Null type ... not supported"). Materializing hands the sink the blocks we produced.
        """
        self.ensure(spec)
        ds = ds.materialize()
        if overwrite_filter is None and ds.count() == 0:
            return self.current_snapshot_id(spec.identifier)
        ds = _file_sized(ds)
        # ds.write_iceberg, with our commit step (retries, crash points): the same sink it builds
        ds.write_datasink(_CheckedIcebergSink(
            snapshot_properties.get("run_id", ""),
            table_identifier=spec.identifier,
            catalog_kwargs=self.ray_catalog_kwargs,
            snapshot_properties=snapshot_properties,
            mode=SaveMode.OVERWRITE if overwrite_filter is not None else SaveMode.APPEND,
            overwrite_filter=overwrite_filter,
        ))
        return self.current_snapshot_id(spec.identifier)

    def record_only(self, spec: TableSpec, snapshot_properties: Dict[str, str]) -> Optional[int]:
        """A commit that adds no rows, only its properties: what a write of no rows must still record (the
        bronze runs a refinement consumed when all their rows were quarantined or duplicates)."""
        table = self.ensure(spec)

        def commit(table: Table) -> None:
            with table.transaction() as tx:
                with tx.update_snapshot(snapshot_properties=snapshot_properties).fast_append():
                    pass

        commit_checked(table, commit, snapshot_properties.get("run_id", ""))
        return self.current_snapshot_id(spec.identifier)

    def replace(self, ds: ray.data.Dataset, spec: TableSpec, snapshot_properties: Dict[str, str]) -> Optional[int]:
        """Replace an existing table's columns (by `spec`, in place), its `spec.properties` and all its rows,
        in one commit. Unlike dropping and re-creating the table, this keeps its history: every earlier
        snapshot still reads with the schema it was written with, and `roll_back` can return to one."""
        table = self.table(spec.identifier)
        properties = {**snapshot_properties,
                      REPLACED_PROPERTIES: json.dumps({k: table.properties.get(k) for k in spec.properties})}
        tx = table.transaction()
        _replace_columns(tx, spec.schema)
        tx.set_properties(spec.properties)
        ray_runtime.ensure()
        metadata = tx.table_metadata  # the new schema: the data files are written with its field ids
        written = ray.get([_data_files.remote(block, metadata, table.io)
                           for block in _file_sized(ds.materialize()).to_arrow_refs()])
        tx.delete(AlwaysTrue(), snapshot_properties=properties)
        with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
            for data_file in (f for files in written for f in files):
                append.append_data_file(data_file)

        def commit(_table: Table) -> None:
            tx.commit_transaction()

        commit_checked(table, commit, snapshot_properties.get("run_id", ""))
        return self.current_snapshot_id(spec.identifier)

    def roll_back(self, identifier: str, snapshot_id: int) -> None:
        """Make `snapshot_id` the table's current snapshot again, in one commit, with the schema it was written
        with and the table properties as they were before any `replace` since."""
        table = self.table(identifier)
        restored: Dict[str, Optional[str]] = {}
        for undone in reversed(_intervening(table, snapshot_id) or []):  # newest first: the oldest record wins
            record = undone.summary.additional_properties.get(REPLACED_PROPERTIES) if undone.summary else None
            restored.update(json.loads(record or "{}"))
        updates: List[Any] = [SetSnapshotRefUpdate(ref_name=MAIN_BRANCH, type=SnapshotRefType.BRANCH,
                                                   snapshot_id=snapshot_id)]
        schema_id = table.snapshot_by_id(snapshot_id).schema_id  # type: ignore[union-attr]
        if schema_id is not None and schema_id != table.metadata.current_schema_id:
            updates.append(SetCurrentSchemaUpdate(schema_id=schema_id))
        if any(v is not None for v in restored.values()):
            updates.append(SetPropertiesUpdate(updates={k: v for k, v in restored.items() if v is not None}))
        if any(v is None for v in restored.values()):
            updates.append(RemovePropertiesUpdate(removals=[k for k, v in restored.items() if v is None]))
        current = table.current_snapshot()
        requirements = (AssertRefSnapshotId(ref=MAIN_BRANCH, snapshot_id=current.snapshot_id if current else None),
                        AssertCurrentSchemaId(current_schema_id=table.metadata.current_schema_id))
        self.catalog.commit_table(table, requirements, tuple(updates))

    def replaced_after(self, identifier: str, snapshot_id: int) -> bool:
        """Whether a commit after `snapshot_id` in the current history replaced the table (`replace`)."""
        newer = _intervening(self.table(identifier), snapshot_id) or []
        return any(REPLACED_PROPERTIES in s.summary.additional_properties for s in newer if s.summary)

    def replace_all(self, data: pa.Table, spec: TableSpec, snapshot_properties: Dict[str, str]) -> Optional[int]:
        """Replace the whole content of a small table (a dimension) in one commit."""
        return self.commit_arrow(data, spec, snapshot_properties, AlwaysTrue())

    def commit_arrow(self, data: pa.Table, spec: TableSpec, snapshot_properties: Dict[str, str],
                     overwrite_filter: Optional[BooleanExpression] = None) -> Optional[int]:
        """A small write from the driver in one commit: append `data`, or replace the rows matching
        `overwrite_filter` by it (commit_checked)."""
        data = data.cast(spec.schema)

        def commit(table: Table) -> None:
            if overwrite_filter is None:
                table.append(data, snapshot_properties=snapshot_properties)
            else:
                table.overwrite(data, overwrite_filter=overwrite_filter, snapshot_properties=snapshot_properties)

        commit_checked(self.ensure(spec), commit, snapshot_properties.get("run_id", ""))
        return self.current_snapshot_id(spec.identifier)

    # --- metadata ------------------------------------------------------------------------------
    def current_snapshot_id(self, identifier: str) -> Optional[int]:
        if not self.exists(identifier):
            return None
        snapshot = self.table(identifier).current_snapshot()
        return snapshot.snapshot_id if snapshot else None

    def row_count(self, identifier: str) -> int:
        if not self.exists(identifier):
            return 0
        snapshot = self.table(identifier).current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.additional_properties.get("total-records", 0))

    def rows_by_day(self, identifier: str, column: str, snapshot_id: Optional[int] = None) -> Dict[dt.date, int]:
        """Rows per day of a table partitioned by day(`column`), at a snapshot (default: the current one),
        from partition metadata: no data file is read. The writes are copy-on-write (no delete files), so a
        partition's record count is its live rows. Empty for a missing or empty table."""
        table = self._load_or_none(identifier)
        if table is None or (snapshot_id is None and table.current_snapshot() is None):
            return {}
        source = table.schema().find_field(column).field_id
        fields = [f.name for f in table.spec().fields if f.source_id == source and isinstance(f.transform, DayTransform)]
        if not fields:  # counting nothing would read as "no rows": say what is wrong instead
            raise PipelineError(f"table {identifier} is not partitioned by day({column}): its rows per day cannot "
                                "be counted (was the event time changed after it was created?)")
        field = fields[0]
        partitions = table.inspect.partitions(snapshot_id=snapshot_id)
        counts: Dict[dt.date, int] = {}
        for partition, rows in zip(partitions.column("partition").to_pylist(),
                                   partitions.column("record_count").to_pylist()):
            day = partition.get(field)
            if day is not None:
                day = dt.date(1970, 1, 1) + dt.timedelta(days=day) if isinstance(day, int) else day
                counts[day] = counts.get(day, 0) + rows
        return counts

    def upper_bound(self, identifier: str, column: str) -> Any:
        """The largest value of `column` in the current snapshot, from the data files' column bounds (no
        data read); None for a missing or empty table."""
        table = self._load_or_none(identifier)
        if table is None or table.current_snapshot() is None:
            return None
        metrics = table.inspect.files().column("readable_metrics").to_pylist()
        bounds = [m[column]["upper_bound"] for m in metrics if m and m[column]["upper_bound"] is not None]
        return max(bounds) if bounds else None

    def snapshot_properties(self, identifier: str) -> List[Dict[str, str]]:
        """Summaries of the snapshots in the current snapshot's history, oldest first. Snapshots that a
        rollback (a failed quality gate) took out of the history do not count."""
        table = self._load_or_none(identifier)
        return _history_properties(table) if table is not None else []

    def commits(self, identifier: str) -> List[Tuple[dt.datetime, Dict[str, str]]]:
        """(commit time, summary) of the snapshots in the current snapshot's history, oldest first."""
        table = self._load_or_none(identifier)
        current = table.current_snapshot() if table is not None else None
        if current is None:
            return []
        return [(dt.datetime.fromtimestamp(s.timestamp_ms / 1000, dt.timezone.utc),
                 dict(s.summary.additional_properties) if s.summary is not None else {})
                for s in list(ancestors_of(current, table.metadata))[::-1]]

    def recorded(self, identifier: str, key: str) -> List[Any]:
        """Union of the JSON lists recorded under `key` in the table's snapshot properties, and in the table
        property `recorded.<key>`, where maintenance folds them before it expires old snapshots."""
        table = self._load_or_none(identifier)  # one catalog load: in prod a database query and an S3 read
        if table is None:
            return []
        values: List[Any] = json.loads(table.properties.get(f"recorded.{key}", "[]"))
        for props in _history_properties(table):
            if key in props:
                values.extend(json.loads(props[key]))
        return values

    def _load_or_none(self, identifier: str) -> Optional[Table]:
        try:
            return self.catalog.load_table(identifier)
        except NoSuchTableError:
            return None


def midnight(day: "dt.date") -> "dt.datetime":
    return dt.datetime.combine(day, dt.time(), dt.timezone.utc)


class NoCatalogError(PipelineError):
    """A read-only command asked a local catalog that nothing has created yet."""


def open_lake(catalog: CatalogConfig) -> "Lake":
    """The catalog for a command that only reads (versions, sources, training sets, the probe): a local
    SQLite catalog that does not exist yet is refused in one line, not created empty."""
    uri = catalog.uri or ""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise NoCatalogError(f"no catalog at {uri[len('sqlite:///'):]}: nothing has run here yet")
    return Lake(catalog)


def day_range(column: str, start: "dt.date", end: "dt.date") -> BooleanExpression:
    """pyiceberg filter: `column` (a UTC timestamp) on days [start, end)."""
    return And(GreaterThanOrEqual(column, midnight(start).isoformat()), LessThan(column, midnight(end).isoformat()))


def _sqlite_for_concurrency(catalog: Catalog) -> None:
    """WAL lets readers (Ray tasks loading table metadata, `medallion config`, a second run waiting for the
    lock) proceed while a commit writes; the busy timeout makes a writer wait for another's short
    transaction instead of failing at once with "database is locked"."""
    import sqlalchemy

    engine = catalog.engine  # type: ignore[attr-defined]

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # every new pooled connection
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")

    with engine.connect() as connection:  # WAL is a property of the database file: set once, kept
        connection.exec_driver_sql("PRAGMA journal_mode = WAL")
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # pooled before the listener


def _history_properties(table: Table) -> List[Dict[str, str]]:
    current = table.current_snapshot()
    if current is None:
        return []
    history = list(ancestors_of(current, table.metadata))[::-1]
    return [dict(s.summary.additional_properties) for s in history if s.summary is not None]


def _file_sized(ds: ray.data.Dataset) -> ray.data.Dataset:
    """One data file is written per block (per partition value): small blocks are concatenated into batches
    of up to ROWS_PER_FILE rows inside the write tasks (a map fused with the write), so a run writes files of
    that size instead of one tiny file per source file or shuffle partition. (`repartition` did the same as a
    separate pass through the object store: 24 s of a 10M-row silver write.)"""
    if ds.num_blocks() > max(1, -(-ds.count() // ROWS_PER_FILE)):
        return ds.map_batches(_as_is, batch_size=ROWS_PER_FILE, batch_format="pyarrow")
    return ds


@ray.remote
def _data_files(block: pa.Table, metadata: TableMetadata, io: FileIO) -> List[DataFile]:
    return list(_dataframe_to_data_files(table_metadata=metadata, df=block, io=io))


def _replace_columns(tx: Transaction, wanted: pa.Schema) -> None:
    """Stage in `tx`: the table's columns become `wanted`'s, in its order. A column that is gone or whose type
    changed is deleted (its values stay in the earlier snapshots' files), then added anew with a new field id;
    the two steps are separate because a move by name would otherwise find the deleted column."""
    types = {f.name: f.field_type for f in _iceberg_schema(wanted).fields}
    stale = [f.name for f in tx.table_metadata.schema().fields if types.get(f.name) != f.field_type]
    if stale:
        with tx.update_schema() as update:
            for name in stale:
                update.delete_column(name)
    have = {f.name for f in tx.table_metadata.schema().fields}
    with tx.update_schema() as update:
        for name, field_type in types.items():
            if name not in have:
                update.add_column(name, field_type)
        names = list(types)
        update.move_first(names[0])
        for previous, name in zip(names, names[1:]):
            update.move_after(name, previous)


def _iceberg_schema(schema: pa.Schema) -> Schema:
    """All columns optional: required-ness is enforced by the contracts, and Ray's sink writes nullable Arrow."""
    relaxed = pa.schema([f.with_nullable(True) for f in schema])
    mapping = NameMapping([MappedField(field_id=i + 1, names=[f.name]) for i, f in enumerate(relaxed)])
    return pyarrow_to_schema(relaxed, name_mapping=mapping)


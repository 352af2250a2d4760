"""Iceberg tables through pyiceberg (catalog, schemas, small reads) and Ray Data (bulk reads and writes).

Every write is one Iceberg commit that carries the run's snapshot properties (run id, config hash, code
version), so a reader can tell which run produced any snapshot. Writes state what they replace:
`append` adds rows; `overwrite` atomically replaces the rows matching a filter with the new ones, which is
what makes reruns converge instead of duplicating.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa
import ray
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.transforms import DayTransform
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.table.name_mapping import MappedField, NameMapping
from ray.data import SaveMode

from pipelines.config import CatalogConfig
from pipelines.errors import PipelineError

ROWS_PER_FILE = 1_000_000
# Snapshot properties that are idempotency records (JSON lists): kept when old snapshots expire.
RECORDED_KEYS = ("ingested_units", "bronze_runs")
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
    # Every commit adds a manifest; without merging, a table's metadata grows by one manifest per run
    # forever (measured: 100 runs -> 100 manifests, benchmarks/manifests.py). With merge-append, pyiceberg
    # folds the manifests into one when a commit would leave this many or more.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}


@dataclass(frozen=True)
class TableSpec:
    identifier: str  # "<layer>.<name>"
    schema: pa.Schema
    day_partition: Optional[str] = None  # timestamp column partitioned by day(...)


class Lake:
    """One Iceberg catalog: the tables of every layer live in it, one namespace per layer."""

    def __init__(self, catalog: CatalogConfig):
        self.name = catalog.name
        self.properties: Dict[str, str] = {"type": catalog.type, "uri": catalog.uri, "warehouse": catalog.warehouse,
                                           **catalog.extra_properties()}
        self.catalog: Catalog = load_catalog(self.name, **self.properties)

    # --- catalog -------------------------------------------------------------------------------
    @property
    def ray_catalog_kwargs(self) -> Dict[str, str]:
        return {"name": self.name, **self.properties}

    def ensure(self, spec: TableSpec, evolve: bool = False) -> Table:
        """Create the table if it does not exist; refuse to write into one whose columns differ, except
        that with `evolve` the columns the spec adds at the end are added to the table (as nullable)."""
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
            return self.catalog.create_table(
                spec.identifier, schema=iceberg_schema, partition_spec=partition, properties=TABLE_PROPERTIES
            )
        have = [f.name for f in table.schema().fields]
        if evolve and wanted[: len(have)] == have and len(wanted) > len(have):
            with table.update_schema() as update:
                for f in spec.schema:
                    if f.name not in have:
                        update.add_column(f.name, _iceberg_schema(pa.schema([f])).fields[0].field_type)
            return self.table(spec.identifier)
        if have != wanted:
            raise PipelineError(
                f"table {spec.identifier} has columns {have}, this code writes {wanted}: "
                "the schema is frozen for this layer (migrate or drop the table first)"
            )
        return table

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
        rows = ds.count()
        if overwrite_filter is None and rows == 0:
            return self.current_snapshot_id(spec.identifier)
        # One data file per block (per partition value): coalesce small blocks so a run writes files of
        # up to ROWS_PER_FILE rows instead of one tiny file per source file or shuffle partition.
        wanted = max(1, -(-rows // ROWS_PER_FILE))
        if ds.num_blocks() > wanted:
            ds = ds.repartition(wanted).materialize()
        ds.write_iceberg(
            spec.identifier,
            catalog_kwargs=self.ray_catalog_kwargs,
            snapshot_properties=snapshot_properties,
            mode=SaveMode.OVERWRITE if overwrite_filter is not None else SaveMode.APPEND,
            overwrite_filter=overwrite_filter,
        )
        return self.current_snapshot_id(spec.identifier)

    def replace_all(self, data: pa.Table, spec: TableSpec, snapshot_properties: Dict[str, str]) -> Optional[int]:
        """Replace the whole content of a small table (a dimension) in one commit."""
        table = self.ensure(spec)
        table.overwrite(data.cast(spec.schema), snapshot_properties=snapshot_properties)
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

    def snapshot_properties(self, identifier: str) -> List[Dict[str, str]]:
        """Summaries of the snapshots in the current snapshot's history, oldest first. Snapshots that a
        rollback (a failed quality gate) took out of the history do not count."""
        table = self._load_or_none(identifier)
        return _history_properties(table) if table is not None else []

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


def _history_properties(table: Table) -> List[Dict[str, str]]:
    current = table.current_snapshot()
    if current is None:
        return []
    history = list(ancestors_of(current, table.metadata))[::-1]
    return [dict(s.summary.additional_properties) for s in history if s.summary is not None]


def _iceberg_schema(schema: pa.Schema) -> Schema:
    """All columns optional: required-ness is enforced by the contracts, and Ray's sink writes nullable Arrow."""
    relaxed = pa.schema([f.with_nullable(True) for f in schema])
    mapping = NameMapping([MappedField(field_id=i + 1, names=[f.name]) for i, f in enumerate(relaxed)])
    return pyarrow_to_schema(relaxed, name_mapping=mapping)


"""Training sets: labels joined point in time to gold features, reproducible bit for bit from MLflow.

    from serving.training_set import build_training_set, training_set_from_run
    frame = build_training_set(cfg, labels, ["<feature set>"], version="latest")
    same = training_set_from_run(cfg, "<mlflow run id>")          # the run the first call logged

Why not Feast's `get_historical_features` on gold: it reads the table as it is now, so once late data
has recomputed some as-of rows, the training set of an earlier model can no longer be rebuilt, and
nothing says which values were being served when a label happened. Here each label gets exactly the
row Feast would pick (rule: `serving/pit_join.py`), from a chosen Iceberg snapshot read by time travel,
with the labels' as-of range (and, for few entities, the entities) pushed into the scan, and the feature
values of only the rows the labels join decoded (`gold_features`).

Modes:
- `point_in_time` (default): every label against one snapshot per feature set (`version`): `latest`,
  `gold@<snapshot id>` (one feature set), or a mapping {set: snapshot id | "latest"}.
- `as_known_at`: every label against the snapshot that was being served at its own instant, read from
  the gold table's snapshot log (`pit_join.served_timeline`): what the online store could have returned
  then, so rows recomputed later (late data) do not leak into training. Labels before the first
  snapshot get nulls. `version` bounds the log: the log as it stood when that snapshot was current.

Labels are checked first (`serving/labels.py`: join-key types, the timestamp column, naive = UTC,
nanoseconds); then the run is logged in MLflow (`serving/training_record.py`). The output is one row
per label, in the labels' order: the normalized label columns, then each feature set's features in
declaration order (null where no row applies).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from serving import labels as label_checks
from serving import pit_join as pit
from serving.pit_join import SetSpec, Timeline

MODES = ("point_in_time", "as_known_at")
SERVICE_SUFFIX = "_service"  # serving/feast_repo.py: one feature service per feature set
Version = Union[str, Mapping[str, Union[int, str]]]


class TrainingSetError(PipelineError):
    """A training set cannot be built as asked; one line naming what and why."""


@dataclass(frozen=True)
class TrainingSet:
    table: pa.Table
    mlflow_run_id: str
    snapshots: Dict[str, List[int]]  # per feature set, the gold snapshots the rows were read from


def build_training_set(cfg: PipelineConfig, labels: label_checks.Labels, feature_sets: Sequence[str],
                       version: Version = "latest", mode: str = "point_in_time",
                       timestamp_column: Optional[str] = None) -> pa.Table:
    """The training set (one row per label); logged as an MLflow run (or into the active one).
    Naive label timestamps are read as UTC; nanosecond ones must be whole microseconds."""
    return build(cfg, labels, feature_sets, version, mode, timestamp_column).table


def training_set_from_run(cfg: PipelineConfig, mlflow_run_id: str) -> pa.Table:
    """The training set an MLflow run logged, rebuilt bit for bit from its labels, snapshots and mode."""
    return rebuild(cfg, mlflow_run_id).table


def build(cfg: PipelineConfig, labels: label_checks.Labels, feature_sets: Sequence[str],
          version: Version = "latest", mode: str = "point_in_time",
          timestamp_column: Optional[str] = None) -> TrainingSet:
    """`build_training_set`, also returning the MLflow run id and the snapshots read."""
    from serving import training_record

    if mode not in MODES:
        raise TrainingSetError(f"unknown training-set mode {mode!r} (known: {', '.join(MODES)})")
    specs = resolve_sets(cfg, feature_sets)
    prepared, ts = prepare_labels(labels, specs, timestamp_column)
    preparation = training_record.Preparation(cfg, prepared)  # the record's other parts, meanwhile
    try:
        lake = _lake(cfg)
        versions = resolve_versions(lake, specs, version)
        timelines = {s.name: timeline(lake, s, versions[s.name]) for s in specs} if mode == "as_known_at" else {}
        table, used = assemble(lake, specs, prepared, ts, mode, versions, timelines, index_root(cfg))
        output_sha256 = label_checks.canonical_digest(table)
        preparation.wait()
        record = training_record.Record(mode, ts, specs, list(feature_sets), version, versions, timelines, used,
                                        preparation.labels_sha256, output_sha256, table.num_rows)
        run_id = training_record.log(cfg, lake, record, preparation.labels_file)
    finally:
        preparation.close()  # no thread outlives the build, nor its artifact folder
    return TrainingSet(table, run_id, used)


def rebuild(cfg: PipelineConfig, mlflow_run_id: str) -> TrainingSet:
    """`training_set_from_run`, also returning the run id and the snapshots read. Refuses (one line) when
    the rebuilt rows differ from the recorded digest, e.g. a snapshot expired since."""
    from serving import training_record

    record, labels = training_record.read(cfg, mlflow_run_id)
    lake = _lake(cfg)
    for spec in record.specs:  # a table dropped or a snapshot expired since: one line, not a traceback
        identifier = f"gold.{spec.name}"
        if not lake.exists(identifier):
            raise TrainingSetError(f"the training set of MLflow run {mlflow_run_id} read {identifier}, which no "
                                   "longer exists")
        table = lake.table(identifier)
        wanted = {record.snapshots[spec.name], *(sid for _, sid in (record.timelines or {}).get(spec.name, ()))}
        gone = sorted(sid for sid in wanted if sid is not None and table.snapshot_by_id(sid) is None)
        if gone:
            raise TrainingSetError(f"the training set of MLflow run {mlflow_run_id} read {identifier} at "
                                   f"snapshot(s) {gone}, expired since (medallion maintain)")
    table, used = assemble(lake, record.specs, labels, record.timestamp_column, record.mode,
                           record.snapshots, record.timelines, index_root(cfg))
    digest = label_checks.canonical_digest(table)
    if digest != record.output_sha256:
        raise TrainingSetError(f"the training set of MLflow run {mlflow_run_id} rebuilds differently ({digest}, "
                               f"recorded {record.output_sha256}): its gold snapshots are no longer what they were")
    return TrainingSet(table, mlflow_run_id, used)


def index_root(cfg: PipelineConfig) -> Optional[Path]:
    """Where the pipeline keeps its training-set indexes (`serving/training_index.py`); None: none kept."""
    return Path(cfg.training_index.dir) if cfg.training_index.dir else None


def _lake(cfg: PipelineConfig):
    from pipelines.io.lake import Lake  # imports Ray (not started): only once the labels passed their checks

    return Lake(cfg.catalog)


# --- what is asked for ---------------------------------------------------------------------------
def resolve_sets(cfg: PipelineConfig, names: Sequence[str]) -> List[SetSpec]:
    """The feature sets named (a set, or its Feast feature service `<set>_service`), in the order given."""
    from features.registry import feature_sets as load_sets

    if isinstance(names, str):
        names = [names]
    available = {fs.name: fs for fs in load_sets(cfg.features.sets, cfg.project)}
    services = {f"{name}{SERVICE_SUFFIX}": fs for name, fs in available.items()}
    valid = sorted(available) + sorted(services)
    unknown = [n for n in names if n not in available and n not in services]
    if unknown:
        raise TrainingSetError(f"unknown feature set(s) or service(s) {unknown} (valid: {', '.join(valid)})")
    if not names:
        raise TrainingSetError(f"no feature set named (valid: {', '.join(valid)})")
    chosen = [available.get(n) or services[n] for n in names]
    seen = [fs.name for fs in chosen]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise TrainingSetError(f"feature set(s) {twice} named twice (a set and its service are the same features)")
    return [SetSpec.of(fs) for fs in chosen]


def prepare_labels(labels: label_checks.Labels, specs: Sequence[SetSpec],
                   timestamp_column: Optional[str]) -> Tuple[pa.Table, str]:
    """Checked and normalized labels and their timestamp column; also refuses output columns that would
    collide (a feature named like a label column, or two sets' features of one name)."""
    keys: Dict[str, Tuple[str, str]] = {}
    for spec in specs:
        if spec.join_key in keys and keys[spec.join_key][0] != spec.key_dtype:
            dtype, other = keys[spec.join_key]
            raise TrainingSetError(f"feature sets {other!r} and {spec.name!r} join on {spec.join_key!r} with "
                                   f"different types ({dtype}, {spec.key_dtype})")
        keys.setdefault(spec.join_key, (spec.key_dtype, spec.name))
    table, ts = label_checks.prepare(labels, keys, timestamp_column)
    owner = {name: "a label column" for name in table.column_names}
    for spec in specs:
        for name in spec.feature_names:
            if name in owner:
                raise TrainingSetError(f"feature {name!r} of {spec.name!r} has the name of {owner[name]}: rename "
                                       "that label column")
            owner[name] = f"a feature of {spec.name!r}"
    return table, ts


def resolve_versions(lake, specs: Sequence[SetSpec], version: Version) -> Dict[str, int]:
    """Per feature set, the gold snapshot id the version names."""
    if isinstance(version, Mapping):
        asked, names = set(version), {s.name for s in specs}
        if asked != names:
            raise TrainingSetError(f"version mapping names {sorted(asked)}, the feature sets are {sorted(names)}")
        return {s.name: _snapshot(lake, s, version[s.name]) for s in specs}
    if version == "latest":
        return {s.name: _snapshot(lake, s, "latest") for s in specs}
    if isinstance(version, str) and version.startswith("gold@"):
        if len(specs) != 1:
            raise TrainingSetError(f"version {version!r} is a snapshot of one gold table; for {len(specs)} feature "
                                   "sets pass a mapping {set: snapshot id}")
        return {specs[0].name: _snapshot(lake, specs[0], version)}
    raise TrainingSetError(f"version must be 'latest', 'gold@<snapshot id>' or a mapping {{set: snapshot id}}, "
                           f"not {version!r}")


def _snapshot(lake, spec: SetSpec, value: Union[int, str]) -> int:
    identifier = f"gold.{spec.name}"
    if not lake.exists(identifier):
        raise TrainingSetError(f"{identifier} does not exist: run the pipeline first")
    table = lake.table(identifier)
    if value == "latest":
        current = table.current_snapshot()
        if current is None:
            raise TrainingSetError(f"{identifier} has no snapshot yet: run the pipeline first")
        return current.snapshot_id
    text = str(value).removeprefix("gold@")
    try:
        snapshot_id = int(text)
    except ValueError:
        raise TrainingSetError(f"{identifier}: {value!r} is not a snapshot id") from None
    if table.snapshot_by_id(snapshot_id) is None:
        raise TrainingSetError(f"{identifier} has no snapshot {snapshot_id} (expired by `medallion maintain`, or "
                               "of another table)")
    return snapshot_id


def timeline(lake, spec: SetSpec, version: int) -> Timeline:
    """Which snapshot of the set's gold table was served from when, up to `version`."""
    metadata = lake.table(f"gold.{spec.name}").metadata
    parent = {s.snapshot_id: s.parent_snapshot_id for s in metadata.snapshots}
    run_of = {s.snapshot_id: (s.summary.additional_properties.get("run_id") if s.summary else None)
              for s in metadata.snapshots}
    log = [(entry.timestamp_ms, entry.snapshot_id) for entry in metadata.snapshot_log]
    return pit.served_timeline(log, parent, run_of, version)


# --- reading and joining -------------------------------------------------------------------------
def assemble(lake, specs: Sequence[SetSpec], labels: pa.Table, ts: str, mode: str, versions: Mapping[str, int],
             timelines: Mapping[str, Timeline],
             indexes: Optional[Path] = None) -> Tuple[pa.Table, Dict[str, List[int]]]:
    """The label columns, then each set's features; and the snapshots each set was read from. A snapshot
    with an index under `indexes` is joined through it, any other is read from Iceberg (same rows)."""
    columns, names = list(labels.columns), list(labels.column_names)
    used: Dict[str, List[int]] = {}
    for spec in specs:
        if mode == "point_in_time":
            snapshot = versions[spec.name]
            features = gold_features(lake, spec, snapshot, labels, ts, indexes)
            used[spec.name] = [snapshot]
        else:
            line = timelines[spec.name]
            served = pit.by_snapshot(pit.served_ids(labels.column(ts).combine_chunks(), line))
            features = pit.by_served_snapshot(labels, ts, line, spec,
                                              lambda sid, part, spec=spec: gold_features(lake, spec, sid, part, ts,
                                                                                           indexes))
            used[spec.name] = sorted(served)
        columns += features.columns
        names += features.column_names
    return pa.Table.from_arrays(columns, names=names).combine_chunks(), used


def _iso(micros: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(micros))).isoformat()


# pyiceberg binds an `In` in Python once per data file at planning and again at reading (~40 us a key a
# file): 100k keys over 90 day files is minutes. Beyond this many keys only the as-of range goes into the
# scan (it prunes partitions), and the rows of other entities are dropped by the join.
IN_PUSHDOWN_MAX_KEYS = 1_000


def gold_scan(lake, spec: SetSpec, snapshot_id: int, labels: pa.Table, ts: str):
    """(the scan of gold at `snapshot_id` the labels can join, the snapshot's column names): their as-of
    days in [earliest label - ttl, latest label] and, up to IN_PUSHDOWN_MAX_KEYS of them, their entities
    pushed into the Iceberg scan."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThanOrEqual

    from pipelines.io.pinned_scan import PinnedScan

    keys = pc.unique(labels.column(spec.join_key).combine_chunks())
    times = labels.column(ts).combine_chunks().cast(pa.int64()).to_numpy()
    row_filter = LessThanOrEqual(spec.as_of_column, _iso(times.max()))
    if len(keys) <= IN_PUSHDOWN_MAX_KEYS:
        row_filter = And(In(spec.join_key, keys.to_pylist()), row_filter)
    if spec.ttl_us:
        row_filter = And(row_filter, GreaterThanOrEqual(spec.as_of_column, _iso(times.min() - spec.ttl_us)))
    identifier = f"gold.{spec.name}"
    table = lake.table(identifier)
    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None:
        raise TrainingSetError(f"{identifier} has no snapshot {snapshot_id} any more (expired by `medallion "
                               "maintain`?)")
    schema = next((s for s in table.schemas().values() if s.schema_id == snapshot.schema_id), table.schema())
    present = set(schema.column_names)
    for needed in (spec.join_key, spec.as_of_column):
        if needed not in present:
            raise TrainingSetError(f"{identifier} at snapshot {snapshot_id} has no column {needed!r}")
    return PinnedScan(table, snapshot_id, row_filter), present


def gold_features(lake, spec: SetSpec, snapshot_id: int, labels: pa.Table, ts: str,
                  indexes: Optional[Path] = None) -> pa.Table:
    """The spec's features per label from gold at `snapshot_id`, in the labels' order.

    Through the snapshot's training-set index when `indexes` holds one (`indexed_features`). Otherwise
    gold is read in two passes over the same planned files (`PinnedScan`): first the join key and as-of of
    every row the labels could join (`gold_scan`), which decide each label's row; then the feature values
    of only those rows. So at no point is every feature of every gold row held: with 1M labels over 9M
    gold rows, the features of the ~1M rows joined instead of all 9M."""
    if not labels.num_rows:
        return spec.feature_schema().empty_table()
    if indexes is not None:
        indexed = indexed_features(lake, spec, snapshot_id, labels, ts, indexes)
        if indexed is not None:
            return indexed
    scan, present = gold_scan(lake, spec, snapshot_id, labels, ts)
    identifier = f"gold.{spec.name}"
    gold = _conform(scan.read([spec.join_key, spec.as_of_column]), spec, [spec.join_key, spec.as_of_column])
    found = pit.match(labels.column(spec.join_key).combine_chunks(), labels.column(ts).combine_chunks(),
                      gold.column(spec.join_key).combine_chunks(), gold.column(spec.as_of_column).combine_chunks(),
                      spec.ttl_us)
    readable = [f for f in spec.feature_names if f in present]  # a feature the snapshot predates: null
    if not readable:
        return pit.nulls(labels.num_rows, spec)

    def rows_at(positions: np.ndarray) -> pa.Table:
        cell = [spec.join_key, spec.as_of_column]
        rows = scan.take([*cell, *readable], positions)
        # the second read must be the first one's rows: cheap to check on (key, as-of), fatal to get wrong
        if not _conform(rows, spec, cell).equals(gold.take(pa.array(positions))):
            raise TrainingSetError(f"{identifier} at snapshot {snapshot_id}: gold's rows came in another order on "
                                   "the second read")
        return _conform(rows, spec, spec.feature_names)

    return pit.take_features(found, rows_at, spec)


def indexed_features(lake, spec: SetSpec, snapshot_id: int, labels: pa.Table, ts: str,
                     indexes: Path) -> Optional[pa.Table]:
    """`gold_features` through the snapshot's index (`serving/pit_index.py`): no gold row is decoded; of
    each feature column only the pages of the rows joined are touched, one column at a time (so each
    column's rows taken are freed before the next: on a host where fresh memory costs its page faults,
    that memory is reused). None when the snapshot has no usable index."""
    from serving import pit_index, training_index

    table = lake.table(f"gold.{spec.name}")
    index = training_index.open_index(indexes, table.metadata.table_uuid, snapshot_id, spec)
    if index is None:
        return None
    try:
        needed, slot = pit_index.joined_rows(index.layout, labels.column(spec.join_key).combine_chunks(),
                                             labels.column(ts).combine_chunks(), spec.ttl_us)
        schema = spec.feature_schema()
        columns = []
        for field in schema:
            if field.name not in index.column_names or not len(needed):  # a feature the snapshot predates
                columns.append(pa.nulls(labels.num_rows, field.type))
                continue
            rows = _conform(index.take([field.name], needed), spec, [field.name])
            columns.append(pit.place(rows.column(0), slot))
            del rows
        return pa.Table.from_arrays(columns, schema=schema)
    finally:
        index.close()


def _conform(rows: pa.Table, spec: SetSpec, names: Sequence[str]) -> pa.Table:
    """These columns of gold rows in the types the spec declares; a column the rows lack is null."""
    key_type = pa.int64() if spec.key_dtype == "int64" else pa.string()
    declared = {spec.join_key: pa.field(spec.join_key, key_type),
                spec.as_of_column: pa.field(spec.as_of_column, label_checks.UTC_US),
                **{f.name: f for f in spec.feature_schema()}}
    fields = [declared[name] for name in names]
    arrays = []
    for field in fields:
        if field.name not in rows.column_names:
            arrays.append(pa.nulls(rows.num_rows, field.type))
            continue
        try:
            arrays.append(rows.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TrainingSetError(f"gold.{spec.name}: column {field.name!r} does not read as {field.type} "
                                   f"({str(exc).splitlines()[0]})") from None
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# --- files (the command line) --------------------------------------------------------------------
def read_labels(path: str, specs: Sequence[SetSpec]) -> pa.Table:
    """Labels from a Parquet or CSV file. CSV join keys are read as text and then cast by the label checks,
    so a string key "007" stays "007" and an int64 key "42" becomes 42."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise TrainingSetError(f"labels file {path} does not exist")
    name = file.name.lower()
    try:
        if name.endswith(".parquet"):
            return pq.read_table(file)
        if name.endswith((".csv", ".csv.gz", ".csv.bz2")):
            strings = {s.join_key: pa.string() for s in specs}
            return pcsv.read_csv(file, convert_options=pcsv.ConvertOptions(column_types=strings))
    except (pa.ArrowInvalid, OSError) as exc:
        raise TrainingSetError(f"labels file {path}: {str(exc).splitlines()[0]}") from None
    raise TrainingSetError(f"labels file {path}: not .parquet or .csv")

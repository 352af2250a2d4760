"""Finding versions: which snapshot of which table each pipeline run wrote, and which rows fed a gold row.

- `versions`: every snapshot of every table of the layers (bronze, silver, quarantine, gold, quality), newest
  first, with its commit time, operation, the pipeline run that wrote it (its commit record) and its row
  counts; a snapshot a failed quality gate rolled back is listed, marked as out of the table's history.
- `runs`: the pipeline runs, from the MLflow runs tagged `pipeline_run_id` and the run ids the snapshots
  record, with their status, start, duration and the snapshots each wrote (and read, as MLflow logged it).
- `lineage`: for one gold row (feature set, entity, as-of day), the silver rows it was computed from: the
  entity's events with `as_of - W days <= ts < as_of` (W the set's longest window, the declarations' window
  semantics) and its entity-table row if the set declares attributes, each with its source file, that
  file's sha256 and the bronze run that ingested it (silver rows carry the run and the file, `_run_id` and
  `_source_file`; the file's sha256 is the one that run's bronze commit recorded for it, Iceberg metadata
  only, so no bronze data is read). Silver is read as it was when the gold row was written
  (its snapshot current at the commit of the gold snapshot that last wrote that as-of day), so a later
  change of silver that did not change the row does not show.

Tables are found in the catalog and feature sets in the project's declarations; nothing here knows a
dataset or a feature set by name. Read only: no table, MLflow run or lock is written or taken.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.expressions import And, EqualTo
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

from pipelines.commit_record import CommitRecord
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.io.lake import Lake, NoCatalogError, day_range, midnight

LAYERS = ("bronze", "silver", "quarantine", "gold", "quality")
UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)


class VersionsError(PipelineError):
    """A versions, runs or lineage request that cannot be answered (unknown table, feature set, key...)."""


# --- the catalog ---------------------------------------------------------------------------------------
def open_lake(cfg: PipelineConfig) -> Lake:
    """The catalog, refusing (instead of creating) a local SQLite catalog that does not exist yet."""
    from pipelines.io.lake import open_lake as open_existing

    try:
        return open_existing(cfg.catalog)
    except NoCatalogError:
        raise VersionsError(f"no catalog at {_sqlite_path(cfg.catalog.uri)}: nothing has run with "
                            f"data_dir={cfg.data_dir} yet") from None


def _sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def table_names(lake: Lake) -> List[str]:
    """Every table of the layers' namespaces, layer by layer, by name within a layer."""
    out: List[str] = []
    for layer in LAYERS:
        try:
            found = lake.catalog.list_tables(layer)
        except NoSuchNamespaceError:
            continue
        out += sorted(".".join(identifier[-2:]) for identifier in found)
    return out


def select_tables(known: Sequence[str], wanted: Optional[str]) -> List[str]:
    """`wanted` as `<layer>.<name>`, or a bare name (every layer's table of that name); all when None."""
    if wanted is None:
        return list(known)
    if wanted in known:
        return [wanted]
    same_name = [t for t in known if t.split(".", 1)[1] == wanted]
    if same_name:
        return same_name
    raise VersionsError(f"unknown table {wanted!r} (tables: {', '.join(known) or 'none yet'})")


def history(table: Table) -> List[Snapshot]:
    """The snapshots of the table's current history, newest first (a rolled-back snapshot is not in it)."""
    current = table.current_snapshot()
    return list(ancestors_of(current, table.metadata)) if current is not None else []


def _properties(snapshot: Snapshot) -> Dict[str, str]:
    return dict(snapshot.summary.additional_properties) if snapshot.summary is not None else {}


def _committed_at(snapshot: Snapshot) -> str:
    return dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


# --- versions ------------------------------------------------------------------------------------------
def snapshot_rows(identifier: str, table: Table) -> List[Dict[str, Any]]:
    """One row per snapshot the table's metadata holds, newest first."""
    current = table.current_snapshot()
    in_history = {s.snapshot_id for s in history(table)}
    rows = []
    for snapshot in sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0),
                           reverse=True):
        props = _properties(snapshot)
        record = CommitRecord.read(props)
        rows.append({
            "table": identifier,
            "snapshot_id": snapshot.snapshot_id,
            "parent_id": snapshot.parent_snapshot_id,
            "committed_at": _committed_at(snapshot),
            "operation": snapshot.summary.operation.value if snapshot.summary else None,
            "run_id": record.run_id or None,
            "rows_added": int(props.get("added-records", 0)),
            "rows_deleted": int(props.get("deleted-records", 0)),
            "rows_total": int(props["total-records"]) if "total-records" in props else None,
            "current": current is not None and snapshot.snapshot_id == current.snapshot_id,
            "in_history": snapshot.snapshot_id in in_history,
            "units": len(record.units) if record.is_ingest else None,
            "bronze_runs": list(record.bronze_runs) if record.bronze_runs or record.refined else None,
            "refined": {k: v for k, v in record.refined.as_json().items() if k != "present"}
            if record.refined else None,
            "as_of": [d.isoformat() for d in record.as_of] if record.as_of else None,
            "backfill": [d.isoformat() for d in record.backfill] if record.backfill else None,
            "maintenance": props.get("maintenance"),
        })
    return rows


def versions(cfg: PipelineConfig, table: Optional[str] = None) -> Dict[str, Any]:
    """Each table's snapshots, newest first: {"catalog", "tables": [{"table", "current_snapshot_id",
    "snapshots": [...]}]}."""
    from serving import training_index

    lake = open_lake(cfg)
    out = []
    for identifier in select_tables(table_names(lake), table):
        loaded = lake.table(identifier)
        current = loaded.current_snapshot()
        rows = snapshot_rows(identifier, loaded)
        if identifier.startswith("gold.") and cfg.training_index.dir:  # which versions train fast
            fast = set(training_index.indexed(Path(cfg.training_index.dir), str(loaded.metadata.table_uuid)))
            for row in rows:
                row["training_index"] = row["snapshot_id"] in fast
        out.append({"table": identifier, "current_snapshot_id": current.snapshot_id if current else None,
                    "snapshots": rows})
    return {"catalog": lake.name, "tables": out}


# --- runs ----------------------------------------------------------------------------------------------
def _mlflow_runs(cfg: PipelineConfig) -> Dict[str, Any]:
    """pipeline run id -> its MLflow run, in the configured experiment (none if there is no store yet)."""
    path = _sqlite_path(cfg.tracking.tracking_uri)
    if path is not None and not path.is_file():
        return {}
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return {}
    found: Dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        for run in page:
            pipeline_run = run.data.tags.get("pipeline_run_id")
            if pipeline_run and (pipeline_run not in found
                                 or run.info.start_time > found[pipeline_run].info.start_time):
                found[pipeline_run] = run
        token = page.token
        if not token:
            return found


def _status(run: Any) -> str:
    status = run.info.status
    if status == "FINISHED":
        return "succeeded"
    if status == "FAILED":
        return "gate failed" if run.data.metrics.get("quality.gate_passed") == 0.0 else "failed"
    return {"KILLED": "killed"}.get(status, status.lower())  # running, scheduled


def _instant(ms: Optional[int]) -> Optional[str]:
    return dt.datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _started_from_id(run_id: str) -> Optional[str]:
    """A run id starts with its start time (pipelines.context.new_run_id)."""
    try:
        return dt.datetime.strptime(run_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC).isoformat()
    except ValueError:
        return None


def runs(cfg: PipelineConfig) -> List[Dict[str, Any]]:
    """Pipeline runs, newest first, each with its status and the snapshots it wrote (table -> ids, oldest
    first; `rolled_back` the ones no longer in the table's history) and read (as MLflow logged them)."""
    lake = open_lake(cfg)
    wrote: Dict[str, Dict[str, List[int]]] = {}
    rolled_back: Dict[str, Dict[str, List[int]]] = {}
    first_commit: Dict[str, str] = {}
    maintenance: Dict[str, str] = {}
    for identifier in table_names(lake):
        for row in reversed(snapshot_rows(identifier, lake.table(identifier))):  # oldest first
            run_id = row["run_id"]
            if not run_id:
                continue
            wrote.setdefault(run_id, {}).setdefault(identifier, []).append(row["snapshot_id"])
            if not row["in_history"]:
                rolled_back.setdefault(run_id, {}).setdefault(identifier, []).append(row["snapshot_id"])
            first_commit[run_id] = min(first_commit.get(run_id, row["committed_at"]), row["committed_at"])
            if row["maintenance"]:
                maintenance[run_id] = row["maintenance"]
    tracked = _mlflow_runs(cfg)
    out = []
    for run_id in sorted(set(wrote) | set(tracked)):
        mlflow_run = tracked.get(run_id)
        entry: Dict[str, Any] = {"run_id": run_id, "kind": None, "status": "unknown", "started_at": None,
                                 "ended_at": None, "duration_s": None, "mlflow_run_id": None,
                                 "snapshots": wrote.get(run_id, {}), "rolled_back": rolled_back.get(run_id, {}),
                                 "read": {}}
        if mlflow_run is not None:
            info = mlflow_run.info
            tags = mlflow_run.data.tags
            entry.update(kind="backfill" if "backfill" in tags else "run", status=_status(mlflow_run),
                         started_at=_instant(info.start_time), ended_at=_instant(info.end_time),
                         mlflow_run_id=info.run_id)
            if info.start_time and info.end_time:
                entry["duration_s"] = round((info.end_time - info.start_time) / 1000, 1)
            if "backfill" in tags:
                entry["backfill"] = tags["backfill"]
            if "resumed_by" in tags:
                entry["resumed_by"] = tags["resumed_by"]
            entry["read"] = _read_inputs(mlflow_run)
        else:
            entry["kind"] = "maintain" if run_id in maintenance else None
            entry["started_at"] = _started_from_id(run_id) or first_commit.get(run_id)
        out.append(entry)
    out.sort(key=lambda e: (e["started_at"] or "", e["run_id"]), reverse=True)
    return out


def _read_inputs(mlflow_run: Any) -> Dict[str, int]:
    """table -> snapshot id of the dataset inputs MLflow logged with context `read`."""
    import json

    out: Dict[str, int] = {}
    for item in mlflow_run.inputs.dataset_inputs if mlflow_run.inputs else []:
        context = {t.key: t.value for t in item.tags}.get("mlflow.data.context")
        if context != "read":
            continue
        try:
            source = json.loads(item.dataset.source)
            out[source["identifier"]] = int(source["snapshot_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


# --- lineage -------------------------------------------------------------------------------------------
def _feature_set(cfg: PipelineConfig, name: str):
    from features.registry import feature_sets, project_set_names

    names = project_set_names(cfg.project) if cfg.features.sets is None else list(cfg.features.sets)
    if name not in names:
        raise VersionsError(f"unknown feature set {name!r} (valid: {', '.join(sorted(names)) or 'none'})")
    return next(fs for fs in feature_sets(names, cfg.project) if fs.name == name)


def parse_key(fs, key: Optional[str]) -> Tuple[str, Any]:
    """`<join key>=<value>`, the value cast to the entity's dtype."""
    join_key, sep, text = (key or "").partition("=")
    join_key = join_key.strip()
    if not sep or not join_key or not text.strip():
        raise VersionsError(f"--key must be <join key>=<value>, e.g. {fs.entity.join_key}=42 (got {key!r})")
    if join_key != fs.entity.join_key:
        raise VersionsError(f"feature set {fs.name!r} is keyed by {fs.entity.join_key!r}, not {join_key!r}")
    text = text.strip()
    try:
        if fs.entity.dtype == "int64":
            return join_key, int(text)
        if fs.entity.dtype == "float64":
            return join_key, float(text)
    except ValueError:
        raise VersionsError(f"--key {key}: {join_key!r} is {fs.entity.dtype}, {text!r} is not") from None
    return join_key, text


def parse_day(text: Optional[str]) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text))
    except ValueError:
        raise VersionsError(f"--as-of must be a day, YYYY-MM-DD (got {text!r})") from None


def _plain(value: Any) -> Any:
    """A JSON-ready value: instants and days as ISO text, decimals as exact text, NaN as null."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value


def _rows(table: pa.Table) -> List[Dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _writer(gold: Table, as_of: dt.date) -> Optional[Snapshot]:
    """The newest snapshot in gold's history that wrote rows for the as-of day (its record's interval)."""
    for snapshot in history(gold):
        record = CommitRecord.read(_properties(snapshot))
        if record.as_of and record.as_of[0] <= as_of <= record.as_of[1] and record.added_records > 0:
            return snapshot
    return None


def _snapshot_at(table: Table, timestamp_ms: Optional[int]) -> Optional[Snapshot]:
    """The table's snapshot current at that instant (its current one when None or before its history)."""
    snapshots = history(table)
    if timestamp_ms is not None:
        for snapshot in snapshots:
            if snapshot.timestamp_ms <= timestamp_ms:
                return snapshot
    return snapshots[0] if snapshots else None


def _file_hashes(lake: Lake, dataset: str, rows: pa.Table) -> Dict[Tuple[str, str], Optional[str]]:
    """(bronze run, source file) -> the sha256 of the file as ingested, from the bronze commits' records
    (the unit a run ingested under that uri); for records folded away by maintenance, by uri alone when
    one content of it was ever ingested."""
    pairs = set(zip(rows.column("_run_id").to_pylist(), rows.column("_source_file").to_pylist())) \
        if rows.num_rows else set()
    identifier = f"bronze.{dataset}"
    by_run = {}
    for props in lake.snapshot_properties(identifier):
        record = CommitRecord.read(props)
        for unit in record.units:
            by_run[(record.run_id, unit.uri)] = unit.sha256
    by_uri: Dict[str, set] = {}
    for unit in lake.recorded(identifier, "ingested_units"):
        by_uri.setdefault(unit["uri"], set()).add(unit["sha256"])
    out = {}
    for run_id, uri in pairs:
        folded = by_uri.get(uri, set())
        out[(run_id, uri)] = by_run.get((run_id, uri)) or (next(iter(folded)) if len(folded) == 1 else None)
    return out


def _with_hashes(lake: Lake, dataset: str, rows: pa.Table) -> pa.Table:
    if not all(c in rows.column_names for c in ("_run_id", "_source_file")):
        return rows
    hashes = _file_hashes(lake, dataset, rows)
    pairs = zip(rows.column("_run_id").to_pylist(), rows.column("_source_file").to_pylist())
    values = [hashes.get(pair) for pair in pairs]
    return rows.append_column("_source_file_sha256", pa.array(values, pa.string()))


def _read_at(lake: Lake, identifier: str, when_ms: Optional[int], row_filter) -> Tuple[Optional[int], pa.Table]:
    table = lake.table(identifier)
    snapshot = _snapshot_at(table, when_ms)
    if snapshot is None:
        return None, table.schema().as_arrow().empty_table()
    return snapshot.snapshot_id, lake.read_arrow(identifier, row_filter, snapshot_id=snapshot.snapshot_id)


def _breakdown(fs, events: pa.Table, as_of: dt.date, gold_row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per feature: its window, filter, the events of it (with a value in its column) and its gold value."""
    out: List[Dict[str, Any]] = []
    ts = events.column(fs.timestamp_column)
    for agg in fs.aggregations:
        for name, days in zip(agg.feature_names(), agg.window_days()):
            mask = pc.greater_equal(ts, pa.scalar(midnight(as_of - days * DAY), ts.type))
            if agg.where is not None:
                column = events.column(agg.where.column)
                mask = pc.and_(mask, pc.equal(pc.cast(column, pa.string()), agg.where.value))
            if agg.column is not None:
                mask = pc.and_(mask, pc.is_valid(events.column(agg.column)))
            out.append({"feature": name, "kind": "window", "agg": agg.agg, "column": agg.column,
                        "window_days": days, "where": agg.where.label() if agg.where else None,
                        "rows": int(pc.sum(pc.fill_null(mask, False)).as_py() or 0),
                        "value": _plain(gold_row.get(name))})
    for attr in fs.attributes:
        out.append({"feature": attr.name, "kind": "attribute", "column": attr.column,
                    "entity_table": fs.entity_table, "value": _plain(gold_row.get(attr.name))})
    for derived in fs.derived:
        out.append({"feature": derived.name, "kind": "derived", "inputs": list(derived.inputs()),
                    "value": _plain(gold_row.get(derived.name))})
    return out


def lineage(cfg: PipelineConfig, feature_set: str, key: Optional[str], as_of: Optional[str]) -> Dict[str, Any]:
    """The silver rows (and source files) one gold row was computed from; see the module docstring."""
    fs = _feature_set(cfg, feature_set)
    join_key, value = parse_key(fs, key)
    day = parse_day(as_of)
    lake = open_lake(cfg)
    gold_id, events_id = f"gold.{fs.name}", f"silver.{fs.source_table}"
    for identifier in (gold_id, events_id):
        if not lake.exists(identifier):
            raise VersionsError(f"{identifier} does not exist yet: run the pipeline first")
    gold = lake.table(gold_id)
    current = gold.current_snapshot()
    window = fs.max_window_days()
    found = lake.read_arrow(gold_id, And(EqualTo(join_key, value), day_range(fs.as_of_column, day, day + DAY)),
                            snapshot_id=current.snapshot_id) if current is not None else None
    if current is None or found is None or found.num_rows == 0:
        raise VersionsError(f"{gold_id} has no row for {join_key}={value} as of {day} (an entity has one on the "
                            f"as-of days with an event of it in the {window} days before)")
    gold_row = found.to_pylist()[0]
    writer = _writer(gold, day)
    when = writer.timestamp_ms if writer is not None else None  # silver as it was when the row was written

    events_snapshot, events = _read_at(lake, events_id, when, And(
        EqualTo(join_key, value), day_range(fs.timestamp_column, day - window * DAY, day)))
    source = cfg.datasets.get(fs.source_table)
    keys = [c for c in (source.key_columns if source else []) if c in events.column_names]
    events = _with_hashes(lake, fs.source_table, events.sort_by(
        [(c, "ascending") for c in dict.fromkeys([fs.timestamp_column, *keys])]))
    read = [fs.timestamp_column, *keys, join_key] + [c for a in fs.aggregations for c in (
        a.column, a.where.column if a.where else None) if c]  # the columns the features read
    parts = [{"table": events_id, "snapshot_id": events_snapshot,
              "from": midnight(day - window * DAY).isoformat(), "until": midnight(day).isoformat(),
              "columns": [c for c in dict.fromkeys(read) if c in events.column_names], "rows": events}]
    if fs.attributes and fs.entity_table and lake.exists(f"silver.{fs.entity_table}"):
        entity_id = f"silver.{fs.entity_table}"
        entity_snapshot, entity_rows = _read_at(lake, entity_id, when, EqualTo(join_key, value))
        parts.append({"table": entity_id, "snapshot_id": entity_snapshot,
                      "columns": list(dict.fromkeys([join_key, *(a.column for a in fs.attributes)])),
                      "rows": _with_hashes(lake, fs.entity_table, entity_rows)})

    files: Dict[Tuple[str, Any, Any, Any], int] = {}
    for part in parts:
        rows = part["rows"]
        if "_source_file" not in rows.column_names:
            continue
        for row in rows.select([c for c in ("_source_file", "_source_file_sha256", "_run_id")
                                if c in rows.column_names]).to_pylist():
            file_key = (part["table"], row["_source_file"], row.get("_source_file_sha256"), row.get("_run_id"))
            files[file_key] = files.get(file_key, 0) + 1
    features = _breakdown(fs, events, day, gold_row)
    for part in parts:
        part["rows"] = _rows(part["rows"])
    return {
        "feature_set": fs.name,
        "key": {join_key: value},
        "as_of": day.isoformat(),
        "gold": {
            "table": gold_id, "snapshot_id": current.snapshot_id,
            "written_by": None if writer is None else {
                "snapshot_id": writer.snapshot_id, "committed_at": _committed_at(writer),
                "run_id": CommitRecord.read(_properties(writer)).run_id or None},
            "row": {k: _plain(v) for k, v in gold_row.items()},
        },
        "window_days": window,
        "events": parts[0],
        "attributes": parts[1] if len(parts) > 1 else None,
        "features": features,
        "source_files": [{"table": t, "file": f, "sha256": h, "bronze_run_id": r, "rows": n}
                         for (t, f, h, r), n in sorted(files.items(), key=lambda item: tuple(map(str, item[0])))],
    }


# --- text for people -----------------------------------------------------------------------------------
def _grid(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> List[str]:
    text = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    line = lambda cells: indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(list(headers))] + [line(r) for r in text]


def _when(iso: Optional[str]) -> Optional[str]:
    return iso[:19].replace("T", " ") if iso else None


def _note(row: Dict[str, Any]) -> str:
    notes = []
    if row["current"]:
        notes.append("current")
    elif not row["in_history"]:
        notes.append("rolled back")
    if row["units"] is not None:
        notes.append(f"{row['units']} unit(s) ingested")
    if row["refined"]:
        r = row["refined"]
        notes.append(f"refined {r['rows_in']}: {r['valid']} valid, {r['quarantined']} quarantined, "
                     f"{r['duplicates']} duplicates")
    if row["as_of"]:
        notes.append(f"as_of {row['as_of'][0]}..{row['as_of'][1]}")
    if row["backfill"]:
        notes.append(f"backfill {row['backfill'][0]}..{row['backfill'][1]}")
    if row.get("training_index"):
        notes.append("training index")
    if row["maintenance"]:
        notes.append(f"maintenance: {row['maintenance']}")
    return "; ".join(notes)


def format_versions(result: Dict[str, Any]) -> str:
    rows = [(r["table"], r["snapshot_id"], _when(r["committed_at"]), r["operation"], r["run_id"], r["rows_added"],
             r["rows_total"], _note(r)) for t in result["tables"] for r in t["snapshots"]]
    if not rows:
        return "no snapshots"
    return "\n".join(_grid(("TABLE", "SNAPSHOT", "COMMITTED (UTC)", "OPERATION", "RUN", "ADDED", "TOTAL", "NOTE"),
                           rows))


def format_runs(result: List[Dict[str, Any]]) -> str:
    """One grid line per run (column widths over every run), each followed by the snapshots it wrote."""
    if not result:
        return "no runs"
    grid = _grid(("RUN", "KIND", "STATUS", "STARTED (UTC)", "DURATION", "MLFLOW RUN"),
                 [(r["run_id"], r["kind"], r["status"], _when(r["started_at"]),
                   f"{r['duration_s']} s" if r["duration_s"] is not None else None, r["mlflow_run_id"])
                  for r in result])
    out = [grid[0]]
    for run, line in zip(result, grid[1:]):
        out.append(line)
        for table, ids in run["snapshots"].items():
            gone = set(run["rolled_back"].get(table, []))
            out.append(f"    wrote {table}: " + ", ".join(f"{i}{' (rolled back)' if i in gone else ''}" for i in ids))
        if run.get("resumed_by"):
            out.append(f"    resumed by {run['resumed_by']}")
    return "\n".join(out)


def format_lineage(result: Dict[str, Any]) -> str:
    gold = result["gold"]
    key = ", ".join(f"{k}={v}" for k, v in result["key"].items())
    lines = [f"{gold['table']} row {key} as of {result['as_of']}, gold snapshot {gold['snapshot_id']} (current)"]
    writer = gold["written_by"]
    if writer:
        lines.append(f"  written by snapshot {writer['snapshot_id']} of run {writer['run_id']} at "
                     f"{_when(writer['committed_at'])} UTC")
    else:
        lines.append("  written by a snapshot no longer in gold's history (expired): silver is read as it is now")
    events = result["events"]
    lines.append(f"  events: {events['table']} snapshot {events['snapshot_id']}, {events['from'][:10]} <= ts < "
                 f"{events['until'][:10]} (the longest window, {result['window_days']} days): "
                 f"{len(events['rows'])} row(s)")
    lines.append("")
    lines += _grid(("FEATURE", "WINDOW", "WHERE", "ROWS", "VALUE"),
                   [(f["feature"], f"{f['window_days']}d" if f.get("window_days") else f["kind"], f.get("where"),
                     f.get("rows"), f["value"]) for f in result["features"]], "  ")
    files = result["source_files"]
    index = {(f["table"], f["file"], f["bronze_run_id"]): i + 1 for i, f in enumerate(files)}

    def rows_of(part: Dict[str, Any]) -> List[str]:
        """The rows' columns that the features read, their bronze run and their file's number below."""
        columns = part["columns"]
        file_of = lambda row: index.get((part["table"], row.get("_source_file"), row.get("_run_id")))  # noqa: E731
        rows = [[row.get(c) for c in columns] + [row.get("_run_id"), f"[{file_of(row)}]"] for row in part["rows"]]
        return _grid(columns + ["BRONZE RUN", "FILE"], rows, "  ")

    if events["rows"]:
        lines += [""] + rows_of(events)
    attributes = result["attributes"]
    if attributes is not None:
        lines += ["", f"  attributes: {attributes['table']} snapshot {attributes['snapshot_id']}: "
                      f"{len(attributes['rows'])} row(s)"]
        if attributes["rows"]:
            lines += rows_of(attributes)
    lines += ["", f"  source files ({len(files)}):"]
    for i, f in enumerate(files, 1):
        lines.append(f"  [{i}] {f['file']}  sha256 {f['sha256'] or '-'}  bronze run {f['bronze_run_id']}  "
                     f"{f['rows']} row(s) of {f['table']}")
    return "\n".join(lines)

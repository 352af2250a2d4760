"""OpenLineage events of a pipeline run and of each of its stages (`lineage.*` in the configuration).

Every run (job `<project>.<kind>`) and every stage (job `<project>.<kind>.<stage>`, with a parent run
facet naming the pipeline run) emits START, then COMPLETE or FAIL (with an error message facet), through
the openlineage-python client: to a JSON-lines file (`lineage.transport=file`), to an OpenLineage receiver
such as Marquez (`http`), or nowhere (`none`). Nothing here is known by dataset name: the datasets and
their column lineage come from the declarations.

Datasets, named by the OpenLineage naming rules:
- a dataset's source: files in a local directory -> namespace `file`, name the directory; on object storage
  -> `s3://<bucket>` (`gs://`, ...), name the prefix; a SQL source -> `<scheme>://<host>:<port>` (SQLite:
  `sqlite://<database file>`), name the table it reads;
- an Iceberg table -> namespace the warehouse location (`file:///.../warehouse`, `s3://bucket/warehouse`;
  a REST catalog's warehouse name is qualified by the catalog's URI), name the table identifier
  (`silver.<dataset>`), with a catalog facet naming the catalog.

Facets: the schema of each dataset (the declaration for a source, the Iceberg schema for a table), the
table's snapshot (dataset version) and rows written (output statistics), column lineage (gold feature <-
silver columns <- bronze columns <- source columns, from the feature and dataset declarations), the quality
gate's measures and verdicts on the quality stage's inputs (data-quality metrics: row count and null count
per column from the completeness checks; data-quality assertions: every check), and on the pipeline run
the MLflow run it is tracked as (`medallion_mlflow`, a custom facet; its schema: lineage_facets.json).

A receiver that is down never fails or holds up a run: each event waits at most `lineage.timeout_seconds`
(no retries), after `lineage.max_failures` failed events the run stops sending, and every failed or
dropped event is logged and counted (the summary's `lineage`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    RunFacet,
    catalog_dataset,
    column_lineage_dataset,
    data_quality_assertions_dataset,
    data_quality_metrics_input_dataset,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.naming import dataset as naming
from openlineage.client.uuid import generate_new_uuid

from pipelines import logs

PRODUCER = "urn:medallion-features:pipelines"
FACETS_SCHEMA = Path(__file__).with_name("lineage_facets.json")
FACETS_SCHEMA_ID = "urn:medallion-features:lineage-facets:1-0-0"


@attr.define
class MlflowRunFacet(RunFacet):
    """The MLflow run a pipeline run is tracked as (custom facet `medallion_mlflow`)."""

    runId: str  # noqa: N815
    trackingUri: str  # noqa: N815
    experiment: str

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_SCHEMA_ID}#/$defs/MlflowRunFacet"


@attr.define
class PipelineRunFacet(RunFacet):
    """The pipeline's own run id (the one in logs, commits and the summary) (custom facet `medallion_run`)."""

    runId: str  # noqa: N815
    kind: str
    project: str
    codeVersion: Optional[str] = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_SCHEMA_ID}#/$defs/PipelineRunFacet"


# --- naming ----------------------------------------------------------------------------------------
def _hide_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def table_namespace(catalog) -> str:
    """An Iceberg table's namespace: the warehouse location (a REST catalog's warehouse *name* is
    qualified by the catalog's URI)."""
    warehouse = str(catalog.warehouse).rstrip("/")
    if "://" in warehouse:
        return warehouse
    if warehouse.startswith("/"):
        return f"file://{warehouse}"
    return f"{_hide_password(str(catalog.uri)).rstrip('/')}/{warehouse}"


def source_dataset(source) -> Tuple[str, str]:
    """(namespace, name) of a dataset's source: its directory or prefix, or the table its query reads."""
    if source.kind == "files":
        path = str(source.path).rstrip("/")
        parts = urlsplit(path)
        if parts.scheme == "s3" or parts.scheme == "s3a":
            named = naming.S3(parts.netloc, parts.path.lstrip("/") or "/")
        elif parts.scheme == "gs":
            named = naming.GCS(parts.netloc, parts.path.lstrip("/") or "/")
        elif parts.scheme and parts.scheme != "file":
            return f"{parts.scheme}://{parts.netloc}", parts.path or "/"
        else:
            named = naming.LocalFileSystem(str(Path(parts.path if parts.scheme else path).resolve()))
        return named.get_namespace(), named.get_name()
    from sqlalchemy.engine import make_url

    url = make_url(str(source.uri))
    scheme = url.get_backend_name()
    match = re.search(r"\bfrom\s+([A-Za-z_][\w.\"`]*)", source.query or "", re.IGNORECASE)
    table = match.group(1).replace('"', "").replace("`", "") if match else source.name
    if url.host:
        namespace = f"{scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        return namespace, f"{url.database}.{table}" if url.database and "." not in table else table
    database = str(Path(url.database).resolve()) if url.database else ""
    return f"{scheme}://{database}", table


# --- facets ----------------------------------------------------------------------------------------
def _direct(subtype: str, description: str = "", masking: bool = False) -> column_lineage_dataset.Transformation:
    return column_lineage_dataset.Transformation(type="DIRECT", subtype=subtype, description=description or None,
                                                 masking=masking)


def _indirect(subtype: str, description: str = "") -> column_lineage_dataset.Transformation:
    return column_lineage_dataset.Transformation(type="INDIRECT", subtype=subtype, description=description or None,
                                                 masking=False)


def _field(ds: Tuple[str, str], column: str, *transformations) -> column_lineage_dataset.InputField:
    return column_lineage_dataset.InputField(namespace=ds[0], name=ds[1], field=column,
                                             transformations=list(transformations))


def _lineage(fields: Dict[str, List[column_lineage_dataset.InputField]]) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    return column_lineage_dataset.ColumnLineageDatasetFacet(
        fields={name: column_lineage_dataset.Fields(inputFields=inputs) for name, inputs in fields.items() if inputs},
        producer=PRODUCER)


@dataclass
class StageRun:
    name: str
    run_id: str
    inputs: List[str]  # dataset keys: "source:<dataset>" or a table identifier
    outputs: List[str]


@dataclass
class Emitter:
    """The lineage of one pipeline run: its client, the run's OpenLineage id, and what was (not) sent."""

    cfg: Any
    pipeline_run_id: str
    kind: str
    sets: List[Any]
    run_uuid: str = field(default_factory=lambda: str(generate_new_uuid()))
    client: Optional[OpenLineageClient] = None
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    mlflow_run_id: Optional[str] = None
    code_version: Optional[str] = None
    seconds: float = 0.0  # spent building and sending this run's events (its cost, in the summary)

    def __post_init__(self) -> None:
        try:  # a transport that cannot be set up (a folder not writable, say) must not fail the run either
            self.client = _client(self.cfg.lineage)
        except Exception as exc:  # noqa: BLE001
            self.client, self.failed = None, self.failed + 1
            logs.get().warning("lineage transport not set up", error=str(exc).splitlines()[0] if str(exc) else
                               type(exc).__name__)
        self.project = Path(str(self.cfg.project)).name
        self.namespace = self.cfg.lineage.namespace
        self.job_name = f"{self.project}.{self.kind}"
        self.warehouse = table_namespace(self.cfg.catalog)

    # -- sending
    def emit(self, event: RunEvent) -> None:
        if self.client is None:
            return
        log = logs.get()
        if self.failed >= self.cfg.lineage.max_failures:
            self.dropped += 1
            log.warning("lineage event dropped: the receiver failed too often in this run", job=event.job.name,
                        event_type=event.eventType.value, failed=self.failed, dropped=self.dropped)
            return
        try:
            self.client.emit(event)
            self.sent += 1
        except Exception as exc:  # a lineage receiver must never fail the run
            self.failed += 1
            log.warning("lineage event not delivered", job=event.job.name, event_type=event.eventType.value,
                        transport=self.cfg.lineage.transport, error=str(exc).splitlines()[0] if str(exc) else
                        type(exc).__name__, failed=self.failed)

    def stats(self) -> Dict[str, Any]:
        return {"transport": self.cfg.lineage.transport, "run_id": self.run_uuid, "events_sent": self.sent,
                "events_failed": self.failed, "events_dropped": self.dropped, "seconds": round(self.seconds, 3)}

    # -- building
    def event(self, state: RunState, run_id: str, job_name: str, job_type: str, run_facets: Dict[str, Any],
              inputs: List[InputDataset] = (), outputs: List[OutputDataset] = ()) -> RunEvent:
        job_facets = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="MEDALLION",
                                                              jobType=job_type, producer=PRODUCER)}
        return RunEvent(eventType=state, eventTime=dt.datetime.now(dt.timezone.utc).isoformat(),
                        run=Run(runId=run_id, facets=run_facets),
                        job=Job(namespace=self.namespace, name=job_name, facets=job_facets),
                        inputs=list(inputs), outputs=list(outputs), producer=PRODUCER)

    def pipeline_facets(self, error: Optional[BaseException] = None) -> Dict[str, Any]:
        facets: Dict[str, Any] = {"medallion_run": PipelineRunFacet(runId=self.pipeline_run_id, kind=self.kind,
                                                                    project=str(self.cfg.project),
                                                                    codeVersion=self.code_version, producer=PRODUCER)}
        if self.mlflow_run_id:
            facets["medallion_mlflow"] = MlflowRunFacet(runId=self.mlflow_run_id,
                                                        trackingUri=str(self.cfg.tracking.tracking_uri),
                                                        experiment=str(self.cfg.tracking.experiment),
                                                        producer=PRODUCER)
        if error is not None:
            facets["errorMessage"] = _error_facet(error)
        return facets

    def stage_facets(self, error: Optional[BaseException] = None) -> Dict[str, Any]:
        job = self.namespace, self.job_name
        facets: Dict[str, Any] = {"parent": parent_run.ParentRunFacet(
            run=parent_run.Run(runId=self.run_uuid), job=parent_run.Job(namespace=job[0], name=job[1]),
            root=parent_run.Root(run=parent_run.RootRun(runId=self.run_uuid),
                                 job=parent_run.RootJob(namespace=job[0], name=job[1])),
            producer=PRODUCER)}
        if error is not None:
            facets["errorMessage"] = _error_facet(error)
        return facets

    # -- datasets of a stage
    def stage_datasets(self, name: str) -> Tuple[List[str], List[str]]:
        datasets = list(self.cfg.datasets)
        sources = [f"source:{d}" for d in datasets] if self.kind == "run" else []
        if name == "plan":
            return sources, []
        if name == "ingest":
            return sources, [f"bronze.{d}" for d in datasets]
        if name == "refine":
            return ([f"bronze.{d}" for d in datasets],
                    [t for d in datasets for t in (f"silver.{d}", f"quarantine.{d}")])
        if name == "build":
            reads = []
            for fs in self.sets:
                reads += [f"silver.{fs.source_table}"] + ([f"silver.{fs.entity_table}"] if fs.entity_table else [])
            return list(dict.fromkeys(reads)), [f"gold.{fs.name}" for fs in self.sets]
        if name == "quality":
            return ([f"bronze.{d}" for d in datasets] + [f"silver.{d}" for d in datasets]
                    + [f"gold.{fs.name}" for fs in self.sets], ["quality.check_results", "quality.day_rows"])
        if name == "publish":
            return [f"gold.{fs.name}" for fs in self.sets], []
        return [], []

    def naming(self, key: str) -> Tuple[str, str]:
        if key.startswith("source:"):
            return source_dataset(self.cfg.datasets[key.split(":", 1)[1]])
        return self.warehouse, key

    def dataset_facets(self, ctx, key: str, complete: bool) -> Dict[str, Any]:
        facets: Dict[str, Any] = {}
        if key.startswith("source:"):
            source = self.cfg.datasets[key.split(":", 1)[1]]
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=c, type=spec.type)
                        for c, spec in source.columns.items()], producer=PRODUCER)
            return facets
        lake = ctx.lake
        if not lake.exists(key):
            return facets
        table = lake.table(key)
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.field_type),
                                                            description=f.doc or None)
                    for f in table.schema().fields], producer=PRODUCER)
        catalog = self.cfg.catalog
        facets["catalog"] = catalog_dataset.CatalogDatasetFacet(
            framework="iceberg", type=str(catalog.type), name=str(catalog.name),
            metadataUri=_hide_password(str(catalog.uri)), warehouseUri=str(catalog.warehouse), source="pyiceberg",
            producer=PRODUCER)
        snapshot = table.current_snapshot()
        if snapshot is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(snapshot.snapshot_id), producer=PRODUCER)
        if complete:
            lineage = self.column_lineage(key)
            if lineage is not None and lineage.fields:
                facets["columnLineage"] = lineage
        return facets

    def column_lineage(self, identifier: str) -> Optional[column_lineage_dataset.ColumnLineageDatasetFacet]:
        """Where each column of a table comes from, read off the declarations."""
        layer, _, name = identifier.partition(".")
        if layer == "bronze" and name in self.cfg.datasets:
            source = self.cfg.datasets[name]
            origin = source_dataset(source)
            return _lineage({c: [_field(origin, c, _direct("IDENTITY", "as text, as received"))]
                             for c in source.columns})
        if layer in ("silver", "quarantine") and name in self.cfg.datasets:
            source = self.cfg.datasets[name]
            bronze = (self.warehouse, f"bronze.{name}")
            out = {}
            for c, spec in source.columns.items():
                if layer == "quarantine":
                    out[c] = [_field(bronze, c, _direct("IDENTITY"))]
                    continue
                protection = source.pii.get(c)
                if protection == "drop":
                    continue
                what = f"parsed as {spec.type}" + (f", then {protection} token" if protection else "")
                out[c] = [_field(bronze, c, _direct("TRANSFORMATION", what, masking=bool(protection)))]
            return _lineage(out)
        if layer == "gold":
            fs = next((s for s in self.sets if s.name == name), None)
            return None if fs is None else _lineage(self.gold_lineage(fs))
        return None

    def gold_lineage(self, fs) -> Dict[str, List[column_lineage_dataset.InputField]]:
        events = (self.warehouse, f"silver.{fs.source_table}")
        key, ts = fs.entity.join_key, fs.timestamp_column
        out: Dict[str, List[column_lineage_dataset.InputField]] = {
            key: [_field(events, key, _direct("IDENTITY"))],
            fs.as_of_column: [_field(events, ts, _direct("TRANSFORMATION", "the as-of days the events fall before"))],
        }
        for agg in fs.aggregations:
            for feature, days in zip(agg.feature_names(), agg.window_days()):
                inputs = []
                if agg.column is not None:
                    inputs.append(_field(events, agg.column, _direct("AGGREGATION", f"{agg.agg} over {days} days")))
                inputs.append(_field(events, key, _indirect("GROUP_BY", f"per {key}")))
                inputs.append(_field(events, ts, _indirect("WINDOW", f"{days} days before as_of")))
                if agg.where is not None:
                    inputs.append(_field(events, agg.where.column, _indirect("FILTER", agg.where.label())))
                out[feature] = inputs
        if fs.entity_table:
            entity = (self.warehouse, f"silver.{fs.entity_table}")
            for attribute in fs.attributes:
                out[attribute.name] = [
                    _field(entity, attribute.column, _direct("IDENTITY" if attribute.transform == "value" else
                                                             "TRANSFORMATION", attribute.transform)),
                    _field(entity, key, _indirect("JOIN", f"on {key}"))]
        for derived in fs.derived:
            inputs = []
            for needed in derived.inputs():
                for f in out.get(needed, []):
                    kind = f.transformations[0] if f.transformations else None
                    if kind is not None and kind.type == "DIRECT":
                        f = _field((f.namespace, f.name), f.field, kind,
                                   _direct("TRANSFORMATION", f"{derived.name}({', '.join(derived.inputs())})"))
                    inputs.append(f)
            out[derived.name] = inputs
        return out

    def quality_facets(self, ctx) -> Dict[str, Dict[str, Any]]:
        """Per table, the data-quality input facets of this run's checks (read back from the gate's record)."""
        from pyiceberg.expressions import EqualTo

        if not ctx.lake.exists("quality.check_results"):
            return {}
        rows = ctx.lake.read_arrow("quality.check_results", EqualTo("run_id", ctx.run_id)).to_pylist()
        out: Dict[str, Dict[str, Any]] = {}
        assertions: Dict[str, list] = {}
        metrics: Dict[str, Dict[str, Any]] = {}
        row_counts: Dict[str, int] = {}
        for row in rows:
            table, kind, name = row["table"], row["kind"], row["name"]
            column = name.split(".", 2)[2] if kind in ("completeness", "range", "drift") and name.count(".") >= 2 \
                else None
            assertions.setdefault(table, []).append(data_quality_assertions_dataset.Assertion(
                assertion=kind, success=bool(row["passed"]), column=column, severity=row["severity"], name=name,
                expected=row["threshold"], actual=None if row["value"] is None else f"{row['value']:.6g}",
                description=row["detail"] or None))
            counted = re.match(r"^(\d+) of (\d+) rows", row["detail"] or "")
            if kind == "completeness" and counted and column:
                present, total = int(counted.group(1)), int(counted.group(2))
                row_counts[table] = total
                metrics.setdefault(table, {})[column] = data_quality_metrics_input_dataset.ColumnMetrics(
                    nullCount=total - present, count=float(total))
        for table, items in assertions.items():
            out.setdefault(table, {})["dataQualityAssertions"] = \
                data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(assertions=items, producer=PRODUCER)
        for table, columns in metrics.items():
            out.setdefault(table, {})["dataQualityMetrics"] = \
                data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
                    columnMetrics=columns, rowCount=row_counts.get(table), producer=PRODUCER)
        return out

    def rows_written(self, ctx, key: str) -> Optional[int]:
        layer, _, name = key.partition(".")
        counter = {"bronze": f"{name}.bronze_rows_ingested", "silver": f"{name}.silver_rows_added",
                   "quarantine": f"{name}.quarantined", "gold": f"{name}.gold_rows_written"}.get(layer)
        value = ctx.counts.get(counter) if counter else None
        return None if value is None else int(value)

    def datasets(self, ctx, stage: StageRun, complete: bool) -> Tuple[List[InputDataset], List[OutputDataset]]:
        quality = self.quality_facets(ctx) if stage.name == "quality" and complete else {}
        inputs = []
        for key in stage.inputs:
            namespace, name = self.naming(key)
            input_facets = quality.get(key, {}) if complete else {}
            if complete and stage.name == "quality" and not input_facets:
                continue  # the quality stage's inputs are the tables it measured
            inputs.append(InputDataset(namespace=namespace, name=name,
                                       facets=self.dataset_facets(ctx, key, complete=False), inputFacets=input_facets))
        outputs = []
        for key in stage.outputs:
            namespace, name = self.naming(key)
            output_facets = {}
            written = self.rows_written(ctx, key) if complete else None
            if written is not None:
                output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=written, producer=PRODUCER)
            outputs.append(OutputDataset(namespace=namespace, name=name,
                                         facets=self.dataset_facets(ctx, key, complete), outputFacets=output_facets))
        return inputs, outputs


def _error_facet(error: BaseException) -> error_message_run.ErrorMessageRunFacet:
    return error_message_run.ErrorMessageRunFacet(
        message=f"{type(error).__name__}: {error}", programmingLanguage="python",
        stackTrace="".join(traceback.format_exception(type(error), error, error.__traceback__))[-20000:],
        producer=PRODUCER)


def _client(settings) -> Optional[OpenLineageClient]:
    if settings.transport == "none":
        return None
    if settings.transport == "file":
        from openlineage.client.transport.file import FileConfig, FileTransport

        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
        return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(settings.file), append=True)))
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    params: Dict[str, Any] = {"url": settings.url, "endpoint": settings.endpoint, "timeout": settings.timeout_seconds,
                              "retry": {"total": 0, "connect": 0, "read": 0, "status": 0}}
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if key:
        params["auth"] = {"type": "api_key", "apiKey": key}
    return OpenLineageClient(transport=HttpTransport(HttpConfig.from_dict(params)))


# --- what pipelines/run.py calls ------------------------------------------------------------------
_current: ContextVar[Optional[Emitter]] = ContextVar("lineage_emitter", default=None)


def _note_mlflow(emitter: Emitter) -> None:
    """The MLflow run, once the pipeline run has started it (mlflow is not imported for it)."""
    mlflow = sys.modules.get("mlflow")
    if emitter.mlflow_run_id is None and mlflow is not None:
        try:
            active = mlflow.active_run()
            emitter.mlflow_run_id = active.info.run_id if active is not None else None
        except Exception:
            pass


@contextmanager
def pipeline_run(cfg, run_id: str, kind: str, sets) -> Iterator[Emitter]:
    """START now; FAIL (with the error) if the body raises; COMPLETE by `Emitter.finished`."""
    emitter = Emitter(cfg, run_id, kind, list(sets))
    try:
        from pipelines.context import code_version

        emitter.code_version = code_version()
    except Exception:
        pass
    token = _current.set(emitter)
    _pipeline_event(emitter, RunState.START)
    try:
        yield emitter
    except BaseException as exc:
        _pipeline_event(emitter, RunState.FAIL, exc)
        raise
    finally:
        _current.reset(token)


def finished(emitter: Emitter, summary: Dict[str, Any]) -> Dict[str, Any]:
    """COMPLETE the pipeline run (with its MLflow run) and add what was sent to the summary."""
    emitter.mlflow_run_id = (summary.get("mlflow") or {}).get("run_id") or emitter.mlflow_run_id
    _pipeline_event(emitter, RunState.COMPLETE)
    summary["lineage"] = emitter.stats()
    logs.get().info("lineage events", **emitter.stats())
    return summary


def _pipeline_event(emitter: Emitter, state: RunState, error: Optional[BaseException] = None) -> None:
    """The pipeline run's START, FAIL or COMPLETE; building it can fail no run (nor hide its error)."""
    with _timed(emitter):
        try:
            if error is not None:
                _note_mlflow(emitter)
            emitter.emit(emitter.event(state, emitter.run_uuid, emitter.job_name, "JOB",
                                       emitter.pipeline_facets(error)))
        except Exception as exc:  # noqa: BLE001
            emitter.failed += 1
            logs.get().warning("lineage event not built", job=emitter.job_name, event_type=state.value,
                               error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@contextmanager
def _timed(emitter: Emitter) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        emitter.seconds += time.perf_counter() - start


def stage_started(ctx, name: str) -> Optional[StageRun]:
    emitter = _current.get()
    if emitter is None:
        return None
    with _timed(emitter):
        return _stage_started(emitter, ctx, name)


def _stage_started(emitter: Emitter, ctx, name: str) -> Optional[StageRun]:
    try:
        _note_mlflow(emitter)
        stage = StageRun(name, str(generate_new_uuid()), *emitter.stage_datasets(name))
        inputs, outputs = emitter.datasets(ctx, stage, complete=False)
        emitter.emit(emitter.event(RunState.START, stage.run_id, f"{emitter.job_name}.{name}", "TASK",
                                   emitter.stage_facets(), inputs, outputs))
        return stage
    except Exception as exc:  # building an event must not fail the run either
        emitter.failed += 1
        logs.get().warning("lineage event not built", stage=name, error=str(exc))
        return None


def stage_ended(ctx, stage: Optional[StageRun], error: Optional[BaseException] = None) -> None:
    emitter = _current.get()
    if emitter is None or stage is None:
        return
    with _timed(emitter):
        _stage_ended(emitter, ctx, stage, error)


def _stage_ended(emitter: Emitter, ctx, stage: StageRun, error: Optional[BaseException]) -> None:
    try:
        _note_mlflow(emitter)
        inputs, outputs = emitter.datasets(ctx, stage, complete=True)
        emitter.emit(emitter.event(RunState.FAIL if error is not None else RunState.COMPLETE, stage.run_id,
                                   f"{emitter.job_name}.{stage.name}", "TASK", emitter.stage_facets(error),
                                   inputs, outputs))
    except Exception as exc:
        emitter.failed += 1
        logs.get().warning("lineage event not built", stage=stage.name, error=str(exc))

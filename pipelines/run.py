"""One pipeline run: plan -> ingest -> refine -> build -> quality -> publish -> track, as one MLflow run.

`run` and `backfill` are the same steps over two slices of time: a run takes what arrived since the last
one (every bronze run not yet refined, the gold as-of days it changes); a backfill takes the event days
[start, end) of every events dataset again from what bronze holds (re-refined with today's rules,
rebuilt with today's features). Both record themselves as open before their first write, pass the
quality gate before publishing, check online against offline values, and are tracked in MLflow.
The steps are functions of the declarations (datasets and feature sets): no dataset is known by name.
Each step is idempotent (see each stage's module docstring): running a slice again writes nothing new.
"""

from __future__ import annotations

import datetime as dt
import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from features.declarations import FeatureSet, validate as validate_declaration
from features.registry import feature_sets
from pipelines import faults, file_ledger, lineage_events, logs, ray_runtime, run_lock, run_state
from pipelines.config import DatasetConfig, PipelineConfig, parse_utc, resolved_dict
from pipelines.context import RunContext, code_version, config_hash, new_run_id
from pipelines.declarations import column_kinds, refine_order
from pipelines.errors import ConfigError, PipelineError
from pipelines.io.lake import Lake
from pipelines.pii import load_key
from pipelines.quality import gate as quality_gate
from pipelines.profiles import require_credentials
from pipelines.stages import bronze, gold, silver
from serving import applied, freshness
from validation import contract as contracts


@dataclass(frozen=True)
class Slice:
    """What a run covers: `run`, what arrived since the last run; `backfill`, event days [start, end)."""

    kind: str  # run | backfill
    start: Optional[dt.date] = None
    end: Optional[dt.date] = None

    @property
    def label(self) -> str:
        return "run" if self.kind == "run" else f"backfill {self.start}..{self.end}"


def check_start_up(cfg: PipelineConfig) -> List[FeatureSet]:
    """Everything that can be checked before any work: credentials, and each feature set against the
    datasets it reads (columns, kinds, the event time it windows over, the entity table's key)."""
    require_credentials(cfg)
    sets = feature_sets(cfg.features.sets, cfg.project)
    for fs in sets:
        where = f"feature set {fs.name!r}"
        events = cfg.datasets.get(fs.source_table)
        if events is None:
            raise ConfigError(f"config error: {where} reads dataset {fs.source_table!r}, which is not declared "
                              f"(declared: {sorted(cfg.datasets)})")
        if events.event_time != fs.timestamp_column:
            raise ConfigError(f"config error: {where} windows over {fs.timestamp_column!r}, but the event time of "
                              f"{fs.source_table!r} is {events.event_time!r} (datasets.{fs.source_table}.event_time)")
        entity = cfg.datasets.get(fs.entity_table) if fs.entity_table else None
        if fs.entity_table and entity is None:
            raise ConfigError(f"config error: {where} joins attributes from dataset {fs.entity_table!r}, which is "
                              "not declared")
        if entity is not None and entity.key_columns != [fs.entity.join_key]:
            raise ConfigError(f"config error: {where} joins {fs.entity_table!r} on {fs.entity.join_key!r}, but its key "
                              f"is {entity.key_columns}")
        validate_declaration(fs, column_kinds(events), column_kinds(entity) if entity is not None else None)
    return sets


@contextmanager
def stage(ctx: RunContext, name: str) -> Iterator[None]:
    logs.bind(stage=name)
    log = logs.get()
    log.info("stage started")
    lineage = lineage_events.stage_started(ctx, name)  # OpenLineage START; FAIL or COMPLETE below
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        lineage_events.stage_ended(ctx, lineage, exc)
        raise
    # Ray Data's datasets sit in reference cycles: a stage's materialized blocks (5 GB of bronze at 10M
    # rows) stay pinned in the object store until Python's cycle collector happens to run, and the next
    # stage's blocks then spill to disk (measured: gold's build 36 s with 6.7 GB spilled, 20 s without).
    gc.collect()
    ctx.durations[name] = round(time.perf_counter() - start, 3)
    log.info("stage finished", seconds=ctx.durations[name])
    lineage_events.stage_ended(ctx, lineage)


_freezing = threading.Lock()
_frozen_by_runs = 0  # runs inside collector_skips_what_lives_now (threads of one process may run several)
_froze = False  # whether the first of them froze (not when the process had frozen objects of its own)


@contextmanager
def collector_skips_what_lives_now() -> Iterator[None]:
    """Each stage ends with a full collection (`stage`). A full collection scans every tracked object of the
    process, and one holding Ray, pyarrow, pyiceberg and MLflow has millions: ~0.4 s a stage, 3 s of a small
    run's collections (measured on the CLI). What lives now (modules, caches, the config) outlives the run,
    so it is frozen: the stages' collections scan only what the run itself made, which is where Ray Data's
    cyclic datasets are. The freeze is the process's, so it is made by the first of concurrent runs (a later
    one's freeze would take in the first one's live datasets, which its stages must free) and undone by the
    last; a process that froze objects itself is left as it is."""
    global _frozen_by_runs, _froze
    with _freezing:
        if _frozen_by_runs == 0 and gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()
            _froze = True
        _frozen_by_runs += 1
    try:
        yield
    finally:
        with _freezing:
            _frozen_by_runs -= 1
            if _frozen_by_runs == 0 and _froze:
                gc.unfreeze()
                _froze = False


def run(cfg: PipelineConfig) -> Dict[str, Any]:
    """A run over what arrived since the last one."""
    return execute(cfg, Slice("run"))


def backfill(cfg: PipelineConfig) -> Dict[str, Any]:
    """The same steps over event days [backfill.start, backfill.end) (or backfill.month)."""
    start, end = cfg.backfill.interval()
    return execute(cfg, Slice("backfill", start, end))


def execute(cfg: PipelineConfig, plan: Slice) -> Dict[str, Any]:
    faults.reset()
    sets = check_start_up(cfg)
    started = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(started)
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if cfg.profile == "local":  # the embedded warehouse and MLflow store live here; prod keeps nothing here
        (data_dir / "warehouse").mkdir(exist_ok=True)
        (data_dir / "mlflow").mkdir(exist_ok=True)
    logs.configure(data_dir / "logs" / f"{run_id}.jsonl")
    logs.bind(run_id=run_id, stage="start")
    log = logs.get()
    pii_key = load_key(cfg.pii_key_env, cfg.profile, data_dir, log.warning)
    if cfg.cutoff is None:
        log.warning("no cutoff set: using the end of the current UTC day", cutoff=cfg.cutoff_ts.isoformat())
    log.info(f"{plan.kind} started", data_dir=str(data_dir), project=cfg.project, datasets=list(cfg.datasets),
             feature_sets=[fs.name for fs in sets], start=str(plan.start), end=str(plan.end))
    from pipelines import metrics  # Prometheus metrics at the end, also of a failed run (pipelines/metrics.py)

    with metrics.reported(cfg, plan.kind, run_id) as report, \
            run_lock.hold(cfg.catalog, run_id, plan.kind, cfg.lock_wait_seconds), \
            lineage_events.pipeline_run(cfg, run_id, plan.kind, sets) as lineage:  # OpenLineage events
        return report(lineage_events.finished(lineage, _locked(cfg, plan, sets, run_id, started, pii_key)))


def _locked(cfg: PipelineConfig, plan: Slice, sets: List[FeatureSet], run_id: str, started: dt.datetime,
            pii_key: bytes) -> Dict[str, Any]:
    log = logs.get()
    data_dir = Path(cfg.data_dir)
    lake = Lake(cfg.catalog)
    # a fixed cutoff for the whole run (a derived one must not move at midnight half-way)
    cutoff = cfg.cutoff_ts
    resolved = resolved_dict(cfg)
    ctx = RunContext(cfg, lake, run_id, started, code_version(), config_hash(resolved))
    order = refine_order(cfg.datasets)
    if plan.kind == "backfill":
        interrupted = run_state.open_run_ids(lake)
        if interrupted:
            raise PipelineError(f"run {interrupted[-1]} was interrupted and is not finished: `medallion run` "
                                "resumes it; backfill refuses to change the tables until then")
    with stage(ctx, "plan"):  # every source is checked before anything is written
        # in declaration order: a missing source is reported as a user would look for it
        plans = {name: bronze.plan(ctx, name, source) for name, source in cfg.datasets.items()} \
            if plan.kind == "run" else {}
        for name, source in cfg.datasets.items():
            _check_tables(ctx, source, plans.get(name))
        for fs in sets:
            if plan.kind == "backfill":
                gold.check_backfill(ctx, fs)
            gold.check_schema(ctx, fs)
    # From here on tables change: the open-run record lets a rerun after a crash resume this run, and
    # holds what the gate rolls the tables back to if the data fails a blocking check.
    open_run = run_state.begin(lake, run_id, _run_tables(cfg, sets))
    if open_run.interrupted:
        log.warning("resuming interrupted run(s)", interrupted=open_run.interrupted)
    faults.point("planned")
    ray_runtime.start_when_needed(cfg.ray)

    from serving import tracking

    tags = {"pipeline_run_id": run_id, "code_version": ctx.code_version}
    if plan.kind == "backfill":
        tags["backfill"] = f"{plan.start}..{plan.end}"
    # frozen once MLflow's run has started (its store and start_run import much that outlives the run)
    with tracking.tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.artifact_location,
                              run_name=run_id if plan.kind == "run" else plan.label, tags=tags) as mlflow_run_id, \
            collector_skips_what_lives_now():
        tracking.mark_killed(open_run.interrupted, run_id)
        if plan.kind == "run":
            with stage(ctx, "ingest"):
                judged = [f for p in plans.values() if p is not None for f in p.not_ingested]
                file_ledger.record(lake, judged, run_id, ctx.commit_properties())
                for name, source in cfg.datasets.items():
                    _ingest(ctx, source, plans[name], open_run.interrupted)
        faults.point("ingested")
        with stage(ctx, "refine"):
            refined: Dict[str, silver.SilverResult] = {}
            for name in order:
                source = cfg.datasets[name]
                contract = contracts.build(name, source, cutoff, silver.referenced_keys(ctx, source, cfg.datasets),
                                           _custom_checks(cfg, source))
                if plan.kind == "run":
                    refined[name] = silver.refine(ctx, source, contract, pii_key)
                    for record, bronze_runs in run_state.refined_by(lake, name, open_run.interrupted):
                        refined[name].absorb(record, bronze_runs)
                elif source.is_events and ctx.lake.exists(f"bronze.{name}"):
                    refined[name] = silver.rebuild(ctx, source, contract, pii_key, plan.start, plan.end)
                if name in refined:
                    ctx.counts.update(refined[name].as_counts(name))
        faults.point("refined")
        built: Dict[str, gold.GoldResult] = {}
        with stage(ctx, "build"):
            for fs in sets:
                if plan.kind == "run":
                    built[fs.name] = gold.build(ctx, fs, cfg.datasets[fs.source_table])
                    gold.absorb(built[fs.name], run_state.commits_by(lake, f"gold.{fs.name}", open_run.interrupted))
                else:
                    built[fs.name] = gold.rebuild(ctx, fs, cfg.datasets[fs.source_table], plan.start, plan.end)
                ctx.counts[f"{fs.name}.gold_rows_written"] = built[fs.name].rows_written
                # a full read of the table: only for a table this run wrote (a rerun with no new data
                # spent ~18 s of its ~60 s here at 10M events, hashing gold it had not changed)
                if built[fs.name].first_as_of is not None:
                    ctx.digests[f"gold.{fs.name}"] = gold.content_digest(ctx, f"gold.{fs.name}")
        faults.point("built")
        gate_result = None
        refined_now = [quality_gate.Refined(d, cfg.datasets[d].column_names, r.bronze_runs, r.rows_in, r.present)
                       for d, r in refined.items() if r.rows_in]
        changed = any(b.first_as_of is not None for b in built.values())
        if refined_now or changed:  # nothing new refined or built, nothing to judge (and no history row)
            with stage(ctx, "quality"):
                try:
                    gate_result = quality_gate.run_gate(ctx, refined_now, built, sets, open_run.before,
                                                        open_run.run_ids)
                except quality_gate.QualityGateError:
                    run_state.end(lake)  # rolled back: the tables are as before the run(s), consistently
                    raise
        faults.point("gated")
        with stage(ctx, "publish"):
            published = _publish(ctx, cfg, sets, built)
            _index_for_training(ctx, cfg, sets)
        with stage(ctx, "track"):
            tables = _tables(ctx, cfg, sets)
            for identifier in _run_tables(cfg, sets):  # what interrupted runs committed is this run's output too
                last = run_state.commits_by(lake, identifier, open_run.interrupted)
                if last and identifier not in ctx.tables_written and identifier in tables:
                    ctx.wrote(identifier, tables[identifier]["snapshot_id"])
            tracking.log_params(tracking.flatten("", resolved, {}))
            tracking.log_config(resolved)
            faults.point("tracking")
            tracking.log_metrics({**ctx.counts, **{f"seconds.{k}": v for k, v in ctx.durations.items()}})
            for identifier, snapshot in ctx.tables_read.items():
                # a snapshot this run wrote and then read is one dataset: MLflow keeps it once, as written
                if ctx.tables_written.get(identifier) != snapshot:
                    tracking.log_table(lake.name, lake.properties, identifier, snapshot, "read")
            for identifier, snapshot in ctx.tables_written.items():
                tracking.log_table(lake.name, lake.properties, identifier, snapshot, "written",
                                   ctx.digests.get(identifier))
    run_state.end(lake)
    new_data = bool(ctx.tables_written)
    if not new_data:
        log.info("no new data: nothing was written")
    log.info(f"{plan.kind} finished", tables_written=sorted(ctx.tables_written))
    rejections = {"files": len(ctx.rejected_files),
                  "rows": sum(r.quarantined for r in refined.values())}
    summary = {
        "run_id": run_id,
        "status": "succeeded_with_rejections" if any(rejections.values()) else "succeeded",
        "exit_code": _exit_code(cfg, rejections),
        "rejections": rejections,
        "kind": plan.kind,
        "new_data": new_data,
        "resumed": open_run.interrupted,
        "data_dir": str(data_dir),
        "project": cfg.project,
        "cutoff": cutoff.isoformat(),
        "catalog": {"name": lake.name, "properties": lake.properties},
        "tables": tables,
        "tables_written": dict(ctx.tables_written),
        "quarantined": {d: r.quarantined for d, r in refined.items()},
        "duplicates": {d: r.duplicates for d, r in refined.items()},
        "counts": ctx.counts,
        "rejected_files": ctx.rejected_files,
        "files": {name: p.files for name, p in plans.items() if p is not None},
        "gold_digests": ctx.digests,
        "gold_as_of": {name: [str(r.first_as_of), str(r.last_as_of)] for name, r in built.items()
                       if r.first_as_of is not None},
        "published": [p.feature_set for p in published],
        "freshness": freshness.report(lake, sets),  # newest as-of per feature set and its age now
        "mlflow": {"tracking_uri": cfg.tracking.tracking_uri, "run_id": mlflow_run_id},
        "feast_repo": str(applied.repo_path(cfg)),
        "seconds": ctx.durations,
        "quality": None if gate_result is None else {
            "passed": gate_result.passed, "report": str(gate_result.report_path), "alerts": gate_result.alerts,
            "failed_checks": [c.summary() for c in gate_result.checks if not c.passed]},
    }
    if plan.kind == "backfill":
        summary["interval"] = [str(plan.start), str(plan.end)]
    return summary


def _exit_code(cfg: PipelineConfig, rejections: Dict[str, int]) -> int:
    """0, or the configured code of the first kind of rejection the run had (files before rows)."""
    codes = cfg.exit_codes
    return (codes.rejected_files if rejections["files"] else 0) or \
        (codes.quarantined_rows if rejections["rows"] else 0)


def _ingest(ctx: RunContext, source: DatasetConfig, file_plan, interrupted: List[str]) -> None:
    result = bronze.ingest(ctx, source.name, source, file_plan)
    resumed = run_state.commits_by(ctx.lake, f"bronze.{source.name}", interrupted)
    ctx.counts[f"{source.name}.bronze_rows_ingested"] = result.rows + sum(r.added_records for r in resumed)
    ctx.counts[f"{source.name}.units_ingested"] = len(result.units) + sum(len(r.units) for r in resumed)
    for outcome, files in (file_plan.files if file_plan is not None else {}).items():
        ctx.counts[f"{source.name}.files_{outcome}"] = files
    if file_plan is not None:  # this run's files (an interrupted attempt's are in its own bronze commit)
        ingested = set(result.units)
        ctx.counts[f"{source.name}.bytes_ingested"] = sum(f.size for f in file_plan.new_files if f.uri in ingested)


def _publish(ctx: RunContext, cfg: PipelineConfig, sets: List[FeatureSet], built: Dict[str, gold.GoldResult]):
    """Apply the Feast objects (unless Feast holds them as last applied and nothing changed), write each
    changed feature set's newest rows online and check them against offline values."""
    log = logs.get()
    published = []
    if all(built[fs.name].first_as_of is None for fs in sets) and applied.is_current(cfg, sets):
        log.info("nothing to publish: Feast holds these feature sets as last applied")
        return published
    # imported here, not with the rest: Feast takes seconds to import, which a run that stops earlier (a
    # failed gate, a crash) or has nothing to publish need not pay
    from serving import publish as publishing

    store = publishing.open_store(cfg)
    publishing.apply(store, sets, cfg)
    for fs in sets:
        changed = built[fs.name]
        if changed.first_as_of is None:
            continue
        result = publishing.publish(store, ctx.lake, fs, changed.first_as_of)
        published.append(result)
        ctx.counts[f"{fs.name}.online_entities_written"] = result.entities_written
        ctx.counts[f"{fs.name}.online_check_mismatches"] = result.mismatches
        if result.mismatches:
            raise RuntimeError(f"online/offline check failed for {fs.name}: "
                               f"{result.mismatches} mismatching values in {result.checked} entities")
        faults.point("published_one")
    log.info("published", feature_sets=[r.feature_set for r in published])
    return published


def _index_for_training(ctx: RunContext, cfg: PipelineConfig, sets: List[FeatureSet]) -> None:
    """Index each gold table's published snapshot for training sets (serving/training_index.py), unless it
    is indexed already, and prune older indexes. Any failure only warns: the index is a cache (a training
    set without one reads gold from Iceberg), and the run's tables and online store are already written."""
    if not cfg.training_index.dir:
        return
    from serving import training_index
    from serving.pit_join import SetSpec

    log = logs.get()
    root = Path(cfg.training_index.dir)
    for fs in sets:
        identifier = f"gold.{fs.name}"
        try:
            if not ctx.lake.exists(identifier):  # nothing built yet (an empty source)
                continue
            table = ctx.lake.table(identifier)
            snapshot = table.current_snapshot()
            if snapshot is None:
                continue
            uuid, live = str(table.metadata.table_uuid), training_index.lineage(table)
            if not (training_index.folder_of(root, uuid, snapshot.snapshot_id) / training_index.MANIFEST).exists():
                # room first: the older indexes beyond what is kept with this one go before it is written
                training_index.prune(root, uuid, cfg.training_index.keep - 1, live)
                started = time.perf_counter()
                folder = training_index.write(root, table, snapshot.snapshot_id, SetSpec.of(fs))
                log.info("training index written", feature_set=fs.name, snapshot_id=snapshot.snapshot_id,
                         folder=str(folder), seconds=round(time.perf_counter() - started, 2))
            training_index.prune(root, uuid, cfg.training_index.keep, live)
        except Exception as exc:  # noqa: BLE001 - a cache that could not be written must not fail the run
            reason = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("training index not written: training sets over this snapshot read gold from Iceberg",
                        feature_set=fs.name, error=f"{type(exc).__name__}: {reason}")
            ctx.counts[f"{fs.name}.training_index_failures"] = 1


def _check_tables(ctx: RunContext, source: DatasetConfig, file_plan) -> None:
    """Before any write: bronze and silver of `source` take what this run writes (a changed declaration,
    say a new declared column in the middle, is refused now, not after other tables were committed).
    Quarantine follows bronze's columns in its own order, and gold is checked by `gold.check_schema`."""
    bronze_spec = bronze.table_spec(source, ctx.lake, file_plan.new_columns if file_plan else [])
    silver_spec = silver.silver_spec(source, contracts.build(source.name, source), bronze.silver_extras(ctx, source))
    for spec in (bronze_spec, silver_spec):
        problem = ctx.lake.schema_problem(spec, evolve=True)
        if problem:
            raise PipelineError(f"{problem}; datasets.{source.name} no longer matches it: nothing was written")


def _custom_checks(cfg: PipelineConfig, source: DatasetConfig):
    """(name, function) of the dataset's custom checks, imported from the project directory."""
    from pipelines.declarations import custom_check

    return [(check.name, custom_check(cfg.project, source.name, check.function)) for check in source.checks]


def _run_tables(cfg: PipelineConfig, sets: List[FeatureSet]) -> List[str]:
    """Every table a run writes: what a failed quality gate puts back."""
    out = []
    for name in cfg.datasets:
        out += [f"bronze.{name}", f"silver.{name}", f"quarantine.{name}"]
    return out + [f"gold.{fs.name}" for fs in sets]


def _tables(ctx: RunContext, cfg: PipelineConfig, sets: List[FeatureSet]) -> Dict[str, Dict[str, Any]]:
    return {
        identifier: {"snapshot_id": ctx.lake.current_snapshot_id(identifier), "rows": ctx.lake.row_count(identifier)}
        for identifier in _run_tables(cfg, sets)
        if ctx.lake.exists(identifier)
    }


def maintain(cfg: PipelineConfig, erase: Optional[Tuple[str, str]] = None) -> Dict[str, Any]:
    """`medallion maintain` (retention, then expiry and clean-up of every table) or `medallion erase`."""
    from pipelines import maintenance

    data_dir = Path(cfg.data_dir)
    started = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(started)
    logs.configure(data_dir / "logs" / f"{run_id}.jsonl")
    logs.bind(run_id=run_id, stage="erase" if erase else "maintain")
    command = "erase" if erase else "maintain"
    with run_lock.hold(cfg.catalog, run_id, command, cfg.lock_wait_seconds):
        lake = Lake(cfg.catalog)
        interrupted = run_state.open_run_ids(lake)
        if interrupted:  # its rollback targets are old snapshots that expiry would delete
            raise PipelineError(f"run {interrupted[-1]} was interrupted and is not finished: `medallion run` "
                                f"resumes it; {command} refuses to change the tables until then")
        if erase:
            erased = maintenance.erase(cfg, lake, *erase)
            return {"run_id": run_id, "erased": erased,
                    "training_indexes_removed": maintenance.drop_training_indexes(cfg, lake)}
        reference = parse_utc(cfg.retention.reference) if cfg.retention.reference else started
        retention = maintenance.apply_retention(cfg, lake, reference)
        cleaned = maintenance.clean_up(lake, cfg.retention.orphan_min_age_hours * 3600, run_id)
        return {"run_id": run_id, "retention": retention, "clean_up": cleaned,
                "training_indexes_removed": maintenance.drop_training_indexes(cfg, lake)}


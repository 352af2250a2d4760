"""One pipeline run: ingest -> refine -> build -> publish, tracked as one MLflow run.

The run is a sequence of idempotent steps (see each stage's module docstring), so running it again with
no new input writes nothing, and running it after new files arrive processes only those files.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from features.declarations import FeatureSet, validate as validate_declaration
from features.registry import feature_sets
from pipelines import faults, logs, ray_runtime, run_lock, run_state
from pipelines.config import PipelineConfig, parse_utc, resolved_dict
from pipelines.context import RunContext, code_version, config_hash, new_run_id
from pipelines.errors import ConfigError, PipelineError
from pipelines.io.lake import Lake
from pipelines.pii import load_key
from pipelines.quality import gate as quality_gate
from pipelines.profiles import require_credentials
from pipelines.stages import bronze, gold, silver
from serving import applied
from validation import transactions as tx_contract
from validation import users as users_contract

# Silver contracts by dataset: a source feeds a dataset only if validation/ has a contract for it.
COLUMN_KINDS = {"transactions": tx_contract.COLUMN_KINDS, "users": users_contract.COLUMN_KINDS}


def check_start_up(cfg: PipelineConfig) -> List[FeatureSet]:
    """Everything that can be checked before any work: sources map to contracts, declarations are sound."""
    require_credentials(cfg)
    for name, source in cfg.sources.items():
        if source.dataset not in COLUMN_KINDS:
            raise ConfigError(f"config error: sources.{name}.dataset={source.dataset!r} has no silver contract "
                              f"(known: {sorted(COLUMN_KINDS)})")
    sets = feature_sets(cfg.features.sets)
    for fs in sets:
        validate_declaration(fs, COLUMN_KINDS.get(fs.source_table, {}),
                             COLUMN_KINDS.get(fs.entity_table) if fs.entity_table else None)
    return sets


@contextmanager
def stage(ctx: RunContext, name: str) -> Iterator[None]:
    logs.bind(stage=name)
    log = logs.get()
    log.info("stage started")
    start = time.perf_counter()
    yield
    # Ray Data's datasets sit in reference cycles: a stage's materialized blocks (5 GB of bronze at 10M
    # rows) stay pinned in the object store until Python's cycle collector happens to run, and the next
    # stage's blocks then spill to disk (measured: gold's build 36 s with 6.7 GB spilled, 20 s without).
    gc.collect()
    ctx.durations[name] = round(time.perf_counter() - start, 3)
    log.info("stage finished", seconds=ctx.durations[name])


def run(cfg: PipelineConfig) -> Dict[str, Any]:
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
    log.info("run started", data_dir=str(data_dir), feature_sets=[fs.name for fs in sets])
    with run_lock.hold(cfg.catalog, run_id, "run", cfg.lock_wait_seconds):
        return _locked_run(cfg, sets, run_id, started, pii_key)


def _locked_run(cfg: PipelineConfig, sets: List[FeatureSet], run_id: str, started: dt.datetime,
                pii_key: bytes) -> Dict[str, Any]:
    log = logs.get()
    data_dir = Path(cfg.data_dir)
    lake = Lake(cfg.catalog)
    ctx = RunContext(cfg, lake, run_id, started, code_version(), config_hash(cfg))
    with stage(ctx, "plan"):  # every source is checked before anything is written
        plans = {name: bronze.plan(ctx, name, source) for name, source in cfg.sources.items()}
        for fs in sets:
            gold.check_schema(ctx, fs)
    # From here on tables change: the open-run record lets a rerun after a crash resume this run, and
    # holds what the gate rolls the tables back to if the data fails a blocking check.
    open_run = run_state.begin(lake, run_id, _run_tables(cfg, sets))
    if open_run.interrupted:
        log.warning("resuming interrupted run(s)", interrupted=open_run.interrupted)
    faults.point("planned")
    ray_runtime.start_when_needed(cfg.ray)

    from serving import tracking

    with tracking.tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.artifact_location,
                              run_name=run_id, tags={"pipeline_run_id": run_id,
                                                     "code_version": ctx.code_version}) as mlflow_run_id:
        tracking.mark_killed(open_run.interrupted, run_id)
        with stage(ctx, "ingest"):
            for name, source in cfg.sources.items():
                result = bronze.ingest(ctx, name, source, plans[name])
                resumed = run_state.commits_by(lake, f"bronze.{source.dataset}", open_run.interrupted)
                ctx.counts[f"{source.dataset}.bronze_rows_ingested"] = result.rows + sum(
                    int(p.get("added-records", 0)) for p in resumed)
                ctx.counts[f"{source.dataset}.units_ingested"] = len(result.units) + sum(
                    len(json.loads(p.get(bronze.INGESTED_UNITS, "[]"))) for p in resumed)
        faults.point("ingested")
        with stage(ctx, "refine"):
            refined: Dict[str, silver.SilverResult] = {}
            for name, source in cfg.sources.items():
                if source.dataset == "users":
                    refined["users"] = silver.refine_users(ctx, source, pii_key)
            known = silver.known_user_ids(ctx)
            for name, source in cfg.sources.items():
                if source.dataset == "transactions":
                    refined["transactions"] = silver.refine_transactions(ctx, source, known)
            for dataset, result in refined.items():
                for record in run_state.refined_by(lake, dataset, open_run.interrupted):
                    result.absorb(record, record["bronze_runs"])
                ctx.counts.update(result.as_counts(dataset))
        faults.point("refined")
        built: Dict[str, gold.GoldResult] = {}
        with stage(ctx, "build"):
            for fs in sets:
                built[fs.name] = gold.build(ctx, fs)
                gold.absorb(built[fs.name], run_state.commits_by(lake, f"gold.{fs.name}", open_run.interrupted))
                ctx.counts[f"{fs.name}.gold_rows_written"] = built[fs.name].rows_written
                # a full read of the table: only for a table this run wrote (a rerun with no new data
                # spent ~18 s of its ~60 s here at 10M transactions, hashing gold it had not changed)
                if built[fs.name].first_as_of is not None:
                    ctx.digests[f"gold.{fs.name}"] = gold.content_digest(ctx, f"gold.{fs.name}")
        faults.point("built")
        gate_result = None
        refined_now = [quality_gate.Refined(d, list(_source_of(cfg, d).columns), r.bronze_runs, r.rows_in, r.present)
                       for d, r in refined.items() if r.bronze_runs]
        if refined_now:  # nothing new refined, nothing to judge (and no write to the check history)
            with stage(ctx, "quality"):
                try:
                    gate_result = quality_gate.run_gate(ctx, refined_now, built, sets, open_run.before,
                                                        open_run.run_ids)
                except quality_gate.QualityGateError:
                    run_state.end(lake)  # rolled back: the tables are as before the run(s), consistently
                    raise
        faults.point("gated")
        with stage(ctx, "publish"):
            published = []
            if all(built[fs.name].first_as_of is None for fs in sets) and applied.is_current(cfg, sets):
                log.info("nothing to publish: Feast holds these feature sets as last applied")
                sets_to_publish = []
            else:
                # imported here, not with the rest: Feast takes seconds to import, which a run that stops
                # earlier (a failed gate, a crash) or has nothing to publish need not pay
                from serving import publish as publishing

                store = publishing.open_store(cfg)
                publishing.apply(store, sets, cfg)
                sets_to_publish = sets
            for fs in sets_to_publish:
                changed = built[fs.name]
                if changed.first_as_of is None:
                    continue
                result = publishing.publish(store, lake, fs, changed.first_as_of)
                published.append(result)
                ctx.counts[f"{fs.name}.online_entities_written"] = result.entities_written
                ctx.counts[f"{fs.name}.online_check_mismatches"] = result.mismatches
                if result.mismatches:
                    raise RuntimeError(f"online/offline check failed for {fs.name}: "
                                       f"{result.mismatches} mismatching values in {result.checked} entities")
                faults.point("published_one")
            log.info("published", feature_sets=[r.feature_set for r in published])
        with stage(ctx, "track"):
            tables = _tables(ctx, cfg, sets)
            for identifier in _run_tables(cfg, sets):  # what interrupted runs committed is this run's output too
                last = run_state.commits_by(lake, identifier, open_run.interrupted)
                if last and identifier not in ctx.tables_written and identifier in tables:
                    ctx.wrote(identifier, tables[identifier]["snapshot_id"])
            tracking.log_params(tracking.flatten("", resolved_dict(cfg), {}))
            tracking.log_config(resolved_dict(cfg))
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
    return {
        "run_id": run_id,
        "status": "succeeded",
        "new_data": new_data,
        "resumed": open_run.interrupted,
        "data_dir": str(data_dir),
        "catalog": {"name": lake.name, "properties": lake.properties},
        "tables": tables,
        "quarantined": {d: r.quarantined for d, r in refined.items()},
        "duplicates": {d: r.duplicates for d, r in refined.items()},
        "counts": ctx.counts,
        "rejected_files": ctx.rejected_files,
        "gold_digests": ctx.digests,
        "mlflow": {"tracking_uri": cfg.tracking.tracking_uri, "run_id": mlflow_run_id},
        "feast_repo": str(applied.repo_path(cfg)),
        "seconds": ctx.durations,
        "quality": None if gate_result is None else {
            "passed": gate_result.passed, "report": str(gate_result.report_path), "alerts": gate_result.alerts,
            "failed_checks": [c.summary() for c in gate_result.checks if not c.passed]},
    }


def _source_of(cfg: PipelineConfig, dataset: str):
    return next(s for s in cfg.sources.values() if s.dataset == dataset)


def _run_tables(cfg: PipelineConfig, sets: List[FeatureSet]) -> List[str]:
    """Every table a run writes: what a failed quality gate puts back."""
    out = []
    for source in cfg.sources.values():
        out += [f"bronze.{source.dataset}", f"silver.{source.dataset}", f"quarantine.{source.dataset}"]
    return out + [f"gold.{fs.name}" for fs in sets]


def _tables(ctx: RunContext, cfg: PipelineConfig, sets: List[FeatureSet]) -> Dict[str, Dict[str, Any]]:
    identifiers = []
    for source in cfg.sources.values():
        identifiers += [f"bronze.{source.dataset}", f"silver.{source.dataset}", f"quarantine.{source.dataset}"]
    identifiers += [f"gold.{fs.name}" for fs in sets]
    return {
        identifier: {"snapshot_id": ctx.lake.current_snapshot_id(identifier), "rows": ctx.lake.row_count(identifier)}
        for identifier in identifiers
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
            return {"run_id": run_id, "erased": maintenance.erase(cfg, lake, *erase)}
        reference = parse_utc(cfg.retention.reference) if cfg.retention.reference else started
        retention = maintenance.apply_retention(cfg, lake, reference)
        cleaned = maintenance.clean_up(lake, cfg.retention.orphan_min_age_hours * 3600, run_id)
        return {"run_id": run_id, "retention": retention, "clean_up": cleaned}

"""`medallion backfill`: rebuild silver and gold for an interval of event days [start, end) from what
bronze holds (after a rule or feature change, or a late correction), replacing exactly that interval in one
commit per table, and republish the features it changed.

Idempotent: each table is rewritten only if the recomputed rows differ from what it holds, so a second
backfill of the same interval writes nothing. Chunks are independent: gold is recomputed for every as-of
day the chunk's events feed (start+1 .. end-1+W), so monthly chunks in any order end where one backfill of
the whole span ends.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Dict

from pipelines import logs, ray_runtime, run_lock, run_state
from pipelines.config import PipelineConfig, resolved_dict
from pipelines.context import RunContext, code_version, config_hash, new_run_id
from pipelines.errors import PipelineError
from pipelines.io.lake import Lake
from pipelines.stages import gold, silver


def backfill(cfg: PipelineConfig) -> Dict[str, Any]:
    from pipelines.run import check_start_up, stage

    sets = check_start_up(cfg)
    start, end = cfg.backfill.interval()
    started = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(started)
    logs.configure(Path(cfg.data_dir) / "logs" / f"{run_id}.jsonl")
    logs.bind(run_id=run_id, stage="backfill")
    log = logs.get()
    log.info("backfill started", start=str(start), end=str(end))
    with run_lock.hold(cfg.catalog, run_id, "backfill", cfg.lock_wait_seconds):
        lake = Lake(cfg.catalog)
        interrupted = run_state.open_run_ids(lake)
        if interrupted:
            raise PipelineError(f"run {interrupted[-1]} was interrupted and is not finished: `medallion run` "
                                "resumes it; backfill refuses to change the tables until then")
        ctx = RunContext(cfg, lake, run_id, started, code_version(), config_hash(cfg))
        ray_runtime.start(cfg.ray)
        from serving import publish as publishing
        from serving import tracking

        with tracking.tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.artifact_location,
                                  run_name=f"backfill {start}..{end}",
                                  tags={"pipeline_run_id": run_id, "code_version": ctx.code_version,
                                        "backfill": f"{start}..{end}"}) as mlflow_run_id:
            refined = {}
            with stage(ctx, "refine"):
                known = silver.known_user_ids(ctx)
                for source in cfg.sources.values():
                    if source.dataset == "transactions":
                        refined[source.dataset] = silver.rebuild_transactions(ctx, source, known, start, end)
            with stage(ctx, "build"):
                built = {fs.name: gold.rebuild(ctx, fs, start, end) for fs in sets}
            with stage(ctx, "publish"):
                changed = [fs for fs in sets if built[fs.name].first_as_of is not None]
                if changed:
                    store = publishing.open_store(cfg)
                    publishing.apply(store, sets, cfg)
                    for fs in changed:
                        published = publishing.publish(store, lake, fs, built[fs.name].first_as_of)
                        ctx.counts[f"{fs.name}.online_entities_written"] = published.entities_written
            with stage(ctx, "track"):
                for dataset, result in refined.items():
                    ctx.counts.update(result.as_counts(dataset))
                tracking.log_params(tracking.flatten("", resolved_dict(cfg), {}))
                tracking.log_metrics({**ctx.counts, **{f"seconds.{k}": v for k, v in ctx.durations.items()}})
                for identifier, snapshot in ctx.tables_written.items():
                    tracking.log_table(lake.name, lake.properties, identifier, snapshot, "written")
    log.info("backfill finished", tables_written=sorted(ctx.tables_written))
    return {
        "run_id": run_id,
        "status": "succeeded",
        "interval": [str(start), str(end)],
        "tables_written": {k: v for k, v in ctx.tables_written.items()},
        "gold_as_of": {name: [str(r.first_as_of), str(r.last_as_of)] for name, r in built.items()
                       if r.first_as_of is not None},
        "counts": ctx.counts,
        "mlflow": {"tracking_uri": cfg.tracking.tracking_uri, "run_id": mlflow_run_id},
        "seconds": ctx.durations,
    }

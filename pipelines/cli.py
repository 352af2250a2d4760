"""`medallion`: the command line. Overrides are Hydra's `key=value` syntax, validated before any work."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from features.declarations import FeatureDeclarationError
from pipelines.errors import PipelineError

HELP = """\
Ray-based feature pipeline: your datasets -> Iceberg bronze/silver/gold -> Feast, tracked in MLflow.

commands:
  run          run the pipeline (ingest, refine, build, quality gate, publish, track); the last stdout line
               is a JSON summary
  backfill     the same steps over event days [backfill.start, backfill.end): re-refine and rebuild them
               with today's rules and features; chunked: medallion backfill -m backfill.month=2026-01,2026-02
  init DIR     write a minimal project to start from (one dataset, one feature set, a few rows of data)
  config       print the resolved configuration
  maintain     apply retention, expire old snapshots, delete unreferenced files; prints what it removed
  erase        remove one entity everywhere (GDPR erasure): medallion erase --key <join key>=<value>
  sample-data  write the shipped sample project's data (the default project)
  training-set labels joined point in time to gold features, logged in MLflow; the last stdout line is
               JSON (rows, mlflow_run_id, snapshots, out):
               medallion training-set --labels L.parquet|L.csv --features SET[,SET|SET_service]
                 [--version latest|gold@<snapshot id>] [--as-known-at] [--timestamp-column COL] --out T.parquet
               medallion training-set --mlflow-run <run id> --out T.parquet   (rebuild one, bit for bit)
  versions     each table's snapshots, newest first: commit time, operation, the run that wrote it, rows
               added and total: medallion versions [--table LAYER.NAME|NAME] [--json]
  runs         pipeline runs, newest first: status (succeeded, failed, gate failed, killed), start,
               duration, the snapshots each wrote: medallion runs [--json]
  lineage      the silver rows one gold row was computed from, with their source files, file sha256 and
               bronze runs: medallion lineage --feature-set SET --key <join key>=<value> --as-of YYYY-MM-DD
                 [--json]
  sources      each declared source: owner, kind, expected volume, SLAs, and the measured state (last
               arrival, newest event, volume, each SLA met or breached since when): medallion sources [--json]
  probe        measure the sources' freshness (no pipeline run; metadata only) and write/push their
               Prometheus metrics (metrics.file, metrics.pushgateway_url): for a timer every minute

a project (--project DIR, or $MEDALLION_PROJECT; default: the shipped sample, examples/sample):
  DIR/conf/dataset/<name>.yaml    one declaration per dataset: source, columns, key, event time, rules
  DIR/conf/project.yaml           the project's settings (any key below)
  DIR/features/<set>.py           feature sets: FEATURE_SET = FeatureSet(...)

overrides (Hydra syntax, any number, after the command):
  data_dir=PATH                   where the local profile keeps everything (default: DIR/data)
  cutoff=2026-05-01T00:00:00Z     the run's logical end; later events are quarantined (required in prod)
  features.sets=[a,b]             which feature sets to build (default: every one of the project)
  features=NAME                   ... or a selection kept in the project's conf/features/NAME.yaml
  datasets.<name>.path=PATH       any setting of a dataset's declaration
  profile=prod                    Ray cluster, PostgreSQL catalog, object storage, Redis, MLflow server
  ray.address=ray://head:10001    join an existing Ray cluster instead of starting one

exit codes: 0 done; 2 bad configuration, input or state (one line on stderr); 3 quality gate failed
(nothing published); 4 another run holds the catalog; 5 done, but files were rejected (status
succeeded_with_rejections; the files and reasons in the summary and in quality.files_not_ingested).
exit_codes.quarantined_rows=N makes quarantined rows end a run with N too (default 0).

examples:
  medallion init ~/my-features && medallion run --project ~/my-features
  medallion run --project ~/my-features cutoff=2026-05-01 datasets.readings.path=/landing/readings
  medallion sample-data data_dir=/tmp/demo && medallion run data_dir=/tmp/demo
"""

COMMANDS = ["run", "backfill", "init", "config", "maintain", "erase", "sample-data", "training-set", "versions",
            "runs", "lineage", "sources", "probe"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medallion", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, help=argparse.SUPPRESS)
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="Hydra multirun: one job per combination of comma-separated override values, in order")
    parser.add_argument("--project", help="the project directory (default: $MEDALLION_PROJECT, else the sample)")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--key", help="erase: the entity to remove, as <join key>=<value>; lineage: the entity")
    parser.add_argument("--labels", help="training-set: a Parquet or CSV file of labels (join keys, a time, ...)")
    parser.add_argument("--features", help="training-set: feature sets or services, comma-separated")
    parser.add_argument("--version", help="training-set: latest (default) or gold@<snapshot id>")
    parser.add_argument("--as-known-at", action="store_true",
                        help="training-set: each label reads the gold snapshot served at its own time")
    parser.add_argument("--timestamp-column", help="training-set: the labels' time column (default: the only one)")
    parser.add_argument("--mlflow-run", help="training-set: rebuild the training set this MLflow run logged")
    parser.add_argument("--out", help="training-set: the Parquet file to write")
    parser.add_argument("--table", help="versions: one table (LAYER.NAME), or a name (its table in every layer)")
    parser.add_argument("--feature-set", help="lineage: the feature set of the gold row")
    parser.add_argument("--as-of", help="lineage: the gold row's as-of day, YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="versions, runs, lineage, sources: print JSON, not a table")
    args = parser.parse_intermixed_args(argv)
    if args.command == "erase" and (not args.key or "=" not in args.key):
        parser.error("erase needs --key <join key>=<value>")
    try:
        if args.command == "init":
            return _init(args.overrides)
        codes = [_command(args, overrides) for overrides in _jobs(args.overrides, args.multirun)]
        return next((c for c in codes if c), 0)
    except (PipelineError, FeatureDeclarationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 3: a quality gate stopped the run; 4: locked; 2: anything else
    except Exception as exc:  # noqa: BLE001 - only a service that did not answer is told in one line
        unreachable = _unreachable(exc)
        if unreachable is None:
            raise
        print(f"error: {unreachable} (`medallion config` shows the catalog, tracking and online-store settings)",
              file=sys.stderr)
        return 2


def _unreachable(exc: BaseException) -> Optional[str]:
    """What did not answer, when `exc` says a configured service (the catalog's database, a REST catalog,
    the MLflow server) could not be reached; None for any other error (its traceback is wanted)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return f"the database did not answer: {first}"
    if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError)):
        return f"a service did not answer: {first}"
    if isinstance(exc, MlflowException) and " failed with exception " in first and "Connection" in first:
        return f"the MLflow server did not answer: {first.split(' failed with exception ')[0]}"
    return None


def _init(arguments: List[str]) -> int:
    from pipelines.errors import ConfigError
    from pipelines.project_template import write_project

    if len(arguments) != 1:
        raise ConfigError("init needs one directory: medallion init DIR")
    written = write_project(arguments[0])
    print(json.dumps({"project": str(written), "next": f"medallion run --project {written}"}))
    return 0


def _jobs(overrides: List[str], multirun: bool) -> List[List[str]]:
    """The override lists of each job: one, or with --multirun Hydra's sweep of every combination."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]
    except HydraException as exc:
        from pipelines.errors import ConfigError

        raise ConfigError(f"config error: {str(exc).splitlines()[0]}") from None


def _command(args: argparse.Namespace, overrides: List[str]) -> int:
    """Carry out one job; its exit code (a run that succeeded with rejections may end with a non-zero one)."""
    from pipelines.config import load_config, resolved_dict

    cfg = load_config(overrides, args.project)
    if args.command == "config":
        print(json.dumps(resolved_dict(cfg), indent=2))
    elif args.command == "sample-data":
        from pipelines.errors import ConfigError

        if cfg.sample is None:
            raise ConfigError(f"config error: project {cfg.project} has no sample data (no `sample:` settings); "
                              "sample-data writes the shipped sample project's data")
        from examples.sample.generate import generate

        summary = generate(cfg.sample)
        print(json.dumps({"output_dir": cfg.sample["output_dir"], "files": len(summary["files"]),
                          "planted_dirty_rows": len(summary["planted"]),
                          **{k: v for k, v in summary.items() if isinstance(v, int)}}))
    elif args.command == "training-set":
        return _training_set(args, cfg)
    elif args.command in ("versions", "runs", "lineage"):
        return _versions(args, cfg)
    elif args.command == "sources":
        from pipelines.inventory import inventory, render
        from pipelines.io.lake import open_lake

        entries = inventory(cfg, open_lake(cfg.catalog))
        print(json.dumps(entries, default=str) if args.json else render(entries), end="\n" if args.json else "",
              flush=True)
    elif args.command == "probe":
        from pipelines.metrics import probe

        probed = probe(cfg)
        print(json.dumps(probed, default=str), flush=True)
        return 2 if "error" in probed else 0
    elif args.command in ("maintain", "erase"):
        from pipelines.run import maintain

        join_key, _, value = (args.key or "").partition("=")
        print(json.dumps(maintain(cfg, erase=(join_key, value) if args.command == "erase" else None),
                         default=str), flush=True)
    elif args.command == "backfill":
        from pipelines.errors import ConfigError
        from pipelines.run import backfill

        if not (cfg.backfill.month or cfg.backfill.start):
            raise ConfigError("config error: backfill needs backfill.start=YYYY-MM-DD backfill.end=YYYY-MM-DD "
                              "or backfill.month=YYYY-MM")
        summary = backfill(cfg)
        print(json.dumps(summary, default=str), flush=True)
        return int(summary["exit_code"])
    else:
        from pipelines.run import run

        summary = run(cfg)
        print(json.dumps(summary, default=str), flush=True)
        return int(summary["exit_code"])
    return 0


def _training_set(args: argparse.Namespace, cfg) -> int:
    """Build (or, with --mlflow-run, rebuild) a training set and write it as Parquet."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from pipelines.errors import ConfigError
    from serving import training_set

    if not args.out:
        raise ConfigError("training-set needs --out FILE.parquet")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"training-set: the folder of --out {args.out} does not exist")
    if args.mlflow_run:
        given = [flag for flag, value in (("--labels", args.labels), ("--features", args.features),
                                          ("--version", args.version), ("--as-known-at", args.as_known_at),
                                          ("--timestamp-column", args.timestamp_column)) if value]
        if given:
            raise ConfigError(f"training-set --mlflow-run rebuilds what that run recorded: drop {', '.join(given)}")
        built = training_set.rebuild(cfg, args.mlflow_run)
    else:
        if not args.labels or not args.features:
            raise ConfigError("training-set needs --labels FILE and --features SET[,SET] (or --mlflow-run RUN_ID)")
        names = [n.strip() for n in args.features.split(",") if n.strip()]
        specs = training_set.resolve_sets(cfg, names)
        built = training_set.build(cfg, training_set.read_labels(args.labels, specs), names,
                                   version=args.version or "latest",
                                   mode="as_known_at" if args.as_known_at else "point_in_time",
                                   timestamp_column=args.timestamp_column)
    pq.write_table(built.table, out)
    print(json.dumps({"rows": built.table.num_rows, "mlflow_run_id": built.mlflow_run_id,
                      "snapshots": built.snapshots, "out": str(out.resolve())}), flush=True)
    return 0


def _versions(args: argparse.Namespace, cfg) -> int:
    """`versions`, `runs` or `lineage`: a table for people, or with --json one JSON document."""
    from pipelines.errors import ConfigError
    from serving import versions

    if args.command == "versions":
        result, text = versions.versions(cfg, args.table), versions.format_versions
    elif args.command == "runs":
        result, text = versions.runs(cfg), versions.format_runs
    else:
        if not args.feature_set or not args.key or not args.as_of:
            raise ConfigError("lineage needs --feature-set SET --key <join key>=<value> --as-of YYYY-MM-DD")
        result, text = versions.lineage(cfg, args.feature_set, args.key, args.as_of), versions.format_lineage
    print(json.dumps(result, default=str) if args.json else text(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

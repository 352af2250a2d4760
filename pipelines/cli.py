"""`medallion`: the command line. Overrides are Hydra's `key=value` syntax, validated before any work."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from features.declarations import FeatureDeclarationError
from pipelines.errors import PipelineError

HELP = """\
Ray-based feature pipeline: sources -> Iceberg bronze/silver/gold -> Feast, tracked in MLflow.

commands:
  run          run the pipeline (ingest, refine, build, publish, track); last stdout line is a JSON summary
  sample-data  write the deterministic sample data set (users in SQLite, daily CSV/Parquet transactions)
  config       print the resolved configuration
  backfill     rebuild silver and gold for event days [backfill.start, backfill.end) and republish;
               chunked: medallion backfill -m backfill.month=2026-01,2026-02 (one job per month)
  maintain     apply retention, expire old snapshots, delete unreferenced files; prints what it removed
  erase        remove one entity everywhere (GDPR erasure): medallion erase --key user_id=42 [overrides]

overrides (Hydra syntax, any number, after the command):
  data_dir=PATH                   where the local profile keeps everything (default ./data)
  features=user_spend_daily       which feature sets to build (conf/features/*.yaml)
  features.sets=[user_spend_daily,merchant_activity]
  cutoff=2026-05-01T00:00:00Z     the run's logical end; later events are quarantined
  sample.n_transactions=10000     sample data size (also n_users, days, seed, ...)
  ray.address=ray://head:10001    join an existing Ray cluster instead of starting one

examples:
  medallion sample-data data_dir=/tmp/demo
  medallion run data_dir=/tmp/demo
  medallion config catalog=sqlite
"""


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medallion", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "sample-data", "config", "maintain", "erase", "backfill"],
                        help=argparse.SUPPRESS)
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="Hydra multirun: one job per combination of comma-separated override values, in order")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--key", help="erase: the entity to remove, as <join key>=<value>, e.g. user_id=42")
    args = parser.parse_intermixed_args(argv)
    if args.command == "erase" and (not args.key or "=" not in args.key):
        parser.error("erase needs --key <join key>=<value>, e.g. --key user_id=42")
    try:
        for overrides in _jobs(args.overrides, args.multirun):
            _command(args, overrides)
        return 0
    except (PipelineError, FeatureDeclarationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 3: a quality gate stopped the run; 4: locked; 2: anything else


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


def _command(args: argparse.Namespace, overrides: List[str]) -> None:
    from pipelines.config import load_config, resolved_dict

    cfg = load_config(overrides)
    if args.command == "config":
        print(json.dumps(resolved_dict(cfg), indent=2))
    elif args.command == "sample-data":
        from pipelines.sample_data import generate

        summary = generate(cfg.sample)
        print(json.dumps({"output_dir": cfg.sample.output_dir, "users": summary["users"],
                          "transactions": summary["transactions"], "files": len(summary["files"]),
                          "planted_dirty_rows": len(summary["planted"])}))
    elif args.command in ("maintain", "erase"):
        from pipelines.run import maintain

        join_key, _, value = (args.key or "").partition("=")
        print(json.dumps(maintain(cfg, erase=(join_key, value) if args.command == "erase" else None),
                         default=str), flush=True)
    elif args.command == "backfill":
        from pipelines.backfill import backfill
        from pipelines.errors import ConfigError

        if not (cfg.backfill.month or cfg.backfill.start):
            raise ConfigError("config error: backfill needs backfill.start=YYYY-MM-DD backfill.end=YYYY-MM-DD "
                              "or backfill.month=YYYY-MM")
        print(json.dumps(backfill(cfg), default=str), flush=True)
    else:
        from pipelines.run import run

        print(json.dumps(run(cfg), default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())

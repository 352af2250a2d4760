"""Iceberg metadata over many runs: manifests per table after N small runs through the pipeline's writer.

    python -m benchmarks.manifests --runs 100 --workdir DIR

A full `medallion run` costs tens of seconds of fixed start-up here (Ray, MLflow, Feast), so 100 of them
would take the better part of an hour. What decides how metadata grows is the commit pattern, so this
replays it through the pipeline's own writer (`pipelines.io.lake.Lake.write`, Ray's Iceberg sink) on tiny
data, with one Ray runtime: per run, one append to a day-partitioned table (bronze, silver and quarantine
commit like this) and one overwrite of an as-of interval (gold's write). After every run it counts the
manifests of each table's current snapshot and the table's snapshots. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pyarrow as pa

ROWS_PER_RUN = 200


def _manifests(table) -> int:
    current = table.current_snapshot()
    return len(current.manifests(table.io)) if current else 0


def replay(workdir: Path, runs: int) -> Dict:
    import ray
    from ray.data.expressions import col

    from pipelines import ray_runtime
    from pipelines.config import CatalogConfig, RayConfig
    from pipelines.io.lake import Lake, TableSpec

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ray_runtime.start(RayConfig(num_cpus=2))
    lake = Lake(CatalogConfig(name="bench", uri=f"sqlite:///{workdir}/catalog.db", warehouse=f"file://{workdir}/wh"))
    schema = pa.schema([pa.field("key", pa.int64()), pa.field("ts", pa.timestamp("us", tz="UTC")),
                        pa.field("value", pa.float64())])
    appended = TableSpec("silver.events", schema, day_partition="ts")
    replaced = TableSpec("gold.daily", pa.schema([schema.field(0), schema.field(1).with_name("as_of"), schema.field(2)]),
                         day_partition="as_of")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    history: Dict[str, List[int]] = {appended.identifier: [], replaced.identifier: []}
    for run in range(runs):
        day = start + dt.timedelta(days=run)
        rows = pa.table({"key": pa.array(range(ROWS_PER_RUN), pa.int64()),
                         "ts": pa.array([day + dt.timedelta(minutes=i) for i in range(ROWS_PER_RUN)],
                                        pa.timestamp("us", tz="UTC")),
                         "value": pa.array([float(run)] * ROWS_PER_RUN)})
        props = {"run_id": f"run{run}"}
        lake.write(ray.data.from_arrow(rows), appended, props)
        # gold: the new day plus the days its windows reach back to (here 3) are recomputed and replaced
        first = day - dt.timedelta(days=3)
        days = [first + dt.timedelta(days=d) for d in range(4)]
        gold = pa.table({"key": pa.array([k for _ in days for k in range(ROWS_PER_RUN)], pa.int64()),
                         "as_of": pa.array([d for d in days for _ in range(ROWS_PER_RUN)], pa.timestamp("us", tz="UTC")),
                         "value": pa.array([float(run)] * (ROWS_PER_RUN * len(days)))})
        lake.write(ray.data.from_arrow(gold), replaced, props,
                   overwrite_filter=(col("as_of") >= first) & (col("as_of") <= day))
        for spec in (appended, replaced):
            history[spec.identifier].append(_manifests(lake.table(spec.identifier)))
    result = {"runs": runs}
    for identifier, counts in history.items():
        table = lake.table(identifier)
        result[identifier] = {"manifests_after_run": {str(i + 1): c for i, c in enumerate(counts)
                                                      if i + 1 in (1, 10, 25, 50, 75, 100, runs)},
                              "max_manifests": max(counts), "snapshots": len(table.metadata.snapshots),
                              "data_files": len(table.inspect.files())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    print(json.dumps(replay(Path(args.workdir).resolve(), args.runs)))


if __name__ == "__main__":
    main()

"""Peak memory against speed: one 10M-transaction run per size of Ray's object store, on the same machine.

    python -m benchmarks.object_store                       # default, 4096, 3072, 2048 MiB
    python -m benchmarks.object_store --sizes default 2048 --transactions 1000000

Ray's default object store is 30% of the machine's memory; a smaller one spills to disk beyond it, which
bounds the resident memory of the Ray processes and costs time. Each run is `medallion run` on a fresh data
directory with the suite's standard sample, measured from outside like the suite (benchmarks/measure.py:
wall time, peak PSS of the whole process tree). Results: benchmarks/results/object_store.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List

from benchmarks.measure import ROOT, machine, measured, medallion
from benchmarks.suite import RESULTS, ensure_sample, sample_overrides


def store_size(text: str) -> str:
    """An --sizes value: 'default' or a whole number of MiB (argparse turns the error into one line)."""
    if text != "default" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'default' nor a positive number of MiB")
    return text


def one_run(n: int, store: str, workdir: Path) -> Dict:
    sample_dir = workdir / "samples" / f"n{n}"  # the suite's layout: its samples are reused
    ensure_sample(n, sample_dir)
    data_dir = workdir / "runs" / f"object_store_{store}"
    shutil.rmtree(data_dir, ignore_errors=True)
    extra = [] if store == "default" else [f"ray.object_store_memory_mb={int(store)}"]
    print(f"[object_store] {n:,} transactions, object store {store}", file=sys.stderr, flush=True)
    run = measured(medallion("run", f"data_dir={data_dir}", *sample_overrides(n, sample_dir), *extra), check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    result = {"object_store_mb": store, "completed": run.returncode == 0, "end_to_end_s": round(run.seconds, 1),
              "peak_gib": round(run.peak_pss_gib, 2), "peak_rss_sum_gib": round(run.peak_rss_gib, 2)}
    if run.returncode == 0:
        result["stages_s"] = run.last_json()["seconds"]
    return result


def markdown(n: int, runs: List[Dict]) -> str:
    base = next((r for r in runs if r["object_store_mb"] == "default" and r["completed"]), None)
    lines = [f"{n:,} transactions, one run per object store size", "",
             "| object store | end to end (s) | vs default | peak memory (GiB, PSS) | ingest | silver | gold |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        stages = r.get("stages_s", {})
        ratio = f"{r['end_to_end_s'] / base['end_to_end_s']:.2f}x" if base else "-"
        size = "default (30% of RAM)" if r["object_store_mb"] == "default" else f"{r['object_store_mb']} MiB"
        lines.append(f"| {size} | {r['end_to_end_s']} | {ratio} | {r['peak_gib']} | {stages.get('ingest', '-')} "
                     f"| {stages.get('refine', '-')} | {stages.get('build', '-')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=store_size, default=["default", "4096", "3072", "2048"],
                        help="object store sizes in MiB, or 'default'")
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench")
    args = parser.parse_args()
    runs = [one_run(args.transactions, store, args.workdir) for store in args.sizes]
    results = {"machine": machine(), "transactions": args.transactions, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "object_store.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "object_store.md").write_text(markdown(args.transactions, runs))
    print(markdown(args.transactions, runs))


if __name__ == "__main__":
    main()

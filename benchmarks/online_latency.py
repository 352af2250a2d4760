"""Online read latency through Feast: p50 and p99 of `FeatureStore.get_online_features`.

    python -m benchmarks.online_latency --data-dir D [--repeats 300]

Against the pipeline's own Feast repo after a run (SQLite online store), for user_spend_daily with all its
features: one entity per call, and 100 entities per call. Entities are drawn from gold with a fixed seed;
a few warm-up calls first (Feast loads the registry and opens the database on the first one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np


def percentiles(samples: List[float]) -> Dict[str, float]:
    values = np.array(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2),
            "calls": len(samples)}


def measure(data_dir: Path, repeats: int, feature_set_name: str = "user_spend_daily") -> Dict:
    from feast import FeatureStore

    from features.registry import feature_set
    from pipelines.config import load_config
    from pipelines.io.lake import Lake
    from serving.online_sqlite import feast_sqlite_timestamps

    cfg = load_config([f"data_dir={data_dir}"])
    fs = feature_set(feature_set_name)
    keys = np.array(sorted(Lake(cfg.catalog).read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key])
                           .column(0).unique().to_pylist()))
    rng = np.random.default_rng(0)
    store = FeatureStore(repo_path=str(data_dir / "feast"))
    refs = [f"{fs.name}:{name}" for name in fs.feature_names()]
    feast_sqlite_timestamps()

    def lookup(batch) -> float:
        start = time.perf_counter()
        frame = store.get_online_features(features=refs, entity_rows=[{fs.entity.join_key: int(k)} for k in batch]).to_dict()
        elapsed = time.perf_counter() - start
        assert len(frame[fs.entity.join_key]) == len(batch)
        return elapsed

    for _ in range(5):
        lookup(rng.choice(keys, 100))
    single = [lookup(rng.choice(keys, 1)) for _ in range(repeats)]
    hundred = [lookup(rng.choice(keys, min(100, len(keys)), replace=False)) for _ in range(repeats)]
    return {"feature_set": fs.name, "features": len(refs), "single_entity": percentiles(single),
            "entities_100": percentiles(hundred)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(measure(Path(args.data_dir).resolve(), args.repeats)))


if __name__ == "__main__":
    main()

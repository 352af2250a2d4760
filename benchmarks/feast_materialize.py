"""Publish vs Feast's materialize: the same gold rows into the same kind of SQLite online store.

    python -m benchmarks.feast_materialize --data-dir D --side ours|feast   (one side, one process)
    python -m benchmarks.feast_materialize --data-dir D --compare           (values read back)

Each side gets a fresh Feast repo under `D/bench_feast/<side>` (its own registry and online store file,
the same objects as the pipeline's repo, reading gold from the same Iceberg catalog) and publishes every
gold feature set whole:

- ours: `serving.publish.publish` since the first as-of day: newest gold row per entity read from Iceberg,
  the vectorised write into Feast's SQLite table, the online/offline spot check;
- feast: `FeatureStore.materialize(first as-of, last as-of + 1 day)`: Feast reads gold through its DuckDB
  offline store (IcebergSource), keeps the newest row per entity and writes it with its own upserts.

`--compare` reads every entity of every set back through `FeatureStore.get_online_features` from both
stores and checks the values are identical (NaN = NaN).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Dict, List

import pandas as pd
import yaml

from benchmarks.measure import Timer

SIDES = ("ours", "feast")


def _config(data_dir: Path):
    from pipelines.config import load_config

    return load_config([f"data_dir={data_dir}"])


def fresh_store(data_dir: Path, side: str):
    """A new Feast repo for `side`: the pipeline's feature_store.yaml with its own registry and online store."""
    import shutil

    from feast import FeatureStore

    repo = data_dir / "bench_feast" / side
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    config = yaml.safe_load((data_dir / "feast" / "feature_store.yaml").read_text())
    config["registry"] = {"registry_type": "file", "path": str(repo / "registry.db")}
    config["online_store"] = {"type": "sqlite", "path": str(repo / "online_store.db")}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return FeatureStore(repo_path=str(repo))


def open_store(data_dir: Path, side: str):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(data_dir / "bench_feast" / side))


def run_side(data_dir: Path, side: str) -> Dict:
    from features.registry import feature_sets
    from pipelines.io.lake import Lake
    from serving import publish
    from serving.online_sqlite import feast_sqlite_timestamps

    cfg = _config(data_dir)
    sets = feature_sets(cfg.features.sets)
    lake = Lake(cfg.catalog)
    store = fresh_store(data_dir, side)
    timer = Timer()
    with timer("apply"):
        publish.apply(store, sets, cfg)
    entities = 0
    with timer("publish"):
        for fs in sets:
            days = lake.rows_by_day(f"gold.{fs.name}", fs.as_of_column)  # partition metadata
            first, last = min(days), max(days)
            if side == "ours":
                result = publish.publish(store, lake, fs, first)
                assert result.mismatches == 0, result
                entities += result.entities_written
            else:
                start = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
                end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
                feast_sqlite_timestamps()
                store.materialize(start_date=start, end_date=end, feature_views=[fs.name])
                entities += len(lake.read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key]).column(0).unique())
    return {"side": side, "seconds": timer.seconds, "entities": entities,
            "entities_per_s": round(entities / timer.seconds["publish"], 1)}


def compare(data_dir: Path, batch: int = 1000) -> Dict:
    """Every entity's online values from both stores, compared exactly; returns counts of what differed."""
    from features.registry import feature_sets
    from pipelines.io.lake import Lake
    from serving.publish import online_values

    cfg = _config(data_dir)
    lake = Lake(cfg.catalog)
    stores = {side: open_store(data_dir, side) for side in SIDES}
    checked, mismatches = 0, 0
    for fs in feature_sets(cfg.features.sets):
        keys = sorted(lake.read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key]).column(0).unique().to_pylist())
        for i in range(0, len(keys), batch):
            chunk = keys[i:i + batch]
            frames: List[pd.DataFrame] = [online_values(stores[side], fs, chunk) for side in SIDES]
            for name in fs.feature_names():
                a, b = frames[0][name], frames[1][name]
                same = (a.isna().to_numpy() & b.isna().to_numpy()) | (a.astype(object).to_numpy() == b.astype(object).to_numpy())
                mismatches += int((~same).sum())
            # a value missing on both sides would compare equal: make sure the stores are not both empty
            mismatches += int(frames[0][list(fs.feature_names())].isna().all(axis=1).sum())
            checked += len(chunk)
    return {"entities_checked": checked, "mismatching_values": mismatches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--side", choices=SIDES)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    print(json.dumps(compare(data_dir) if args.compare else run_side(data_dir, args.side)))


if __name__ == "__main__":
    main()

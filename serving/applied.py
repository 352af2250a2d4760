"""What the last Feast apply wrote, as a fingerprint beside the Feast repo: a run with no gold to publish
and nothing new to apply skips Feast altogether (importing it alone takes seconds of a run that does
nothing else).

The fingerprint covers everything the applied objects and the rendered repo derive from: the feature
declarations, the online store, registry and catalog settings, the data directory, the code that derives
the objects (`serving/feast_repo.py`) and Feast's version. A missing file registry applies again. Only for
the file registry: a shared SQL registry (prod) can be changed by other clients, which no file on this
machine would know of, so there every run applies."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import List

from features.declarations import FeatureSet
from pipelines.config import PipelineConfig

MARKER = "applied.sha256"


def repo_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.data_dir) / "feast"


def fingerprint(cfg: PipelineConfig, sets: List[FeatureSet]) -> str:
    inputs = {
        "feast": importlib.metadata.version("feast"),
        "derivation": hashlib.sha256(Path(__file__).with_name("feast_repo.py").read_bytes()).hexdigest(),
        "data_dir": str(cfg.data_dir),
        "online_store": dataclasses.asdict(cfg.online_store),
        "registry": dataclasses.asdict(cfg.registry),
        "catalog": dataclasses.asdict(cfg.catalog),
        # a derived feature's function prints with its address, which differs in every process
        "feature_sets": [re.sub(r" at 0x[0-9a-f]+", "", repr(fs)) for fs in sets],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def is_current(cfg: PipelineConfig, sets: List[FeatureSet]) -> bool:
    """The last apply from this data directory applied exactly these objects into its file registry,
    which is still there."""
    repo = repo_path(cfg)
    if cfg.registry.type != "file" or not (repo / "registry.db").exists():
        return False
    marker = repo / MARKER
    return marker.exists() and marker.read_text().strip() == fingerprint(cfg, sets)


def record(cfg: PipelineConfig, sets: List[FeatureSet]) -> None:
    if cfg.registry.type == "file":
        (repo_path(cfg) / MARKER).write_text(fingerprint(cfg, sets) + "\n")


def forget(cfg: PipelineConfig) -> None:
    (repo_path(cfg) / MARKER).unlink(missing_ok=True)

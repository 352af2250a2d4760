"""What every stage of one run shares: the config, the run id, the lake and the commit properties."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from pipelines.commit_record import CommitRecord
from pipelines.config import PipelineConfig
from pipelines.io.lake import Lake


def code_version() -> str:
    """The git commit of the code that runs (with '+dirty' for uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("medallion-features")
        except PackageNotFoundError:
            return "unknown"


def config_hash(resolved: Dict[str, Any]) -> str:
    """Of the resolved config (`resolved_dict`: ~0.2 s through OmegaConf, so a run makes it once)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def new_run_id(now: dt.datetime) -> str:
    # Sortable by start time, unique across concurrent starts.
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunContext:
    cfg: PipelineConfig
    lake: Lake
    run_id: str
    started_at: dt.datetime
    code_version: str
    config_hash: str
    counts: Dict[str, int] = field(default_factory=dict)  # metric name -> value
    tables_read: Dict[str, int] = field(default_factory=dict)  # identifier -> snapshot id
    tables_written: Dict[str, int] = field(default_factory=dict)
    rejected_files: List[Dict[str, str]] = field(default_factory=list)
    durations: Dict[str, float] = field(default_factory=dict)
    digests: Dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.data_dir)

    def commit_properties(self, **record: Any) -> Dict[str, str]:
        """The snapshot properties of a commit of this run: its `CommitRecord` (typed fields only)."""
        return CommitRecord(self.run_id, self.config_hash, self.code_version, **record).properties()

    def read(self, identifier: str) -> None:
        snapshot = self.lake.current_snapshot_id(identifier)
        if snapshot is not None:
            self.tables_read[identifier] = snapshot

    def wrote(self, identifier: str, snapshot_id: int | None) -> None:
        if snapshot_id is not None:
            self.tables_written[identifier] = snapshot_id

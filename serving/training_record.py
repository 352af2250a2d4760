"""A training set's record in MLflow: enough to rebuild it bit for bit, and to see what it was made of.

Logged (into the caller's active run, else a run of its own in the configured experiment):
- params `training_set.*`: mode, feature sets, version, timestamp column, the labels' and the output's
  sha256 (`labels.canonical_digest`), rows, and per feature set the snapshot the version named;
- artifacts `training_set/labels.parquet` (the normalized labels) and `training_set/spec.json` (the
  machine-readable record: each feature set's join key, features, dtypes and ttl as declared at build
  time, the snapshots, and in `as_known_at` mode the served-snapshot timeline that was used, so a rebuild
  depends neither on today's declarations nor on the snapshot log as it grows);
- one dataset input per gold snapshot read (`tracking.log_table`, context `training`).
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import pyarrow as pa

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from serving.labels import canonical_digest
from serving.pit_join import SetSpec, Timeline

PREFIX = "training_set."
FOLDER = "training_set"
FORMAT = 1


@dataclass(frozen=True)
class Record:
    mode: str
    timestamp_column: str
    specs: List[SetSpec]
    requested: List[str]
    version: Any  # as asked: "latest", "gold@<id>" or a mapping
    snapshots: Dict[str, int]  # per set, the snapshot the version named
    timelines: Dict[str, Timeline]  # as_known_at: per set, the served-snapshot timeline used
    used: Dict[str, List[int]]  # per set, the snapshots rows were read from
    labels_sha256: str
    output_sha256: str
    rows: int

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "mode": self.mode, "timestamp_column": self.timestamp_column,
                "feature_sets": [s.to_dict() for s in self.specs], "requested": self.requested,
                "version": dict(self.version) if isinstance(self.version, Mapping) else self.version,
                "snapshots": self.snapshots, "timelines": {k: [list(e) for e in v] for k, v in self.timelines.items()},
                "used": self.used, "labels_sha256": self.labels_sha256, "output_sha256": self.output_sha256,
                "rows": self.rows}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Record":
        return Record(data["mode"], data["timestamp_column"], [SetSpec.from_dict(s) for s in data["feature_sets"]],
                      list(data["requested"]), data["version"], {k: int(v) for k, v in data["snapshots"].items()},
                      {k: [(int(a), int(b)) for a, b in v] for k, v in data["timelines"].items()},
                      {k: [int(i) for i in v] for k, v in data["used"].items()}, data["labels_sha256"],
                      data["output_sha256"], int(data["rows"]))

    def params(self) -> Dict[str, str]:
        version = json.dumps(self.version, sort_keys=True) if isinstance(self.version, Mapping) else str(self.version)
        params = {"mode": self.mode, "feature_sets": ",".join(s.name for s in self.specs), "version": version,
                  "timestamp_column": self.timestamp_column, "labels_sha256": self.labels_sha256,
                  "output_sha256": self.output_sha256, "rows": str(self.rows)}
        params.update({f"snapshot.{name}": str(sid) for name, sid in self.snapshots.items()})
        return {PREFIX + k: v for k, v in params.items()}


class Preparation:
    """What the record needs that does not depend on the join, made in a thread while the training set is
    joined (the join is mostly numpy and Arrow, outside the GIL; so are hashing and Parquet): the labels'
    digest, the labels' Parquet artifact, and the tracking store opened (MLflow keeps one store per URI;
    opening it, SQLAlchemy's engine and an SQLite store's schema check, is ~0.3 s). Together ~0.5 s of a
    1M-label build. `wait` before logging: it re-raises what failed, and two threads opening one SQLite
    store at once could both migrate it. `close` removes the artifact's folder."""

    def __init__(self, cfg: PipelineConfig, labels: pa.Table):
        import mlflow

        self._cfg, self._labels = cfg, labels
        # a server is opened by its first request (nothing to gain, and an unreachable one would hold the
        # thread through MLflow's retries); a caller's active run is logged into, not the configured store
        uri = cfg.tracking.tracking_uri
        self._open_store = not uri.startswith(("http://", "https://")) and mlflow.active_run() is None
        self._folder = tempfile.TemporaryDirectory(prefix="training-set-")
        self.labels_file = Path(self._folder.name) / "labels.parquet"
        self.labels_sha256 = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="training-record", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            import pyarrow.parquet as pq

            self.labels_sha256 = canonical_digest(self._labels)
            pq.write_table(self._labels, self.labels_file)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by `wait`
            self._error = exc
            return
        if not self._open_store:
            return
        try:
            from mlflow.tracking import MlflowClient

            _local_store_dir(self._cfg)
            MlflowClient(self._cfg.tracking.tracking_uri).get_experiment_by_name(self._cfg.tracking.experiment)
        except Exception:  # noqa: BLE001 - only a head start: `log` makes the same calls and reports them
            pass

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._thread.join()
        self._folder.cleanup()


def _local_store_dir(cfg: PipelineConfig) -> None:
    if cfg.profile == "local":  # the embedded store lives under data_dir (as for a pipeline run)
        Path(cfg.data_dir, "mlflow").mkdir(parents=True, exist_ok=True)


def log(cfg: PipelineConfig, lake, record: Record, labels_file: Path) -> str:
    """Log the record and the labels (`labels_file`, their Parquet file); the MLflow run id."""
    import mlflow

    from serving import tracking

    active = mlflow.active_run()
    if active is not None:
        if PREFIX + "labels_sha256" in mlflow.get_run(active.info.run_id).data.params:
            raise PipelineError(f"MLflow run {active.info.run_id} already holds a training set: start a (nested) run "
                                "for each one")
        _log_into(lake, record, labels_file)
        return active.info.run_id
    _local_store_dir(cfg)
    with tracking.tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.artifact_location,
                              run_name="training-set", tags={"training_set": record.mode}) as run_id:
        _log_into(lake, record, labels_file)
    return run_id


def _log_into(lake, record: Record, labels_file: Path) -> None:
    import mlflow

    from serving import tracking

    tracking.log_params(record.params())
    mlflow.log_artifact(str(labels_file), FOLDER)
    mlflow.log_dict(record.to_dict(), f"{FOLDER}/spec.json")
    for name, snapshots in record.used.items():
        for snapshot_id in snapshots:
            tracking.log_table(lake.name, lake.properties, f"gold.{name}", snapshot_id, "training")


def read(cfg: PipelineConfig, run_id: str) -> Tuple[Record, pa.Table]:
    """The record and the labels an MLflow run logged; refuses labels whose digest is not the recorded one."""
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking.tracking_uri
    try:
        params = MlflowClient(uri).get_run(run_id).data.params
    except MlflowException as exc:
        raise PipelineError(f"no MLflow run {run_id!r} at {uri} ({str(exc).splitlines()[0]})") from None
    if PREFIX + "labels_sha256" not in params:
        raise PipelineError(f"MLflow run {run_id} holds no training set (no param {PREFIX}labels_sha256)")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=FOLDER, dst_path=tmp,
                                                         tracking_uri=uri))
        record = Record.from_dict(json.loads((local / "spec.json").read_text()))
        labels = pq.read_table(local / "labels.parquet").replace_schema_metadata(None).combine_chunks()
    digest = canonical_digest(labels)
    if digest != record.labels_sha256 or digest != params[PREFIX + "labels_sha256"]:
        raise PipelineError(f"the labels of MLflow run {run_id} digest to {digest}, the run recorded "
                            f"{params[PREFIX + 'labels_sha256']}: the artifact was changed")
    return record, labels

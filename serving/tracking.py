"""Dataset versions in MLflow: one run per pipeline run, one dataset input per table read or written.

MLflow has no resolver for Iceberg tables, so `IcebergDatasetSource` is registered through MLflow's
documented extension point: its source names the catalog, the table and the snapshot id, and `load()`
reads exactly that snapshot back through pyiceberg time travel.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import parse_qs, urlparse

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus


class IcebergDatasetSource(DatasetSource):
    """`iceberg://<catalog>/<namespace>.<table>?snapshot_id=<id>` plus the catalog's properties."""

    def __init__(self, catalog_name: str, catalog_properties: Dict[str, str], identifier: str, snapshot_id: int):
        self.catalog_name = catalog_name
        self.catalog_properties = dict(catalog_properties)
        self.identifier = identifier
        self.snapshot_id = int(snapshot_id)

    @staticmethod
    def _get_source_type() -> str:
        return "iceberg"

    @property
    def uri(self) -> str:
        return f"iceberg://{self.catalog_name}/{self.identifier}?snapshot_id={self.snapshot_id}"

    def load(self, **_: Any):
        """The table as it was at this snapshot (an Arrow table)."""
        from pyiceberg.catalog import load_catalog

        table = load_catalog(self.catalog_name, **self.catalog_properties).load_table(self.identifier)
        return table.scan(snapshot_id=self.snapshot_id).to_arrow()

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("iceberg://")

    @classmethod
    def _resolve(cls, raw_source: Any) -> "IcebergDatasetSource":
        parsed = urlparse(raw_source)
        snapshot = int(parse_qs(parsed.query)["snapshot_id"][0])
        return cls(parsed.netloc, {}, parsed.path.lstrip("/"), snapshot)

    def to_dict(self) -> Dict[str, Any]:
        return {"uri": self.uri, "catalog_name": self.catalog_name, "catalog_properties": self.catalog_properties,
                "identifier": self.identifier, "snapshot_id": self.snapshot_id}

    @classmethod
    def from_dict(cls, source_dict: Dict[Any, Any]) -> "IcebergDatasetSource":
        return cls(source_dict["catalog_name"], source_dict.get("catalog_properties", {}),
                   source_dict["identifier"], source_dict["snapshot_id"])


register_dataset_source(IcebergDatasetSource)


def flatten(prefix: str, value: Any, out: Dict[str, str]) -> Dict[str, str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


@contextmanager
def tracked_run(tracking_uri: str, experiment: str, artifact_location: Optional[str], run_name: str,
                tags: Dict[str, str]) -> Iterator[str]:
    """An MLflow run that ends FINISHED, or FAILED if the block raises."""
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))


def log_table(catalog_name: str, catalog_properties: Dict[str, str], identifier: str, snapshot_id: int,
              context: str, digest: Optional[str] = None) -> None:
    """One dataset input: the table at a snapshot. The digest is the content digest where one was
    computed, else a hash of (table, snapshot id) - Iceberg snapshots are immutable, so it names one content."""
    source = IcebergDatasetSource(catalog_name, catalog_properties, identifier, snapshot_id)
    digest = digest or hashlib.sha256(source.uri.encode()).hexdigest()
    dataset = MetaDataset(source=source, name=identifier, digest=digest[:36])
    mlflow.log_input(dataset, context=context)


def log_params(params: Dict[str, str]) -> None:
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_config(resolved: Dict[str, Any]) -> None:
    """The resolved config as one artifact (`config.json`): params are flattened and capped in length,
    this is the exact document. It lands in the experiment's artifact store (object storage in prod)."""
    mlflow.log_dict(resolved, "config.json")


def log_metrics(metrics: Dict[str, float]) -> None:
    mlflow.log_metrics({k.replace(":", "_"): float(v) for k, v in metrics.items()})


def mark_killed(pipeline_run_ids: List[str], resumed_by: str) -> None:
    """MLflow runs of interrupted pipeline runs (they died RUNNING) end as KILLED, tagged with the run
    that resumed them, so the tracking UI does not show them running forever."""
    if not pipeline_run_ids:
        return
    client = mlflow.MlflowClient()
    found = [run for pipeline_run_id in pipeline_run_ids  # tag filters take `=`, not IN
             for run in mlflow.search_runs(filter_string=f"tags.pipeline_run_id = '{pipeline_run_id}'",
                                           output_format="list", search_all_experiments=True)]
    for run in found:
        if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_tag(run.info.run_id, "resumed_by", resumed_by)
            client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))

"""What the prod profile promises, checked before any work: nothing on the driver's local disk, every
credential in the environment.

A prod run may start on any machine of a cluster and its workers on others, so every location it uses
must be a service or an object-store URI that all of them reach; a local path or an SQLite file would
work on one machine and silently split the data across several.
"""

from __future__ import annotations

import os
from typing import List

from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError


def _is_remote_uri(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def check_prod(cfg: PipelineConfig) -> None:
    """Each failure names the setting: a prod run keeps nothing that matters on the driver's disk."""
    problems: List[str] = []
    if not _is_remote_uri(cfg.catalog.warehouse):
        problems.append(f"catalog.warehouse={cfg.catalog.warehouse!r} must be an object-store URI (s3://...)")
    if cfg.catalog.type == "sql" and cfg.catalog.uri.startswith("sqlite"):
        problems.append("catalog.uri must name a database server, not an SQLite file")
    if cfg.online_store.type != "redis":
        problems.append(f"online_store.type={cfg.online_store.type!r} must be redis")
    if cfg.registry.type != "sql":
        problems.append(f"registry.type={cfg.registry.type!r} must be sql (a registry file lives on one disk)")
    elif not (cfg.registry.path or "").startswith(("postgresql", "mysql")):
        # e.g. `${catalog.uri}` under catalog=rest is an https:// URL: Feast would fail at publish, late
        problems.append(f"registry.path={cfg.registry.path!r} must be a database server URI (postgresql://...)")
    if not cfg.tracking.tracking_uri.startswith(("http://", "https://")):
        problems.append(f"tracking.tracking_uri={cfg.tracking.tracking_uri!r} must be an MLflow server (http[s]://)")
    if not cfg.ray.address:
        problems.append("ray.address (RAY_ADDRESS with ray=cluster) must name the Ray cluster")
    if cfg.cutoff is None:  # the wall clock would decide which events are quarantined, run by run
        problems.append("cutoff must be set: the run's logical date (exclusive end), e.g. a scheduler's "
                        "cutoff=2026-05-01T00:00:00Z")
    for name, source in cfg.datasets.items():
        if source.kind == "files" and not _is_remote_uri(source.path or ""):
            problems.append(f"datasets.{name}.path={source.path!r} must be an object-store URI")
        if source.kind == "sql" and (source.uri or "").startswith("sqlite"):
            problems.append(f"datasets.{name}.uri must name a database server, not an SQLite file")
    if problems:
        raise ConfigError(f"config error: profile=prod: {problems[0]}"
                          + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""))


def require_credentials(cfg: PipelineConfig) -> None:
    """Credentials come only from the environment: refuse to start, naming every missing variable."""
    needed = list(cfg.required_env) + ([cfg.online_store.password_env] if cfg.online_store.password_env else [])
    missing = [name for name in dict.fromkeys(needed) if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"environment variable(s) {', '.join(missing)} not set: profile={cfg.profile} takes its "
                          f"credentials only from the environment (required_env)")

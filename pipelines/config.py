"""Typed configuration, composed by Hydra from conf/ and validated before any work starts.

Every group in conf/ has a dataclass schema here, registered with Hydra's ConfigStore, so an unknown
key or a wrong type fails at composition time. Semantic checks that a type cannot express (a known
source kind, a parseable cutoff) live in `validate`.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipelines.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SOURCE_KINDS = ("files", "sql")
FILE_FORMATS = ("csv", "parquet")


@dataclass
class SourceConfig:
    """One source feeding one bronze table (`bronze.<dataset>`)."""

    kind: str = MISSING  # files | sql
    dataset: str = MISSING  # logical table name: bronze.<dataset>, silver.<dataset>
    columns: List[str] = MISSING  # the columns the source must deliver, in order
    key: str = MISSING  # the source key silver deduplicates on
    path: Optional[str] = None  # files: a directory (or object-store prefix) of data files
    formats: List[str] = field(default_factory=lambda: ["csv", "parquet"])
    uri: Optional[str] = None  # sql: SQLAlchemy URI
    query: Optional[str] = None  # sql: the query that reads the table
    pii: List[str] = field(default_factory=list)  # columns tokenized in silver
    # sql: read incrementally by this column (a timestamp, or ISO-8601 text) instead of the whole result:
    # each run reads rows with watermark_column >= (the last committed watermark - the lag), so rows that
    # arrive late by up to the lag are still picked up; rows already in bronze are not added again.
    watermark_column: Optional[str] = None
    watermark_lag_seconds: float = 0.0


@dataclass
class CatalogConfig:
    name: str = "lake"
    type: str = "sql"
    uri: str = MISSING
    warehouse: str = MISSING
    # More pyiceberg catalog/FileIO properties (s3.endpoint, s3.region, ...); never credentials, which
    # pyiceberg and pyarrow take from the environment. Empty values are dropped.
    properties: Dict[str, str] = field(default_factory=dict)

    def extra_properties(self) -> Dict[str, str]:
        return {k: str(v) for k, v in self.properties.items() if v not in (None, "")}


@dataclass
class OnlineStoreConfig:
    type: str = "sqlite"
    path: Optional[str] = None  # sqlite
    connection_string: Optional[str] = None  # redis: host:port,db=N (no password here)
    password_env: Optional[str] = None  # redis: the environment variable holding its password, if any


@dataclass
class RegistryConfig:
    """Where Feast keeps its registry: a file next to the repo, or an SQL database (shared by every client)."""

    type: str = "file"  # file | sql
    path: Optional[str] = None  # sql: an SQLAlchemy URI


@dataclass
class TrackingConfig:
    tracking_uri: str = MISSING
    artifact_location: Optional[str] = None
    experiment: str = "feature-pipeline"


@dataclass
class RayConfig:
    address: Optional[str] = None  # None starts a local runtime
    num_cpus: Optional[int] = 2
    object_store_memory_mb: Optional[int] = None
    gold_partitions: int = 8  # hash partitions of entities for the gold build
    # Ray Data's shuffle for group-bys: auto | sort_shuffle_pull_based | hash_shuffle (see ray_runtime)
    shuffle_strategy: str = "auto"
    hash_shuffle_from_rows: int = 2_000_000
    # Up to this many valid rows, silver's duplicates are settled on the driver over all valid rows (above
    # it only the rows whose tx_id occurs twice come to the driver; the tx_ids come at any size). 0: only
    # the contested rows, at any size.
    local_max_rows: int = 500_000
    # While silver holds up to this many events, gold's events are read into the driver process and cut
    # into entity slices there, each slice computed by a Ray task: on a single machine a hash shuffle
    # across Ray tasks costs more than it saves (10M events: ~1 min in one process vs ~4 min through 8
    # Ray partitions on 2 cores). Above it, and always when 0 (cluster profile), entities are
    # hash-partitioned by a Ray shuffle.
    gold_local_max_events: int = 500_000
    # Joining a cluster: ship this project's packages to the workers (Ray runtime env py_modules), and
    # forward these environment variables (when set on the driver) so workers reach the object store and
    # databases with the driver's credentials.
    ship_code: bool = False
    forward_env: List[str] = field(default_factory=list)


@dataclass
class CompletenessConfig:
    """Share of non-empty values of each declared column among the rows a run refines."""

    threshold: float = 0.95
    columns: Dict[str, Dict[str, float]] = field(default_factory=dict)  # dataset -> column -> own threshold
    severity: str = "fail"


@dataclass
class RangeConfig:
    """Values of a silver column outside [min, max]: at most `max_outside_fraction` of a run's rows."""

    min: Optional[float] = None
    max: Optional[float] = None
    max_outside_fraction: float = 0.01
    severity: str = "fail"


@dataclass
class RowCountConfig:
    """Rows per ingested file against the median of the last `history_runs` passing runs."""

    history_runs: int = 5
    band: float = 0.3  # allowed relative deviation from that median
    severity: str = "fail"


@dataclass
class DriftConfig:
    """Population stability index of each gold feature, previous snapshot against this run's."""

    threshold: float = 0.25
    bins: int = 10
    min_rows_per_bin: int = 25  # fewer bins for few entities: PSI on a handful of values per bin is noise
    severity: str = "fail"


@dataclass
class FreshnessConfig:
    """Latest event time of a dataset against the run's cutoff."""

    column: str = "ts"
    max_age_hours: float = 48.0
    severity: str = "warn"


@dataclass
class AlertsConfig:
    file: Optional[str] = None  # JSON lines, one per failed check
    webhook_url: Optional[str] = None  # POSTed one JSON document per failed run


@dataclass
class QualityConfig:
    currencies: List[str] = MISSING
    channels: List[str] = MISSING
    max_amount: float = 1_000_000.0
    completeness: CompletenessConfig = field(default_factory=CompletenessConfig)
    ranges: Dict[str, Dict[str, RangeConfig]] = field(default_factory=dict)  # dataset -> column -> range
    row_count: RowCountConfig = field(default_factory=RowCountConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    freshness: Dict[str, FreshnessConfig] = field(default_factory=dict)  # dataset -> SLA
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


@dataclass
class SchemaPolicyConfig:
    """What each layer does when arriving columns differ from its own (validation/schema_policy.py)."""

    bronze: str = "evolve"
    silver: str = "freeze"
    gold: str = "freeze"


@dataclass
class RetentionConfig:
    """Days of data each layer keeps (None: forever), counted back from `reference` (default: now) by event
    time (silver: ts, gold: as_of) or arrival time (bronze, quarantine: _ingested_at). Applied by
    `medallion maintain`."""

    bronze: Optional[int] = None
    silver: Optional[int] = None
    quarantine: Optional[int] = None
    gold: Optional[int] = None
    orphan_min_age_hours: float = 1.0  # unreferenced files younger than this may be an in-flight write
    reference: Optional[str] = None  # ISO-8601 instant retention counts back from (None: now)


@dataclass
class BackfillConfig:
    """`medallion backfill`: the interval of event days [start, end) to rebuild, or one calendar month
    (`month=2026-03`), which is how a Hydra multirun splits a long backfill into independent chunks."""

    start: Optional[str] = None  # YYYY-MM-DD, inclusive
    end: Optional[str] = None  # YYYY-MM-DD, exclusive
    month: Optional[str] = None  # YYYY-MM: start and end are that month's first days

    def interval(self) -> Tuple[dt.date, dt.date]:
        if self.month:
            first = dt.date.fromisoformat(f"{self.month}-01")
            return first, (first + dt.timedelta(days=32)).replace(day=1)
        return dt.date.fromisoformat(str(self.start)), dt.date.fromisoformat(str(self.end))


@dataclass
class FeaturesConfig:
    sets: List[str] = MISSING


@dataclass
class SampleConfig:
    seed: int = 7
    n_users: int = 2000
    n_transactions: int = 200_000
    days: int = 120
    start_date: str = "2026-01-01"
    n_merchants: int = 300
    dirt_fraction: float = 0.01
    parquet_every: int = 2  # every n-th day is written as Parquet, the others as CSV
    output_dir: str = MISSING


@dataclass
class PipelineConfig:
    data_dir: str = MISSING
    profile: str = "local"
    cutoff: str = MISSING  # the run's logical end (exclusive): events after it are quarantined
    pii_key_env: str = "PIPELINE_PII_KEY"
    required_env: List[str] = field(default_factory=list)  # credentials a run refuses to start without
    lock_wait_seconds: float = 0.0  # how long a run waits for another holding the catalog (0: fail at once)
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    online_store: OnlineStoreConfig = field(default_factory=OnlineStoreConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    schema_policy: SchemaPolicyConfig = field(default_factory=SchemaPolicyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def cutoff_ts(self) -> dt.datetime:
        return parse_utc(self.cutoff)


def parse_utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _day_after(start_date: str, days: Any) -> str:
    """`${day_after:2026-01-01,120}` -> the midnight ending the last generated day."""
    end = dt.date.fromisoformat(str(start_date)) + dt.timedelta(days=int(days))
    return f"{end.isoformat()}T00:00:00Z"


def _register() -> None:
    if not OmegaConf.has_resolver("day_after"):
        OmegaConf.register_new_resolver("day_after", _day_after)
    store = ConfigStore.instance()
    store.store(name="pipeline_schema", node=PipelineConfig)
    store.store(group="source", name="source_schema", node=SourceConfig)
    store.store(group="catalog", name="catalog_schema", node=CatalogConfig)
    store.store(group="online_store", name="online_store_schema", node=OnlineStoreConfig)
    store.store(group="registry", name="registry_schema", node=RegistryConfig)
    store.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    store.store(group="ray", name="ray_schema", node=RayConfig)
    store.store(group="quality", name="quality_schema", node=QualityConfig)
    store.store(group="features", name="features_schema", node=FeaturesConfig)


_register()


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines and hide the reason in `__cause__`: fold them."""
    parts = []
    for err in (exc, exc.__cause__):
        if err is None:
            continue
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith(("To append", "Config search path", "provider="))]
        lines = [ln for ln in lines if not ln.startswith(("object_type=", "reference_type="))]
        parts.extend(ln.replace("\t", " ") for ln in lines)
    return "; ".join(dict.fromkeys(parts)) or type(exc).__name__


def load_config(overrides: List[str] | None = None) -> PipelineConfig:
    """Compose conf/config.yaml with command-line overrides into a validated `PipelineConfig`."""
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="config", overrides=overrides)
        # Paths in the config interpolate data_dir: make it absolute once, before anything resolves it.
        composed.data_dir = str(Path(str(composed.data_dir)).expanduser().resolve())
        OmegaConf.resolve(composed)
        typed = OmegaConf.merge(OmegaConf.structured(PipelineConfig), composed)
        cfg: PipelineConfig = OmegaConf.to_object(typed)  # type: ignore[assignment]
        # OmegaConf types one level of Dict[str, dataclass] only: type the per-column ranges here.
        cfg.quality.ranges = {
            dataset: {column: OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RangeConfig), value))
                      for column, value in columns.items()}
            for dataset, columns in cfg.quality.ranges.items()
        }
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"config error: {_one_line(exc)}") from None
    validate(cfg)
    return cfg


def validate(cfg: PipelineConfig) -> None:
    """Checks a type cannot express; each failure names the setting."""
    try:
        cfg.cutoff_ts
    except ValueError:
        raise ConfigError(f"config error: cutoff={cfg.cutoff!r} is not an ISO-8601 timestamp") from None
    backfill = cfg.backfill
    if backfill.month or backfill.start or backfill.end:
        try:
            start, end = backfill.interval()
        except (TypeError, ValueError):
            raise ConfigError("config error: backfill needs backfill.start and backfill.end as YYYY-MM-DD, or "
                              f"backfill.month as YYYY-MM (got start={backfill.start!r}, end={backfill.end!r}, "
                              f"month={backfill.month!r})") from None
        if start >= end:
            raise ConfigError(f"config error: backfill.start={start} must be before backfill.end={end}")
    if cfg.profile not in ("local", "prod"):
        raise ConfigError(f"config error: profile={cfg.profile!r} must be local or prod")
    for name, source in cfg.sources.items():
        where = f"sources.{name}"
        if source.kind not in SOURCE_KINDS:
            raise ConfigError(f"config error: {where}.kind={source.kind!r} must be one of {SOURCE_KINDS}")
        if source.watermark_column and (source.kind != "sql" or source.watermark_column not in source.columns):
            raise ConfigError(f"config error: {where}.watermark_column={source.watermark_column!r} needs a sql "
                              f"source that reads that column (it must be one of {where}.columns)")
        if source.kind == "files":
            if not source.path:
                raise ConfigError(f"config error: {where}.path is required for a files source")
            unknown = sorted(set(source.formats) - set(FILE_FORMATS))
            if unknown:
                raise ConfigError(f"config error: {where}.formats has unknown format(s) {unknown}")
        if source.kind == "sql" and not (source.uri and source.query):
            raise ConfigError(f"config error: {where} needs both uri and query")
        missing_pii = sorted(set(source.pii) - set(source.columns))
        if missing_pii:
            raise ConfigError(f"config error: {where}.pii names unknown column(s) {missing_pii}")
        if source.key not in source.columns:
            raise ConfigError(f"config error: {where}.key={source.key!r} is not one of its columns")
    q = cfg.quality
    severities = {"quality.completeness": q.completeness.severity, "quality.row_count": q.row_count.severity,
                  "quality.drift": q.drift.severity,
                  **{f"quality.ranges.{d}.{c}": v.severity for d, cols in q.ranges.items() for c, v in cols.items()},
                  **{f"quality.freshness.{k}": v.severity for k, v in q.freshness.items()}}
    for where, severity in severities.items():
        if severity not in ("warn", "fail"):
            raise ConfigError(f"config error: {where}.severity={severity!r} must be warn or fail")
    datasets = {source.dataset: source for source in cfg.sources.values()}
    for group, named in (("ranges", q.ranges), ("completeness.columns", q.completeness.columns)):
        for dataset, columns in named.items():
            for column in columns:
                if dataset not in datasets or column not in datasets[dataset].columns:
                    raise ConfigError(f"config error: quality.{group}.{dataset}.{column} names no declared "
                                      "column of a configured dataset")
    for dataset in q.freshness:
        if dataset not in datasets:
            raise ConfigError(f"config error: quality.freshness.{dataset} names no configured dataset")
    if cfg.retention.reference is not None:
        try:
            parse_utc(cfg.retention.reference)
        except ValueError:
            raise ConfigError(f"config error: retention.reference={cfg.retention.reference!r} is not an ISO-8601 "
                              "timestamp") from None
    for layer in ("bronze", "silver", "quarantine", "gold"):
        days = getattr(cfg.retention, layer)
        if days is not None and days < 1:
            raise ConfigError(f"config error: retention.{layer}={days} must be at least 1 day (or null: keep forever)")
    from validation.schema_policy import validate_policies

    policy_error = validate_policies({"bronze": cfg.schema_policy.bronze, "silver": cfg.schema_policy.silver,
                                      "gold": cfg.schema_policy.gold})
    if policy_error:
        raise ConfigError(f"config error: {policy_error}")
    if cfg.online_store.type not in ("sqlite", "redis"):
        raise ConfigError(f"config error: online_store.type={cfg.online_store.type!r} must be sqlite or redis")
    if cfg.registry.type not in ("file", "sql") or (cfg.registry.type == "sql" and not cfg.registry.path):
        raise ConfigError(f"config error: registry.type={cfg.registry.type!r} must be file, or sql with a path")
    if cfg.profile == "prod":
        from pipelines.profiles import check_prod

        check_prod(cfg)


def resolved_dict(cfg: PipelineConfig) -> Dict[str, Any]:
    """The resolved config as plain data (for hashing and for MLflow params)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def env_or_none(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None

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
# The project a run uses when none is named (`--project` or MEDALLION_PROJECT): the shipped sample.
SAMPLE_PROJECT = CONF_DIR.parent / "examples" / "sample"
PROJECT_ENV = "MEDALLION_PROJECT"
SOURCE_KINDS = ("files", "sql")
FILE_FORMATS = ("csv", "parquet")


@dataclass
class RangeRule:
    """Bounds of a column's parsed values (inclusive unless `*_exclusive`)."""

    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False


@dataclass
class ColumnConfig:
    """One source column of a dataset: its logical type and its row rules (validation/contract.py).

    Each rule quarantines under a name, `<column>_<rule>` unless `rule_names` renames it:
    present (required), parseable (the type), known (references), in_range, allowed, pattern, decimals,
    not_before, not_after_cutoff. A column that is not `required` accepts a missing value (null, blank or a null token).
    """

    type: str = "string"  # string | integer | float | boolean | date | timestamp | decimal(p,s)
    required: bool = False
    naive: str = "utc"  # timestamp values without a zone: read as utc, or reject (fail parseable)
    range: Optional[RangeRule] = None
    allowed: Optional[List[str]] = None  # exact text values (inline, or ${...} from config)
    pattern: Optional[str] = None  # a regular expression the whole value must match (RE2)
    max_decimals: Optional[int] = None  # digits after the decimal point, as the source wrote the value
    not_before: Optional[str] = None  # date or timestamp: at or after this ISO-8601 date or instant (UTC)
    not_after_cutoff: bool = False  # timestamp: before the run's cutoff (its logical end, exclusive)
    references: Optional[str] = None  # <dataset>.<column>: the value must be a key of that dataset's silver
    rule_names: Dict[str, str] = field(default_factory=dict)  # rule -> the name quarantine records


@dataclass
class CustomCheck:
    """A check the rule vocabulary cannot say: `function` ("module:name", importable from the project
    directory) takes the typed rows (pandas) and returns a boolean Series, True where a row passes."""

    name: str = MISSING
    function: str = MISSING


@dataclass
class CompletenessConfig:
    """Share of non-empty values of each declared column among the rows a run refines."""

    threshold: float = 0.95  # each dataset may set its own per column (datasets.<name>.quality.completeness)
    severity: str = "fail"


@dataclass
class RangeConfig:
    """Values of a silver column outside [min, max]: at most `max_outside_fraction` of a run's rows."""

    min: Optional[float] = None
    max: Optional[float] = None
    max_outside_fraction: float = 0.01
    severity: str = "fail"


@dataclass
class FreshnessConfig:
    """Latest event time of a dataset against the run's cutoff."""

    max_age_hours: float = 48.0
    severity: str = "warn"


@dataclass
class DatasetQualityConfig:
    """The quality gate's checks that are about one dataset (the gate's own settings are in `quality`)."""

    completeness: Dict[str, float] = field(default_factory=dict)  # column -> threshold (default: quality's)
    ranges: Dict[str, RangeConfig] = field(default_factory=dict)  # column -> band of usual values
    freshness: Optional[FreshnessConfig] = None  # on the event-time column


@dataclass
class VolumeConfig:
    """How much a source is expected to deliver (`medallion sources` shows the measured volume beside it)."""

    rows_per_day: Optional[float] = None
    files_per_day: Optional[float] = None


@dataclass
class SlaConfig:
    """What a source's consumers are promised, beside `quality.freshness` (newest event at most
    max_age_hours old) and `quality.completeness` (share of values present)."""

    latency_minutes: Optional[float] = None  # a file's arrival (landed) to its rows in gold
    validity: Optional[float] = None  # share of refined rows that are valid (not quarantined)


@dataclass
class DatasetConfig:
    """One dataset, declared once: where it comes from, its columns and rules, its key, its event time.

    Tables: bronze.<name> (the source's text), silver.<name> (typed, valid, deduplicated, PII protected),
    quarantine.<name> (failed rows with the names of the rules they failed). The name is the file's stem
    in `conf/dataset/`. See README "Bring your own data".
    """

    name: str = ""  # the file's stem (set when the configuration is loaded)
    description: str = ""
    # -- the source
    kind: str = MISSING  # files | sql
    path: Optional[str] = None  # files: a directory (or object-store prefix) of data files
    formats: List[str] = field(default_factory=lambda: ["csv", "parquet"])
    uri: Optional[str] = None  # sql: SQLAlchemy URI
    query: Optional[str] = None  # sql: the query that reads the table
    # sql: read incrementally by this column (a timestamp, or ISO-8601 text) instead of the whole result:
    # each run reads rows with watermark_column >= (the last committed watermark - the lag), so rows that
    # arrive late by up to the lag are still picked up; rows already in bronze are not added again.
    watermark_column: Optional[str] = None
    watermark_lag_seconds: float = 0.0
    null_tokens: List[str] = field(default_factory=list)  # source text meaning "no value", e.g. ["NA"]
    # -- the contract
    # in source order; each a ColumnConfig (typed when the configuration is loaded: kept untyped here so
    # that a column can be added on the command line, `+datasets.<name>.columns.<column>={type: integer}`)
    columns: Dict[str, Any] = MISSING
    key: Any = MISSING  # a column or a list of columns: unique in silver
    # which duplicate of a key wins: first (events: the earliest arrival) or last (state: the newest)
    keep: Optional[str] = None
    event_time: Optional[str] = None  # a timestamp column: an events dataset, silver partitioned by its day
    pii: Dict[str, str] = field(default_factory=dict)  # column -> protection: hmac (keyed token) | drop
    checks: List[CustomCheck] = field(default_factory=list)
    quality: DatasetQualityConfig = field(default_factory=DatasetQualityConfig)
    # -- the inventory (`medallion sources`): who answers for the source, how much arrives, what is promised
    owner: str = ""
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    sla: SlaConfig = field(default_factory=SlaConfig)

    @property
    def column_names(self) -> List[str]:
        return list(self.columns)

    @property
    def key_columns(self) -> List[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @property
    def is_events(self) -> bool:
        """Events accumulate (append, partitioned by event day); a dataset without an event time is a
        state (dimension) table: the newest row of each key."""
        return self.event_time is not None

    @property
    def winner(self) -> str:
        return self.keep or ("first" if self.is_events else "last")

    @property
    def full_copy(self) -> bool:
        """Each ingest of a SQL source without a watermark is the whole table: the latest copy replaces silver."""
        return self.kind == "sql" and not self.watermark_column


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
    # it only the rows whose key occurs twice come to the driver; the keys come at any size). 0: only
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
class RowCountConfig:
    """A dataset with an event time: each event day the run added rows to, its rows in silver against the
    median of earlier days (`baseline`: the same weekday, or every day, within `window_days`), days touched
    by a run let through by a `warn` left out. Without an event time: rows per ingested file against the
    last `history_runs` runs that passed every check."""

    baseline: str = "same_weekday"  # same_weekday | rolling
    window_days: int = 28
    min_baseline_days: int = 3  # fewer: judged as warn only, while the baseline is being learnt
    history_runs: int = 5
    band: float = 0.3  # allowed relative deviation from that median
    severity: str = "fail"


@dataclass
class DriftConfig:
    """Population stability index of each gold feature on this run's last as-of day, against the same
    weekday a week earlier (`same_weekday`) or the last as-of day of the previous snapshot
    (`previous_snapshot`), both as gold held them before this run."""

    # previous_snapshot: a day's growth of windows still filling (a 30-day window over 20 days of history)
    # is no drift, a week's is; same_weekday for features with a weekly rhythm (short windows)
    baseline: str = "previous_snapshot"  # previous_snapshot | same_weekday
    threshold: float = 0.25
    bins: int = 10
    min_rows_per_bin: int = 25  # fewer bins for few entities: PSI on a handful of values per bin is noise
    severity: str = "fail"



@dataclass
class AlertsConfig:
    file: Optional[str] = None  # JSON lines, one per failed check
    webhook_url: Optional[str] = None  # POSTed one JSON document per failed run


@dataclass
class QualityConfig:
    """The gate's settings; checks about one dataset are part of its declaration (`datasets.<name>.quality`)."""

    # A share (completeness, values outside a range) of fewer rows is reported, not judged: one malformed
    # line in a 6-row file is 17% of it, and says nothing about the source.
    min_rows: int = 100
    completeness: CompletenessConfig = field(default_factory=CompletenessConfig)
    row_count: RowCountConfig = field(default_factory=RowCountConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
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
class ExitCodesConfig:
    """The exit code of a run that succeeded with rejections, so a scheduler can tell it from a clean one.
    Rejected files are a delivery someone must look at; quarantined rows are the rules doing their work
    (the shipped sample has dirt on purpose), so by default they leave the exit code at 0."""

    rejected_files: int = 5
    quarantined_rows: int = 0


@dataclass
class MetricsConfig:
    """Prometheus metrics of each run and of the sources (pipelines/metrics.py): written to `file` (the
    node-exporter textfile-collector convention) and/or pushed to a Pushgateway (a batch job's convention)."""

    enabled: bool = True
    file: Optional[str] = None  # the local profile: ${data_dir}/metrics/medallion.prom
    pushgateway_url: Optional[str] = None  # the prod profile: http://host:9091 (a failed push only warns)
    job: str = "medallion"  # the Pushgateway job; grouped by project (the project directory's name)
    timeout_seconds: float = 2.0  # a push never holds a run longer than this
    schedule_seconds: Optional[float] = None  # how often `run` is scheduled: exported for the "no success" alert


@dataclass
class LineageConfig:
    """OpenLineage events of each run and stage (pipelines/lineage_events.py): written to a JSON-lines file
    (`file`), POSTed to an OpenLineage receiver such as Marquez (`http`), or not emitted (`none`). A
    receiver that is down never fails nor holds up a run: each event waits at most `timeout_seconds`, and
    after `max_failures` failed events the run stops sending; failures are counted in the summary."""

    transport: str = "file"  # file | http | none
    file: Optional[str] = None  # file: the JSON-lines file (conf/config.yaml: data_dir/lineage/events.jsonl)
    url: Optional[str] = None  # http: the receiver's base URL, e.g. http://marquez:5000
    endpoint: str = "api/v1/lineage"
    api_key_env: Optional[str] = None  # http: the environment variable holding a bearer API key, if any
    timeout_seconds: float = 2.0
    max_failures: int = 3
    namespace: str = "medallion"  # the jobs' namespace (job names: <project>.run, <project>.<stage>)


@dataclass
class TrainingIndexConfig:
    """The training-set index (serving/training_index.py): each published gold snapshot kept on local disk
    laid out for point-in-time joins, so training sets over it join without decoding gold. A cache: where
    a snapshot has none, a training set reads gold from Iceberg (same rows, slower)."""

    dir: Optional[str] = None  # null: no index kept (conf/config.yaml: data_dir/training_index)
    keep: int = 2  # per gold table, the indexes of this many newest published snapshots


@dataclass
class FeaturesConfig:
    sets: Optional[List[str]] = None  # the feature sets to build; None: every one of the project


@dataclass
class PipelineConfig:
    data_dir: str = MISSING
    project: str = MISSING  # the project directory: conf/project.yaml, conf/dataset/*.yaml, features/*.py
    profile: str = "local"
    # The run's logical end (exclusive): events at or after it are quarantined. Required in the prod
    # profile; in the local profile, when unset, the end of the current UTC day (logged).
    cutoff: Optional[str] = None
    pii_key_env: str = "PIPELINE_PII_KEY"
    required_env: List[str] = field(default_factory=list)  # credentials a run refuses to start without
    lock_wait_seconds: float = 0.0  # how long a run waits for another holding the catalog (0: fail at once)
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
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
    exit_codes: ExitCodesConfig = field(default_factory=ExitCodesConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    training_index: TrainingIndexConfig = field(default_factory=TrainingIndexConfig)
    # the settings of a project's sample-data generator (the shipped sample's: examples/sample/generate.py)
    sample: Optional[Dict[str, Any]] = None

    @property
    def cutoff_ts(self) -> dt.datetime:
        if self.cutoff is None:
            return default_cutoff()
        return parse_utc(self.cutoff)


def default_cutoff() -> dt.datetime:
    """A local run without a logical date: the end of the current UTC day."""
    today = dt.datetime.now(dt.timezone.utc).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.timezone.utc)


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
    store.store(group="catalog", name="catalog_schema", node=CatalogConfig)
    store.store(group="online_store", name="online_store_schema", node=OnlineStoreConfig)
    store.store(group="registry", name="registry_schema", node=RegistryConfig)
    store.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    store.store(group="ray", name="ray_schema", node=RayConfig)
    store.store(group="quality", name="quality_schema", node=QualityConfig)
    store.store(group="features", name="features_schema", node=FeaturesConfig)
    store.store(group="dataset", name="dataset_schema", node=DatasetConfig)


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


def _typed(schema: type, value: Any, where: str) -> Any:
    """`value` (plain data) as the dataclass `schema`; an unknown key or a wrong type names `where`."""
    if isinstance(value, schema):
        return value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), value or {}))
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"config error: {where}: {_one_line(exc)}") from None


def project_dir(project: str | Path | None = None) -> Path:
    """The project a command works on: the one named, else $MEDALLION_PROJECT, else the shipped sample."""
    chosen = project or os.environ.get(PROJECT_ENV) or SAMPLE_PROJECT
    path = Path(chosen).expanduser().resolve()
    if not (path / "conf").is_dir() and not (path / "features").is_dir():
        raise ConfigError(f"config error: project {path} has neither conf/ nor features/ (`medallion init {path}` "
                          "writes a project to start from)")
    return path


def _project_node(project: Path) -> Any:
    """The project's own configuration as one node: every conf/dataset/*.yaml under `datasets.<stem>`,
    then conf/project.yaml on top. Composed after the tool's defaults, before command-line overrides."""
    from omegaconf import DictConfig

    datasets = {}
    for path in sorted((project / "conf" / "dataset").glob("*.yaml")):
        try:
            datasets[path.stem] = OmegaConf.load(path)
        except Exception as exc:
            raise ConfigError(f"config error: {path}: {_one_line(exc)}") from None
        if not isinstance(datasets[path.stem], DictConfig):
            raise ConfigError(f"config error: {path}: a dataset declaration is a mapping of settings")
    node = OmegaConf.create({"datasets": datasets, "project": str(project)})
    settings = project / "conf" / "project.yaml"
    if settings.is_file():
        try:
            node = OmegaConf.merge(node, OmegaConf.load(settings))
        except Exception as exc:
            raise ConfigError(f"config error: {settings}: {_one_line(exc)}") from None
    return node


def _set_under_null(root: Path, overrides: List[str]) -> Optional[Tuple[str, str]]:
    """(the override, the null node) of the first override that sets a null node or a key under one, in
    the configuration composed without overrides; None when no override does."""
    base = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{root / 'conf'}]"])
    for override in overrides:
        if "=" not in override:
            continue
        parts = override.split("=", 1)[0].lstrip("+~").split(".")
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if OmegaConf.select(base, path, default="<absent>", throw_on_missing=False) is None:
                return override, path
    return None


def load_config(overrides: List[str] | None = None, project: str | Path | None = None) -> PipelineConfig:
    """Compose conf/config.yaml, the project's own configuration and command-line overrides into a
    validated `PipelineConfig`."""
    overrides = list(overrides or [])
    root = project_dir(project)
    # the project's settings enter as the `project` group's one option (conf/config.yaml's defaults);
    # its conf/ is on the search path too, so it may add options to the tool's groups (a profile of its own)
    ConfigStore.instance().store(group="project", name="current", node=_project_node(root), package="_global_")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            try:
                composed = compose(config_name="config",
                                   overrides=[f"hydra.searchpath=[file://{root / 'conf'}]", *overrides])
            except (AttributeError, AssertionError) as exc:
                # OmegaConf cannot set a group that is null, or a key under one; any other cause is a bug
                culprit = _set_under_null(root, overrides)
                if culprit is None:
                    raise
                override, path = culprit
                raise ConfigError(f"config error: an override could not be applied ({override}: {path} is null "
                                  f"in the configuration, {_one_line(exc)}): a group that is null (e.g. "
                                  "datasets.<name>.quality.freshness) is set in the declaration's file, not on "
                                  "the command line") from None
        # Paths in the config interpolate data_dir: make it absolute once (relative: to the working directory).
        composed.data_dir = str(Path(str(composed.data_dir)).expanduser().resolve())
        OmegaConf.resolve(composed)
        typed = OmegaConf.merge(OmegaConf.structured(PipelineConfig), composed)
        cfg: PipelineConfig = OmegaConf.to_object(typed)  # type: ignore[assignment]
        for name, dataset in cfg.datasets.items():
            dataset.columns = {column: _typed(ColumnConfig, spec, f"datasets.{name}.columns.{column}")
                               for column, spec in dataset.columns.items()}
            if dataset.name not in ("", name):
                raise ConfigError(f"config error: datasets.{name}.name={dataset.name!r}: a dataset is named by "
                                  "its declaration's file (or its key under datasets)")
            dataset.name = name
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
    from pipelines.declarations import validate_datasets

    validate_datasets(cfg)
    q = cfg.quality
    severities = {"quality.completeness": q.completeness.severity, "quality.row_count": q.row_count.severity,
                  "quality.drift": q.drift.severity}
    for name, dataset in cfg.datasets.items():
        severities.update({f"datasets.{name}.quality.ranges.{c}": v.severity for c, v in dataset.quality.ranges.items()})
        if dataset.quality.freshness:
            severities[f"datasets.{name}.quality.freshness"] = dataset.quality.freshness.severity
    for where, severity in severities.items():
        if severity not in ("warn", "fail"):
            raise ConfigError(f"config error: {where}.severity={severity!r} must be warn or fail")
    for name, dataset in cfg.datasets.items():  # the inventory's promises (medallion sources)
        promised = {"sla.validity": (dataset.sla.validity, 1.0), "sla.latency_minutes": (dataset.sla.latency_minutes, None),
                    "volume.rows_per_day": (dataset.volume.rows_per_day, None),
                    "volume.files_per_day": (dataset.volume.files_per_day, None)}
        for key, (value, most) in promised.items():
            if value is not None and (value <= 0 or (most is not None and value > most)):
                raise ConfigError(f"config error: datasets.{name}.{key}={value} must be above 0"
                                  + (f" and at most {most:g}" if most is not None else ""))
    if q.drift.baseline not in ("same_weekday", "previous_snapshot"):
        raise ConfigError(f"config error: quality.drift.baseline={q.drift.baseline!r} must be same_weekday or "
                          "previous_snapshot")
    if q.row_count.baseline not in ("same_weekday", "rolling"):
        raise ConfigError(f"config error: quality.row_count.baseline={q.row_count.baseline!r} must be same_weekday "
                          "or rolling")
    if q.row_count.window_days < (7 if q.row_count.baseline == "same_weekday" else 1) or q.row_count.min_baseline_days < 1:
        raise ConfigError(f"config error: quality.row_count.window_days={q.row_count.window_days} and "
                          f"min_baseline_days={q.row_count.min_baseline_days} leave no baseline day "
                          "(same_weekday needs window_days >= 7)")
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
    for outcome, code in vars(cfg.exit_codes).items():
        if code != 0 and not 5 <= code <= 125:  # 1..4 are errors, a failed gate and a held lock
            raise ConfigError(f"config error: exit_codes.{outcome}={code} must be 0 or 5..125 (1-4 mean an error, "
                              "a failed quality gate or another run holding the catalog)")
    if cfg.online_store.type not in ("sqlite", "redis"):
        raise ConfigError(f"config error: online_store.type={cfg.online_store.type!r} must be sqlite or redis")
    if cfg.registry.type not in ("file", "sql") or (cfg.registry.type == "sql" and not cfg.registry.path):
        raise ConfigError(f"config error: registry.type={cfg.registry.type!r} must be file, or sql with a path")
    lineage = cfg.lineage
    if lineage.transport not in ("file", "http", "none"):
        raise ConfigError(f"config error: lineage.transport={lineage.transport!r} must be file, http or none")
    if lineage.transport == "http" and not lineage.url:
        raise ConfigError("config error: lineage.transport=http needs lineage.url (the receiver's base URL)")
    if lineage.transport == "file" and not lineage.file:
        raise ConfigError("config error: lineage.transport=file needs lineage.file")
    if lineage.timeout_seconds <= 0 or lineage.max_failures < 1:
        raise ConfigError(f"config error: lineage.timeout_seconds={lineage.timeout_seconds} must be above 0 and "
                          f"lineage.max_failures={lineage.max_failures} at least 1")
    if cfg.training_index.keep < 1:
        raise ConfigError(f"config error: training_index.keep={cfg.training_index.keep} must be at least 1 (no "
                          "index at all: training_index.dir=null)")
    if cfg.profile == "prod":
        from pipelines.profiles import check_prod

        check_prod(cfg)


def resolved_dict(cfg: PipelineConfig) -> Dict[str, Any]:
    """The resolved config as plain data (for hashing and for MLflow params)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def env_or_none(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None

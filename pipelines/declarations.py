"""Dataset declarations (`conf/dataset/<name>.yaml` of a project): checked as a whole at start-up, and the
facts the generic stages derive from them (refine order, column kinds for feature declarations).

A declaration is the only place a dataset is described: the stages never name a dataset. Every check
here fails with one line naming the setting (`datasets.<name>.<field>`).
"""

from __future__ import annotations

import datetime as dt
from typing import Dict, List

from pipelines.config import FILE_FORMATS, SOURCE_KINDS, DatasetConfig, PipelineConfig
from pipelines.errors import ConfigError
from validation.contract import RULE_KINDS, TypeSpec, UnknownTypeError

PII_METHODS = ("hmac", "drop")
RESERVED_PREFIX = "_"  # bronze's metadata columns (_source, _row_hash, ...) and quarantine's _failed_rules


def _fail(where: str, what: str) -> None:
    raise ConfigError(f"config error: {where}: {what}")


def validate_dataset(name: str, ds: DatasetConfig, datasets: Dict[str, DatasetConfig]) -> None:
    where = f"datasets.{name}"
    if ds.kind not in SOURCE_KINDS:
        _fail(f"{where}.kind", f"{ds.kind!r} must be one of {SOURCE_KINDS}")
    if ds.kind == "files":
        if not ds.path:
            _fail(f"{where}.path", "is required for a files source")
        unknown = sorted(set(ds.formats) - set(FILE_FORMATS))
        if unknown:
            _fail(f"{where}.formats", f"unknown format(s) {unknown} (known: {list(FILE_FORMATS)})")
    if ds.kind == "sql" and not (ds.uri and ds.query):
        _fail(where, "a sql source needs both uri and query")
    if not ds.columns:
        _fail(f"{where}.columns", "declares no column")
    for column, spec in ds.columns.items():
        if column.startswith(RESERVED_PREFIX):
            _fail(f"{where}.columns.{column}", "names starting with '_' are reserved for pipeline metadata")
        try:
            kind = TypeSpec.parse(spec.type)
        except UnknownTypeError as exc:
            _fail(f"{where}.columns.{column}.type", str(exc))
        if spec.naive not in ("utc", "reject"):
            _fail(f"{where}.columns.{column}.naive", f"{spec.naive!r} must be utc or reject")
        if spec.range is not None and not kind.numeric:
            _fail(f"{where}.columns.{column}.range", f"needs a numeric type, not {spec.type}")
        if spec.not_before is not None:
            if kind.name not in ("timestamp", "date"):
                _fail(f"{where}.columns.{column}.not_before", f"needs a date or timestamp column, not {spec.type}")
            try:
                dt.datetime.fromisoformat(str(spec.not_before).replace("Z", "+00:00"))
            except ValueError:
                _fail(f"{where}.columns.{column}.not_before", f"{spec.not_before!r} is not an ISO-8601 date or instant")
        if spec.not_after_cutoff and kind.name != "timestamp":
            _fail(f"{where}.columns.{column}.not_after_cutoff", f"needs a timestamp column, not {spec.type}")
        unknown_rules = sorted(set(spec.rule_names) - set(RULE_KINDS))
        if unknown_rules:
            _fail(f"{where}.columns.{column}.rule_names", f"unknown rule(s) {unknown_rules} (known: {list(RULE_KINDS)})")
        if spec.references is not None:
            target, _, target_column = spec.references.partition(".")
            if target not in datasets or target_column not in datasets[target].columns:
                _fail(f"{where}.columns.{column}.references",
                      f"{spec.references!r} is not <dataset>.<column> of a declared dataset")
            if datasets[target].key_columns != [target_column]:
                _fail(f"{where}.columns.{column}.references",
                      f"{spec.references!r} must be the whole key of {target!r} ({datasets[target].key_columns})")
            if target == name:
                _fail(f"{where}.columns.{column}.references", "a dataset cannot reference itself")
    columns = ds.column_names
    if not ds.key_columns or any(not isinstance(c, str) or c not in columns for c in ds.key_columns):
        _fail(f"{where}.key", f"{ds.key!r} must be one of its columns or a list of them")
    missing_pii = sorted(set(ds.pii) - set(columns))
    if missing_pii:
        _fail(f"{where}.pii", f"names unknown column(s) {missing_pii}")
    for column, method in ds.pii.items():
        if method not in PII_METHODS:
            _fail(f"{where}.pii.{column}", f"{method!r} must be one of {PII_METHODS}")
        if column in ds.key_columns:
            _fail(f"{where}.pii.{column}", "a key column cannot be protected (tokenize it at the source)")
    if ds.event_time is not None:
        if ds.event_time not in columns or TypeSpec.parse(ds.columns[ds.event_time].type).name != "timestamp":
            _fail(f"{where}.event_time", f"{ds.event_time!r} must be one of its timestamp columns")
        if not ds.columns[ds.event_time].required:
            _fail(f"{where}.columns.{ds.event_time}.required", "the event-time column must be required")
    if ds.keep not in (None, "first", "last"):
        _fail(f"{where}.keep", f"{ds.keep!r} must be first or last")
    if ds.is_events and ds.winner != "first":
        _fail(f"{where}.keep", "an events dataset (with event_time) keeps the first occurrence of a key; "
                               "keep: last is for state datasets (without event_time)")
    if ds.watermark_column and (ds.kind != "sql" or ds.watermark_column not in columns):
        _fail(f"{where}.watermark_column", f"{ds.watermark_column!r} needs a sql source that reads that column")
    for column in list(ds.quality.completeness) + list(ds.quality.ranges):
        if column not in columns:
            _fail(f"{where}.quality", f"names no declared column {column!r}")
    if ds.quality.freshness is not None and not ds.is_events:
        _fail(f"{where}.quality.freshness", "needs an event_time")
    names = [c.name for c in ds.checks]
    if len(set(names)) != len(names) or any(":" not in c.function for c in ds.checks):
        _fail(f"{where}.checks", "each check needs a unique name and a function as 'module:name'")


def validate_datasets(cfg: PipelineConfig) -> None:
    for name, ds in cfg.datasets.items():
        validate_dataset(name, ds, cfg.datasets)
    refine_order(cfg.datasets)  # a reference cycle fails here


def refine_order(datasets: Dict[str, DatasetConfig]) -> List[str]:
    """Datasets in an order where each comes after the datasets its columns reference (their silver keys
    are what `references` checks against); otherwise in declaration order."""
    done: List[str] = []
    visiting: List[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            _fail(f"datasets.{name}", f"references form a cycle: {' -> '.join(visiting + [name])}")
        visiting.append(name)
        for spec in datasets[name].columns.values():
            if spec.references:
                visit(spec.references.partition(".")[0])
        visiting.pop()
        done.append(name)

    for name in datasets:
        visit(name)
    return done


def column_kinds(ds: DatasetConfig) -> Dict[str, str]:
    """What features may do with each silver column: numeric (sum, mean, ...), timestamp, or string."""
    kinds = {}
    for column, spec in ds.columns.items():
        kind = TypeSpec.parse(spec.type)
        kinds[column] = "numeric" if kind.numeric else "timestamp" if kind.name == "timestamp" else "string"
    return kinds


def custom_check(project: str, dataset: str, function: str):
    """The function of a custom check, "module:name", from the project directory (or an importable module)."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    module_name, _, attribute = function.partition(":")
    path = Path(project) / f"{module_name.replace('.', '/')}.py"
    try:
        if path.is_file():
            qualified = f"medallion_checks_{abs(hash(str(path))) % 10**10}.{module_name}"
            module = sys.modules.get(qualified)
            if module is None:
                spec = importlib.util.spec_from_file_location(qualified, path)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[qualified] = module
                spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
        check = getattr(module, attribute)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ConfigError(f"config error: datasets.{dataset}.checks: cannot load {function!r}: {exc}") from None
    from pipelines import ray_runtime

    ray_runtime.pickle_by_value([module.__name__])  # it runs in Ray tasks, which cannot import it by name
    return check

"""Structured logs: JSON lines (one event per line, with run_id and stage) to a file under the data
directory and to stderr; on a terminal, stderr gets a short readable progress line instead."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import structlog


class _Progress:
    """Renders progress events as `[stage] message key=value` for a person watching a terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, _logger: Any, _name: str, event: dict) -> dict:
        stage = event.get("stage", "")
        keys = {k: v for k, v in event.items() if k not in ("event", "stage", "run_id", "timestamp", "level")}
        extra = " ".join(f"{k}={v}" for k, v in keys.items())
        level = event.get("level", "info")
        prefix = "" if level == "info" else f"{level.upper()}: "
        print(f"[{stage or 'run'}] {prefix}{event['event']} {extra}".rstrip(), file=self.stream, flush=True)
        return event


class _Tee:
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def msg(self, message: str) -> None:
        for stream in self.streams:
            print(message, file=stream, flush=True)

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(log_file: Path, interactive: bool | None = None) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_file, "a", encoding="utf-8")
    interactive = sys.stderr.isatty() if interactive is None else interactive
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if interactive:
        processors.append(_Progress(sys.stderr))
        streams: tuple = (handle,)
    else:
        streams = (handle, sys.stderr)
    processors.append(structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=processors,
        logger_factory=lambda *_: _Tee(*streams),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib logging: keep only their warnings, away from stdout.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Delete operation did not match any records")
    for noisy in ("ray", "ray.data", "feast", "mlflow", "alembic", "pyiceberg", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def bind(**values: Any) -> None:
    structlog.contextvars.bind_contextvars(**values)


def get() -> structlog.stdlib.BoundLogger:
    return structlog.get_logger()

"""Named fault points, for the fault-injection tests (and for anyone checking crash safety by hand).

    MEDALLION_CRASH_AT=before_commit:3 medallion run ...

makes the process kill itself with SIGKILL (no clean-up, no `finally`, no atexit: what a machine loss or
the OOM killer does) the 3rd time a run passes the point `before_commit`;

    MEDALLION_FAIL_AT=before_commit:3 medallion run ...

raises an error there instead (`InjectedFault`, a `PipelineError`: what a storage outage or a failing
service does to a run; the command ends with one line and exit code 2). Unset, a point costs one dict
lookup. The points sit where the state on disk changes: around every Iceberg commit, between layers,
inside the Feast write and in the middle of MLflow logging. Counts start again with each run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from pipelines.errors import PipelineError

CRASH_ENV = "MEDALLION_CRASH_AT"
FAIL_ENV = "MEDALLION_FAIL_AT"
ENV = CRASH_ENV  # the name earlier tests and notes use
_passed: Counter = Counter()


class InjectedFault(PipelineError):
    """The error MEDALLION_FAIL_AT asked for."""


def reset() -> None:
    """A new run counts its passes from zero (several runs may share one process)."""
    _passed.clear()


def _due(env: str, name: str) -> bool:
    spec = os.environ.get(env)
    if not spec:
        return False
    target, _, nth = spec.partition(":")
    return target == name and _passed[name] == int(nth or 1)


def point(name: str) -> None:
    if not (os.environ.get(CRASH_ENV) or os.environ.get(FAIL_ENV)):
        return
    _passed[name] += 1
    if _due(CRASH_ENV, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _due(FAIL_ENV, name):
        raise InjectedFault(f"injected fault at {name}:{_passed[name]} ({FAIL_ENV})")

"""Named crash points, for the fault-injection tests (and for anyone checking crash safety by hand).

    MEDALLION_CRASH_AT=before_commit:3 medallion run ...

makes the process kill itself with SIGKILL (no clean-up, no `finally`, no atexit: what a machine loss or
the OOM killer does) the 3rd time it passes the point `before_commit`. Unset, a point costs one dict
lookup. The points sit where the state on disk changes: around every Iceberg commit, between layers,
inside the Feast write and in the middle of MLflow logging.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "MEDALLION_CRASH_AT"
_passed: Counter = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passed[name] += 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

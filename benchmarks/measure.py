"""Measuring a command: wall time and the peak memory of its whole process tree, in its own process.

Peak memory is sampled (every `interval` seconds) over the process and all its descendants: for a pipeline
run that is the driver, Ray's GCS and raylet, and every Ray worker. Two sums are kept:

- PSS (proportional set size): shared pages (Ray's object store lives in /dev/shm and is mapped by every
  worker that reads it) are split between the processes sharing them, so the sum is the tree's real
  footprint. This is the figure the suite reports as "peak memory".
- RSS: each process counted whole; shared pages are counted once per process mapping them, so it
  over-states a Ray run. Kept for comparison with the earlier gold-only benchmark, which reported it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import psutil

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


@dataclass
class Measured:
    seconds: float  # wall time of the whole process, start-up included
    peak_pss_gib: float
    peak_rss_gib: float
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool = False  # killed (with its whole tree) after `timeout` seconds

    def last_json(self) -> Dict:
        """The JSON object on the last stdout line (what `medallion run` and the benchmark sides print)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    pss = rss = 0
    for proc in [root] + root.children(recursive=True):
        try:
            info = proc.memory_full_info()  # reads /proc/<pid>/smaps_rollup: PSS as well as RSS
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        except psutil.Error:  # a worker that exited between listing and reading
            continue
    return pss, rss


def measured(command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Path = ROOT,
             interval: float = 0.25, check: bool = True, timeout: Optional[float] = None) -> Measured:
    """Run `command` to completion, sampling its process tree's memory; raise on failure when `check`.
    With `timeout` (seconds), a command still running then is killed with its descendants (`timed_out`)."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(list(command), cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    # drain both pipes while sampling: a child that logs a lot would otherwise block on a full pipe
    chunks: Dict[str, List[str]] = {"out": [], "err": []}

    def drain(stream, key):
        for line in stream:
            chunks[key].append(line)

    readers = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
    for reader in readers:
        reader.start()
    timed_out = False
    while proc.poll() is None:
        pss, rss = _tree_memory(root)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        if timeout is not None and time.perf_counter() - start > timeout:
            timed_out = True
            _kill_tree(root)
            proc.wait()
            break
        time.sleep(interval)
    for reader in readers:
        reader.join()
    seconds = time.perf_counter() - start
    result = Measured(seconds, peak_pss / GIB, peak_rss / GIB, "".join(chunks["out"]), "".join(chunks["err"]),
                      proc.returncode, timed_out)
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(command)}\n{result.stderr[-4000:]}")
    return result


def _kill_tree(root: psutil.Process) -> None:
    for proc in root.children(recursive=True) + [root]:
        try:
            proc.kill()
        except psutil.Error:
            continue


def python_module(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def medallion(*args: str) -> List[str]:
    return python_module("pipelines", *args)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return (f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM, Python {platform.python_version()}")


@dataclass
class Timer:
    """Seconds of named steps inside one process (what a benchmark side prints as JSON)."""

    seconds: Dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.start, 3)

        return _Step()

"""Starting (or joining) the Ray runtime once per process, with Ray's own chatter kept off stdout.

A run starts Ray only when it first has work for it (`start_when_needed`, then `ensure` at each place
that makes a Ray dataset or task): a rerun with no new data then costs no Ray start-up and shut-down
(~8 s of a ~20 s no-op rerun at 10M events).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, List, Optional

import ray
from ray._private import auto_init_hook  # ray is pinned (constraints.txt)

from pipelines import logs
from pipelines.config import RayConfig


# Ray Data's Parquet reader resizes Arrow's process-wide CPU and IO thread pools (to 32 and 128) inside the
# worker that reads. A worker that later runs pyiceberg's partitioned write (an Arrow group_by) can then fail
# with "ArrowIndexError: thread index 10 is out of range [0, 10)" (seen in long test sessions). 0 = leave
# Arrow's pools alone. Workers inherit the driver's environment locally; clusters get it via runtime_env.
WORKER_ENV = {"RAY_DATA_PARQUET_READER_CPU_COUNT": "0", "RAY_DATA_PARQUET_READER_IO_THREAD_COUNT": "0"}


_deferred: Optional[RayConfig] = None  # what `ensure` starts Ray with


def pickle_by_value(module_names: List[str]) -> None:
    """Ship these modules' functions to Ray tasks by value. A project's modules (feature sets, custom
    checks) are loaded from its directory, which a worker cannot import by name."""
    from ray import cloudpickle

    for name in module_names:
        module = sys.modules.get(name)
        if module is not None and not name.startswith(("features.", "pipelines.", "validation.", "serving.")):
            cloudpickle.register_pickle_by_value(module)


def start_when_needed(cfg: RayConfig) -> None:
    """Remember `cfg`; Ray starts at the first `ensure()`. A Ray call not preceded by `ensure()` then fails
    ("Ray has not been started yet") instead of Ray's silent auto-start of a default runtime (every CPU of
    the machine, a default object store, no cluster address)."""
    global _deferred
    _deferred = cfg
    auto_init_hook.enable_auto_connect = False


def ensure() -> None:
    """Start (or join) Ray with the remembered config, unless it is running already."""
    if ray.is_initialized():
        return
    if _deferred is None:
        raise RuntimeError("Ray is needed but was not configured: call ray_runtime.start_when_needed(cfg) first")
    start(_deferred)
    logs.get().info("ray runtime started", address=_deferred.address or "local")


def start(cfg: RayConfig) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    # RAY_ADDRESS reaches this through the config (conf/ray/cluster.yaml, the prod profile) and nowhere
    # else: a local run started from a shell that holds a cluster's environment still runs locally.
    address = cfg.address
    kwargs = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if address:
        ray.init(address=address, runtime_env=runtime_env(cfg), **kwargs)
    else:
        object_store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb else None
        # "local" always starts a fresh runtime: without it ray.init() silently joins any cluster that
        # `ray start` left running on this machine (found through /tmp/ray/ray_current_cluster).
        ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=object_store, **kwargs)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    context.print_on_execution_start = False
    context.enable_operator_progress_bars = False
    # Blocks leave each operator in input order: a day-partitioned write then gets each day's rows from
    # one or two neighbouring blocks (one data file per day, not a fragment per block), and a run's block
    # layout does not depend on which task finished first.
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# The packages a worker imports to run this project's tasks (see pyproject.toml's package list).
SHIPPED_PACKAGES = ("pipelines", "features", "validation", "serving")


def runtime_env(cfg: RayConfig) -> Dict[str, Any]:
    """What a cluster's workers need from this driver: the project's code (uploaded through the cluster,
    so workers need neither this checkout nor a shared disk; the image provides the dependencies) and the
    credentials named in `forward_env` that are set here (the driver's environment is their only source)."""
    import importlib

    env: Dict[str, Any] = {}
    if cfg.ship_code:
        env["py_modules"] = [importlib.import_module(name) for name in SHIPPED_PACKAGES]
    forwarded = {name: os.environ[name] for name in cfg.forward_env if os.environ.get(name)}
    env["env_vars"] = {**WORKER_ENV, **forwarded}
    return env


def choose_shuffle(cfg: RayConfig, rows: int) -> None:
    """Pick Ray Data's shuffle for the next group-by. "auto": the task-based sort shuffle starts in
    ~0.3 s but moves data slowly; the actor-based hash shuffle pays seconds of actor start-up, then runs
    about twice as fast (measured: 15 s vs 37 s to shuffle 10M rows on 2 cores)."""
    strategy = cfg.shuffle_strategy
    if strategy == "auto":
        strategy = "hash_shuffle" if rows >= cfg.hash_shuffle_from_rows else "sort_shuffle_pull_based"
    ray.data.DataContext.get_current().shuffle_strategy = strategy

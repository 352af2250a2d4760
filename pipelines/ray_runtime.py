"""Starting (or joining) the Ray runtime once per process, with Ray's own chatter kept off stdout."""

from __future__ import annotations

import logging
import os
import sys

import ray

from pipelines.config import RayConfig


def start(cfg: RayConfig) -> None:
    if ray.is_initialized():
        ray.data.DataContext.get_current().shuffle_strategy = cfg.shuffle_strategy
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        object_store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb else None
        ray.init(num_cpus=cfg.num_cpus, object_store_memory=object_store, **kwargs)
    context = ray.data.DataContext.get_current()
    context.shuffle_strategy = cfg.shuffle_strategy
    context.enable_progress_bars = sys.stderr.isatty()
    context.print_on_execution_start = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)

"""A stage's Ray datasets release their blocks when the stage ends (pipelines.run.stage)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import ray

from pipelines.run import stage


def _held_refs() -> int:
    """Object references this driver holds (each pins a block in the object store); an entry counted by
    neither side is being released."""
    counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts().values()
    return sum(1 for c in counts if c["local"] or c["submitted"])


def _materialize_and_drop() -> int:
    ds = ray.data.range(10_000, override_num_blocks=4).materialize()
    return ds.count()  # `ds` goes out of scope here, but its reference cycles keep the blocks


def test_blocks_of_a_dropped_dataset_are_released_at_the_stage_end(ray_session):
    ctx = SimpleNamespace(durations={})
    enabled = gc.isenabled()
    gc.disable()  # the cycle collector would otherwise run at a moment of its own choosing
    try:
        gc.collect()
        before = _held_refs()  # what other tests of the session may legitimately hold
        _materialize_and_drop()
        assert _held_refs() > before  # what the stage has to deal with: blocks pinned by garbage
        gc.collect()
        with stage(ctx, "work"):
            rows = _materialize_and_drop()
        assert rows == 10_000
        assert _held_refs() == before
    finally:
        if enabled:
            gc.enable()

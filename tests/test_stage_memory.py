"""A stage's Ray datasets release their blocks when the stage ends (pipelines.run.stage), also while what
lived at the run's start is frozen (pipelines.run.collector_skips_what_lives_now)."""

from __future__ import annotations

import contextlib
import gc
import threading
from types import SimpleNamespace

import pytest
import ray

from pipelines.run import collector_skips_what_lives_now, stage


def _held_refs() -> int:
    """Object references this driver holds (each pins a block in the object store); an entry counted by
    neither side is being released."""
    counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts().values()
    return sum(1 for c in counts if c["local"] or c["submitted"])


def _materialize_and_drop() -> int:
    ds = ray.data.range(10_000, override_num_blocks=4).materialize()
    return ds.count()  # `ds` goes out of scope here, but its reference cycles keep the blocks


@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "inside_a_run_freeze"])
def test_blocks_of_a_dropped_dataset_are_released_at_the_stage_end(ray_session, frozen):
    ctx = SimpleNamespace(durations={})
    enabled = gc.isenabled()
    gc.disable()  # the cycle collector would otherwise run at a moment of its own choosing
    try:
        gc.collect()
        before = _held_refs()  # what other tests of the session may legitimately hold
        _materialize_and_drop()
        assert _held_refs() > before  # what the stage has to deal with: blocks pinned by garbage
        gc.collect()
        with collector_skips_what_lives_now() if frozen else contextlib.nullcontext():
            assert (gc.get_freeze_count() > 0) == frozen
            with stage(ctx, "work"):
                rows = _materialize_and_drop()
            assert rows == 10_000
            assert _held_refs() == before
        assert gc.get_freeze_count() == 0
    finally:
        if enabled:
            gc.enable()


def test_the_freeze_is_made_by_the_first_run_undone_by_the_last_and_never_undoes_the_processs_own():
    """The freeze count shrinks a little as frozen objects are freed by reference counting, so a second
    freeze is seen by the 10,000 objects made after the first one: frozen by it, they would add to it."""
    assert gc.get_freeze_count() == 0
    with collector_skips_what_lives_now():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        young = [[] for _ in range(10_000)]
        with collector_skips_what_lives_now():  # a second run (nested, or in another thread): no new freeze
            assert 0 < gc.get_freeze_count() <= frozen
        assert 0 < gc.get_freeze_count() <= frozen  # the first run's freeze still holds
    assert gc.get_freeze_count() == 0

    entered, leave = threading.Event(), threading.Event()

    def other_run():
        with collector_skips_what_lives_now():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other_run)
    try:
        with collector_skips_what_lives_now():
            frozen = gc.get_freeze_count()
            thread.start()
            assert entered.wait(10)
        assert 0 < gc.get_freeze_count() <= frozen  # the first run ended, the other one runs on: still frozen
    finally:  # a failed assertion must not leave the other run (and its freeze) behind for later tests
        leave.set()
        if thread.is_alive():
            thread.join()
    assert gc.get_freeze_count() == 0

    gc.freeze()  # the process froze objects of its own (say, before forking workers): left as they are
    try:
        own = gc.get_freeze_count()
        young = [[] for _ in range(10_000)]
        with collector_skips_what_lives_now():
            assert 0 < gc.get_freeze_count() <= own
        assert 0 < gc.get_freeze_count() <= own
    finally:
        gc.unfreeze()
    assert len(young) == 10_000

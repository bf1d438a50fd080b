"""Start-up objects frozen out of the cyclic collector: garbage collected first, the living kept
and exempt, later garbage still collected; and a worker freezes before it announces itself."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from stream import wire
from stream.gc_tuning import freeze_startup_objects
from tests.worker_sockets import receive_ready, worker_on_sockets


class _Node:
    def __init__(self) -> None:
        self.other = self


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's collector as it was


def test_garbage_goes_first_the_living_are_frozen_and_later_garbage_is_still_collected(unfrozen):
    garbage, alive = _Node(), _Node()
    garbage_ref, alive_ref = weakref.ref(garbage), weakref.ref(alive)
    del garbage  # a reference cycle: only the collector frees it
    assert gc.get_freeze_count() == 0
    frozen = freeze_startup_objects()
    assert garbage_ref() is None, "start-up garbage is collected before the freeze"
    assert 0 < gc.get_freeze_count() <= frozen  # frozen objects that die leave the count
    assert not any(o is alive for o in gc.get_objects())  # frozen: in no generation the collector walks
    assert alive_ref() is alive
    later = _Node()
    later_ref = weakref.ref(later)
    del later
    gc.collect()
    assert later_ref() is None, "objects made after the freeze are collected as usual"


@pytest.mark.parametrize("freeze_gc", [True, False])
def test_a_worker_freezes_its_start_up_objects_before_it_is_ready_only_when_it_owns_its_process(
        tmp_path, unfrozen, freeze_gc):
    with worker_on_sockets(tmp_path, credits=1, max_batch=1, name="gc-test") as sockets:
        worker, router, pull, stop = sockets
        worker.freeze_gc = freeze_gc  # run_worker_process's workers: True; in a caller's thread: False
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        _, kind, _ = receive_ready(router)
        assert kind == wire.READY
        if freeze_gc:
            assert gc.get_freeze_count() > 1000  # the modules, kernels and tables of its analyser
        else:
            assert gc.get_freeze_count() == 0
        stop.set()
        thread.join(10)

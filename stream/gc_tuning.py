"""Keep Python's cyclic garbage collector from stalling frames while a process serves.

A worker holds ~240 000 objects after start-up (modules, compiled kernels, polar tables); a
full (generation 2) collection walks all of them: 60-150 ms on the 2-core test machine, during
which the process analyses nothing (in the service process its ingest, collector and I/O
threads share the GIL). Serving itself makes few objects that outlive a frame, so full
collections are rare, but a service that keeps results (maps, documents) for hours eventually
triggers them. The start-up objects live as long as the process, so they are moved to the
permanent generation once start-up is over: later collections walk only what was made since
(measured with ``gc.callbacks`` over ``bench/bench_service.py``: after the freeze, 1-7 young
collections of at most 0.7 ms per process, none of the older generations).

Only a process that is the service's or a worker's does this (``braggmap serve``,
:func:`stream.worker.run_worker_process`), never a library call: frozen objects that later
become cyclic garbage are never freed, and in a user's session (a RunEngine, ophyd devices
with their subscriptions) that would keep stale objects alive and reacting.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect the start-up garbage, then exempt every object still alive from later collections.

    Call once, after imports, warm-up and set-up, before serving. Objects frozen are still
    freed by reference counting; only reference cycles among them would be kept.

    Returns
    -------
    int
        Objects in the permanent generation now (``gc.get_freeze_count()``).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

"""A worker in a thread against real ZeroMQ sockets on 127.0.0.1 held by the test: a ROUTER
standing in for the ingest and a PULL for the collector, on the small test detector."""

from __future__ import annotations

import contextlib
import threading

import zmq

from stream.worker import Worker, WorkerConfig
from tests.small_detector import write_setup

TIMEOUT_MS = 20_000
READY_TIMEOUT_MS = 300_000  # the worker warms up (compiles) before READY: minutes on a cold cache under load


def receive_ready(router: zmq.Socket) -> list[bytes]:
    """The worker's first message (READY), waited for through its warm-up; AssertionError if none."""
    assert router.poll(READY_TIMEOUT_MS, zmq.POLLIN), "the worker never announced itself"
    return router.recv_multipart()


@contextlib.contextmanager
def worker_on_sockets(folder, **options):
    """Yield ``(worker, router, pull, stop)``; the worker is made, not started.

    Parameters
    ----------
    folder : pathlib.Path
        Where the small detector's setup files go.
    **options
        :class:`stream.worker.WorkerConfig` fields besides the endpoints and the setup.
    """
    setup = write_setup(folder)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    pull = context.socket(zmq.PULL)
    for socket in (router, pull):
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    work = router.bind_to_random_port("tcp://127.0.0.1")
    results = pull.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    worker = Worker(WorkerConfig(f"tcp://127.0.0.1:{work}", f"tcp://127.0.0.1:{results}", setup, **options),
                    context=context, stop=stop)
    try:
        yield worker, router, pull, stop
    finally:
        stop.set()
        router.close()
        pull.close()
        context.term()

"""The running service: one ingest per detector stream, N worker processes, one collector.

This is the one place where sockets, threads and processes are wired together. Everything
talks over ZeroMQ endpoints, so a worker on another host is the same worker started with
``braggmap worker --work-endpoint ... --collector-endpoint ...``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.errors import BraggmapError
from analysis.scan_grid import ScanGrid
from stream import wire
from stream.analysis_setup import AnalysisSetup, AverageAnalysis
from stream.collector import Collector, SeriesOutcome, default_grid
from stream.frame_detail import DetailServer
from stream.frame_store import FrameStore
from stream.run_placement import DocumentPlacement
from stream.documents import DocumentReceiver
from stream.ingest import Ingest
from stream.steering_server import SteeringServer
from stream.worker import DEFAULT_MAX_BATCH, WorkerConfig, credits_for, run_worker_process

log = logging.getLogger(__name__)


class ServiceError(BraggmapError):
    """The service could not start (workers not ready, endpoint in use...)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Endpoints, worker count and analysis of a service.

    ``tcp://127.0.0.1:0`` endpoints are bound on OS-assigned ports (loopback by default).
    """

    setup: AnalysisSetup
    detector_endpoint: str = "tcp://127.0.0.1:9999"
    protocol: str = "auto"
    n_workers: int = 1
    work_endpoint: str = "tcp://127.0.0.1:0"
    collector_endpoint: str = "tcp://127.0.0.1:0"
    publish_endpoint: str | None = "tcp://127.0.0.1:0"
    detail_endpoint: str | None = "tcp://127.0.0.1:0"
    overflow: str = "block"
    max_queue: int = 64
    series_timeout_s: float = 30.0
    results_timeout_s: float = 30.0
    worker_credits: int | None = None  # frames in flight per worker; None: two batches (stream.worker.credits_for)
    worker_max_batch: int = DEFAULT_MAX_BATCH  # frames a worker analyses together when they queue up
    grid: ScanGrid | None = None
    ready_timeout_s: float = 180.0
    documents_endpoint: str | None = None  # a beamline's stream.document_log.DocumentLog: maps on run grids
    documents_settle_s: float = 5.0  # a finished series waits this long for its run's documents
    steering_endpoint: str | None = None  # stream.steering_server: where to scan next (REQ/REP JSON)
    frame_store_dir: str | None = None  # where the frame-detail store's files go (default: the temp folder)


@dataclass
class Service:
    """Start/stop the whole pipeline; finished series arrive in :attr:`outcomes`.

    Parameters
    ----------
    config : ServiceConfig
    on_series_complete : callable, optional
        Called in the collector thread for each finished series (e.g. write the maps).
    """

    config: ServiceConfig
    on_series_complete: Callable[[SeriesOutcome], None] | None = None
    outcomes: "queue.Queue[SeriesOutcome]" = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.collector: Collector | None = None
        self.ingest: Ingest | None = None
        self.workers: list[multiprocessing.Process] = []
        self.frame_store: FrameStore | None = None
        self.detail_server: DetailServer | None = None
        self.documents: DocumentReceiver | None = None
        self.steering: SteeringServer | None = None

    def _complete(self, outcome: SeriesOutcome) -> None:
        try:
            if self.steering is not None:
                self.steering.add_outcome(outcome)
            if self.on_series_complete is not None:
                self.on_series_complete(outcome)
        finally:
            self.outcomes.put(outcome)

    def _grid_for(self, info: wire.SeriesInfo) -> ScanGrid:
        return self.config.grid if self.config.grid is not None else default_grid(info)

    def start(self) -> "Service":
        config = self.config
        parameters = config.setup.parameter_names()
        if config.detail_endpoint is not None:  # first: a bad directory fails before any socket is bound
            self.frame_store = FrameStore(directory=config.frame_store_dir,
                                          header_source=lambda: self.ingest.series_parts if self.ingest else None)
        self.collector = Collector(
            config.collector_endpoint, parameters, self._complete, grid_for=self._grid_for,
            publish_endpoint=config.publish_endpoint, results_timeout_s=config.results_timeout_s,
            average_analysis=AverageAnalysis(config.setup).prepare_in_background(),
            placement=DocumentPlacement(parameters, config.documents_settle_s) if config.documents_endpoint else None,
        )
        self.ingest = Ingest(
            config.detector_endpoint, config.work_endpoint, self.collector.endpoint,
            protocol=config.protocol, overflow=config.overflow, max_queue=config.max_queue,
            series_timeout_s=config.series_timeout_s, frame_store=self.frame_store,
        )
        self.collector.start()
        if config.steering_endpoint is not None:
            try:
                self.steering = SteeringServer(config.steering_endpoint, self.publish_endpoint).start()
            except BraggmapError:
                self.stop()
                raise
        if self.frame_store is not None:
            try:
                self.detail_server = DetailServer(config.detail_endpoint, self.frame_store,
                                                  config.setup.analyzer_cache).start()
            except BraggmapError:
                self.stop()
                raise
        self.ingest.start()
        if config.documents_endpoint:
            self.documents = DocumentReceiver(config.documents_endpoint, self.collector.endpoint).start()
        context = multiprocessing.get_context("spawn")
        for index in range(config.n_workers):
            worker_config = WorkerConfig(
                work_endpoint=self.ingest.work_endpoint,
                collector_endpoint=self.collector.endpoint,
                setup=config.setup,
                credits=credits_for(config.worker_max_batch) if config.worker_credits is None else config.worker_credits,
                max_batch=config.worker_max_batch,
                name=f"worker-{index}",
                read_frame_store=self.frame_store is not None,  # same host: read payloads from the store
                parent_pid=os.getpid(),
            )
            process = context.Process(target=run_worker_process, args=(worker_config,),
                                      name=f"braggmap-worker-{index}", daemon=True)
            process.start()
            self.workers.append(process)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while self.ingest.n_workers < self.config.n_workers:
            dead = [p.name for p in self.workers if not p.is_alive()]
            if dead:
                self.stop()
                raise ServiceError(f"worker process {dead[0]} exited during start-up "
                                   f"(see its error above)")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"only {self.ingest.n_workers} of {self.config.n_workers} workers "
                                   f"were ready after {self.config.ready_timeout_s:.0f} s")
            time.sleep(0.05)

    @property
    def publish_endpoint(self) -> str | None:
        return self.collector.publisher.endpoint if self.collector and self.collector.publisher else None

    @property
    def detail_endpoint(self) -> str | None:
        """Frame-detail REP endpoint (:mod:`stream.frame_detail`), None when disabled."""
        return self.detail_server.endpoint if self.detail_server is not None else None

    @property
    def steering_endpoint(self) -> str | None:
        """Steering REP endpoint (:mod:`stream.steering_server`), None when disabled."""
        return self.steering.endpoint if self.steering is not None else None

    def wait_for_series(self, timeout_s: float | None = None) -> SeriesOutcome:
        """Block until the next series is finished; raises ``queue.Empty`` on time-out."""
        return self.outcomes.get(timeout=timeout_s)

    def stop(self) -> None:
        if self.documents is not None:
            self.documents.stop()
        if self.ingest is not None:
            self.ingest.stop()
        for process in self.workers:
            if process.is_alive():
                process.terminate()
        for process in self.workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(2)
        if self.collector is not None:
            self.collector.stop()
        if self.detail_server is not None:
            self.detail_server.stop()
        if self.steering is not None:
            self.steering.stop()
        if self.frame_store is not None:
            self.frame_store.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def output_paths(output_dir: Path, series_id: int) -> tuple[Path, Path]:
    """Where a series' maps go: ``maps_series<id>.h5`` and ``.png``."""
    stem = output_dir / f"maps_series{series_id:04d}"
    return stem.with_suffix(".h5"), stem.with_suffix(".png")

"""The collector: owns the maps. Places every worker result on its scan pixel, knows when a
series is complete, and hands the finished maps to whoever writes them.

One collector per service; workers and the ingest PUSH to its PULL socket. Messages from
different processes come over different connections, in no guaranteed order: a worker's first
results (or its problem with a series) can arrive before the ingest's series message, which
carries the pixel mask; they are held until the series opens (for ``results_timeout_s`` at most,
then dropped and counted in :attr:`Collector.orphaned`). Messages name their series by detector
series id and by the ingest's ``series_instance`` (increasing), so the late results of a
finished series are dropped and counted, never placed on a newer series of the same id. The
map state is
also published (PUB: pixel updates and full snapshots, newest wins; see
:mod:`stream.published_state`) for viewers: a slow viewer drops messages and never slows the
service.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from analysis.frame_rows import GrowingRows
from analysis.map_state import MapState
from analysis.scan_grid import ScanGrid
from analysis.status import Status
from stream.loop_thread import LoopThread, waiting_messages
from stream import wire
from stream.accounting import AccountingSummary
from stream.documents import DOCUMENT
from stream.published_state import MapPublisher

log = logging.getLogger(__name__)

MAX_HELD_MESSAGES = 4096
"""Messages of series not opened yet held at most (beyond: dropped and counted)."""
IDLE_POLL_MS = 100
"""Longest wait for a message between the loop's checks (series completion, held messages)."""


@dataclass
class SeriesOutcome:
    """A finished series: its maps, accounting and any problems.

    ``summary`` is the ingest's accounting with the frames the workers could not decompress
    merged in (counted undecodable with their reasons, not received); ``analysis_errors``
    holds only the failures of frames that were decoded. ``latencies_ms`` (float64, (n,)):
    per result, ingest receive -> placed on the map; ``latency_parts_ms`` (float64, (m, 3), the
    results that carry the worker's clocks) splits it into (waiting for a worker: queued in the
    ingest and in transit, analysis in the worker from its receipt of the frame, result delivery
    and placement), from the wall clocks of the three processes.
    """

    info: wire.SeriesInfo
    grid: ScanGrid
    maps: MapState
    summary: AccountingSummary | None
    results: int
    analysis_errors: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latency_parts_ms: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    complete: bool = True
    average: object = None  # analysis.average_pattern.AveragePatternResult, when analysed


class _Series:
    def __init__(self, info: wire.SeriesInfo, grid: ScanGrid, parameters: tuple[str, ...]) -> None:
        self.info = info
        self.grid = grid
        self.maps = MapState(grid.shape, list(parameters))
        self.summary: AccountingSummary | None = None
        self.forwarded: int | None = None
        self.results = 0
        self.errors: dict[str, int] = {}
        self.problems: list[str] = []
        self.latencies_ms = GrowingRows(np.float64)  # 8 bytes per frame, however long the scan
        self.latency_parts_ms = GrowingRows(np.float64, (3,))
        self.summary_at: float | None = None
        self.outside_grid = 0
        self.workers: list[str] | None = None
        self.averages: dict[str, tuple] = {}
        self.undecodable: dict[int, str] = {}  # frame index -> why a worker could not decode it

    def averages_complete(self) -> bool:
        return self.workers is not None and all(name in self.averages for name in self.workers)


class Collector(LoopThread):
    """Gather results into maps.

    Parameters
    ----------
    endpoint : str
        Endpoint to bind (PULL). ``tcp://127.0.0.1:0`` picks a free port (see :attr:`endpoint`).
    parameters : tuple of str
        Names of the values in every result vector, in order.
    on_series_complete : callable
        Called (in the collector thread) with a :class:`SeriesOutcome` when a series ends.
    grid_for : callable, optional
        ``grid_for(info) -> ScanGrid``: where frames go. By default the series appendix's
        ``braggmap_scan`` description, else frames by index.
    publish_endpoint : str, optional
        Where to publish map snapshots (PUB) for viewers.
    results_timeout_s : float
        After the ingest's summary, how long to wait for outstanding worker results.
    average_analysis : object, optional
        ``analyse(maps, signal_sum, raw_sum, n_valid, n_frames) -> AveragePatternResult``: fits the
        merged average pattern of a finished series and updates the maps that depend on it.
    placement : stream.run_placement.DocumentPlacement, optional
        Places frames from bluesky run documents (``DOCUMENT`` messages) instead of ``grid_for``.
    """

    thread_name = "braggmap-collector"

    def __init__(self, endpoint: str, parameters: tuple[str, ...],
                 on_series_complete: Callable[[SeriesOutcome], None],
                 grid_for: Callable[[wire.SeriesInfo], ScanGrid] | None = None,
                 publish_endpoint: str | None = None, results_timeout_s: float = 30.0,
                 average_analysis=None, context: zmq.Context | None = None, placement=None) -> None:
        from stream.ingest import _bindable

        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(_bindable(endpoint))
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.parameters = tuple(parameters)
        self.on_series_complete = on_series_complete
        self.grid_for = grid_for or default_grid
        self.results_timeout_s = results_timeout_s
        self.average_analysis = average_analysis
        self.placement = placement  # stream.run_placement.DocumentPlacement: frames placed from run documents
        self.publisher = MapPublisher(publish_endpoint, self._context) if publish_endpoint else None
        self.series: dict[int, _Series] = {}
        self.malformed = 0
        self.progress: Callable[[_Series], None] | None = None
        self._held: dict[int, tuple[float, list[list[bytes]]]] = {}  # series id -> (first seen, messages)
        self._n_held = 0
        self._finished_ids: deque[int] = deque(maxlen=64)  # late messages without an instance: not held
        self._latest_instance = 0  # the newest series instance opened
        self.orphaned = 0  # messages of a series that never opened (or held beyond the limit)



    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.socket.poll(self._poll_timeout_ms(), zmq.POLLIN):
                    for parts in waiting_messages(self.socket, 256):
                        self.handle(parts)
                self._check_complete()
                self._expire_held()
                if self.publisher is not None:
                    self.publisher.maybe_publish(self.series)
        finally:
            for series_id in list(self.series):
                self._finish(series_id, complete=False)
            self.socket.close(linger=0)
            if self.publisher is not None:
                self.publisher.close()

    def _poll_timeout_ms(self) -> int:
        """Idle wait: 100 ms, or less when the publisher holds back results that fall due sooner."""
        due = None if self.publisher is None else self.publisher.seconds_until_due(self.series)
        return IDLE_POLL_MS if due is None else min(IDLE_POLL_MS, math.ceil(due * 1000.0))

    def handle(self, parts: list[bytes]) -> None:
        """Apply one message (public so tests can drive the collector without a thread)."""
        try:
            kind = parts[0]
            if kind == wire.SERIES:
                info, _mask = wire.decode_series(parts)
                self._open(info)
            elif kind in (wire.RESULT, wire.RESULTS):
                for meta, values, statuses in wire.decode_results(parts):
                    self._handle_result(meta, values, statuses)
            elif kind == wire.SUMMARY:
                data = wire.loads(parts[1])
                series = self.series.get(int(data["series_id"]))
                if series is None:
                    log.warning("summary for unknown series %s", data["series_id"])
                    return
                series.summary = AccountingSummary.from_dict(data)
                series.forwarded = int(data.get("forwarded", 0))
                series.workers = list(data.get("workers", []))
                series.summary_at = time.monotonic()
            elif kind == wire.AVERAGE:
                meta, signal_sum, raw_sum, n_valid = wire.decode_average(parts)
                if self._defer(meta, parts):
                    return
                series = self.series.get(meta.get("series_id"))
                if series is not None:
                    series.averages[str(meta.get("worker"))] = (signal_sum, raw_sum, n_valid, int(meta["n_frames"]))
            elif kind == wire.PROBLEM:
                data = wire.loads(parts[1])
                if self._defer(data, parts):
                    return
                series = self.series.get(data.get("series_id"))
                if series is not None and data["message"] not in series.problems:
                    series.problems.append(data["message"])
                log.info("problem in series %s: %s", data.get("series_id"), data["message"])
            elif kind == DOCUMENT and self.placement is not None:
                self.placement.on_document(parts[1], parts[2], self.series)
            else:
                raise ValueError(f"unknown message kind {kind!r}")
        except Exception as exc:
            self.malformed += 1
            log.warning("collector ignored a bad message: %s", exc)

    def _handle_result(self, meta: dict, values: np.ndarray, statuses: np.ndarray) -> None:
        """One frame's result (of a batch): a bad one is counted and the others still placed."""
        try:
            # a single result message is what waits when its series is not open yet
            if not self._defer(meta, lambda: wire.encode_result(meta, values, statuses)):
                self._on_result(meta, values, statuses)
        except Exception as exc:
            self.malformed += 1
            log.warning("collector ignored a bad result: %s", exc)

    def _open(self, info: wire.SeriesInfo) -> None:
        if info.series_id in self.series:
            self._finish(info.series_id, complete=False)
        grid = self.grid_for(info)
        self.series[info.series_id] = _Series(info, grid, self.parameters)
        if self.placement is not None:
            self.placement.open_series(self.series[info.series_id])
        if info.series_id in self._finished_ids:
            self._finished_ids.remove(info.series_id)
        if isinstance(info.instance, int):
            self._latest_instance = max(self._latest_instance, info.instance)
        _, held = self._held.pop(info.series_id, (None, []))
        self._n_held -= len(held)
        for parts in held:  # results that overtook the series message
            self.handle(parts)

    def _defer(self, meta: dict, parts: list[bytes] | Callable[[], list[bytes]]) -> bool:
        """Whether a worker's message is not for now: held (its series has not opened yet) or
        dropped and counted (its series finished). False: handle it now (its series is open, or
        it names no series: reported where it is handled).

        Parameters
        ----------
        meta : dict
            The message's metadata: ``series_id`` and, from a current ingest,
            ``series_instance``.
        parts : list of bytes, or a callable returning them
            The message to hold (a callable: made only when it is held).
        """
        series_id, instance = meta.get("series_id"), meta.get("series_instance")
        if not _is_count(series_id):
            return False
        series = self.series.get(series_id)
        if not _is_count(instance):  # by id alone
            if series is not None or series_id in self._finished_ids:
                return False
            return self._hold(series_id, parts)
        if series is not None and series.info.instance in (None, instance):
            return False
        if instance <= self._latest_instance:  # its series opened before: it is over
            self.orphaned += 1
            log.warning("collector: a late message of series %d (instance %d) dropped", series_id, instance)
            return True
        return self._hold(series_id, parts)

    def _hold(self, series_id: int, parts: list[bytes] | Callable[[], list[bytes]]) -> bool:
        """Keep a message of a series not opened yet (True: the caller is done with it)."""
        if self._n_held >= MAX_HELD_MESSAGES:
            self.orphaned += 1
            log.warning("collector: too many messages of series not begun; dropped one of series %d", series_id)
            return True
        if callable(parts):
            parts = parts()
        self._held.setdefault(series_id, (time.monotonic(), []))[1].append(parts)
        self._n_held += 1
        return True

    def _expire_held(self) -> None:
        """Drop held messages of a series that did not open within ``results_timeout_s``."""
        if not self._held:
            return
        now = time.monotonic()
        for series_id, (since, held) in list(self._held.items()):
            if now - since > self.results_timeout_s:
                del self._held[series_id]
                self._n_held -= len(held)
                self.orphaned += len(held)
                log.warning("collector: %d messages of series %d, which never began, dropped", len(held), series_id)

    def _on_result(self, meta: dict, values: np.ndarray, statuses: np.ndarray) -> None:
        series = self.series.get(meta.get("series_id"))
        if series is None:
            self.orphaned += 1
            log.warning("result for unknown series %s", meta.get("series_id"))
            return
        series.results += 1
        if meta.get("error"):
            _record_error(series, meta)
        if meta.get("received_ns"):
            now_ns = time.time_ns()
            series.latencies_ms.append((now_ns - meta["received_ns"]) / 1e6)
            if meta.get("started_ns") and meta.get("done_ns"):
                # wall clocks of ingest, worker and collector: exact on one host only
                series.latency_parts_ms.append(((meta["started_ns"] - meta["received_ns"]) / 1e6,
                                                (meta["done_ns"] - meta["started_ns"]) / 1e6,
                                                (now_ns - meta["done_ns"]) / 1e6))
        if values.size != len(self.parameters):
            series.errors["result of the wrong length"] = series.errors.get("result of the wrong length", 0) + 1
            values = np.full(len(self.parameters), np.nan)
            statuses = np.full(len(self.parameters), int(Status.INVALID_INPUT), dtype=np.int32)
        if self.placement is not None:
            self.placement.place(series, int(meta["frame_index"]), values, statuses)
        else:
            position = series.grid.position(int(meta["frame_index"]))
            if position is None:
                series.outside_grid += 1
                return
            series.maps.update(position[0], position[1], values, statuses)
        if self.progress is not None:
            self.progress(series)

    def _check_complete(self) -> None:
        now = time.monotonic()
        for series_id, series in list(self.series.items()):
            if series.forwarded is None:
                continue
            if series.results >= series.forwarded and series.averages_complete() and (
                    self.placement is None or self.placement.settled(series)):
                self._finish(series_id, complete=True)
            elif now - series.summary_at > self.results_timeout_s:
                if series.results < series.forwarded:
                    series.problems.append(
                        f"{series.forwarded - series.results} analysed frames never came back from the workers")
                missing = [w for w in series.workers or [] if w not in series.averages]
                if missing:
                    series.problems.append(f"no average pattern from worker(s) {', '.join(missing)}")
                self._finish(series_id, complete=series.results >= series.forwarded)

    def _finish(self, series_id: int, complete: bool) -> None:
        series = self.series.pop(series_id)
        self._finished_ids.append(series_id)
        if self.placement is not None:
            self.placement.finish(series)
        if series.outside_grid:
            series.problems.append(f"{series.outside_grid} frames fell outside the {series.grid.shape} scan grid")
        average = self._analyse_average(series)
        summary = series.summary
        if summary is not None:
            summary = summary.with_undecodable(series.undecodable)
        outcome = SeriesOutcome(
            info=series.info, grid=series.grid, maps=series.maps, summary=summary,
            results=series.results, analysis_errors=series.errors, problems=series.problems,
            latencies_ms=series.latencies_ms.rows.copy(), latency_parts_ms=series.latency_parts_ms.rows.copy(),
            complete=complete and series.summary is not None,
            average=average,
        )
        if self.publisher is not None:
            self.publisher.publish_now(series_id, series)
        try:
            self.on_series_complete(outcome)
        except Exception:
            log.exception("writing the outcome of series %d failed", series_id)


    def _analyse_average(self, series: _Series):
        """Merge the workers' average-pattern sums and analyse them (None when there are none)."""
        shares = [share for share in series.averages.values() if share[3] > 0]
        if self.average_analysis is None or not shares:
            return None
        signal_sum, raw_sum, n_valid = (sum(share[i] for share in shares) for i in range(3))
        try:
            return self.average_analysis.analyse(series.maps, signal_sum, raw_sum, n_valid,
                                                 sum(share[3] for share in shares))
        except Exception as exc:
            log.exception("average-pattern analysis of series %d failed", series.info.series_id)
            series.problems.append(f"average-pattern analysis failed: {exc}")
            return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_error(series: _Series, meta: dict) -> None:
    """Count a failed result: an undecodable payload in the frame accounting, anything else
    as an analysis error.

    Parameters
    ----------
    series : _Series
    meta : dict
        The result's metadata, with a non-empty ``error``.
    """
    error = str(meta["error"])
    if meta.get("undecodable") and meta.get("frame_index") is not None:
        index = int(meta["frame_index"])
        series.undecodable[index] = f"{error} (series {series.info.series_id}, frame {index}, at decompression)"
    else:
        series.errors[error] = series.errors.get(error, 0) + 1


def default_grid(info: wire.SeriesInfo) -> ScanGrid:
    """The scan grid a series describes in its appendix (``braggmap_scan``), else by frame index."""
    appendix = info.appendix
    if isinstance(appendix, str):
        try:
            appendix = wire.loads(appendix.encode())
        except Exception:
            appendix = None
    if isinstance(appendix, dict) and isinstance(appendix.get("braggmap_scan"), dict):
        try:
            return ScanGrid.from_dict(appendix["braggmap_scan"])
        except Exception as exc:
            log.warning("ignoring malformed scan description in the series appendix: %s", exc)
    return ScanGrid.by_index(info.n_images or 1)

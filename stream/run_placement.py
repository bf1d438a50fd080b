"""The collector's placement of frames from bluesky run documents (no sockets; collector thread).

Ties detector series to runs (the start document's ``braggmap_detector_series``, else the
series id the detector reading carries in the run's events) and places every result through
:mod:`analysis.document_placement`. Order does not matter:

* documents before frames: the series opens directly on the run's grid;
* frames before documents: frames go by index on the series' own grid (appendix or by frame
  index) and move to the run's grid when the run shows up; frames whose event has not come yet
  are held and placed when it does;
* a series no run names: maps by frame index, flagged (and a problem line says so);
* a run that ends early (stop ``exit_status`` other than ``success``): the partial map is kept
  and a problem line marks it.

A finished series waits at most ``settle_s`` for its run's remaining documents. Documents that
are not JSON objects, name no known document type or belong to no known run are counted
(:attr:`DocumentPlacement.ignored`) and ignored.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from analysis.document_placement import RunDocuments, layout_from_start
from analysis.errors import ConfigurationError
from analysis.frame_placement import FrameMap

log = logging.getLogger(__name__)

RUN_DOCUMENTS = ("descriptor", "event", "event_page", "stop")
OTHER_DOCUMENTS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")


@dataclass
class _Placed:
    series: object  # stream.collector._Series
    frames: FrameMap
    run_uid: str | None = None
    waiting_since: float | None = None


class DocumentPlacement:
    """Places results of the collector's series on their runs' grids.

    Parameters
    ----------
    parameters : tuple of str
        Names of the values in every result vector.
    settle_s : float
        How long a series whose results are all in waits for its run's stop document (or for a
        run at all) before it is finished anyway.
    max_runs : int
        Runs remembered (the oldest are forgotten).
    """

    def __init__(self, parameters: tuple[str, ...], settle_s: float = 5.0, max_runs: int = 32,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.parameters = tuple(parameters)
        self.settle_s = float(settle_s)
        self.max_runs = int(max_runs)
        self.clock = clock
        self.runs: OrderedDict[str, RunDocuments] = OrderedDict()
        self.run_of_descriptor: dict[str, str] = {}
        self.matched_runs: set[str] = set()
        self.placed: dict[int, _Placed] = {}
        self.documents = 0
        self.ignored: Counter[str] = Counter()

    # -- documents -----------------------------------------------------------------------------
    def on_document(self, name: bytes | str, body: bytes, series_by_id: dict) -> None:
        """Apply one document (from :data:`stream.documents.DOCUMENT` messages). Never raises."""
        try:
            name = name.decode() if isinstance(name, (bytes, bytearray)) else str(name)
            doc = json.loads(bytes(body))
            if not isinstance(doc, dict):
                raise ValueError(f"a {type(doc).__name__}, not an object")
        except (UnicodeDecodeError, ValueError) as exc:
            self.ignored[f"document that is not JSON ({str(exc)[:60]})"] += 1
            return
        self.documents += 1
        try:
            self._apply(name, doc, series_by_id)
        except Exception as exc:  # a bad document never stops the collector
            self.ignored[f"{name} document that could not be applied ({type(exc).__name__})"] += 1
            log.warning("ignored a %s document: %s", name, exc)

    def _apply(self, name: str, doc: dict, series_by_id: dict) -> None:
        if name == "start":
            try:
                run = RunDocuments(layout_from_start(doc))
            except ConfigurationError as exc:
                self.ignored["start of a run that is not a raster scan"] += 1
                log.info("run not placed on a map: %s", exc)
                return
            self.runs[run.layout.run_uid] = run
            while len(self.runs) > self.max_runs:
                self.runs.popitem(last=False)
            self._match(run, series_by_id)
            return
        if name in OTHER_DOCUMENTS:
            return
        if name not in RUN_DOCUMENTS:
            self.ignored[f"unknown document type {name[:40]!r}"] += 1
            return
        run_uid = doc.get("run_start") if name in ("descriptor", "stop") else \
            self.run_of_descriptor.get(str(doc.get("descriptor")))
        run = self.runs.get(run_uid) if isinstance(run_uid, str) else None
        if run is None:
            self.ignored[f"{name} of an unknown run"] += 1
            return
        if name == "descriptor":
            self.run_of_descriptor[str(doc.get("uid"))] = run_uid
        run.add(name, doc)
        self._match(run, series_by_id)
        placed = self._placed_of_run(run_uid)
        if placed is not None:
            placed.series.grid = placed.frames.grid = run.scan_grid()
            placed.frames.retry()
            placed.series.maps = placed.frames.maps

    def _placed_of_run(self, run_uid: str) -> _Placed | None:
        for placed in self.placed.values():
            if placed.run_uid == run_uid:
                return placed
        return None

    def _match(self, run: RunDocuments, series_by_id: dict) -> None:
        uid = run.layout.run_uid
        series_id = run.detector_series
        if uid in self.matched_runs or series_id is None:
            return
        placed = self.placed.get(series_id)
        if placed is None or placed.run_uid is not None or series_by_id.get(series_id) is not placed.series:
            return
        self.matched_runs.add(uid)
        placed.run_uid = uid
        grid = run.scan_grid()
        placed.frames.set_layout(grid, run.pixel)
        placed.series.grid = grid
        placed.series.maps = placed.frames.maps
        log.info("series %d placed on run %s (%s, %s %s)", series_id, uid[:8], run.layout.plan_name,
                 run.layout.mode, "x".join(map(str, run.layout.shape)))

    # -- series life cycle (collector hooks) -------------------------------------------------------
    def open_series(self, series) -> None:
        """A series opened: place its frames on its own grid until a run claims it."""
        series_id = series.info.series_id
        self.placed[series_id] = _Placed(series, FrameMap(series.grid, self.parameters))
        series.maps = self.placed[series_id].frames.maps
        series_by_id = {series_id: series}
        for run in reversed(self.runs.values()):  # the newest run naming this series
            if run.detector_series == series_id and run.layout.run_uid not in self.matched_runs:
                self._match(run, series_by_id)
                break

    def place(self, series, frame_index: int, values: np.ndarray, statuses: np.ndarray) -> None:
        """Keep and place one result of ``series``."""
        placed = self.placed.get(series.info.series_id)
        if placed is None or placed.series is not series:
            self.open_series(series)
            placed = self.placed[series.info.series_id]
        placed.frames.add(frame_index, values, statuses)
        series.maps = placed.frames.maps

    def settled(self, series) -> bool:
        """May the collector finish ``series`` now that all its results are in?"""
        placed = self.placed.get(series.info.series_id)
        if placed is None:
            return True
        run = self.runs.get(placed.run_uid) if placed.run_uid else None
        if run is not None and run.stopped and placed.frames.n_pending == 0:
            return True
        now = self.clock()
        if placed.waiting_since is None:
            placed.waiting_since = now
        return now - placed.waiting_since >= self.settle_s

    def finish(self, series) -> None:
        """Last placement of a finishing series; problems and flags go on ``series``."""
        placed = self.placed.pop(series.info.series_id, None)
        if placed is None or placed.series is not series:
            return
        frames = placed.frames
        run = self.runs.get(placed.run_uid) if placed.run_uid else None
        if run is None:
            series.grid = replace(series.grid, by_frame_index=True)
            series.problems.append("no bluesky run named this detector series: frames are placed by frame index")
        else:
            layout = run.layout
            if frames.n_pending and layout.mode == "step":
                moved = frames.place_pending_with(run.fallback_pixel)
                series.problems.append(f"{moved} frames had no event of run {layout.run_uid[:8]}: placed by "
                                       f"frame index on its grid")
            if frames.n_pending:
                series.problems.append(f"{frames.n_pending} frames could not be placed (no documents of run "
                                       f"{layout.run_uid[:8]} say where they were taken)")
            if not run.stopped:
                series.problems.append(f"run {layout.run_uid[:8]} ({layout.plan_name}) sent no stop document")
            elif run.aborted:
                reason = f": {run.reason}" if run.reason else ""
                series.problems.append(
                    f"run {layout.run_uid[:8]} ({layout.plan_name}) ended with exit_status {run.exit_status!r}"
                    f"{reason} after {run.n_events} events: the map is partial")
            if run.n_position_mismatch:
                series.problems.append(f"{run.n_position_mismatch} points of run {layout.run_uid[:8]} were read "
                                       f"more than half a step from their scan position")
            for text, count in run.problems.items():
                series.problems.append(f"run {layout.run_uid[:8]}: {count} x {text}")
            series.grid = run.scan_grid()
        series.outside_grid += frames.n_outside
        series.maps = frames.maps

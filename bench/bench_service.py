"""The whole service under load: simulator -> ingest -> N workers -> collector -> published maps.

Runs the real :class:`stream.service.Service` fed over tcp loopback by an in-process
:class:`simulators.eiger_server.EigerStreamServer` cycling a few pre-rendered synthetic EIGER X 4M
frames (bitshuffle-LZ4), and measures, in one run:

* latency at fixed rates (``overflow="drop"``, so frames the workers cannot take are dropped and
  counted): p50/p99 of the collector's per-result latency (ingest receive -> placed on the map)
  split into waiting for a worker, analysis in the worker and result delivery, and of "frame
  leaves the simulator -> its pixel appears in a published map snapshot" (seen by a
  :class:`stream.published_state.MapSubscriber`; pixel updates at most 100 times a second);
* the sustained rate (``overflow="block"``: the sender is slowed, nothing dropped) with 1 and 2
  workers, frames/s = frames / (first frame sent -> series finished), uint32 and uint16 frames,
  ``--repeats`` (5) series each, over ``--max-frames`` (1000) frames: long enough that a series'
  start and end (the first batches, the last frames in flight) weigh ~1 % of it, not ~5 % as over
  300. A 1-worker and a 2-worker service are alive at once (the idle one waits in its polls) and
  their series alternate, so each 2-worker series has a 1-worker one next to it in time: the
  scaling is the median of these pairs' ratios, which the machine's drift over minutes (~10 %)
  does not enter; the median series of each gives the rates and the bound. Measured first,
  so that the fixed rates end with one at 90 % of it (at least 2 s of frames): the latency near
  the maximum rate, and whether frames are dropped there;
* where the 2-worker rate goes: the worker's analysis alone (no service, no simulator, no
  messages) in 1 process and in 2 at once, and the CPU per frame of the workers and of the service
  process (with the in-process simulator and subscriber) in the 2-worker run, which bound the
  2-worker rate on this machine's cores;
* peak RSS (``VmHWM`` from ``/proc``) of the service process and of every worker for a 61 x 61
  scan (all 3721 frames) and for a 200 x 200 scan after ``--big-frames`` frames, and the map-state
  size (n_parameters x points x 12 bytes) that is what grows with the scan; then the whole 200 x 200
  scan (40000 frames, the frame store capped at 4 GiB of it) and how fast each RSS grows per frame
  over its last two thirds (the maps are allocated when the series opens: this is what a process
  keeps per frame).

Each service first streams two warm-up series as long as the longest measured one (first-frame
costs, connections, and the frame store: from a service's third series on it overwrites the files
of the oldest, whose pages are cached; a series longer than those files writes into new pages,
which costs the ingest ~1 ms of CPU per 4M frame on a busy 2-core virtual machine, where the first
touch of a page is expensive, and made the 2-worker series at 90 % of the sustained rate drop
frames when it was longer than the warm-up). The 61 x 61 and 200 x 200 scans are for the RSS and
do grow the files: their frames/s are not sustained rates. The figures are those of a service in
its steady state, as during a beamtime of many scans.

No figure here is ever a pass/fail criterion. Figures go to BENCHMARKS.md.

Run: ``.venv/bin/python bench/bench_service.py [--quick] [--rates 50 100 200] [--rate-workers 1 2]
[--rate-frames N] [--max-frames N] [--repeats 5] [--small-grid 61] [--big-frames N] [--no-whole-big-scan]
[--max-batch N] [--credits N] [--sustained-only]``
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

NEAR_MAX = 0.9
"""The last fixed rate of each worker count: this fraction of its sustained uint32 rate."""


def proc_status_kib(pid: int | str, field: str) -> int | None:
    """A ``/proc/<pid>/status`` memory field (``VmHWM``, ``VmRSS``) in KiB, None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time of a process (``/proc/<pid>/stat``), None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def percentiles(values_ms) -> str:
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return "p50      -    p99      -   (n = 0)"
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:7.1f} ms p99 {p99:7.1f} ms (n = {values.size})"


def render_frames(n_frames: int):
    """``n_frames`` synthetic 4M frames from inside the crystal (uint32) and the scan object."""
    from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig

    scan = SyntheticScan(SyntheticScanConfig())
    inside = np.argwhere(scan.truth.maps["sc_mask"] > 0)
    picks = inside[np.linspace(0, len(inside) - 1, n_frames).astype(int)]
    frames = np.stack([scan.frame(scan.grid.frame_index(int(r), int(c))) for r, c in picks])
    return scan, frames


def as_uint16(frames: np.ndarray) -> np.ndarray:
    """The same frames as an EIGER in 16-bit mode sends them (NODATA = 2**16 - 1)."""
    out = np.minimum(frames, 2**16 - 2).astype(np.uint16)
    out[frames == 2**32 - 1] = 2**16 - 1
    return out


class PublishedPixels(threading.Thread):
    """Records when each scan pixel first appears (status no longer NOT_MEASURED) in a snapshot."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True, name="bench-subscriber")
        from stream.published_state import MapSubscriber

        self.subscriber = MapSubscriber(endpoint)
        self.first_seen: dict[int, np.ndarray] = {}  # series id -> monotonic s per flat pixel (NaN: not yet)
        self.stop_event = threading.Event()

    def run(self) -> None:
        from analysis.status import Status

        try:
            while not self.stop_event.is_set():
                snapshot = self.subscriber.latest(50)
                if snapshot is None:
                    continue
                now = time.monotonic()
                seen = self.first_seen.get(snapshot.series_id)
                if seen is None:
                    seen = self.first_seen[snapshot.series_id] = np.full(snapshot.grid.n_points, np.nan)
                measured = (snapshot.statuses[0] != int(Status.NOT_MEASURED)).ravel()
                new = measured & np.isnan(seen)
                seen[new] = now
        finally:
            self.subscriber.close()


class Bench:
    """One service (fixed worker count and overflow policy) fed by one in-process simulator."""

    def __init__(self, scan, n_workers: int, overflow: str, protocol: str = "v1", max_batch: int | None = None,
                 credits: int | None = None) -> None:
        from simulators.eiger_server import EigerStreamServer
        from stream.analysis_setup import AnalysisSetup
        from stream.service import Service, ServiceConfig

        self.scan = scan
        self.server = EigerStreamServer("tcp://127.0.0.1:0", protocol=protocol, header_detail="all",
                                        image_appendix=self._stamp)
        config = ServiceConfig(setup=AnalysisSetup.default(), detector_endpoint=self.server.endpoint,
                               protocol=protocol, n_workers=n_workers, overflow=overflow,
                               series_timeout_s=120.0, results_timeout_s=60.0,
                               **({} if max_batch is None else {"worker_max_batch": max_batch}),
                               **({} if credits is None else {"worker_credits": credits}))
        started = time.monotonic()
        self.service = Service(config).start()
        self.startup_s = time.monotonic() - started
        self.subscriber = PublishedPixels(self.service.publish_endpoint)
        self.subscriber.start()
        self.sent_at: list[float] = []
        self.series_id = 0
        self._pids: dict = {}
        self._cpu_at_first: dict = {}

    def _stamp(self, frame_index0: int):
        """Called by the server for each image just before it is paced and sent: records the time."""
        if not self.sent_at:  # the series' CPU is counted from its first frame (not its header's encoding)
            self._cpu_at_first = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self.sent_at.append(time.monotonic())
        return None

    def series(self, frames: np.ndarray, n_frames: int, rate_hz: float | None, grid_shape=None) -> dict:
        """Stream one series and wait for its outcome; returns the figures."""
        from analysis.scan_grid import ScanGrid
        from simulators.frame_sources import ArrayFrameSource
        from simulators.eiger_files import EigerMetadata

        self.series_id += 1
        grid = ScanGrid(tuple(grid_shape)) if grid_shape else ScanGrid.by_index(n_frames)
        self.server.header_appendix = json.dumps({"braggmap_scan": grid.as_dict()})
        metadata = EigerMetadata(shape=frames.shape[1:], dtype=frames.dtype.name, pixel_mask=self.scan.pixel_mask,
                                 count_time_s=0.001, frame_time_s=0.001)
        source = ArrayFrameSource(frames, metadata, compression="bslz4")
        for position in range(source.n_frames):
            source.chunk(position)  # compress before the clock starts
        self.sent_at, self._cpu_at_first = [], {}  # _stamp fills both at this series' first frame
        self._pids = pids = {"service": "self", **{p.name: p.pid for p in self.service.workers}}
        for pid in pids.values():
            reset_peak_rss(pid)
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        clock_start = time.monotonic()
        report = self.server.send_series(source, series_id=self.series_id, rate_hz=rate_hz, n_frames=n_frames,
                                         wait_for_peers_s=30)
        outcome = self.service.wait_for_series(timeout_s=600)
        finished = time.monotonic()
        cpu_end = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cores = {name: (cpu_end[name] - cpu_start[name]) / (finished - clock_start)
                 for name in pids if cpu_start[name] is not None and cpu_end[name] is not None}
        time.sleep(0.3)  # the final snapshot reaches the subscriber
        sent = np.asarray(self.sent_at)
        if rate_hz:  # the server paces after the stamp: a frame leaves at max(stamp, schedule)
            sent = np.maximum(sent, sent[0] + np.arange(sent.size) / rate_hz)
        seen = self.subscriber.first_seen.get(self.series_id, np.full(grid.n_points, np.nan))
        n_points = min(sent.size, seen.size)
        published_ms = 1e3 * (seen[:n_points] - sent[:n_points])
        summary = outcome.summary
        return {
            "n": n_frames, "rate": rate_hz, "report": report, "outcome": outcome,
            "elapsed_s": finished - sent[0],
            "collector_ms": outcome.latencies_ms,
            "parts_ms": np.asarray(outcome.latency_parts_ms, dtype=np.float64).reshape(-1, 3),
            "published_ms": published_ms[np.isfinite(published_ms)],
            "received": summary.received if summary else None, "dropped": summary.dropped if summary else None,
            "results": outcome.results, "errors": dict(outcome.analysis_errors),
            "rss_kib": self.rss_kib(), "cpu_cores": cores,
            "cpu_s_from_first": {name: cpu_end[name] - self._cpu_at_first[name] for name in pids
                                 if cpu_end[name] is not None and self._cpu_at_first.get(name) is not None},
            "map_bytes": len(self.service.config.setup.parameter_names()) * grid.n_points * 12,
        }

    def warm_up(self, frames: np.ndarray, n_frames: int) -> None:
        """Two series of ``n_frames`` as fast as the service takes them (see the module docstring)."""
        for _ in range(2):
            self.series(frames, n_frames, None)

    def rss_kib(self) -> dict[str, tuple[int | None, int | None]]:
        """(VmHWM, VmRSS) in KiB of the service process and each worker."""
        pids = {"service": os.getpid(), **{p.name: p.pid for p in self.service.workers}}
        return {name: (proc_status_kib(pid, "VmHWM"), proc_status_kib(pid, "VmRSS")) for name, pid in pids.items()}

    def close(self) -> None:
        self.subscriber.stop_event.set()
        self.subscriber.join(2)
        self.service.stop()
        self.server.close()


def _analysis_process(batch: int, n_batches: int, barrier, results) -> None:
    """In a spawned process: the worker's batch path on synthetic frames, timed after every process
    of the group is warmed up (``barrier``); puts CPU ms per frame on ``results``."""
    from worker_path import WorkerPath

    path = WorkerPath(batch)
    for _ in range(3):
        path.run(path.batch_payloads)
    barrier.wait(600)  # a sibling that failed to start breaks it: no process waits forever
    started = time.process_time()
    for _ in range(n_batches):
        path.run(path.batch_payloads)
    results.put(1e3 * (time.process_time() - started) / (n_batches * batch))


def analysis_alone(n_processes: int, batch: int = 8, n_batches: int = 60) -> list[float]:
    """CPU ms per frame of ``n_processes`` analysis processes running at once, with no service, no
    simulator and no messages: what the workers alone cost when they share the machine."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n_processes), context.Queue()
    processes = [context.Process(target=_analysis_process, args=(batch, n_batches, barrier, results))
                 for _ in range(n_processes)]
    for process in processes:
        process.start()
    per_frame = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
    return per_frame


def print_scaling_ceiling(sustained: dict, cpu_per_frame: dict) -> None:
    """Where the 2-worker rate goes: the analysis alone in 1 and 2 processes, and the CPU per
    frame that the service process (ingest, collector, and here also the simulator and the
    subscriber) takes from the same cores in the 2-worker run."""
    one, two = analysis_alone(1)[0], analysis_alone(2)
    two_each = sum(two) / len(two)
    cores = os.cpu_count() or 1
    print(f"\nanalysis alone (no service, no simulator), batches of 8: 1 process {one:.2f} ms/frame, "
          f"2 at once {two_each:.2f} ms/frame each -> 2 workers alone could reach "
          f"{2 * one / two_each:.2f}x 1 worker", flush=True)
    if (1, "uint32") in cpu_per_frame:
        worker_ms, service_ms = cpu_per_frame[(1, "uint32")]
        print(f"1-worker uint32 run: worker {worker_ms:.2f} + service process {service_ms:.2f} ms of CPU per frame",
              flush=True)
    if (2, "uint32") in cpu_per_frame:
        workers_ms, service_ms = cpu_per_frame[(2, "uint32")]
        # all the CPU of a frame shares the cores, and each worker has at most one of them
        at_most = min(1e3 * cores / (workers_ms + service_ms), 1e3 * 2 / workers_ms)
        one_worker = sustained.get((1, "uint32"), float("nan"))
        print(f"2-worker uint32 run: workers {workers_ms:.2f} + service process {service_ms:.2f} ms of CPU per "
              f"frame on {cores} cores -> at most {at_most:.0f} frames/s; with 1 worker at "
              f"{one_worker:.0f} frames/s that is at most {at_most / one_worker:.2f}x", flush=True)


WHOLE_SCAN_STORE_BYTES = 4 * 2**30
"""The frame store keeps at most this much of the whole big scan (its later frames go to the workers
over loopback instead), so that the scan does not need 25 GB of disk."""


def print_growth(bench: "Bench", frames: np.ndarray, side: int) -> None:
    """Stream all ``side`` x ``side`` frames of the big scan and print how each process's RSS grows
    with the frames sent: the slope of a straight line through ``VmRSS`` sampled 4 times a second
    over the last two thirds of the scan (after the one-off growth of its start and of the switch
    to payloads over loopback when the frame store is full)."""
    store = bench.service.frame_store
    kept = store.max_series_bytes if store is not None else None
    pids = {"service": os.getpid(), **{p.name: p.pid for p in bench.service.workers}}
    samples: list[tuple[int, dict]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            samples.append((len(bench.sent_at), {name: proc_status_kib(pid, "VmRSS") for name, pid in pids.items()}))

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    if store is not None:
        store.max_series_bytes = WHOLE_SCAN_STORE_BYTES
    sampler.start()
    try:
        r = bench.series(frames, side * side, None, (side, side))
    finally:
        done.set()
        sampler.join(2)
        if store is not None:
            store.max_series_bytes = kept
    late = [(n, rss) for n, rss in samples if side * side / 3 <= n < side * side]
    slopes = []
    for name in pids:
        points = np.array([(n, rss[name]) for n, rss in late if rss.get(name)], dtype=np.float64)
        if len(points) >= 10 and np.ptp(points[:, 0]) > 0:
            slopes.append(f"{name} {1024 * np.polyfit(points[:, 0], points[:, 1], 1)[0]:+.0f} B")
    print(f"  {side} x {side} scan, all {r['n']} frames in {r['elapsed_s']:.1f} s ({r['n'] / r['elapsed_s']:.1f} "
          f"frames/s), dropped {r['dropped']}: peak RSS {rss_line(r['rss_kib'])}; RSS growth per frame sent over "
          f"frames {side * side // 3}-{side * side}: {', '.join(slopes) or '-'} (the map state, allocated when the "
          f"series opens, is {r['map_bytes'] / side**2:.0f} B per point)", flush=True)


def rss_line(rss: dict) -> str:
    return ", ".join(f"{name} {hwm / 1024:.0f} MiB" if hwm else f"{name} -" for name, (hwm, _rss) in rss.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="*", default=[50, 100, 200], help="fixed rates, frames/s")
    parser.add_argument("--rate-frames", type=int, default=300, help="frames per fixed-rate series")
    parser.add_argument("--max-frames", type=int, default=1000, help="frames per sustained-rate series")
    parser.add_argument("--repeats", type=int, default=5, help="sustained-rate series per worker count and "
                        "pixel type, 1 and 2 workers in turn; the median pair ratio is the scaling, the "
                        "median series gives the bound")
    parser.add_argument("--small-grid", type=int, default=61, help="side of the first RSS scan (all frames)")
    parser.add_argument("--big-grid", type=int, default=200, help="side of the second RSS scan")
    parser.add_argument("--big-frames", type=int, default=2000, help="frames sent of the big scan")
    parser.add_argument("--no-whole-big-scan", dest="whole_big_scan", action="store_false",
                        help="skip streaming the whole big scan (all its frames, ~1-2 min) for the RSS growth")
    parser.add_argument("--distinct-frames", type=int, default=4, help="pre-rendered frames the simulator cycles")
    parser.add_argument("--rate-workers", type=int, nargs="*", default=[1, 2], help="worker counts of the fixed rates")
    parser.add_argument("--max-batch", type=int, help="the workers' --max-batch (default: the service's)")
    parser.add_argument("--credits", type=int, help="the workers' --credits, frames in flight to each (default: "
                        "the service's, two batches)")
    parser.add_argument("--sustained-only", action="store_true", help="only the sustained rates (1 and 2 workers)")
    parser.add_argument("--quick", action="store_true", help="a short run (~1-2 min): fewer frames everywhere")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.rate_frames, args.max_frames, args.small_grid, args.big_frames = 100, 100, 15, 300
        args.whole_big_scan = False
        args.repeats = 1

    import logging

    logging.basicConfig(level=logging.WARNING)
    for name in ("silx", "pyFAI"):
        logging.getLogger(name).setLevel(logging.ERROR)

    print(f"os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    scan, frames32 = render_frames(args.distinct_frames)
    frames16 = as_uint16(frames32)
    print(f"{args.distinct_frames} distinct EIGER X 4M frames {frames32.shape[1:]} cycled; simulator holds "
          f"{(frames32.nbytes + frames16.nbytes) / 2**20:.0f} MiB of raw frames in the service process", flush=True)

    # block first: the sustained rate (uint32, uint16) with 1 and 2 workers, one service of each
    # alive at once and their series interleaved, so that each 2-worker series has a 1-worker one
    # next to it in time (this machine's speed drifts by ~10 % over minutes)
    sustained, cpu_per_frame = {}, {}  # (workers, dtype) -> frames/s; -> (workers, service) CPU ms per frame
    pair_ratios: dict[str, list[float]] = {}  # dtype -> 2-worker / 1-worker rate of each adjacent pair
    benches: dict[int, Bench] = {}
    try:
        for n_workers in (1, 2):
            benches[n_workers] = Bench(scan, n_workers=n_workers, overflow="block", max_batch=args.max_batch,
                                       credits=args.credits)
            print(f"{n_workers} worker(s), overflow=block: service start-up {benches[n_workers].startup_s:.1f} s",
                  flush=True)
        for bench in benches.values():
            bench.warm_up(frames32, args.max_frames)
        for label, frames in (("uint32", frames32), ("uint16", frames16)):
            print(f"\nmax sustained {label}, series of 1 and 2 workers in turn:", flush=True)
            runs: dict[int, list] = {1: [], 2: []}  # workers -> [(rate, (workers, service) CPU ms per frame)]
            for repeat in range(args.repeats):
                pair = {}
                for n_workers in (1, 2) if repeat % 2 == 0 else (2, 1):  # either first in turn
                    r = benches[n_workers].series(frames, args.max_frames, None)
                    pair[n_workers] = rate = r["n"] / r["elapsed_s"]
                    runs[n_workers].append((rate, tuple(
                        1e3 * sum(c for name, c in r["cpu_s_from_first"].items() if (name == "service") == is_service)
                        / r["n"] for is_service in (False, True))))
                    print(f"  {n_workers} worker(s): {r['n']} frames in {r['elapsed_s']:.1f} s = {rate:.1f} frames/s "
                          f"({1e3 / rate:.1f} ms/frame), dropped {r['dropped']}, errors {r['errors'] or 0}; "
                          f"ingest -> placed {percentiles(r['collector_ms'])}", flush=True)
                pair_ratios.setdefault(label, []).append(pair[2] / pair[1])
            for n_workers, worker_runs in runs.items():
                median_run = sorted(worker_runs)[len(worker_runs) // 2]  # the middle one of an odd count
                sustained[(n_workers, label)], cpu_per_frame[(n_workers, label)] = median_run
                if len(worker_runs) > 1:
                    print(f"  median of {len(worker_runs)} {label} series, {n_workers} worker(s): "
                          f"{median_run[0]:.1f} frames/s", flush=True)
            ratios = pair_ratios[label]
            print(f"  2 workers / 1 worker, each pair in turn: {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"median {float(np.median(ratios)):.2f}x", flush=True)
        benches.pop(1).close()  # the RSS below is that of the 2-worker service alone
        if not args.sustained_only:
            bench = benches[2]
            print("\n2 workers, overflow=block: peak RSS", flush=True)
            side = args.small_grid
            r = bench.series(frames32, side * side, None, (side, side))
            print(f"  {side} x {side} scan, all {side * side} frames in {r['elapsed_s']:.1f} s "
                  f"({r['n'] / r['elapsed_s']:.1f} frames/s), dropped {r['dropped']}: peak RSS "
                  f"{rss_line(r['rss_kib'])}; map state {r['map_bytes'] / 2**20:.1f} MiB", flush=True)
            side = args.big_grid
            r = bench.series(frames32, args.big_frames, None, (side, side))
            print(f"  {side} x {side} scan, first {args.big_frames} frames in {r['elapsed_s']:.1f} s "
                  f"({r['n'] / r['elapsed_s']:.1f} frames/s): peak RSS {rss_line(r['rss_kib'])}; "
                  f"map state {r['map_bytes'] / 2**20:.1f} MiB", flush=True)
            if args.whole_big_scan:
                print_growth(bench, frames32, side)
    finally:
        for bench in benches.values():
            bench.close()
    # then drop: latency at fixed rates and at 90 % of the sustained rate (1 and 2 workers)
    for n_workers in [] if args.sustained_only else args.rate_workers:
        bench = Bench(scan, n_workers=n_workers, overflow="drop", max_batch=args.max_batch,
                      credits=args.credits)
        print(f"\n{n_workers} worker(s), overflow=drop (service start-up {bench.startup_s:.1f} s)", flush=True)
        try:
            near_max = sustained.get((n_workers, "uint32"))
            rates = [(rate, args.rate_frames, "") for rate in args.rates]
            if near_max:  # at least 2 s of it
                rate = round(NEAR_MAX * near_max)
                rates.append((rate, max(args.rate_frames, 2 * rate), f" = {100 * NEAR_MAX:.0f} % of the sustained rate"))
            # as long as the longest measured series: none of them grows the frame store's files
            bench.warm_up(frames32, max(n_frames for _, n_frames, _ in rates))
            for rate, n_frames, why in rates:
                r = bench.series(frames32, n_frames, rate)
                achieved = r["report"].achieved_rate_hz or 0.0
                print(f"  {rate:5.0f} frames/s{why} (sent at {achieved:5.1f}): received {r['received']}, dropped "
                      f"{r['dropped']}, analysed {r['results']}", flush=True)
                print(f"        ingest -> placed on map     {percentiles(r['collector_ms'])}", flush=True)
                for column, label in enumerate(("waiting for a worker", "analysis in the worker",
                                                "result -> placed")):
                    print(f"          {label:24s}  {percentiles(r['parts_ms'][:, column])}", flush=True)
                busy = ", ".join(f"{name} {cores:.2f}" for name, cores in r["cpu_cores"].items())
                print(f"        CPU cores busy: {busy} (service: also the simulator and subscriber)", flush=True)
                print(f"        sent -> in published map    {percentiles(r['published_ms'])}", flush=True)
        finally:
            bench.close()

    for label in ("uint32", "uint16"):
        one, two = sustained.get((1, label)), sustained.get((2, label))
        if one and two:
            print(f"2 workers / 1 worker ({label}): median of the pairs in turn "
                  f"{float(np.median(pair_ratios[label])):.2f}x; of the median series {two / one:.2f}x", flush=True)
    if not args.quick:
        print_scaling_ceiling(sustained, cpu_per_frame)
    print(f"load average {os.getloadavg()[0]:.2f} at end", flush=True)


if __name__ == "__main__":
    main()

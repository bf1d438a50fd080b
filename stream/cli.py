"""The ``braggmap`` command.

Subcommands: ``demo`` (the embedded default: a synthetic scan streamed by the simulator through
the whole service), ``replay`` (re-analyse a recorded EIGER scan through the same path),
``serve`` (the live service against a detector), ``worker`` (one more analysis worker, on any
host), ``view`` (the live viewer, its own process: the service never imports Qt). The simulator
runs as its own process, as a real detector would, so the service never imports it.
"""

from __future__ import annotations

import argparse
import os

# bitshuffle's OpenMP threads stall for seconds on a busy 2-core machine; one thread per
# process is as fast (the service scales with processes). Set before bitshuffle loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import logging
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from analysis.errors import BraggmapError
from analysis.scan_grid import ScanGrid

# The service's modules (numba, pyFAI, zmq) are imported inside the commands so that
# `braggmap --help` answers at once.
DEFAULT_PONI = "p10_lapkin_eiger4m.poni"
DEFAULT_PEAKS = "peaks_cspbbr2cl_lapkin.yaml"

log = logging.getLogger("braggmap")

DEMO_GRID = (25, 25)


class CommandError(BraggmapError):
    """A one-line error for the user; the command exits with status 2."""


# -- argument parsing ----------------------------------------------------------------------------
MAX_AUTO_WORKERS = 8
"""Most workers ``--workers auto`` starts (each holds its own tables, ~0.5 GB for the 4M default)."""


def default_worker_count() -> int:
    """One worker per CPU core available to this process, 1 to :data:`MAX_AUTO_WORKERS`.

    The service's own threads need little (~1.5 ms of CPU per 4M frame against ~7 ms in a
    worker), so on 2 cores 2 workers sustain ~1.7x the rate of one (``BENCHMARKS.md``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


def _worker_count(text: str) -> int:
    if text == "auto":
        return default_worker_count()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', not {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker, not {count}")
    return count


def _add_analysis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("analysis")
    group.add_argument("--poni", help=f"pyFAI PONI geometry file (default: config/{DEFAULT_PONI})")
    group.add_argument("--peaks", help=f"peak model YAML (default: config/{DEFAULT_PEAKS})")
    group.add_argument("--background", help="Kapton-only background frame (.npy or HDF5 'background')")
    group.add_argument("--workers", type=_worker_count, default="auto",
                       help=f"analysis worker processes, or 'auto': one per CPU core this process may run on, "
                            f"at most {MAX_AUTO_WORKERS} (default; {default_worker_count()} here)")
    group.add_argument("--output", type=Path, help="folder for the map files (HDF5 + PNG)")


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", nargs=2, type=int, metavar=("NY", "NX"),
                        help="raster shape (rows = slow axis, columns = fast axis)")
    parser.add_argument("--snake", action="store_true", help="odd rows scanned in reverse")
    parser.add_argument("--step", nargs=2, type=float, metavar=("DY_UM", "DX_UM"),
                        help="step sizes in micrometres (default 1 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braggmap", description="braggmap: live analysis of X-ray nanodiffraction raster scans streamed by DECTRIS EIGER detectors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the service does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="stream a bundled synthetic 25 x 25 scan through the service",
                               description="Generate (once, cached) a synthetic supercrystal scan, "
                               "stream it with the detector simulator over loopback into the service "
                               "and write the maps as HDF5 + PNG.")
    _add_analysis_options(demo)
    demo.add_argument("--protocol", choices=("v1", "v2"), default="v1", help="EIGER stream version")
    demo.add_argument("--rate", type=float, default=None, help="frames per second (default: as fast as possible)")
    demo.add_argument("--cache-dir", type=Path, help="where the synthetic scan is cached")
    demo.add_argument("--bluesky", action=argparse.BooleanOptionalAction, default=True,
                      help="run the raster through a bluesky RunEngine (simulated beamline, ophyd.sim stage) so "
                           "the service places frames from the run documents, on the real motor axes (default); "
                           "--no-bluesky: the detector simulator alone, grid from its header appendix")
    demo.add_argument("--no-viewer", action="store_true",
                      help="do not open the live viewer (it opens when a display exists)")

    replay = commands.add_parser("replay", help="re-analyse a recorded EIGER scan (master file)",
                                 description="Stream a recorded EIGER HDF5 scan through the detector "
                                 "simulator into the service and write the maps.")
    replay.add_argument("master", type=Path, help="EIGER master file (NAME_master.h5)")
    _add_analysis_options(replay)
    _add_grid_options(replay)
    replay.add_argument("--rate", type=float, default=None, help="frames per second (default: as fast as possible)")
    replay.add_argument("--protocol", choices=("v1", "v2"), default="v1", help="EIGER stream version")

    serve = commands.add_parser("serve", help="run the live service against a detector stream")
    _add_analysis_options(serve)
    _add_grid_options(serve)
    serve.add_argument("--detector", default="tcp://127.0.0.1:9999",
                       help="detector stream endpoint (v1 port 9999, v2 port 31001)")
    serve.add_argument("--protocol", choices=("auto", "v1", "v2"), default="auto")
    serve.add_argument("--work-endpoint", default="tcp://127.0.0.1:0",
                       help="endpoint workers connect to (bind address; use tcp://0.0.0.0:PORT for remote workers)")
    serve.add_argument("--collector-endpoint", default="tcp://127.0.0.1:0",
                       help="endpoint results are sent to (bind address)")
    serve.add_argument("--publish", default="tcp://127.0.0.1:5557",
                       help="map snapshot PUB endpoint for viewers; 'none' to publish no maps (files only)")
    serve.add_argument("--detail", default="tcp://127.0.0.1:5558",
                       help="frame-detail endpoint for viewers (raw frame and fits of a scan point); 'none' "
                            "to switch it off, and with it the frame store (no payloads written to disk; the "
                            "workers then receive every payload over the network)")
    serve.add_argument("--frame-store-dir", type=Path, default=None,
                       help="where the frame store keeps the compressed payloads of the current and the "
                            "previous series for the frame-detail endpoint (default: the system temporary "
                            "folder; a series takes about its payload bytes)")
    serve.add_argument("--steering", default="tcp://127.0.0.1:5559",
                       help="steering endpoint (REQ/REP JSON): where to scan next, from the current maps; "
                            "'none' to switch it off")
    serve.add_argument("--overflow", choices=("drop", "block"), default="drop",
                       help="when workers cannot keep up: drop and count frames (live) or slow the sender")
    serve.add_argument("--series-timeout", type=float, default=30.0,
                       help="close a series after this many seconds without a message")

    view = commands.add_parser("view", help="open the live viewer on a running service",
                               description="Show the maps of a running service as they grow; click a "
                               "pixel for its frame and fits; draw a region for a finer scan.")
    view.add_argument("--maps", default="tcp://127.0.0.1:5557", help="the service's map PUB endpoint (serve --publish)")
    view.add_argument("--detail", default="tcp://127.0.0.1:5558", help="the service's frame-detail endpoint (serve --detail); 'none': no frame detail")
    view.add_argument("--steering", default="tcp://127.0.0.1:5559",
                      help="the service's steering endpoint (serve --steering): drawn regions are sent there")

    worker = commands.add_parser("worker", help="run one analysis worker (scale out across hosts)")
    worker.add_argument("--work-endpoint", required=True, help="the ingest's worker endpoint")
    worker.add_argument("--collector-endpoint", required=True, help="the collector's endpoint")
    worker.add_argument("--poni")
    worker.add_argument("--peaks")
    worker.add_argument("--background")
    worker.add_argument("--credits", type=int, help="frames in flight to this worker (default: twice the batch size)")
    worker.add_argument("--max-batch", type=int,
                        help="frames analysed together at most when they queue up (default 8; 1: one by one)")
    worker.add_argument("--read-frame-store", action="store_true",
                        help="read payloads from the serving host's frame store instead of receiving them "
                             "(only for a worker on that host; it falls back to receiving them if it cannot)")
    return parser


# -- helpers -------------------------------------------------------------------------------------
def _setup_from(args):
    from stream.analysis_setup import AnalysisSetup, resolve_config_path

    setup = AnalysisSetup(
        poni_path=resolve_config_path(args.poni, DEFAULT_PONI),
        peaks_path=resolve_config_path(args.peaks, DEFAULT_PEAKS),
        background_path=str(args.background) if args.background else None,
    )
    for label, path in (("geometry", setup.poni_path), ("peak model", setup.peaks_path),
                        ("background", setup.background_path)):
        if path is not None and not Path(path).is_file():
            raise CommandError(f"{label} file {path} does not exist")
    _check_setup(setup)
    return setup


def _check_setup(setup) -> None:
    """Parse the configuration once here, so a bad file is a one-line error before anything starts."""
    from stream.config_files import load_geometry, load_peak_model

    load_geometry(setup.poni_path)
    load_peak_model(setup.peaks_path)


def _grid_from(args) -> ScanGrid | None:
    if not getattr(args, "grid", None):
        return None
    step = tuple(args.step) if args.step else (1.0, 1.0)
    return ScanGrid(shape=(args.grid[0], args.grid[1]), snake=args.snake, step_um=step)


def _write_outcome(outcome, setup, output_dir: Path) -> tuple[Path, Path]:
    from analysis.frame_analysis import FrameAnalyzer
    from stream.config_files import load_peak_model
    from stream.map_figure import render_map_figure
    from stream.map_file import write_map_file
    from stream.service import output_paths

    peak_model = load_peak_model(setup.peaks_path)
    units = FrameAnalyzer.parameter_units_for(peak_model)
    descriptions = FrameAnalyzer.parameter_descriptions_for(peak_model)
    h5_path, png_path = output_paths(output_dir, outcome.info.series_id)
    write_map_file(h5_path, outcome, units, descriptions, setup.poni_path, setup.peaks_path)
    title = f"series {outcome.info.series_id}"
    if outcome.summary is not None:
        title += " — " + outcome.summary.line()
    render_map_figure(png_path, outcome.maps.values, units, outcome.grid, title=title,
                      profile=_headline_profile(outcome))
    return h5_path, png_path


def _headline_profile(outcome):
    """<a> against distance to the crystal edge, when the scan has a crystal and <a>."""
    from analysis.crystal_region import distance_to_edge_um, profile_vs_distance, supercrystal_mask

    maps = outcome.maps.values
    if outcome.grid.by_frame_index or "a_mean_nm" not in maps or "saxs_intensity" not in maps:
        return None
    inside = supercrystal_mask(maps["saxs_intensity"])
    if not inside.any():
        return None
    distance = distance_to_edge_um(inside, tuple(abs(s) for s in outcome.grid.step_um))
    return "a_mean_nm", profile_vs_distance(maps["a_mean_nm"], distance, inside=inside)


def _simulator_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "simulators", *arguments]


def _start_simulator(master: Path, protocol: str, rate: float | None, series_id: int,
                     appendix: str | None) -> tuple[subprocess.Popen, str]:
    """Start the detector simulator process; returns it and the endpoint it bound."""
    command = _simulator_command("serve", str(master), "--endpoint", "tcp://127.0.0.1:0",
                                 "--protocol", protocol, "--series-id", str(series_id),
                                 "--header-detail", "all", "--wait-for-peers", "300")
    if rate:
        command += ["--rate", str(rate)]
    if appendix:
        command += ["--header-appendix", appendix]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("endpoint "):
        process.wait(30)
        raise CommandError(_last_error_line(process.stderr.read() or line, "the detector simulator did not start"))
    return process, line.split()[1]


def _start_beamline(master: Path, protocol: str) -> tuple[subprocess.Popen, str, str]:
    """Start the simulated beamline (RunEngine raster over ``master``'s frames); returns it, its
    detector stream endpoint and its document log endpoint."""
    command = _simulator_command("beamline", str(master), "--protocol", protocol, "--wait-for-peers", "300")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [process.stdout.readline(), process.stdout.readline()]
    if not (lines[0].startswith("endpoint ") and lines[1].startswith("documents ")):
        process.wait(30)
        raise CommandError(_last_error_line(process.stderr.read() or "".join(lines),
                                            "the simulated beamline did not start"))
    return process, lines[0].split()[1], lines[1].split()[1]


def _viewer_command(maps_endpoint: str, detail_endpoint: str | None, steering_endpoint: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "viewer", "--maps", maps_endpoint]
    if detail_endpoint:
        command += ["--detail", detail_endpoint]
    return command + ["--steering", steering_endpoint] if steering_endpoint else command


def _display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _start_demo_viewer(service) -> None:
    """Open the viewer on the demo's service (its own session: it stays open after the demo).

    Its output goes to a log file, not to the demo's terminal or pipe; a viewer that cannot
    start (no usable display, missing Qt system libraries) is reported in one line."""
    if service.publish_endpoint is None:
        return
    log_path = Path(tempfile.gettempdir()) / f"braggmap-viewer-{os.getpid()}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(_viewer_command(service.publish_endpoint, service.detail_endpoint),
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                   start_new_session=True)
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:
        print(f"braggmap demo: the live viewer is open (close it when done; its log: {log_path})", flush=True)
        return
    lines = [line.strip() for line in log_path.read_text().splitlines() if line.strip()]
    reason = next((line for hint in ("could not connect", "is needed", "platform plugin", "rror")
                   for line in lines if hint in line), lines[-1] if lines else "")
    print(f"braggmap demo: the live viewer could not start ({reason or f'exit status {process.returncode}'}); "
          f"the maps are still written (log: {log_path})", flush=True)


def _run_through_service(master: Path, setup, grid: ScanGrid | None, args,
                         output_dir: Path, appendix: str | None = None, on_started=None) -> int:
    """Simulator -> service -> map files; prints the accounting and where the maps are.
    ``on_started(service)`` is called once the service runs (e.g. to open a viewer)."""
    from stream.progress import ProgressLine
    from stream.service import Service, ServiceConfig, ServiceError

    documents = None
    if getattr(args, "bluesky", False):
        simulator, endpoint, documents = _start_beamline(master, args.protocol)
    else:
        simulator, endpoint = _start_simulator(master, args.protocol, args.rate, 1, appendix)
    config = ServiceConfig(setup=setup, detector_endpoint=endpoint, protocol=args.protocol,
                           n_workers=args.workers, grid=grid, overflow="block", series_timeout_s=60.0,
                           documents_endpoint=documents)
    service = Service(config)
    written: list[tuple[Path, Path]] = []
    failures: list[str] = []

    def write(outcome) -> None:
        try:
            written.append(_write_outcome(outcome, setup, output_dir))
        except Exception as exc:
            log.exception("writing the maps failed")
            failures.append(f"writing the maps to {output_dir} failed: {type(exc).__name__}: {exc}")

    service.on_series_complete = write
    outcome = None
    try:
        try:
            service.start()
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        if on_started is not None:
            on_started(service)
        progress = ProgressLine(stream=sys.stderr)
        service.collector.progress = progress.update
        outcome = _wait_for_outcome(service, simulator)
        progress.finish()
    finally:
        service.stop()
        # the plain simulator exits once its series is out; it then reports what it sent
        sent = _stop_simulator(simulator, grace_s=5.0 if outcome is not None and documents is None else 0.0)
    if sent:
        print(f"detector simulator: {sent}")
    geometry_problems = [p for p in outcome.problems if "geometry" in p or "does not match" in p]
    if geometry_problems and outcome.results and all(
            e for e in outcome.analysis_errors) and sum(outcome.analysis_errors.values()) >= outcome.results:
        raise CommandError(geometry_problems[0])
    print(outcome.summary.line() if outcome.summary else "frames: no accounting summary (series incomplete)")
    for reason, count in (outcome.summary.reasons.items() if outcome.summary else ()):
        print(f"warning: {count} message(s) not decodable: {reason}")
    for problem in outcome.problems:
        print(f"warning: {problem}")
    for error, count in outcome.analysis_errors.items():
        print(f"warning: {count} frames not analysed: {error}")
    if failures:
        raise CommandError(failures[0])
    if written:
        h5_path, png_path = written[-1]
        print(f"maps: {h5_path}")
        print(f"figure: {png_path}")
    return 0


def _stop_simulator(simulator: subprocess.Popen, grace_s: float) -> str:
    """Let the simulator exit by itself for up to ``grace_s`` (it has sent its series), else
    stop it.

    Parameters
    ----------
    simulator : subprocess.Popen
        The detector simulator (or simulated beamline) process, stdout piped.
    grace_s : float
        Seconds to wait before terminating it (0 after an error).

    Returns
    -------
    str
        Its report of what it sent (``sent N frames of series S in T s (R Hz)``), or ``""``.
    """
    try:
        simulator.wait(grace_s)
    except subprocess.TimeoutExpired:
        simulator.terminate()
    simulator.wait(10)
    report = simulator.stdout.read() if simulator.stdout is not None else ""
    return next((line.strip() for line in report.splitlines() if line.startswith("sent ")), "")


def _wait_for_outcome(service, simulator: subprocess.Popen):
    while True:
        try:
            return service.wait_for_series(0.2)
        except queue.Empty:
            pass
        for series in list(service.collector.series.values()):
            geometry = [p for p in series.problems if "does not match" in p]
            if geometry:
                raise CommandError(geometry[0])
        if simulator.poll() not in (None, 0):
            raise CommandError(_last_error_line(simulator.stderr.read(),
                                                f"the detector simulator failed ({simulator.returncode})"))


# -- commands ------------------------------------------------------------------------------------
def command_demo(args) -> int:
    started = time.monotonic()
    setup = _setup_from(args)
    cache_dir = args.cache_dir or Path(os.environ.get("BRAGGMAP_CACHE", Path.home() / ".cache" / "braggmap"))
    print(f"braggmap demo: preparing the synthetic {DEMO_GRID[0]} x {DEMO_GRID[1]} scan in {cache_dir} "
          "(generated once, then cached)", flush=True)
    result = subprocess.run(_simulator_command("synthesize", "--cache-dir", str(cache_dir)),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(_last_error_line(result.stderr, "synthetic scan generation failed"))
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines() if " " in line)
    master = Path(lines["master"])
    if args.background is None and "background" in lines:
        from stream.analysis_setup import AnalysisSetup

        setup = AnalysisSetup(setup.poni_path, setup.peaks_path, lines["background"])
    grid = None  # the simulator announces the raster in the series header appendix
    output_dir = args.output or Path(tempfile.mkdtemp(prefix="braggmap-demo-"))
    driver = "a bluesky RunEngine grid scan drives the simulated beamline; " if args.bluesky else ""
    print(f"braggmap demo: {driver}streaming {master.name} over loopback (EIGER stream {args.protocol}) "
          f"into {args.workers} worker(s)", flush=True)
    viewer = _start_demo_viewer if _display_available() and not args.no_viewer else None
    status = _run_through_service(master, setup, grid, args, output_dir, on_started=viewer)
    print(f"braggmap demo: done in {time.monotonic() - started:.0f} s; maps written to {output_dir}")
    return status


def command_replay(args) -> int:
    setup = _setup_from(args)
    if not args.master.is_file():
        raise CommandError(f"master file {args.master} does not exist")
    output_dir = args.output or args.master.parent / f"{args.master.stem.removesuffix('_master')}_maps"
    return _run_through_service(args.master, setup, _grid_from(args), args, output_dir)


def _off_or(endpoint: str) -> str | None:
    """None for an endpoint option given as 'none' (the feature switched off)."""
    return None if endpoint.lower() == "none" else endpoint


def serve_config(args, setup):
    """The :class:`stream.service.ServiceConfig` of ``braggmap serve`` from its parsed options."""
    from stream.service import ServiceConfig

    return ServiceConfig(
        setup=setup, detector_endpoint=args.detector, protocol=args.protocol, n_workers=args.workers,
        work_endpoint=args.work_endpoint, collector_endpoint=args.collector_endpoint,
        publish_endpoint=_off_or(args.publish), overflow=args.overflow, series_timeout_s=args.series_timeout,
        grid=_grid_from(args), detail_endpoint=_off_or(args.detail), steering_endpoint=_off_or(args.steering),
        frame_store_dir=None if args.frame_store_dir is None else str(args.frame_store_dir),
    )


def command_serve(args) -> int:
    from stream.gc_tuning import freeze_startup_objects
    from stream.service import Service

    setup = _setup_from(args)
    output_dir = args.output or Path.cwd() / "braggmap-output"
    config = serve_config(args, setup)

    def report(outcome) -> None:
        h5_path, png_path = _write_outcome(outcome, setup, output_dir)
        print(outcome.summary.line() if outcome.summary else "frames: series incomplete", flush=True)
        print(f"maps: {h5_path}\nfigure: {png_path}", flush=True)

    with Service(config, on_series_complete=report) as service:
        freeze_startup_objects()  # this process is the service's: see stream.gc_tuning
        print(f"braggmap: ready; detector {args.detector}, workers connect to {service.ingest.work_endpoint}, "
              f"results to {service.collector.endpoint}, maps published on {service.publish_endpoint}, "
              f"frame detail on {service.detail_endpoint}, steering on {service.steering_endpoint}", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("braggmap: stopping")
    return 0


def command_worker(args) -> int:
    from stream.worker import DEFAULT_MAX_BATCH, WorkerConfig, credits_for, run_worker_process

    setup = _setup_from(args)
    max_batch = DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch
    credits = credits_for(max_batch) if args.credits is None else args.credits
    if credits < 1 or max_batch < 1:
        raise SystemExit("braggmap worker: --credits and --max-batch must be >= 1")
    run_worker_process(WorkerConfig(args.work_endpoint, args.collector_endpoint, setup, credits=credits,
                                    max_batch=max_batch, read_frame_store=args.read_frame_store))
    return 0


def command_view(args) -> int:
    """The viewer runs as its own process (Qt stays out of the service's packages)."""
    try:
        steering = _off_or(args.steering)
        return subprocess.call(_viewer_command(args.maps, _off_or(args.detail), steering))
    except KeyboardInterrupt:
        return 130


def configure_logging(verbose: bool) -> None:
    """Our warnings on stderr (everything with -v); silx/pyFAI's note about the missing
    optional pyOpenCL is noise for a command-line user."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("silx", "pyFAI"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _last_error_line(text: str, default: str) -> str:
    """The simulator's one-line error, without its own ``error:`` prefix."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else default


COMMANDS = {"demo": command_demo, "replay": command_replay, "serve": command_serve, "worker": command_worker,
            "view": command_view}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # a supervisor (systemd, a beamline's process manager, ``kill``) stops the service with
    # SIGTERM: shut down as on Ctrl-C (workers stopped, sockets closed), not mid-way
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return COMMANDS[args.command](args)
    except BraggmapError as exc:
        print(f"braggmap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

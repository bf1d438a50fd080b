"""Command line of the simulators: ``python -m simulators serve MASTER.h5 [options]``.

``serve`` binds the EIGER stream, prints ``endpoint tcp://HOST:PORT`` on the first stdout line
(so a parent process can connect to an OS-assigned port), waits for a PULL peer, sends one
series and exits 0. Bad files and options end with a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import os

# bitshuffle's OpenMP threads stall for seconds on a busy 2-core machine; one thread per
# process is as fast (the service scales with processes). Set before bitshuffle loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import json
import logging
import sys

from analysis.errors import BraggmapError

DEFAULT_ENDPOINTS = {"v1": "tcp://127.0.0.1:9999", "v2": "tcp://127.0.0.1:31001"}


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    serve = subparsers.add_parser(
        "serve", help="replay an EIGER master file as a detector stream",
        description="Bind a ZeroMQ PUSH socket like a DECTRIS EIGER and stream the frames of an HDF5 master "
                    "file as one series (header, images, series end).")
    serve.add_argument("master", help="EIGER <name>_master.h5 (or a lone data file)")
    serve.add_argument("--endpoint", help="where to bind; port 0 picks a free one (default tcp://127.0.0.1:9999 "
                                          "for v1, :31001 for v2)")
    serve.add_argument("--protocol", choices=("v1", "v2"), default="v1", help="EIGER stream version (default v1)")
    serve.add_argument("--header-detail", choices=("none", "basic", "all"), default="basic",
                       help="global header content (default basic)")
    serve.add_argument("--encoding", choices=("bslz4", "lz4", "none"), default="bslz4",
                       help="image compression on the wire (default bslz4)")
    serve.add_argument("--rate", type=_positive_float, metavar="HZ", help="frame rate (default: as fast as possible)")
    serve.add_argument("--series-id", type=int, default=1, help="series id (default 1)")
    serve.add_argument("--n-frames", type=int, help="frames to send (default all; more cycles through the file)")
    serve.add_argument("--wait-for-peers", type=float, default=60.0, metavar="S",
                       help="seconds to wait for a PULL peer before sending (default 60)")
    serve.add_argument("--header-appendix", help="text sent as the header appendix (v2 start user_data)")
    serve.set_defaults(handler=command_serve)
    return serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators", description="braggmap detector simulators")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    from simulators.beamline import add_beamline_parser

    add_beamline_parser(subparsers)
    synthesize = subparsers.add_parser(
        "synthesize", help="write (or find in the cache) the synthetic supercrystal scan",
        description="Generate the default synthetic 25 x 25 supercrystal scan once (EIGER master + data "
                    "files, truth maps, Kapton background) and print where it is: lines 'master PATH', "
                    "'truth PATH' and 'background PATH'.")
    synthesize.add_argument("--cache-dir", required=True, help="cache folder")
    synthesize.add_argument("--grid", nargs=2, type=int, metavar=("NY", "NX"), help="raster shape (default 25 25)")
    synthesize.set_defaults(handler=command_synthesize)
    return parser


def command_synthesize(args) -> int:
    from simulators.synthetic_scan import SyntheticScanConfig, ensure_cached_scan, truth_path

    config = SyntheticScanConfig(grid_shape=tuple(args.grid)) if args.grid else SyntheticScanConfig()
    master = ensure_cached_scan(args.cache_dir, config)
    print(f"master {master}")
    print(f"truth {truth_path(master)}")
    print(f"background {truth_path(master)}")
    return 0


def scan_appendix(metadata) -> str | None:
    """Header appendix describing the raster (``{"braggmap_scan": ...}``) when the files carry
    one (synthetic scans do), as a user would configure the detector's ``header_appendix``."""
    grid_json = (metadata.extra or {}).get("scan_grid_json")
    if not grid_json:
        return None
    return json.dumps({"braggmap_scan": json.loads(grid_json)})


def command_serve(args) -> int:
    from simulators.eiger_files import open_eiger_scan
    from simulators.eiger_server import EigerStreamServer

    with open_eiger_scan(args.master) as scan:
        endpoint = args.endpoint or DEFAULT_ENDPOINTS[args.protocol]
        appendix = args.header_appendix if args.header_appendix is not None else scan_appendix(scan.metadata)
        with EigerStreamServer(endpoint, protocol=args.protocol, header_detail=args.header_detail,
                               encoding=args.encoding, header_appendix=appendix) as server:
            print(f"endpoint {server.endpoint}", flush=True)
            report = server.send_series(scan, series_id=args.series_id, rate_hz=args.rate,
                                        wait_for_peers_s=args.wait_for_peers, n_frames=args.n_frames)
            rate = f"{report.achieved_rate_hz:.1f} Hz" if report.achieved_rate_hz else "n/a"
            print(f"sent {report.frames_sent} frames of series {report.series_id} in {report.elapsed_s:.3f} s "
                  f"({rate})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        for name in ("silx", "pyFAI"):  # the optional-pyOpenCL note is noise here
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.handler(args)
    except BraggmapError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

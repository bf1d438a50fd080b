"""A simulated beamline on loopback: detector stream simulator, document log, RunEngine, sample
stage and the EIGER device, wired as at the beamline (the analysis service connects to
:attr:`SimulatedBeamline.stream_endpoint` and :attr:`SimulatedBeamline.documents_endpoint`).

``python -m simulators beamline MASTER.h5`` (see :func:`add_beamline_parser`) replays a recorded
raster scan this way: a RunEngine ``grid_scan`` (or fly raster) over ophyd.sim axes, the
detector showing at every point the recorded frame of that position.
"""

from __future__ import annotations

import argparse
import logging

from bluesky import RunEngine

from simulators.beamline_detector import SimEiger
from simulators.beamline_frames import recorded_scan_frames
from simulators.beamline_plans import fly_raster, step_grid
from simulators.beamline_stage import SampleStage, sim_stage
from simulators.eiger_files import EigerMetadata
from simulators.eiger_server import EigerStreamServer
from stream.document_log import DocumentLog

log = logging.getLogger(__name__)


class SimulatedBeamline:
    """Everything of a raster beamline that is not the analysis.

    Parameters
    ----------
    metadata : EigerMetadata
    frame_at : callable
        ``frame_at(slow_um, fast_um) -> (compression, payload)``.
    motors : (slow, fast) ophyd positioners
        ophyd.sim axes (:func:`simulators.beamline_stage.sim_stage`) or EpicsMotors.
    server, document_log : optional
        Reuse a bound stream simulator / document log (else new ones on ``tcp://127.0.0.1:0``).
    first_series_id : int
    """

    def __init__(self, metadata: EigerMetadata, frame_at, motors, *, protocol: str = "v1",
                 server: EigerStreamServer | None = None, document_log: DocumentLog | None = None,
                 first_series_id: int = 1, header_detail: str = "basic") -> None:
        self._own_server, self._own_log = server is None, document_log is None
        self.server = server or EigerStreamServer("tcp://127.0.0.1:0", protocol=protocol, header_detail=header_detail)
        self.document_log = document_log or DocumentLog("tcp://127.0.0.1:0")
        self.slow, self.fast = motors
        self.stage = SampleStage(self.slow, self.fast)
        self.detector = SimEiger(name="eiger", server=self.server, stage=self.stage, frame_at=frame_at,
                                 metadata=metadata, first_series_id=first_series_id)
        self.RE = RunEngine({}, call_returns_result=False)
        self.RE.subscribe(self.document_log)

    @property
    def stream_endpoint(self) -> str:
        return self.server.endpoint

    @property
    def documents_endpoint(self) -> str:
        return self.document_log.endpoint

    def step_scan(self, extents_um, shape, *, snake: bool = True, relative: bool = False, md=None):
        """Run a ``grid_scan`` (``rel_grid_scan``): ``extents_um`` ((y0, y1), (x0, x1)), ``shape`` (ny, nx)."""
        (y0, y1), (x0, x1) = extents_um
        return self.RE(step_grid(self.detector, self.slow, y0, y1, shape[0], self.fast, x0, x1, shape[1],
                                 snake=snake, relative=relative, md=md))

    def fly_scan(self, extents_um, shape, *, rate_hz: float, snake: bool = True, md=None):
        """Run a fly raster at ``rate_hz`` frames per second."""
        (y0, y1), (x0, x1) = extents_um
        return self.RE(fly_raster(self.detector, self.slow, y0, y1, shape[0], self.fast, x0, x1, shape[1],
                                  rate_hz=rate_hz, snake=snake, md=md))

    def close(self) -> None:
        self.stage.close()
        if self._own_log:
            self.document_log.close()
        if self._own_server:
            self.server.close()

    def __enter__(self) -> "SimulatedBeamline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def add_beamline_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "beamline", help="run a bluesky raster over a recorded scan (stream + documents on loopback)",
        description="Bind the EIGER stream and a bluesky document log on loopback, print 'endpoint URL' and "
                    "'documents URL', wait for the analysis service, then run a RunEngine raster over ophyd.sim "
                    "axes with the recorded frame of each position.")
    parser.add_argument("master", help="EIGER <name>_master.h5 with a braggmap scan grid (synthetic scans have one)")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1")
    parser.add_argument("--mode", choices=("step", "fly"), default="step", help="step grid_scan or fly raster")
    parser.add_argument("--rate", type=float, default=20.0, help="fly raster frame rate, Hz (default 20)")
    parser.add_argument("--no-snake", action="store_true", help="every row in the same direction")
    parser.add_argument("--wait-for-peers", type=float, default=300.0, metavar="S")
    parser.set_defaults(handler=command_beamline)
    return parser


def command_beamline(args) -> int:
    import json

    from analysis.errors import ConfigurationError
    from analysis.scan_grid import ScanGrid
    from simulators.eiger_files import open_eiger_scan

    with open_eiger_scan(args.master) as scan:
        grid_json = (scan.metadata.extra or {}).get("scan_grid_json")
        if not grid_json:
            raise ConfigurationError(f"{args.master} describes no scan grid (scan_grid_json) to raster over")
        grid = ScanGrid.from_dict(json.loads(grid_json))
        (y0, x0), (dy, dx) = grid.start_um, grid.step_um
        extents = ((y0, y0 + dy * (grid.shape[0] - 1)), (x0, x0 + dx * (grid.shape[1] - 1)))
        with SimulatedBeamline(scan.metadata, recorded_scan_frames(scan, grid), sim_stage(),
                               protocol=args.protocol, header_detail="all") as beamline:
            beamline.detector.peer_timeout_s = args.wait_for_peers
            print(f"endpoint {beamline.stream_endpoint}", flush=True)
            print(f"documents {beamline.documents_endpoint}", flush=True)
            if args.mode == "step":
                beamline.step_scan(extents, grid.shape, snake=not args.no_snake)
            else:
                beamline.fast.velocity.put(0.0)
                beamline.fly_scan(extents, grid.shape, rate_hz=args.rate, snake=not args.no_snake)
            delivered = beamline.document_log.wait_delivered(30.0)
            print(f"scanned {grid.shape[0]} x {grid.shape[1]} points ({args.mode}); documents "
                  f"{'delivered' if delivered else 'NOT delivered'}", flush=True)
    return 0

"""End to end: a RunEngine raster drives the simulated EIGER while the service receives the
stream and the run documents; the service's map equals the sample's known function of position
at every pixel, for step and fly scans, with ophyd.sim axes and with EPICS motors of a caproto
IOC over Channel Access (loopback only).

The sample: a flat 24 x 32 frame whose every pixel counts ``f(y, x) = 100 + 7 i_x + 131 i_y``
(``i`` the grid point nearest to the stage position), so the SAXS intensity map must be
``f * (SAXS pixels of the geometry)`` on every grid point: one misplaced frame breaks it.
"""

from __future__ import annotations

import os

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
import small_detector

from simulators.beamline import SimulatedBeamline
from simulators.beamline_frames import uniform_frames
from simulators.beamline_plans import with_detector_series
from simulators.beamline_stage import epics_stage, sim_stage
from simulators.eiger_files import EigerMetadata
from simulators.eiger_server import EigerStreamServer
from stream.document_log import DocumentLog
from stream.service import Service, ServiceConfig

pytestmark = pytest.mark.timeout(150)

SHAPE = (9, 11)  # rows (slow y) x columns (fast x): non-square on purpose
Y0, DY, X0, DX = 10.0, 2.0, 5.0, 1.5
EXTENTS = ((Y0, Y0 + DY * (SHAPE[0] - 1)), (X0, X0 + DX * (SHAPE[1] - 1)))
METADATA = EigerMetadata(shape=small_detector.SHAPE, dtype="uint32", wavelength_m=8.984e-11, pixel_size_m=75e-6)


def counts_at(y_um: float, x_um: float, origin=(Y0, X0)) -> int:
    i_y, i_x = round((y_um - origin[0]) / DY), round((x_um - origin[1]) / DX)
    return 100 + 7 * i_x + 131 * i_y


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return small_detector.write_setup(tmp_path_factory.mktemp("small_detector"))


@pytest.fixture(scope="module")
def saxs_pixels(setup) -> float:
    return small_detector.saxs_pixel_count(setup)


@pytest.fixture(scope="module")
def beamline_sockets():
    """The detector stream and the document log stay up while the service runs."""
    server = EigerStreamServer("tcp://127.0.0.1:0", protocol="v1", header_detail="basic")
    document_log = DocumentLog("tcp://127.0.0.1:0")
    yield server, document_log
    document_log.close()
    server.close()


@pytest.fixture(scope="module")
def service(setup, beamline_sockets):
    server, document_log = beamline_sockets
    config = ServiceConfig(setup=setup, detector_endpoint=server.endpoint, protocol="v1",
                           documents_endpoint=document_log.endpoint, documents_settle_s=3.0,
                           publish_endpoint=None, series_timeout_s=20.0)
    with Service(config) as running:
        yield running


def check_map(outcome, saxs_pixels: float, origin=(Y0, X0)) -> None:
    grid = outcome.grid
    assert outcome.maps.shape == SHAPE and not grid.by_frame_index
    assert grid.start_um == pytest.approx(origin) and grid.step_um == pytest.approx((DY, DX))
    assert grid.axis_names == ("sample_y", "sample_x")
    rows_um, columns_um = grid.axes_um()
    expected = np.array([[counts_at(y, x, origin) for x in columns_um] for y in rows_um]) * saxs_pixels
    np.testing.assert_allclose(outcome.maps.values["saxs_intensity"], expected, rtol=1e-12)
    assert outcome.maps.n_repeated == 0 and outcome.problems == []
    assert outcome.summary.received == SHAPE[0] * SHAPE[1] and outcome.summary.lost == 0


def run_scan(service, beamline_sockets, motors, series_id: int, mode: str, saxs_pixels, **options):
    server, document_log = beamline_sockets
    origin = options.pop("origin", (Y0, X0))
    frames = uniform_frames(METADATA, lambda y, x: counts_at(y, x, origin))
    with SimulatedBeamline(METADATA, frames, motors, server=server, document_log=document_log,
                           first_series_id=series_id) as beamline:
        if mode == "step":
            beamline.step_scan(EXTENTS, SHAPE, **options)
        else:
            beamline.fly_scan(EXTENTS, SHAPE, rate_hz=25.0, **options)
        outcome = service.wait_for_series(60)
    assert outcome.info.series_id == series_id
    return outcome


@pytest.mark.timeout(120)
def test_sim_step_snake_grid_scan(service, beamline_sockets, saxs_pixels):
    outcome = run_scan(service, beamline_sockets, sim_stage(), 11, "step", saxs_pixels, snake=True)
    check_map(outcome, saxs_pixels)
    assert outcome.grid.snake


@pytest.mark.timeout(120)
def test_sim_relative_grid_scan_without_snake(service, beamline_sockets, saxs_pixels):
    slow, fast = sim_stage()
    slow.set(100.0).wait(5)
    fast.set(-40.0).wait(5)
    relative = ((EXTENTS[0][0] - 100.0, EXTENTS[0][1] - 100.0), (EXTENTS[1][0] + 40.0, EXTENTS[1][1] + 40.0))
    server, document_log = beamline_sockets
    with SimulatedBeamline(METADATA, uniform_frames(METADATA, counts_at), (slow, fast), server=server,
                           document_log=document_log, first_series_id=12) as beamline:
        beamline.step_scan(relative, SHAPE, snake=False, relative=True)
        outcome = service.wait_for_series(60)
    check_map(outcome, saxs_pixels)
    assert not outcome.grid.snake


@pytest.mark.timeout(120)
def test_sim_fly_snake_raster(service, beamline_sockets, saxs_pixels):
    outcome = run_scan(service, beamline_sockets, sim_stage(), 13, "fly", saxs_pixels, snake=True)
    check_map(outcome, saxs_pixels)


@pytest.mark.timeout(120)
def test_sim_fly_raster_without_snake(service, beamline_sockets, saxs_pixels):
    outcome = run_scan(service, beamline_sockets, sim_stage(), 15, "fly", saxs_pixels, snake=False)
    check_map(outcome, saxs_pixels)
    assert not outcome.grid.snake


@pytest.mark.timeout(120)
def test_failed_scan_keeps_its_partial_map(service, beamline_sockets, saxs_pixels):
    server, document_log = beamline_sockets
    with SimulatedBeamline(METADATA, uniform_frames(METADATA, counts_at), sim_stage(), server=server,
                           document_log=document_log, first_series_id=14) as beamline:
        points = []

        def sample_lost_after_40_points(detectors, step, pos_cache):
            if len(points) == 40:
                raise RuntimeError("sample lost")
            points.append(step)
            return (yield from bps.one_nd_step(detectors, step, pos_cache))

        detector = beamline.detector

        def plan():
            yield from bps.mv(detector.n_images, SHAPE[0] * SHAPE[1])
            scan = bp.grid_scan([detector], beamline.slow, *EXTENTS[0], SHAPE[0], beamline.fast, *EXTENTS[1],
                                SHAPE[1], snake_axes=True, per_step=sample_lost_after_40_points)
            yield from with_detector_series(scan, detector)

        with pytest.raises(RuntimeError, match="sample lost"):
            beamline.RE(plan())
        outcome = service.wait_for_series(60)
    measured = outcome.maps.measured_count > 0
    # rows 0-2 and the first 7 points of row 3, which runs backwards (snake)
    assert measured.sum() == 40 and measured[:3].all() and measured[3, 4:].all() and not measured[4:].any()
    rows_um, columns_um = outcome.grid.axes_um()
    expected = np.array([[counts_at(y, x) for x in columns_um] for y in rows_um]) * saxs_pixels
    np.testing.assert_allclose(outcome.maps.values["saxs_intensity"][measured], expected[measured], rtol=1e-12)
    assert any("exit_status 'fail'" in p and "partial" in p for p in outcome.problems), outcome.problems
    assert outcome.summary.received == 40 and outcome.summary.expected == SHAPE[0] * SHAPE[1]


@pytest.fixture(scope="module")
def epics_motors():
    """The stage as EPICS motor records of a caproto IOC on loopback (own prefix and port)."""
    from simulators.motor_ioc import start_motor_ioc

    prefix = f"bm{os.getpid()}:"
    process, port = start_motor_ioc(prefix)
    saved = os.environ.get("EPICS_CA_ADDR_LIST")
    os.environ["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{port}"
    try:
        slow, fast = epics_stage(prefix, timeout_s=30)
        yield slow, fast
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()
        os.environ["EPICS_CA_ADDR_LIST"] = saved or "127.0.0.1"


@pytest.mark.timeout(150)
def test_caproto_ioc_step_snake_grid_scan(service, beamline_sockets, saxs_pixels, epics_motors):
    slow, fast = epics_motors
    for motor in epics_motors:
        motor.velocity.put(0.0)
    outcome = run_scan(service, beamline_sockets, (slow, fast), 21, "step", saxs_pixels, snake=True)
    check_map(outcome, saxs_pixels)
    assert outcome.grid.snake


@pytest.mark.timeout(150)
def test_caproto_ioc_fly_snake_raster(service, beamline_sockets, saxs_pixels, epics_motors):
    outcome = run_scan(service, beamline_sockets, epics_motors, 22, "fly", saxs_pixels, snake=True)
    check_map(outcome, saxs_pixels)

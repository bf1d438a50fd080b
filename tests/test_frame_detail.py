"""Frame store, frame-detail server and client over loopback, and the viewer's detail panel.

The server analyses real synthetic EIGER X 4M frames at the P10 geometry with the service's
default analysis setup (tables built once per module)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from analysis.geometry import pixel_q_chi
from analysis.peak_pixels import pixel_of_q_chi
from analysis.scan_grid import ScanGrid
from analysis.status import Status
from stream import codecs, wire
from stream.analysis_setup import AnalysisSetup
from stream.frame_detail import (DetailError, DetailServer, FrameDetail, FrameDetailClient, decode_detail_reply,
                                 error_reply)
from stream import frame_store
from stream.frame_store import FrameStore
from stream.messages import ImageFrame
from stream.published_state import MapSnapshot

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SERIES = 7
FRAMES = (4, 0)  # inside the crystal (centre of the 3 x 3 scan), and a corner
EMPTY_FRAME = 8  # stored as a background-only frame (no supercrystal in the beam)


def _frame(series_id: int, index: int, payload, compression: str = "none", shape=(2, 3)) -> ImageFrame:
    return ImageFrame(series_id, index, shape, "uint16", compression, payload, 2)


# -- frame store --------------------------------------------------------------------------------------
def test_store_keeps_payloads_on_disk_and_returns_them(tmp_path):
    store = FrameStore(directory=str(tmp_path))
    payloads = {k: bytes([k]) * (6 + k) for k in range(5)}
    for k, payload in payloads.items():
        store.add(_frame(1, k, memoryview(payload) if k % 2 else payload))
    for k, payload in payloads.items():
        meta, stored = store.get(1, k)
        assert stored == payload
        assert (meta.series_id, meta.frame_index, meta.shape, meta.dtype, meta.n_bytes) == (1, k, (2, 3), "uint16",
                                                                                            len(payload))
    assert store.get(1, 99) is None and store.get(2, 0) is None
    (path,) = store.paths()
    assert Path(path).parent == tmp_path
    assert os.path.getsize(path) == frame_store.DATA_START + sum(map(len, payloads.values()))
    store.add(_frame(1, 2, b"replaced"))
    assert store.get(1, 2)[1] == b"replaced" and store.frame_indices(1) == [0, 1, 2, 3, 4]


def test_store_directory_must_be_a_writable_directory(tmp_path):
    from analysis.errors import ConfigurationError

    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"")
    for directory in (tmp_path / "missing", a_file):
        with pytest.raises(ConfigurationError, match="is not a writable directory"):
            FrameStore(directory=str(directory))


def test_service_with_a_bad_frame_store_directory_fails_at_start_and_binds_nothing(tmp_path):
    from analysis.errors import ConfigurationError
    from stream.service import Service, ServiceConfig

    collector_port = _free_port()
    config = ServiceConfig(setup=AnalysisSetup.default(), collector_endpoint=f"tcp://127.0.0.1:{collector_port}",
                           frame_store_dir=str(tmp_path / "missing"))
    service = Service(config)
    with pytest.raises(ConfigurationError, match="missing"):
        service.start()
    assert service.collector is None and service.ingest is None
    probe = zmq.Context.instance().socket(zmq.PULL)
    try:
        probe.bind(f"tcp://127.0.0.1:{collector_port}")  # still free: the collector was never created
    finally:
        probe.close(linger=0)


def test_serve_options_switch_the_frame_detail_off_or_place_its_store(tmp_path):
    from stream import cli

    setup = AnalysisSetup.default()
    defaults = cli.serve_config(cli.build_parser().parse_args(["serve"]), setup)
    assert defaults.detail_endpoint == "tcp://127.0.0.1:5558" and defaults.frame_store_dir is None
    off = cli.serve_config(cli.build_parser().parse_args(["serve", "--detail", "none", "--steering", "None",
                                                          "--publish", "NONE"]), setup)
    assert off.detail_endpoint is None and off.steering_endpoint is None and off.publish_endpoint is None
    placed = cli.serve_config(cli.build_parser().parse_args(["serve", "--frame-store-dir", str(tmp_path)]), setup)
    assert placed.frame_store_dir == str(tmp_path) and placed.detail_endpoint == "tcp://127.0.0.1:5558"


def _free_port() -> int:
    socket = zmq.Context.instance().socket(zmq.PULL)
    try:
        port = socket.bind_to_random_port("tcp://127.0.0.1")
    finally:
        socket.close(linger=0)
    return port


def test_store_keeps_two_series_and_recycles_the_oldest_file(tmp_path):
    """A third series overwrites the first one's file (its pages are cached: cheaper writes than
    a new file's); what the first series left beyond the third one's bytes is never read."""
    store = FrameStore(directory=str(tmp_path))
    store.add(_frame(1, 0, b"first series, a long payload"))
    store.add(_frame(1, 1, b"and another"))
    store.add(_frame(2, 0, b"xx"))
    first_paths = store.paths()
    store.add(_frame(3, 0, b"third"))
    store.add(_frame(3, 1, b"3b"))
    assert store.series_ids() == [2, 3]
    assert store.paths() == [first_paths[1], first_paths[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in first_paths)
    assert store.get(1, 0) is None and store.get(2, 0)[1] == b"xx"
    assert store.get(3, 0)[1] == b"third" and store.get(3, 1)[1] == b"3b" and store.frame_indices(3) == [0, 1]
    assert store.stored_bytes() == 2 + 7
    store.add(_frame(4, 0, b"fourth"))  # now series 2's file is the one overwritten
    assert store.paths() == [first_paths[0], first_paths[1]] and store.get(4, 0)[1] == b"fourth"
    store.close()
    assert list(tmp_path.iterdir()) == []
    store.add(_frame(4, 0, b"after close"))
    assert store.get(4, 0) is None and store.series_ids() == []


def test_store_records_the_series_header_and_caps_the_size(tmp_path):
    info = wire.SeriesInfo(5, "v2", 3, (2, 3), "uint16", 1000, None, None, None, None)
    mask = np.arange(6, dtype=np.uint32).reshape(2, 3)
    headers = {"parts": wire.encode_series(info, mask)}
    store = FrameStore(directory=str(tmp_path), header_source=lambda: headers["parts"], max_series_bytes=10)
    store.add(_frame(5, 0, b"123456"))
    store.add(_frame(5, 1, b"7890123"))  # would exceed 10 bytes: not kept
    stored_info, stored_mask = store.header(5)
    assert stored_info.saturation_value == 1000
    np.testing.assert_array_equal(stored_mask, mask)
    assert store.get(5, 0)[1] == b"123456" and store.get(5, 1) is None
    headers["parts"] = [b"garbage"]
    store.add(_frame(6, 0, b"1"))
    assert store.header(6) is None and store.get(6, 0)[1] == b"1"
    store.close()


def test_store_is_safe_across_threads(tmp_path):
    store = FrameStore(directory=str(tmp_path))
    payloads = [np.random.default_rng(k).bytes(1000 + k) for k in range(200)]

    def write():
        for k, payload in enumerate(payloads):
            store.add(_frame(1, k, payload))

    writer = threading.Thread(target=write)
    writer.start()
    seen = 0
    while writer.is_alive() or seen < len(payloads):
        for k in range(len(payloads)):
            got = store.get(1, k)
            if got is not None:
                assert got[1] == payloads[k]
        seen = len(store.frame_indices(1))
    writer.join()
    store.close()


# -- server and client ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    """A detail server on loopback holding two synthetic P10 frames of series 7."""
    from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig

    scan = SyntheticScan(SyntheticScanConfig(grid_shape=(3, 3)))
    frames = {k: scan.frame(k) for k in FRAMES}
    frames[EMPTY_FRAME] = scan.background_pool()[0]
    geometry = scan.geometry
    info = wire.SeriesInfo(SERIES, "v2", 9, geometry.shape, "uint32", 2**20, geometry.wavelength_m,
                           geometry.pixel1_m, geometry.distance_m, 0.5)
    series_parts = wire.encode_series(info, scan.pixel_mask)
    store = FrameStore(header_source=lambda: series_parts)
    for k, frame in frames.items():
        store.add(ImageFrame(SERIES, k, frame.shape, "uint32", "bslz4", codecs.compress(frame, "bslz4"), 4))
    setup = AnalysisSetup.default()
    cache = setup.analyzer_cache()
    server = DetailServer("tcp://127.0.0.1:0", store, cache).start()
    client = FrameDetailClient(server.endpoint)
    details = {k: client.request(SERIES, k, timeout_ms=120000) for k in frames}
    yield {"server": server, "client": client, "frames": frames, "details": details, "cache": cache,
           "info": info, "mask": scan.pixel_mask, "geometry": geometry, "store": store}
    client.close()
    server.stop()
    store.close()


def test_detail_reply_holds_the_frame_mask_and_the_same_numbers_as_the_workers(served):
    detail = served["details"][4]
    assert isinstance(detail, FrameDetail), detail
    frame = served["frames"][4]
    np.testing.assert_array_equal(detail.frame, frame)
    assert detail.frame.dtype == np.uint32
    expected_excluded = (served["mask"] != 0) | (frame == 2**32 - 1)
    np.testing.assert_array_equal(detail.excluded, expected_excluded)
    assert expected_excluded.any()
    analyzer = served["cache"].for_series(served["info"], served["mask"])
    values = np.empty(len(analyzer.parameter_names))
    statuses = np.empty(len(analyzer.parameter_names), np.int32)
    analyzer.analyse(frame, values, statuses, saturation_value=served["info"].saturation_value, accumulate=False)
    for i, name in enumerate(analyzer.parameter_names):
        entry = detail.parameters[name]
        assert entry["status"] == statuses[i], name
        np.testing.assert_allclose(entry["value"], values[i], rtol=1e-12, equal_nan=True, err_msg=name)
    assert detail.parameters["a_mean_nm"]["unit"] == "nm"
    assert detail.parameters["a_mean_nm"]["status"] == Status.OK
    first_order = [p for p in detail.peaks if p.name.startswith("saxs_")]
    assert len(first_order) == 4 and all(p.status == Status.OK for p in first_order)
    for peak in detail.peaks:
        assert np.isfinite(peak.values["q0_nm"]) == (peak.status == Status.OK)
        if peak.status == Status.OK:
            assert peak.errors["q0_nm"] > 0 and peak.reason == "ok"
            np.testing.assert_allclose(peak.values["q0_nm"], values[analyzer.parameter_names.index(
                f"{peak.name}.q0_nm")], rtol=1e-12)


def test_peak_positions_on_the_detector_have_the_fitted_q_and_chi(served):
    detail = served["details"][4]
    q_nm, chi_deg = pixel_q_chi(served["geometry"])
    for peak in detail.peaks:
        if peak.status != Status.OK:
            continue
        row, col = peak.centre_px
        r, c = int(round(row)), int(round(col))
        # the nearest pixel centre is within half a pixel: its q and chi are close to the fit
        assert abs(q_nm[r, c] - peak.values["q0_nm"]) < 0.02 * peak.values["q0_nm"]
        assert abs((chi_deg[r, c] - peak.values["chi0_deg"] + 180) % 360 - 180) < 1.0
        rows, cols = peak.ellipse_px
        assert np.all(np.isfinite(rows)) and rows.size > 10
        q_ring, chi_ring = np.broadcast_arrays(peak.values["q0_nm"] + peak.values["fwhm_q_nm"] / 2,
                                               peak.values["chi0_deg"])
        r0, c0 = pixel_of_q_chi(served["geometry"], q_ring, chi_ring)
        assert abs(rows[0] - r0) < 1e-6 and abs(cols[0] - c0) < 1e-6  # angle 0 of the ellipse
        outline_rows, outline_cols = peak.window_outline_px
        assert np.nanmin(outline_rows) <= row <= np.nanmax(outline_rows)
        assert np.nanmin(outline_cols) <= col <= np.nanmax(outline_cols)


def test_inverse_geometry_on_a_tilted_detector(served):
    geometry = dataclasses.replace(served["geometry"], rot1_rad=0.03, rot2_rad=-0.02, rot3_rad=0.1)
    q_nm, chi_deg = pixel_q_chi(geometry)
    rng = np.random.default_rng(3)
    rows = rng.integers(0, geometry.shape[0], 200)
    cols = rng.integers(0, geometry.shape[1], 200)
    found_rows, found_cols = pixel_of_q_chi(geometry, q_nm[rows, cols], chi_deg[rows, cols] + 360.0)
    far = np.hypot(rows - 1884, cols - 1835) > 30
    np.testing.assert_allclose(found_rows[far], rows[far], atol=1e-3)
    np.testing.assert_allclose(found_cols[far], cols[far], atol=1e-3)
    unreachable = pixel_of_q_chi(geometry, np.array([1e4]), np.array([0.0]))
    assert np.isnan(unreachable[0][0])


def test_windows_hold_data_fit_and_residual(served):
    detail = served["details"][4]
    fitted = 0
    for window, peak in zip(detail.windows, detail.peaks):
        assert window.name == peak.name
        assert window.mean_counts.shape == (window.q_centres_nm.size, window.chi_centres_deg.size)
        if peak.status != Status.OK:
            continue
        fitted += 1
        finite = np.isfinite(window.model) & np.isfinite(window.mean_counts)
        assert finite.mean() > 0.5
        np.testing.assert_allclose(window.residual[finite], (window.mean_counts - window.model)[finite],
                                   rtol=1e-5, atol=1e-3)
        # the fit describes the data: model and data correlate, the residual is smaller than the data
        correlation = np.corrcoef(window.model[finite], window.mean_counts[finite])[0, 1]
        assert correlation > 0.3, (peak.name, correlation)
        assert np.std(window.residual[finite]) < np.std(window.mean_counts[finite])
    assert fitted >= 4


def test_frame_outside_the_crystal_has_missing_peaks_with_reasons(served):
    assert isinstance(served["details"][0], FrameDetail)
    detail = served["details"][EMPTY_FRAME]
    assert isinstance(detail, FrameDetail)
    missing = [p for p in detail.peaks if p.status != Status.OK]
    assert len(missing) >= 4, [(p.name, p.reason) for p in detail.peaks]
    assert detail.parameters["a_mean_nm"]["status"] != Status.OK
    assert np.isnan(detail.parameters["a_mean_nm"]["value"])
    for peak in missing:
        assert peak.reason not in ("", "ok") and peak.centre_px is None and np.isnan(peak.values["i0"])


def test_unknown_series_or_frame_and_bad_requests_get_error_replies(served):
    client, server = served["client"], served["server"]
    unknown_series = client.request(99, 0, timeout_ms=10000)
    assert isinstance(unknown_series, DetailError) and "series 99" in unknown_series.message
    unknown_frame = client.request(SERIES, 5, timeout_ms=10000)
    assert isinstance(unknown_frame, DetailError) and "frame 5" in unknown_frame.message
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(server.endpoint)
    garbage = [[b"\xff\xfe not json"], [b"[1, 2]"], [b'{"series_id": 7}'], [b'{"series_id": true, "frame_index": 0}'],
               [b'{"series_id": 7, "frame_index": -1}'], [b"{}", b"second part"]]
    for request in garbage:
        socket.send_multipart(request)
        assert socket.poll(10000, zmq.POLLIN), request
        reply = decode_detail_reply(socket.recv_multipart())
        assert isinstance(reply, DetailError) and reply.kind == "server", (request, reply)
    socket.close()
    assert isinstance(client.request(SERIES, 4, timeout_ms=30000), FrameDetail)  # still serving


def test_malformed_replies_are_protocol_errors():
    for parts in ([b"detail", b"{}"], [b"detail", b"{}", b"", b"", b""], [b"what"], [b"error", b"not json"]):
        reply = decode_detail_reply(parts)
        assert isinstance(reply, DetailError) and reply.kind == "protocol", parts
    assert decode_detail_reply(error_reply("because")) == DetailError("because", "server")


def test_client_resets_its_socket_after_a_timeout():
    context = zmq.Context.instance()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    client = FrameDetailClient(f"tcp://127.0.0.1:{port}")
    result = client.request(1, 2, timeout_ms=200)
    assert isinstance(result, DetailError) and result.kind == "timeout"
    assert wire.loads(rep.recv()) == {"series_id": 1, "frame_index": 2}
    rep.send_multipart(error_reply("late answer"))  # goes to the closed socket: dropped

    def answer():
        if rep.poll(10000, zmq.POLLIN):
            request = wire.loads(rep.recv())
            rep.send_multipart(error_reply(f"answer to {request['frame_index']}"))

    thread = threading.Thread(target=answer)
    thread.start()
    second = client.request(1, 3, timeout_ms=10000)
    thread.join()
    assert second == DetailError("answer to 3", "server")
    client.close()
    rep.close()


# -- the viewer's detail panel ---------------------------------------------------------------------
def test_click_in_the_viewer_shows_the_fitted_numbers_of_that_frame(served, qtbot):
    from PySide6 import QtCore

    from viewer.app import ViewerWindow
    from viewer.detail_panel import format_value, table_text

    window = ViewerWindow(None, served["server"].endpoint)
    qtbot.addWidget(window)
    window.show()
    grid = ScanGrid((3, 3), step_um=(0.5, 0.5))
    names = served["cache"].parameter_names
    values = np.full((len(names), 3, 3), np.nan, np.float32)
    values[names.index("saxs_intensity")] = np.arange(9, dtype=np.float32).reshape(3, 3)
    snapshot = MapSnapshot(SERIES, 1, tuple(names), grid, values, np.zeros(values.shape, np.uint8), 9)
    window.show_snapshot(snapshot)
    qtbot.waitExposed(window)
    point = window.map_panel.widget_point_of(0.5, 0.5)  # grid point (1, 1) = frame 4
    qtbot.mouseClick(window.map_panel.plot.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=point)
    qtbot.waitUntil(lambda: window.detail.detail is not None, timeout=60000)
    detail = window.detail.detail
    assert (detail.series_id, detail.frame_index) == (SERIES, 4)
    assert window.selected == (SERIES, 1, 1)
    rows = table_text(window.detail.peak_table)
    expected = served["details"][4]
    assert [row[0] for row in rows] == [p.name for p in expected.peaks]
    for row, peak in zip(rows, expected.peaks):
        assert row[3] == format_value(peak.values["q0_nm"], peak.errors["q0_nm"])
        assert row[1] == ("ok" if peak.status == Status.OK else peak.reason)
    derived = {row[0]: row for row in table_text(window.detail.derived_table)}
    a_mean = expected.parameters["a_mean_nm"]
    assert derived["a_mean_nm"][1] == format_value(a_mean["value"], expected.parameters["a_mean_err_nm"]["value"])
    assert "±" in derived["a_mean_nm"][1] and derived["a_mean_nm"][2] == "nm"
    _check_raw_frame_drawing(window.detail.frame_view, expected, served["geometry"])
    _check_window_drawing(window.detail.window_view, expected)
    ARTIFACTS.mkdir(exist_ok=True)
    window.grab().save(str(ARTIFACTS / "viewer_detail_frame.png"))
    window.detail.tabs.setCurrentIndex(1)
    window.grab().save(str(ARTIFACTS / "viewer_detail_windows.png"))
    window.detail.tabs.setCurrentIndex(2)
    window.grab().save(str(ARTIFACTS / "viewer_detail_numbers.png"))
    window.close()


def _check_raw_frame_drawing(frame_view, expected: FrameDetail, geometry) -> None:
    """The raw frame is drawn as log10(counts + 1), masked pixels blank under a red overlay,
    and each fitted peak as its centre and FWHM ellipse at the fitted q, chi and widths."""
    from viewer.frame_view import FAILED_COLOUR, MASK_RGBA, OK_COLOUR

    frame, excluded = expected.frame, expected.excluded
    assert excluded.any() and (~excluded).any()
    # log scale: log10(counts + 1) on every pixel in use, NaN (blank) on the excluded ones
    shown = frame_view.image.image
    np.testing.assert_array_equal(shown, frame_view.image_data)
    assert shown.shape == frame.shape
    assert np.isnan(shown[excluded]).all() and np.isfinite(shown[~excluded]).all()
    np.testing.assert_allclose(shown[~excluded], np.log10(frame[~excluded].astype(np.float64) + 1.0),
                               rtol=1e-6, atol=1e-7)
    brightest = np.unravel_index(np.argmax(np.where(excluded, 0, frame)), frame.shape)
    assert shown[brightest] == pytest.approx(np.log10(float(frame[brightest]) + 1.0), rel=1e-6)
    assert frame[brightest] > 50 * max(np.median(frame[~excluded]), 1)  # peaks far above the background
    low, high = frame_view.image.getLevels()
    assert low == 0.0 and high == pytest.approx(np.percentile(shown[~excluded], 99.95))
    assert tuple(frame_view.colour_bar.levels()) == pytest.approx((low, high))
    assert "log10" in frame_view.colour_bar.getAxis("left").labelText
    # mask overlay: opaque-ish red exactly on the excluded pixels, transparent elsewhere, on top
    overlay = frame_view.mask.image
    assert overlay.shape == (*frame.shape, 4) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay[excluded], np.broadcast_to(MASK_RGBA, (int(excluded.sum()), 4)))
    assert (overlay[~excluded][:, 3] == 0).all()
    assert frame_view.mask.zValue() >= frame_view.image.zValue()
    assert frame_view.mask.mapRectToParent(frame_view.mask.boundingRect()) == \
        frame_view.image.mapRectToParent(frame_view.image.boundingRect())
    # fitted peaks: centre and FWHM ellipse at the fitted (q, chi) and widths
    integrator = geometry.integrator()

    def q_chi(x, y):  # drawn positions (pixel corners at integers) -> q (nm^-1), chi (deg, on the image)
        rows, cols = np.asarray(y, np.float64) - 0.5, np.asarray(x, np.float64) - 0.5
        return (np.asarray(integrator.qFunction(rows, cols), np.float64),
                -np.degrees(np.asarray(integrator.chi(rows, cols), np.float64)))

    def wrap(angle):
        return (np.asarray(angle) + 180.0) % 360.0 - 180.0

    assert set(frame_view.peak_items) == {p.name for p in expected.peaks}
    n_drawn = 0
    for peak in expected.peaks:
        centre, ellipse, outline, _label = frame_view.peak_items[peak.name]
        colour = OK_COLOUR if peak.status == Status.OK else FAILED_COLOUR
        assert ellipse.opts["pen"].color().getRgb()[:3] == colour
        assert outline.getData()[0] is not None and outline.getData()[0].size > 10  # the window, always
        if peak.status != Status.OK:
            assert len(centre.data) == 0 and ellipse.getData()[0] is None  # no centre, no ellipse
            continue
        n_drawn += 1
        values = peak.values
        assert centre.data["x"][0] == pytest.approx(peak.centre_px[1] + 0.5)
        assert centre.data["y"][0] == pytest.approx(peak.centre_px[0] + 0.5)
        q_c, chi_c = q_chi(centre.data["x"], centre.data["y"])
        assert q_c[0] == pytest.approx(values["q0_nm"], rel=1e-4)
        assert abs(wrap(chi_c[0] - values["chi0_deg"])) < 1e-2
        x, y = ellipse.getData()
        np.testing.assert_allclose(x, peak.ellipse_px[1] + 0.5)
        np.testing.assert_allclose(y, peak.ellipse_px[0] + 0.5)
        q, chi = q_chi(x, y)
        half_q, half_chi = values["fwhm_q_nm"] / 2, values["fwhm_chi_deg"] / 2
        radius = np.hypot((q - values["q0_nm"]) / half_q, wrap(chi - values["chi0_deg"]) / half_chi)
        np.testing.assert_allclose(radius, 1.0, atol=0.02, err_msg=peak.name)  # on the FWHM ellipse
        assert np.ptp(q) == pytest.approx(values["fwhm_q_nm"], rel=0.02)  # its extent is the fitted FWHM
        assert np.ptp(wrap(chi - values["chi0_deg"])) == pytest.approx(values["fwhm_chi_deg"], rel=0.02)
        assert np.min(x) < centre.data["x"][0] < np.max(x) and np.min(y) < centre.data["y"][0] < np.max(y)
    assert n_drawn >= 4


def _check_window_drawing(window_view, expected: FrameDetail) -> None:
    """Each polar window: data, fit and residual images; residual = data - fit, on symmetric levels."""
    from viewer.window_view import residual_levels

    peaks = {p.name: p for p in expected.peaks}
    n_fitted = 0
    for window in expected.windows:
        images = {kind: window_view.images[(window.name, kind)].image for kind in ("data", "fit", "residual")}
        np.testing.assert_array_equal(images["data"], window.mean_counts)
        np.testing.assert_array_equal(images["fit"], window.model)
        np.testing.assert_array_equal(images["residual"], window.residual)
        finite = np.isfinite(images["data"]) & np.isfinite(images["fit"])
        assert np.array_equal(np.isfinite(images["residual"]), finite), window.name
        if peaks[window.name].status != Status.OK:
            continue
        n_fitted += 1
        assert finite.any()
        np.testing.assert_allclose(images["residual"][finite], (images["data"] - images["fit"])[finite],
                                   rtol=1e-5, atol=1e-3)
        low, high = window_view.images[(window.name, "residual")].getLevels()
        assert (low, high) == pytest.approx(residual_levels(window)) and low == -high and high > 0
    assert n_fitted >= 4


def test_an_endpoint_in_use_is_a_readable_error(tmp_path):
    from analysis.errors import ConfigurationError

    store = FrameStore(directory=str(tmp_path))
    first = DetailServer("tcp://127.0.0.1:0", store, lambda: None)
    try:
        with pytest.raises(ConfigurationError, match="frame-detail endpoint .* cannot be bound"):
            DetailServer(first.endpoint, store, lambda: None)
    finally:
        first.socket.close(linger=0)
        store.close()

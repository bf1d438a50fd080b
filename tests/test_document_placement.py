"""Frame placement from bluesky documents (pure logic): real RunEngine documents of ophyd.sim
scans, the snake order checked against the motor positions bluesky actually visited, relative
scans, units, fly-scan interpolation, malformed documents, and the FrameMap that moves frames."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from hypothesis import given, settings
from hypothesis import strategies as st
from ophyd.sim import SynAxis, det

from analysis.document_placement import OUTSIDE, RunDocuments, layout_from_start
from analysis.errors import ConfigurationError
from analysis.frame_placement import FrameMap, grid_pixels
from analysis.scan_grid import ScanGrid


def run_documents(plan_factory, **motor_values):
    y, x = SynAxis(name="sample_y", egu="um"), SynAxis(name="sample_x", egu="um")
    for motor, value in (("y", motor_values.get("y", 0.0)), ("x", motor_values.get("x", 0.0))):
        (y if motor == "y" else x).set(value).wait(5)
    documents = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    engine(plan_factory(y, x))
    return documents


def feed(documents) -> RunDocuments:
    run = RunDocuments(layout_from_start(documents[0][1]))
    for name, doc in documents[1:]:
        run.add(name, doc)
    return run


@pytest.mark.parametrize("snake", [True, False])
def test_step_grid_scan_pixels_follow_the_motor_positions_bluesky_visited(snake):
    documents = run_documents(lambda y, x: bp.grid_scan([det], y, -2.0, 4.0, 4, x, 10.0, 12.5, 6, snake_axes=snake,
                                                        md={"braggmap_detector_series": 7}))
    run = feed(documents)
    assert run.layout.shape == (4, 6) and run.layout.snake is snake and run.detector_series == 7
    assert run.layout.motors == ("sample_y", "sample_x") and run.stopped and not run.aborted
    events = [doc for name, doc in documents if name == "event"]
    seen = set()
    for event in events:  # no detector field: frame = seq_num - 1
        pixel = run.pixel(event["seq_num"] - 1)
        y_um, x_um = event["data"]["sample_y"], event["data"]["sample_x"]
        assert pixel == (round((y_um + 2.0) / 2.0), round((x_um - 10.0) / 0.5))
        seen.add(pixel)
    assert len(seen) == 24 and run.n_position_mismatch == 0
    assert run.pixel(24) is None  # no such event (yet)
    grid = run.scan_grid()
    assert grid.start_um == (-2.0, 10.0) and grid.step_um == (2.0, 0.5) and not grid.by_frame_index


def test_relative_scan_takes_its_origin_from_the_readings_and_units_convert_to_um():
    documents = run_documents(lambda y, x: bp.rel_grid_scan([det], y, -1.0, 1.0, 3, x, 0.0, 0.4, 3, snake_axes=True),
                              y=100.0, x=-50.0)
    for name, doc in documents:
        if name == "descriptor":
            doc["data_keys"]["sample_x"]["units"] = "mm"
    run = feed(documents)
    grid = run.scan_grid()
    assert run.layout.relative and run.origin == pytest.approx((100.0, -50.0))
    assert grid.start_um == pytest.approx((99.0, -50.0e3)) and grid.step_um == pytest.approx((1.0, 200.0))
    assert [run.pixel(k) for k in range(4)] == [(0, 0), (0, 1), (0, 2), (1, 2)]


def test_detector_frame_index_in_events_ties_frames_to_points():
    layout = layout_from_start({"uid": "r1", "shape": [2, 2], "extents": [[0, 1], [0, 1]], "snaking": [False, True],
                                "motors": ["y", "x"], "plan_name": "grid_scan"})
    run = RunDocuments(layout)
    run.add("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary",
                           "data_keys": {"eiger_frame_index": {}, "eiger_series_id": {}, "y": {}, "x": {}}})
    # the detector skipped frame 1: point 2 (seq_num 2) was recorded as frame 2
    for seq_num, frame in ((1, 0), (2, 2)):
        run.add("event", {"descriptor": "d1", "seq_num": seq_num, "time": 1.0,
                          "data": {"eiger_frame_index": frame, "eiger_series_id": 12}, "timestamps": {}})
    assert run.detector_series == 12
    assert run.pixel(0) == (0, 0) and run.pixel(2) == (0, 1) and run.pixel(1) is None
    assert run.fallback_pixel(3) == (1, 0)


def fly_run():
    layout = layout_from_start({"uid": "f1", "shape": [2, 3], "extents": [[0.0, 1.0], [0.0, 2.0]],
                                "snaking": [False, True], "motors": ["y", "x"], "braggmap_scan_mode": "fly",
                                "braggmap_detector_series": 3, "plan_name": "fly_raster"})
    run = RunDocuments(layout)
    run.add("descriptor", {"uid": "my", "run_start": "f1", "name": "y_monitor", "data_keys": {"y": {"units": "um"}}})
    run.add("descriptor", {"uid": "mx", "run_start": "f1", "name": "x_monitor", "data_keys": {"x": {"units": "um"}}})
    run.add("descriptor", {"uid": "fr", "run_start": "f1", "name": "det_frames",
                           "data_keys": {"det_frame_index": {}, "det_series_id": {}}})
    return run


def test_fly_frames_are_placed_from_interpolated_motor_readings_at_their_time():
    run = fly_run()
    # row 0 forward: x moves -1 -> 3 um between t=10 and t=12 (2 um/s); row 1 backward from t=20
    run.add("event", {"descriptor": "my", "seq_num": 1, "time": 9.0, "data": {"y": 0.0}, "timestamps": {"y": 9.0}})
    for seq, (t, x) in enumerate([(10.0, -1.0), (12.0, 3.0)], start=1):
        run.add("event", {"descriptor": "mx", "seq_num": seq, "time": t, "data": {"x": x}, "timestamps": {"x": t}})
    frame_times = [10.5, 11.0, 11.5]  # x = 0, 1, 2
    page = {"descriptor": "fr", "seq_num": [1, 2, 3], "time": [99.0] * 3, "uid": ["a", "b", "c"],
            "data": {"det_frame_index": [0, 1, 2], "det_series_id": [3, 3, 3]},
            "timestamps": {"det_frame_index": frame_times, "det_series_id": frame_times}}
    run.add("event_page", page)
    assert run.pixel(0) is None, "y was last read before the frame: it may have moved since"
    run.add("descriptor", {"uid": "re", "run_start": "f1", "name": "row_end", "data_keys": {"y": {}, "x": {}}})
    # a stationary motor read at the row end: readback stamped 9.0, read at 12.5
    run.add("event", {"descriptor": "re", "seq_num": 1, "time": 12.5, "data": {"y": 0.0, "x": 3.0},
                      "timestamps": {"y": 9.0, "x": 12.0}})
    assert [run.pixel(k) for k in range(3)] == [(0, 0), (0, 1), (0, 2)]
    run.add("event", {"descriptor": "fr", "seq_num": 4, "time": 20.4,
                      "data": {"det_frame_index": 3, "det_series_id": 3},
                      "timestamps": {"det_frame_index": 20.4, "det_series_id": 20.4}})
    assert run.pixel(3) is None, "x has no reading after the frame's time yet: wait"
    run.add("event", {"descriptor": "my", "seq_num": 2, "time": 19.0, "data": {"y": 1.0}, "timestamps": {"y": 19.0}})
    for seq, (t, x) in enumerate([(20.0, 3.0), (22.0, -1.0)], start=3):
        run.add("event", {"descriptor": "mx", "seq_num": seq, "time": t, "data": {"x": x}, "timestamps": {"x": t}})
    assert run.pixel(3) is None, "y has no reading after 20.4 (it may still move): wait"
    run.add("stop", {"uid": "s", "run_start": "f1", "exit_status": "success"})
    assert run.pixel(3) == (1, 2)  # x = 3 - 0.8 = 2.2 -> column 2 (half a step = 0.5 um)
    assert run.pixel(7) is None


def test_malformed_documents_are_counted_never_raised():
    with pytest.raises(ConfigurationError, match="has no 'shape'"):
        layout_from_start({"uid": "abc", "plan_name": "count"})
    with pytest.raises(ConfigurationError, match="not a 1-D or 2-D raster"):
        layout_from_start({"uid": "abc", "shape": [2, 3, 4], "motors": ["a", "b", "c"]})
    with pytest.raises(ConfigurationError, match="braggmap_scan_mode 'spiral'"):
        layout_from_start({"uid": "abc", "shape": [2, 3], "braggmap_scan_mode": "spiral"})
    run = fly_run()
    run.add("event", {"descriptor": "nope", "seq_num": 1, "time": 1.0, "data": {}, "timestamps": {}})
    run.add("event", {"descriptor": "mx", "time": 1.0, "data": {"x": "not a number"}, "timestamps": {}})
    run.add("descriptor", {"no": "keys"})
    assert sum(run.problems.values()) == 3, run.problems


def test_layout_positions_off_the_grid_are_outside():
    layout = layout_from_start({"uid": "abc", "shape": [3, 4], "extents": [[0, 2], [3, 0]], "motors": ["y", "x"]})
    assert layout.position_pixel(0.0, 3.0) == (0, 0) and layout.position_pixel(2.0, 0.0) == (2, 3)
    assert layout.position_pixel(1.0, 1.9) == (1, 1)  # fast axis runs backwards (step -1)
    assert layout.position_pixel(2.6, 0.0) == OUTSIDE and layout.position_pixel(0.0, float("nan")) == OUTSIDE


def test_frame_map_moves_frames_to_the_run_layout_and_places_held_frames():
    frames = FrameMap(ScanGrid.by_index(6), ("a",))
    for k in range(6):
        assert frames.add(k, [float(k)], [0])
    assert frames.maps.shape == (1, 6) and frames.maps.values["a"][0, 5] == 5.0
    known = {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (1, 2)}
    grid = ScanGrid(shape=(2, 3), snake=True)
    frames.set_layout(grid, known.get)
    assert frames.maps.shape == (2, 3) and frames.n_pending == 2
    assert frames.maps.values["a"][1, 2] == 3.0 and np.isnan(frames.maps.values["a"][1, 0])
    known.update({4: (1, 1), 5: OUTSIDE})
    assert frames.retry() == 1 and frames.n_pending == 0 and frames.n_outside == 1
    assert frames.maps.values["a"][1, 1] == 4.0 and frames.maps.n_measured == 5


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(1, 7), n_columns=st.integers(1, 7), snake=st.booleans(), data=st.data())
def test_n_frames_in_any_order_give_n_map_updates_on_a_bijection(n_rows, n_columns, snake, data):
    grid = ScanGrid(shape=(n_rows, n_columns), snake=snake)
    order = data.draw(st.permutations(range(grid.n_points)))
    frames = FrameMap(ScanGrid.by_index(1), ("k",))
    frames.set_layout(grid, grid_pixels(grid))
    for k in order:
        frames.add(k, [float(k)], [0])
    assert frames.maps.n_measured == grid.n_points and frames.maps.n_repeated == 0
    for k in range(grid.n_points):
        row, column = grid.position(k)
        assert frames.maps.values["k"][row, column] == k

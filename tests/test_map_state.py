"""MapState: per-frame updates, statuses, snapshots and derived maps."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.errors import ConfigurationError
from analysis.map_state import MapState
from analysis.status import Status

PARAMETERS = ["saxs_intensity", "a_mean_nm", "gamma_deg"]


def test_initial_state():
    state = MapState((3, 4), PARAMETERS)
    assert state.shape == (3, 4) and state.parameters == tuple(PARAMETERS)
    for name in PARAMETERS:
        assert state.values[name].dtype == np.float64 and np.isnan(state.values[name]).all()
        assert state.statuses[name].dtype == np.int32
        assert (state.statuses[name] == Status.NOT_MEASURED).all()
    assert state.version == 0 and state.n_measured == 0 and state.measured_count.sum() == 0


def test_vector_update_and_status_invariant():
    state = MapState((3, 4), PARAMETERS)
    state.update(1, 2, [100.0, 9.4, 91.0], [Status.OK, Status.OK, Status.OK])
    assert state.values["a_mean_nm"][1, 2] == 9.4 and state.statuses["gamma_deg"][1, 2] == Status.OK
    assert state.version == 1 and state.n_measured == 1 and state.measured_count[1, 2] == 1
    # a value sent with a non-OK status is dropped; NaN sent with OK becomes INVALID_INPUT
    sent_values = np.array([50.0, 9.0, np.nan])
    sent_statuses = np.array([Status.OK, Status.MISSING_PEAK, Status.OK], dtype=np.int32)
    state.update(0, 0, sent_values, sent_statuses)
    np.testing.assert_array_equal(sent_values, [50.0, 9.0, np.nan])  # the caller's vectors stay as sent
    np.testing.assert_array_equal(sent_statuses, [Status.OK, Status.MISSING_PEAK, Status.OK])
    assert state.values["saxs_intensity"][0, 0] == 50.0
    assert np.isnan(state.values["a_mean_nm"][0, 0])
    assert state.statuses["a_mean_nm"][0, 0] == Status.MISSING_PEAK
    assert state.statuses["gamma_deg"][0, 0] == Status.INVALID_INPUT
    # other points untouched
    assert state.statuses["saxs_intensity"][2, 3] == Status.NOT_MEASURED
    # without statuses: OK where finite
    state.update(2, 3, np.array([1.0, np.nan, 90.0]))
    assert state.statuses["saxs_intensity"][2, 3] == Status.OK
    assert state.statuses["a_mean_nm"][2, 3] == Status.INVALID_INPUT
    assert state.version == 3 and state.n_measured == 3


def test_dict_update_subset_and_unknown_names():
    state = MapState((2, 2), PARAMETERS)
    state.update(0, 1, {"saxs_intensity": 7.0}, {"saxs_intensity": Status.OK})
    assert state.values["saxs_intensity"][0, 1] == 7.0
    assert state.statuses["a_mean_nm"][0, 1] == Status.MISSING_PEAK
    assert np.isnan(state.values["gamma_deg"][0, 1])
    with pytest.raises(ConfigurationError, match="psi_deg"):
        state.update(0, 0, {"psi_deg": 1.0})
    with pytest.raises(ConfigurationError, match="expected 3"):
        state.update(0, 0, [1.0, 2.0])
    with pytest.raises(ConfigurationError, match="outside the grid"):
        state.update(2, 0, [1.0, 2.0, 3.0])
    with pytest.raises(ConfigurationError, match="outside the grid"):
        state.update(-1, 0, [1.0, 2.0, 3.0])
    assert state.version == 1


def test_point_measured_twice_is_counted_and_newest_wins():
    state = MapState((2, 2), PARAMETERS)
    state.update(1, 1, [1.0, 2.0, 3.0])
    state.update(1, 1, [4.0, 5.0, 6.0])
    assert state.measured_count[1, 1] == 2 and state.n_repeated == 1 and state.n_measured == 1
    assert state.values["saxs_intensity"][1, 1] == 4.0


def test_snapshot_is_a_copy_and_round_trips_through_a_file(tmp_path):
    state = MapState((2, 3), PARAMETERS)
    state.update(0, 2, [1.0, 9.9, 88.0])
    snapshot = state.snapshot()
    state.update(0, 2, [2.0, 9.0, 80.0])
    assert snapshot["values"][0, 0, 2] == 1.0 and snapshot["version"] == 1
    assert snapshot["values"].shape == (3, 2, 3) and snapshot["statuses"].dtype == np.int32
    path = tmp_path / "snapshot.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in snapshot.items()})
    with np.load(path) as loaded:
        restored = MapState.from_snapshot({k: loaded[k] for k in loaded.files} | {
            "parameters": [str(p) for p in loaded["parameters"]], "version": int(loaded["version"])})
    assert restored.parameters == tuple(PARAMETERS) and restored.version == 1
    assert restored.values["a_mean_nm"][0, 2] == 9.9
    assert restored.statuses["gamma_deg"][1, 1] == Status.NOT_MEASURED
    assert restored.n_measured == 1


def test_derived_maps_from_the_saxs_intensity():
    state = MapState((7, 7), PARAMETERS)
    for row in range(7):
        for col in range(6):                            # the last column is not measured yet
            inside = 1 <= row <= 5 and 1 <= col <= 5
            state.update(row, col, [10.0 if inside else 1.0, 8.0 + (row == 3 and col == 3), 90.0])
    mask = state.sc_mask()
    assert mask.sum() == 25 and not mask[:, 6].any()
    distance = state.distance_to_edge_um(step_um=(0.5, 0.5))
    assert distance[3, 3] == pytest.approx(1.5)
    assert distance[3, 5] == pytest.approx(1.5)         # unmeasured column 6 is not an edge
    assert distance[1, 5] == pytest.approx(0.5)
    assert np.isnan(distance[0, 6]) and distance[0, 0] == 0.0
    profile = state.profile("a_mean_nm", step_um=(0.5, 0.5), bin_width_um=0.5)
    np.testing.assert_allclose(profile.bin_centres_um, [0.5, 1.0, 1.5])
    assert profile.count.tolist() == [13, 9, 3]         # min(row, 6 - row, column) steps
    assert profile.mean[-1] == pytest.approx((9.0 + 8.0 + 8.0) / 3)
    with pytest.raises(ConfigurationError):
        state.profile("psi_deg")
    with pytest.raises(ConfigurationError):
        MapState((7, 7), ["a_mean_nm"]).sc_mask()


def test_bad_construction():
    with pytest.raises(ConfigurationError):
        MapState((0, 3), PARAMETERS)
    with pytest.raises(ConfigurationError, match="more than once"):
        MapState((2, 2), ["a", "b", "a"])


def test_array_update_matches_sequence_update():
    """The collector's path (value and status arrays) gives what lists give, entry by entry."""
    rng = np.random.default_rng(7)
    names = [f"p{i}" for i in range(9)]
    by_arrays, by_lists = MapState((3, 4), names), MapState((3, 4), names)
    for _ in range(300):
        values = rng.choice([0.5, -2.0, np.nan, np.inf, -np.inf], len(names))
        statuses = rng.choice([Status.OK, Status.OK, Status.MISSING_PEAK, Status.NOT_CONVERGED], len(names)).astype(np.int32)
        row, col = rng.integers(0, 3), rng.integers(0, 4)
        by_arrays.update(row, col, values, statuses)
        by_lists.update(row, col, list(values), list(statuses))
    for name in names:
        np.testing.assert_array_equal(by_arrays.values[name], by_lists.values[name])
        np.testing.assert_array_equal(by_arrays.statuses[name], by_lists.statuses[name])
    np.testing.assert_array_equal(by_arrays.measured_count, by_lists.measured_count)
    assert by_arrays.n_repeated == by_lists.n_repeated > 0
    with pytest.raises(ConfigurationError):
        by_arrays.update(0, 0, np.zeros(3), np.zeros(3, np.int32))

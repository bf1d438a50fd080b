"""Steering, the pure part: tiling, the fine grid, strategies, limits, budget, request checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from analysis.errors import ConfigurationError
from analysis.region_tiling import row_runs, tile_mask
from analysis.scan_grid import ScanGrid
from analysis.status import Status
from analysis.steering import SteeringRequest, measured_at_step, suggest
from analysis.steering_maps import SteeringMaps, fine_grid_over, interpolate_to_fine

AXES = ("sample_y", "sample_x")


def maps_of(values: dict, grid: ScanGrid, series_id: int = 1, statuses: dict | None = None) -> SteeringMaps:
    names = tuple(values)
    stacked = np.stack([np.asarray(values[n], dtype=np.float64) for n in names])
    status = np.where(np.isfinite(stacked), int(Status.OK), int(Status.NOT_MEASURED)).astype(np.int64)
    for name, codes in (statuses or {}).items():
        status[names.index(name)] = codes
    return SteeringMaps(series_id, grid, names, stacked, status)


COARSE = ScanGrid((11, 11), snake=True, start_um=(0.0, 0.0), step_um=(4.0, 4.0), axis_names=AXES)


def disc_maps(centre=(18.0, 22.0), radius=9.0, grid=COARSE, series_id=1):
    rows, cols = grid.axes_um()
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    intensity = np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2, 1000.0, 10.0)
    return maps_of({"saxs_intensity": intensity}, grid, series_id)


# -- tiling ----------------------------------------------------------------------------------------
def brute_force_check(mask, rectangles, min_fill):
    cover = np.zeros(mask.shape, int)
    for r in rectangles:
        cover[r.slices()] += 1
        assert r.n_wanted == mask[r.slices()].sum()
        assert r.fill >= min_fill - 1e-12 or r.shape[0] == 1  # a single row is a run: always full
    assert cover.max() <= 1, "rectangles overlap"
    assert (cover[mask] == 1).all(), "a wanted point is not covered"


@pytest.mark.parametrize("min_fill", [0.0, 0.5, 0.85, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_tiles_are_disjoint_cover_every_wanted_point_and_are_full_enough(min_fill, seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((30, 37)) > 0.45) if seed % 2 else rng.random((30, 37)) > 0.7
    rectangles = tile_mask(mask, min_fill)
    brute_force_check(mask, rectangles, min_fill)
    if min_fill == 1.0:
        assert sum(r.n_points for r in rectangles) == mask.sum()


def test_tiling_a_rectangle_gives_it_back_and_a_disc_wastes_little():
    mask = np.zeros((20, 30), bool)
    mask[3:9, 5:25] = True
    (only,) = tile_mask(mask)
    assert (only.row0, only.row1, only.col0, only.col1, only.fill) == (3, 8, 5, 24, 1.0)
    yy, xx = np.mgrid[0:41, 0:41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2
    rectangles = tile_mask(disc, 0.85)
    assert sum(r.n_points for r in rectangles) <= disc.sum() / 0.85
    assert len(rectangles) < 20
    assert tile_mask(np.zeros((4, 4), bool)) == []
    assert row_runs(np.array([1, 1, 0, 1, 0, 0, 1], bool)) == [(0, 1), (3, 3), (6, 6)]
    with pytest.raises(ConfigurationError, match="min_fill"):
        tile_mask(disc, 1.5)


# -- fine grid and interpolation ---------------------------------------------------------------------
def test_fine_grid_holds_the_coarse_points_and_their_cells():
    fine = fine_grid_over(COARSE, (1.0, 0.5))
    rows, cols = fine.axes_um()
    assert rows[0] == -2.0 and rows[-1] == 42.0 and cols[0] == -2.0 and cols[-1] == 42.0
    assert np.allclose(np.diff(cols), 0.5)
    for position in COARSE.axes_um()[1]:
        assert np.isclose(cols, position).any()
    with pytest.raises(ConfigurationError, match="fine step"):
        fine_grid_over(COARSE, (0.0, 1.0))


def test_interpolation_matches_scipy_and_skips_missing_points():
    from scipy.interpolate import RegularGridInterpolator

    rng = np.random.default_rng(3)
    values = rng.random(COARSE.shape)
    maps = maps_of({"saxs_intensity": values}, COARSE)
    fine = fine_grid_over(COARSE, (0.7, 1.3))
    ours = interpolate_to_fine(values, maps, fine)
    rows, cols = fine.axes_um()
    clipped = np.meshgrid(np.clip(rows, 0, 40), np.clip(cols, 0, 40), indexing="ij")
    reference = RegularGridInterpolator(COARSE.axes_um(), values)(np.stack(clipped, axis=-1))
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
    holes = values.copy()
    holes[5, 5] = np.nan
    fine = fine_grid_over(COARSE, (1.0, 1.0))
    filled = interpolate_to_fine(holes, maps, fine)
    centre = (fine.index_of(np.array([20.0]), 0)[0], fine.index_of(np.array([20.0]), 1)[0])
    assert np.isnan(filled[centre])  # exactly on the missing point
    assert np.isfinite(filled).sum() == filled.size - 1


# -- strategies ----------------------------------------------------------------------------------------
def request(**fields) -> SteeringRequest:
    return SteeringRequest.from_dict({"fine_step_um": 1.0, **fields})


def suggested_points(result) -> np.ndarray:
    points = []
    for s in result.suggestions:
        ys = np.linspace(s.request.slow.start_um, s.request.slow.stop_um, s.request.slow.num)
        xs = np.linspace(s.request.fast.start_um, s.request.fast.stop_um, s.request.fast.num)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        points.append(np.column_stack([yy.ravel(), xx.ravel()]))
    return np.concatenate(points) if points else np.zeros((0, 2))


def test_crystal_strategy_covers_the_disc_and_asking_again_after_scanning_gives_nothing():
    maps = disc_maps()
    result = suggest(request(strategies=["crystal"]), maps)
    points = suggested_points(result)
    assert result.suggestions and all(s.strategies == ("crystal",) for s in result.suggestions)
    distance = np.hypot(points[:, 0] - 18.0, points[:, 1] - 22.0)
    assert distance.max() < 9.0 + 4.0  # never beyond the next coarse point
    assert (distance < 7.0).sum() >= 0.9 * np.pi * 7.0 ** 2  # the sure inside is all there
    # the fine scans come back as maps: nothing new is suggested where they measured
    scans = [maps]
    for k, s in enumerate(result.suggestions):
        grid = ScanGrid((s.request.slow.num, s.request.fast.num), True,
                        (s.request.slow.start_um, s.request.fast.start_um),
                        (s.request.slow.step_um, s.request.fast.step_um), AXES)
        rows, cols = grid.axes_um()
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        inside = (yy - 18.0) ** 2 + (xx - 22.0) ** 2 <= 81.0
        scans.append(maps_of({"saxs_intensity": np.where(inside, 1000.0, 10.0)}, grid, series_id=10 + k))
    done = measured_at_step(result.fine, scans[1:])
    assert done.sum() == len(points)
    again = suggest(request(strategies=[{"name": "crystal", "frontier_um": 0.0}]), maps, scans)
    assert again.suggestions == () and "nothing new to scan" in again.notes


def test_crystal_frontier_follows_the_crystal_beyond_a_scan_that_stopped_inside_it():
    maps = disc_maps()
    fine_grid = ScanGrid((5, 5), False, (16.0, 20.0), (1.0, 1.0), AXES)  # wholly inside the disc
    fine_maps = maps_of({"saxs_intensity": np.full((5, 5), 1000.0)}, fine_grid, series_id=2)
    result = suggest(request(strategies=[{"name": "crystal", "margin_um": 0.0}], min_fill=1.0), maps, [fine_maps])
    points = {tuple(p) for p in suggested_points(result)}
    assert (15.0, 22.0) in points and (21.0, 22.0) in points  # the ring just beyond the measured block
    assert not any((16.0 <= y <= 20.0 and 20.0 <= x <= 24.0) for y, x in points)  # not measured again


def test_edges_strategy_is_a_band_on_both_sides_of_the_edge():
    maps = disc_maps()
    result = suggest(request(strategies=[{"name": "edges", "band_um": 2.0}], min_fill=0.9), maps)
    points = suggested_points(result)
    distance = np.hypot(points[:, 0] - 18.0, points[:, 1] - 22.0)
    assert distance.min() > 3.0 and distance.max() < 16.0
    assert "band of 2 um" in result.notes[0]
    assert all(s.strategies == ("edges",) for s in result.suggestions)


def test_gradient_strategy_finds_where_the_parameter_jumps():
    rows, cols = COARSE.axes_um()
    a = np.where(cols[None, :] < 21.0, 9.0, 11.0) + 0 * rows[:, None]
    maps = maps_of({"saxs_intensity": np.full(COARSE.shape, 100.0), "a_mean_nm": a}, COARSE)
    result = suggest(request(strategies=[{"name": "gradient", "parameter": "a_mean_nm", "fraction": 0.2}]), maps)
    xs = suggested_points(result)[:, 1]
    assert xs.min() >= 14.0 and xs.max() <= 30.0  # the two columns either side of the step, with their cells
    assert "a_mean_nm" in result.notes[0]


def test_uncertain_strategy_picks_failed_and_uncertain_fits_inside_the_crystal():
    maps0 = disc_maps()
    intensity = maps0.map("saxs_intensity")
    a = np.full(COARSE.shape, 10.0)
    err = np.full(COARSE.shape, 0.1)
    err[4, 5] = 2.0  # uncertain, inside
    status = np.where(intensity > 500, int(Status.OK), int(Status.MISSING_PEAK))
    status[5, 4] = int(Status.NOT_CONVERGED)  # failed, inside
    a = np.where(status == int(Status.OK), a, np.nan)
    maps = maps_of({"saxs_intensity": intensity, "a_mean_nm": a, "a_mean_err_nm": err}, COARSE,
                   statuses={"a_mean_nm": status})
    result = suggest(request(strategies=[{"name": "uncertain", "parameter": "a_mean_nm"}]), maps)
    points = {tuple(p) for p in suggested_points(result)}
    assert (16.0, 20.0) in points and (20.0, 16.0) in points
    assert len(points) <= 2 * 25  # just the two cells (5 x 5 fine points each)
    assert "1 failed and 1 uncertain" in result.notes[0]


def test_combined_strategies_scan_a_point_once_and_name_both():
    maps = disc_maps()
    result = suggest(request(strategies=["crystal", {"name": "edges", "band_um": 2.0}]), maps)
    points = suggested_points(result)
    assert len({tuple(p) for p in points}) == len(points)
    assert any(set(s.strategies) == {"crystal", "edges"} for s in result.suggestions)


def test_limits_and_time_budget_are_honoured_and_explained():
    maps = disc_maps()
    limited = suggest(request(strategies=["crystal"], limits_um={"sample_x": [15.0, 40.0]}), maps)
    assert suggested_points(limited)[:, 1].min() >= 15.0
    free = suggest(request(strategies=["crystal"], dwell_s=0.5, overhead_per_point_s=0.0,
                           overhead_per_scan_s=1.0), maps)
    total = free.total_time_s
    assert total == pytest.approx(sum(s.n_points * 0.5 + 1.0 for s in free.suggestions))
    budget = suggest(request(strategies=["crystal"], dwell_s=0.5, overhead_per_point_s=0.0,
                             overhead_per_scan_s=1.0, time_budget_s=total / 2), maps)
    assert budget.total_time_s <= total / 2 and budget.deferred
    assert "budget left" in budget.deferred[0][1]
    assert budget.as_dict()["deferred"][0]["deferred_because"] == budget.deferred[0][1]
    scores = [s.score for s in budget.suggestions]
    assert scores == sorted(scores, reverse=True)


def test_suggestion_dict_is_a_grid_scan_argument_list():
    result = suggest(request(strategies=["crystal"]), disc_maps())
    d = result.suggestions[0].as_dict()
    assert d["plan"] == "grid_scan" and d["kwargs"] == {"snake_axes": True} and d["units"] == "um"
    slow, fast = d["motors"]
    assert d["args"] == [slow["name"], slow["start_um"], slow["stop_um"], slow["num"],
                         fast["name"], fast["start_um"], fast["stop_um"], fast["num"]]
    assert d["n_points"] == slow["num"] * fast["num"] and 0 < d["fill"] <= 1
    assert {"id", "strategies", "score", "reason", "estimated_time_s"} <= set(d)


@pytest.mark.parametrize("fields, message", [
    ({}, "needs 'strategies'"),
    ({"strategies": []}, "non-empty list"),
    ({"strategies": ["telepathy"]}, "unknown steering strategy 'telepathy'"),
    ({"strategies": [{"nom": "crystal"}]}, "neither a name nor an object"),
    ({"strategies": ["crystal"], "fine_step_um": 0}, "must be a positive number"),
    ({"strategies": ["crystal"], "fine_step_um": [1, 2, 3]}, "must be a number or (slow, fast)"),
    ({"strategies": ["crystal"], "limits_um": {"sample_x": [3, 1]}}, "must be below high"),
    ({"strategies": ["crystal"], "limits_um": {"sample_x": "all"}}, "must be [low, high]"),
    ({"strategies": ["crystal"], "time_budget_s": -5}, "must be a positive number"),
    ({"strategies": ["crystal"], "min_fill": 2}, "between 0 and 1"),
    ({"strategies": ["crystal"], "max_suggestions": 0}, "positive integer"),
    ({"strategies": ["crystal"], "snake": "yes"}, "true or false"),
    ({"strategies": ["crystal"], "series_id": -1}, "non-negative integer"),
    ({"strategies": ["crystal"], "speed": 3}, "unknown request field(s) speed"),
])
def test_bad_requests_are_refused_with_the_reason(fields, message):
    with pytest.raises(ConfigurationError) as caught:
        SteeringRequest.from_dict(fields)
    assert message in str(caught.value)


@pytest.mark.parametrize("strategy, message", [
    ({"name": "gradient"}, "needs the option parameter"),
    ({"name": "gradient", "parameter": "nonsense"}, "no map 'nonsense'"),
    ({"name": "crystal", "threshold_fraction": 1.5}, "threshold_fraction=1.5 must be"),
    ({"name": "edges", "band_um": 0}, "band_um=0 must be > 0"),
    ({"name": "crystal", "size": 2}, "has no option size"),
    ({"name": "user", "x_range_um": [0, 1]}, "needs y_range_um"),
])
def test_bad_strategy_options_are_refused(strategy, message):
    with pytest.raises(ConfigurationError) as caught:
        suggest(request(strategies=[strategy]), disc_maps())
    assert message in str(caught.value)


def test_empty_maps_and_impossible_limits_are_errors_not_empty_answers():
    empty = maps_of({"saxs_intensity": np.full(COARSE.shape, np.nan)}, COARSE)
    with pytest.raises(ConfigurationError, match="no measured point yet"):
        suggest(request(strategies=["crystal"]), empty)
    with pytest.raises(ConfigurationError, match="leave no point of the mapped area"):
        suggest(request(strategies=["crystal"], limits_um={"sample_y": [100.0, 200.0]}), disc_maps())
    with pytest.raises(ConfigurationError, match="map's motors are sample_y, sample_x"):
        suggest(request(strategies=["crystal"], limits_um={"theta": [0.0, 1.0]}), disc_maps())
    nothing = maps_of({"saxs_intensity": np.zeros(COARSE.shape)}, COARSE)
    result = suggest(request(strategies=["crystal", "edges"]), nothing)
    assert result.suggestions == () and "no point of series 1" in result.notes[0] and "no supercrystal" in result.notes[1]

"""Supercrystal mask, distance to edge and profiles (science.md 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.crystal_region import (
    crystal_region, distance_to_edge_um, profile_vs_distance, supercrystal_mask,
)
from analysis.errors import ConfigurationError


def square_crystal(size=9, inner=5, inside_value=10.0, outside_value=1.0):
    intensity = np.full((size, size), outside_value)
    start = (size - inner) // 2
    intensity[start:start + inner, start:start + inner] = inside_value
    return intensity


def brute_force_distance(inside, outside, step_um):
    """Reference: minimum over outside points of the Euclidean centre distance."""
    rows, cols = np.nonzero(outside)
    out = np.full(inside.shape, np.nan)
    out[outside] = 0.0
    for r, c in zip(*np.nonzero(inside)):
        out[r, c] = np.min(np.hypot((rows - r) * step_um[0], (cols - c) * step_um[1])) if rows.size else np.nan
    return out


def test_mask_is_above_half_maximum():
    intensity = square_crystal()
    intensity[0, 0] = 5.0                       # exactly half the maximum: outside
    intensity[0, 1] = 5.01
    intensity[8, 8] = np.nan                    # not measured: not inside
    mask = supercrystal_mask(intensity)
    assert mask.sum() == 25 + 1
    assert not mask[0, 0] and mask[0, 1] and not mask[8, 8]


def test_square_mask_distance_in_steps_and_micrometres():
    intensity = square_crystal()
    region = crystal_region(intensity, step_um=(0.5, 0.5))
    assert region.threshold == pytest.approx(5.0)
    distance = region.distance_um
    assert distance[4, 4] == pytest.approx(1.5)        # centre: 3 steps of 0.5 um
    assert distance[2, 2] == pytest.approx(0.5)        # corner of the crystal: 1 step
    assert distance[3, 4] == pytest.approx(1.0)
    assert distance[0, 0] == 0.0                        # outside
    ring1 = np.zeros((9, 9), bool)
    ring1[2:7, 2:7] = True
    ring1[3:6, 3:6] = False
    np.testing.assert_allclose(distance[ring1], 0.5)


def test_anisotropic_steps_match_brute_force():
    rng = np.random.default_rng(3)
    intensity = rng.uniform(0, 1, (12, 15))
    intensity[3:10, 2:12] += 2.0
    steps = (0.25, 0.8333)
    region = crystal_region(intensity, step_um=(-steps[0], steps[1]))  # negative step: sign ignored
    reference = brute_force_distance(region.inside, region.outside, steps)
    np.testing.assert_allclose(region.distance_um, reference, equal_nan=True)


def test_unmeasured_points_are_not_edges():
    intensity = square_crystal(size=11, inner=5)
    intensity[8:, :] = np.nan                   # rows not measured yet, next to the crystal
    region = crystal_region(intensity)
    assert np.isnan(region.distance_um[8:, :]).all()
    reference = brute_force_distance(region.inside, region.outside, (1.0, 1.0))
    np.testing.assert_allclose(region.distance_um, reference, equal_nan=True)
    assert region.distance_um[7, 5] == pytest.approx(3.0)   # the nearest measured outside point is 3 columns away


def test_no_outside_point_and_scan_border():
    intensity = np.full((3, 4), 7.0)
    region = crystal_region(intensity)
    assert region.inside.all() and np.isnan(region.distance_um).all()
    distance = distance_to_edge_um(region.inside, (1.0, 2.0), scan_border_outside=True)
    # the ring beyond the scan is outside: row 1 is 2 rows (2 um) from it, column steps are 2 um
    np.testing.assert_allclose(distance, [[1, 1, 1, 1], [2, 2, 2, 2], [1, 1, 1, 1]])


def test_empty_and_nonpositive_maps():
    assert not supercrystal_mask(np.full((3, 3), np.nan)).any()
    assert not supercrystal_mask(-np.ones((3, 3))).any()
    region = crystal_region(np.full((3, 3), np.nan))
    assert math.isnan(region.threshold) and np.isnan(region.distance_um).all()


def test_profile_of_the_square_crystal():
    intensity = square_crystal()
    region = crystal_region(intensity, step_um=(0.5, 0.5))
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 1.0, intensity.shape)
    values[2, 2] = np.nan                           # a missing value inside is skipped
    profile = profile_vs_distance(values, region.distance_um, region.inside, bin_width_um=0.5)
    np.testing.assert_allclose(profile.bin_centres_um, [0.5, 1.0, 1.5])
    np.testing.assert_allclose(profile.bin_edges_um, [0.25, 0.75, 1.25, 1.75])
    assert profile.count.tolist() == [15, 8, 1]
    for index, d in enumerate((0.5, 1.0, 1.5)):
        chosen = values[np.isclose(region.distance_um, d) & np.isfinite(values)]
        assert profile.mean[index] == pytest.approx(chosen.mean())
        if chosen.size > 1:
            assert profile.std[index] == pytest.approx(chosen.std(ddof=1))
    assert np.isnan(profile.std[2])                 # one point: no spread


def test_profile_default_bins_and_explicit_edges():
    intensity = square_crystal()
    region = crystal_region(intensity)
    values = region.distance_um * 2.0 + 1.0          # a parameter linear in the distance
    profile = profile_vs_distance(values, region.distance_um)
    np.testing.assert_allclose(profile.mean, [3.0, 5.0, 7.0])
    np.testing.assert_allclose(profile.std[:2], [0.0, 0.0])
    profile = profile_vs_distance(values, region.distance_um, bin_edges_um=[0.0, 1.5, 10.0])
    assert profile.count.tolist() == [16, 9]
    assert profile.mean[1] == pytest.approx((8 * 5.0 + 7.0) / 9)
    with pytest.raises(ConfigurationError):
        profile_vs_distance(values, region.distance_um, bin_edges_um=[1.0, 1.0])
    with pytest.raises(ConfigurationError):
        distance_to_edge_um(region.inside, (0.0, 1.0))

"""Frame index -> map pixel: a bijection on the grid, with and without snaking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.errors import ConfigurationError
from analysis.scan_grid import ScanGrid


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.booleans())
def test_position_is_a_bijection(n_rows, n_columns, snake):
    grid = ScanGrid(shape=(n_rows, n_columns), snake=snake)
    positions = [grid.position(k) for k in range(grid.n_points)]
    assert len(set(positions)) == grid.n_points
    assert all(grid.frame_index(*p) == k for k, p in enumerate(positions))
    assert grid.position(grid.n_points) is None and grid.position(-1) is None


def test_snake_reverses_odd_rows():
    grid = ScanGrid(shape=(3, 4), snake=True)
    assert [grid.position(k) for k in range(4, 8)] == [(1, 3), (1, 2), (1, 1), (1, 0)]
    assert grid.position(8) == (2, 0)


def test_axes_in_micrometres_and_round_trip():
    grid = ScanGrid(shape=(2, 3), start_um=(10.0, -1.0), step_um=(0.5, 0.25), axis_names=("sy", "sx"))
    rows, columns = grid.axes_um()
    assert rows.tolist() == [10.0, 10.5] and columns.tolist() == [-1.0, -0.75, -0.5]
    assert ScanGrid.from_dict(grid.as_dict()) == grid


def test_by_index_and_bad_shapes():
    grid = ScanGrid.by_index(10, n_columns=4)
    assert grid.shape == (3, 4) and grid.by_frame_index
    with pytest.raises(ConfigurationError, match="shape"):
        ScanGrid(shape=(0, 3))
    with pytest.raises(ConfigurationError, match="malformed"):
        ScanGrid.from_dict({"shape": "nope"})

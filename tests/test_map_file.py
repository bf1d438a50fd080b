"""The HDF5 map file describes itself: every map's units and description, the status codes
with their reasons, the scan axes, the geometry (PONI) and peak-model texts, the software
version, the accounting and the average-pattern Williamson-Hall values are all read back."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.average_pattern import AveragePatternResult
from analysis.frame_analysis import FrameAnalyzer
from analysis.map_state import MapState
from analysis.peak_fits import PeakFits
from analysis.scan_grid import ScanGrid
from analysis.status import STATUS_REASONS, Status
from analysis.williamson_hall import WilliamsonHallErrors, WilliamsonHallFit
from stream.analysis_setup import AnalysisSetup
from stream.collector import SeriesOutcome
from stream.config_files import load_peak_model
from stream.map_figure import HEADLINE_MAPS, panel_names, render_map_figure
from stream.map_file import read_map_file, software_version, write_map_file
from stream.wire import SeriesInfo

GRID = ScanGrid(shape=(3, 4), step_um=(0.5, 0.25), axis_names=("sample_y", "sample_x"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A map file of a 3 x 4 scan: values, statuses (including missing ones), an average
    pattern; returns its path, what went in, and the unit/description tables."""
    setup = AnalysisSetup.default()
    model = load_peak_model(setup.peaks_path)
    names = FrameAnalyzer.parameter_names_for(model)
    units = FrameAnalyzer.parameter_units_for(model)
    descriptions = FrameAnalyzer.parameter_descriptions_for(model)
    rng = np.random.default_rng(5)
    maps = MapState(GRID.shape, names)
    codes = [int(Status.OK), int(Status.NOT_SIGNIFICANT), int(Status.TOO_UNCERTAIN)]
    for row in range(GRID.shape[0]):
        for column in range(GRID.shape[1]):
            statuses = rng.choice(codes, size=len(names), p=[0.8, 0.1, 0.1])
            maps.update(row, column, rng.normal(1.0, 0.1, size=len(names)), statuses)
    fits = PeakFits.from_peaks({name: {"i0": 100.0, "q0_nm": 1.0 + i, "chi0_deg": 10.0 * i,
                                       "fwhm_q_nm": 0.8, "fwhm_chi_deg": 12.0}
                                for i, name in enumerate(model.peak_names)})
    wh = WilliamsonHallFit(np.float64(6.8), np.float64(0.015),
                           WilliamsonHallErrors(np.float64(0.1), np.float64(0.001)), np.int32(Status.OK))
    info = SeriesInfo(series_id=7, protocol="v1", n_images=12, image_shape=(2167, 2070), image_dtype="uint32",
                      saturation_value=100_000, wavelength_m=8.98e-11, pixel_size_m=7.5e-5,
                      detector_distance_m=0.412, count_time_s=0.5)
    outcome = SeriesOutcome(info=info, grid=GRID, maps=maps, summary=None, results=12,
                            average=AveragePatternResult(fits, wh, 0.86, 12))
    path = write_map_file(tmp_path_factory.mktemp("maps") / "maps_series0007.h5", outcome, units, descriptions,
                          setup.poni_path, setup.peaks_path)
    return {"path": path, "maps": maps, "units": units, "descriptions": descriptions, "setup": setup,
            "names": names}


def test_every_map_has_its_units_and_description(written):
    with h5py.File(written["path"], "r") as handle:
        stored = set(handle["maps"])
        assert stored == set(written["names"])
        for name in written["names"]:
            dataset = handle["maps"][name]
            assert dataset.attrs["units"] == written["units"][name] != "", name
            assert dataset.attrs["description"] == written["descriptions"][name] != "", name
            assert dataset.dtype == np.float64 and dataset.shape == GRID.shape
    units = read_map_file(written["path"]).units
    assert units == {name: written["units"][name] for name in written["names"]}
    assert units["a1_nm"] == "nm" and units["psi_deg"] == "deg" and units["saxs_intensity"] == "counts"


def test_values_and_statuses_round_trip_with_the_reasons(written):
    read = read_map_file(written["path"])
    maps = written["maps"]
    for name in written["names"]:
        np.testing.assert_array_equal(read.maps[name], maps.values[name])
        np.testing.assert_array_equal(read.statuses[name], maps.statuses[name])
        ok = read.statuses[name] == Status.OK
        assert np.all(np.isfinite(read.maps[name][ok])) and np.all(np.isnan(read.maps[name][~ok]))
    with h5py.File(written["path"], "r") as handle:
        reasons = json.loads(handle["status"]["psi_deg"].attrs["reasons"])
    assert {int(k): v for k, v in reasons.items()} == {int(k): v for k, v in STATUS_REASONS.items()}
    assert int(Status.TOO_UNCERTAIN) in {int(k) for k in reasons}


def test_geometry_peak_model_and_software_version(written):
    setup = written["setup"]
    with h5py.File(written["path"], "r") as handle:
        assert handle.attrs["software"] == "braggmap"
        assert handle.attrs["software_version"] == software_version()
        assert handle.attrs["software_version"] not in ("", "unknown")
        poni = handle["config"]["geometry_poni"][()].decode()
        peaks = handle["config"]["peak_model"][()].decode()
        assert poni == Path(setup.poni_path).read_text() and "Distance" in poni
        assert peaks == Path(setup.peaks_path).read_text() and "waxs_010" in peaks
        assert handle["config"].attrs["geometry_path"] == str(setup.poni_path)
        assert json.loads(handle.attrs["series_info"])["series_id"] == 7
        assert handle.attrs["series_id"] == 7 and bool(handle.attrs["complete"])


def test_scan_axes_in_micrometres(written):
    with h5py.File(written["path"], "r") as handle:
        rows, columns = handle["scan"]["row_um"], handle["scan"]["column_um"]
        assert rows.attrs["units"] == "um" and columns.attrs["units"] == "um"
        np.testing.assert_allclose(rows[()], GRID.axes_um()[0])
        np.testing.assert_allclose(columns[()], GRID.axes_um()[1])
        np.testing.assert_allclose(np.diff(columns[()]), 0.25)
    grid = read_map_file(written["path"]).grid
    assert grid.shape == GRID.shape and grid.axis_names == GRID.axis_names
    assert tuple(grid.step_um) == GRID.step_um


def test_average_pattern_williamson_hall_values(written):
    with h5py.File(written["path"], "r") as handle:
        group = handle["average_pattern"]
        assert group.attrs["williamson_hall_L_nm"] == pytest.approx(6.8)
        assert group.attrs["williamson_hall_g"] == pytest.approx(0.015)
        assert group.attrs["williamson_hall_status"] == Status.OK
        assert json.loads(group.attrs["peaks"])[4] == "waxs_010"
        np.testing.assert_allclose(group["q0_nm"][()], 1.0 + np.arange(8))


def test_png_panel_holds_the_atomic_lattice_constant(tmp_path, written):
    """The figure panel draws the papers' maps, a_AL among them (Lapkin Fig. 4-6)."""
    maps = written["maps"].values
    names = panel_names(maps)
    assert "a_al_nm" in HEADLINE_MAPS and "a_al_nm" in names
    assert set(names) == {n for n in HEADLINE_MAPS if n in maps}
    path = render_map_figure(tmp_path / "maps.png", maps, written["units"], GRID, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

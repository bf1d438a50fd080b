"""The whole service, as a user runs it: ``braggmap replay`` streams a recorded (here:
synthetic) EIGER scan through the detector simulator process, over loopback, into the ingest,
a worker process and the collector; the maps come out as HDF5 + PNG.

The maps must equal what the frame analysis gives for the same frames in-process, every frame
must be accounted for, and bad input must end with a one-line error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.frame_analysis import FrameAnalyzer
from analysis.status import Status
from analysis.scan_grid import ScanGrid
from simulators.eiger_files import EigerMetadata, open_eiger_scan, write_eiger_scan
from simulators.synthetic_scan import SyntheticScanConfig, truth_path, write_synthetic_scan
from stream.analysis_setup import AnalysisSetup
from stream.background_file import load_background
from stream.config_files import load_geometry, load_peak_model
from stream.map_file import read_map_file
from small_detector import SHAPE as SMALL_SHAPE, counts_of, flat_frame, saxs_pixel_count, write_setup

BRAGGMAP = [sys.executable, "-m", "stream.cli"]
GRID = (4, 5)


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory) -> Path:
    """A 4 x 5 synthetic scan with 2.5 um steps: crystal and empty points."""
    directory = tmp_path_factory.mktemp("scan")
    return write_synthetic_scan(directory, SyntheticScanConfig(grid_shape=GRID, step_um=2.5, name="small"))


def run_braggmap(*arguments, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*BRAGGMAP, *arguments], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def in_process_maps(small_scan):
    """The same frames analysed in this process: what the service's maps must hold."""
    setup = AnalysisSetup.default()
    geometry = load_geometry(setup.poni_path)
    with open_eiger_scan(small_scan) as scan:
        analyzer = FrameAnalyzer(geometry, load_peak_model(setup.peaks_path), pixel_mask=scan.metadata.pixel_mask,
                                 background=load_background(truth_path(small_scan), geometry.shape))
        frames = [frame for _, frame in scan.iter_frames()]
    values = np.empty((len(frames), len(analyzer.parameter_names)))
    statuses = np.empty(values.shape, np.int32)
    for index, frame in enumerate(frames):
        analyzer.analyse(frame, values[index], statuses[index])
    return analyzer.parameter_names, values, statuses


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_replay_through_the_service_gives_the_in_process_maps(small_scan, in_process_maps, tmp_path, protocol):
    output = tmp_path / "maps"
    result = run_braggmap("replay", str(small_scan), "--background", str(truth_path(small_scan)),
                          "--protocol", protocol, "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert f"frames: expected {GRID[0] * GRID[1]}, received {GRID[0] * GRID[1]}, lost 0" in lines
    map_path = Path(next(line.split(" ", 1)[1] for line in lines if line.startswith("maps: ")))
    png_path = Path(next(line.split(" ", 1)[1] for line in lines if line.startswith("figure: ")))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    maps = read_map_file(map_path)
    assert maps.grid.shape == GRID and not maps.grid.by_frame_index  # from the header appendix
    assert maps.grid.step_um == (2.5, 2.5)
    assert maps.accounting["received"] == GRID[0] * GRID[1] and maps.accounting["lost"] == 0
    names, values, statuses = in_process_maps
    for parameter in ("saxs_intensity", "a1_nm", "gamma_deg", "psi_deg", "waxs_010.q0_nm", "saxs_2.i0"):
        column = names.index(parameter)
        expected = values[:, column].reshape(GRID)
        np.testing.assert_allclose(maps.maps[parameter], expected, rtol=1e-9, equal_nan=True, err_msg=parameter)
        np.testing.assert_array_equal(maps.statuses[parameter], statuses[:, column].reshape(GRID))
    assert np.isfinite(maps.maps["a1_nm"]).any() and np.isnan(maps.maps["a1_nm"]).any()
    # g_q and delta_psi wait for the average pattern (no L configured), then use its L
    with h5py.File(map_path) as handle:
        average = handle["average_pattern"]
        assert average.attrs["n_frames"] == GRID[0] * GRID[1]
        if average.attrs["williamson_hall_status"] == Status.OK:
            assert 3.0 < average.attrs["williamson_hall_L_nm"] < 15.0
        assert "sc_mask" in handle["derived"] and "a_mean_nm" in handle["profiles"]
        assert handle.attrs["software"] == "braggmap"
        assert "Distance" in handle["config/geometry_poni"][()].decode()
    assert Status.PENDING_AVERAGE not in maps.statuses["g_q"]


def test_missing_master_file_is_a_one_line_error(tmp_path):
    result = run_braggmap("replay", str(tmp_path / "nope_master.h5"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr and "nope_master.h5" in result.stderr


def test_corrupt_master_file_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken_master.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    result = run_braggmap("replay", str(broken))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "broken_master.h5" in message, message


def test_missing_linked_data_file_is_a_one_line_error(small_scan, tmp_path):
    copy = tmp_path / small_scan.name
    shutil.copy(small_scan, copy)  # the master alone: its external links point nowhere
    result = run_braggmap("replay", str(copy))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "data" in message, message


def test_geometry_that_does_not_match_the_detector_is_a_one_line_error(captures_dir, tmp_path):
    """The DECTRIS test master (a small artificial detector) against the EIGER X 4M geometry."""
    master = captures_dir / "h5_artificial_small" / "test_master.h5"
    result = run_braggmap("replay", str(master), "--output", str(tmp_path),
                          timeout=240)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "does not match" in message, message


def test_bad_peak_model_is_a_one_line_error(small_scan, tmp_path):
    peaks = tmp_path / "peaks.yaml"
    peaks.write_text("peaks: [{name: saxs_1, family: nonsense}]\n")
    result = run_braggmap("replay", str(small_scan), "--peaks", str(peaks))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "peaks.yaml" in result.stderr


def test_unknown_layout_is_a_one_line_error(tmp_path):
    master = tmp_path / "odd_master.h5"
    with h5py.File(master, "w") as handle:
        handle.create_group("/entry/instrument")  # an HDF5 file, but no /entry/data
    result = run_braggmap("replay", str(master), "--output", str(tmp_path / "maps"))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert message.startswith("braggmap replay: error: ") and "odd_master.h5" in message
    assert "unknown layout" in message and "/entry/data" in message, message


@pytest.fixture(scope="module")
def small_detector_scan(tmp_path_factory):
    """Twelve flat frames of the small test detector as an EIGER master + data file, without a
    scan description (the raster then comes from the command line), and its analysis set-up."""
    folder = tmp_path_factory.mktemp("small_detector_scan")
    metadata = EigerMetadata(shape=SMALL_SHAPE, dtype="uint32", wavelength_m=8.984e-11, pixel_size_m=75e-6)
    master = write_eiger_scan(folder / "flat_master.h5", [flat_frame(i) for i in range(12)], metadata=metadata)[0]
    return master, write_setup(folder)


def test_replay_grid_snake_and_rate_options_take_effect(small_detector_scan, tmp_path):
    master, setup = small_detector_scan
    rate_hz = 20.0
    result = run_braggmap("replay", str(master), "--poni", setup.poni_path, "--peaks", setup.peaks_path,
                          "--grid", "3", "4", "--snake", "--step", "0.5", "2", "--rate", str(rate_hz),
                          "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "frames: expected 12, received 12, lost 0" in result.stdout.splitlines()
    sent = re.search(r"detector simulator: sent (\d+) frames of series \d+ in [\d.]+ s \(([\d.]+) Hz\)",
                     result.stdout)
    assert sent and int(sent[1]) == 12, result.stdout
    assert float(sent[2]) <= rate_hz * 1.05, "--rate paces the detector simulator"

    maps = read_map_file(tmp_path / "maps_series0001.h5")
    assert maps.grid == ScanGrid(shape=(3, 4), snake=True, step_um=(0.5, 2.0))
    expected = np.empty((3, 4))
    for index in range(12):
        expected[maps.grid.position(index)] = counts_of(index) * saxs_pixel_count(setup)
    assert expected[1, 3] == counts_of(4) * saxs_pixel_count(setup)  # row 1 runs backwards
    np.testing.assert_allclose(maps.maps["saxs_intensity"], expected, rtol=1e-12)

"""A small test detector (24 x 32 pixels) with its geometry and a one-peak model, so the
service-level tests run the real analysis in well under a second per frame.

The same set-up as ``test_beamline_scan.py``: a flat frame of ``c`` counts per pixel gives a SAXS
intensity of ``c * saxs_pixels``, so every map pixel says which frame landed on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.frame_analysis import FrameAnalyzer
from stream.analysis_setup import AnalysisSetup
from stream.config_files import load_geometry, load_peak_model

SHAPE = (24, 32)
PONI = """poni_version: 2.1
Detector: Detector
Detector_config: {"pixel1": 7.5e-05, "pixel2": 7.5e-05, "max_shape": [24, 32], "orientation": 3}
Distance: 0.05
Poni1: 0.0009
Poni2: 0.0012
Rot1: 0.0
Rot2: 0.0
Rot3: 0.0
Wavelength: 8.984e-11
"""
PEAKS = """name: small test detector
saxs_integration_q_max_nm: 1.0
peaks:
  - {name: waxs_100, family: waxs, hkl: [1, 0, 0], q_range_nm: [2.0, 3.5], chi_range_deg: [-60, 60], n_q: 6, n_chi: 8}
"""


def write_setup(folder: Path) -> AnalysisSetup:
    """Write the PONI and peak-model files into ``folder``; the analysis set-up reading them."""
    (folder / "small.poni").write_text(PONI)
    (folder / "small.yaml").write_text(PEAKS)
    return AnalysisSetup(str(folder / "small.poni"), str(folder / "small.yaml"))


def saxs_pixel_count(setup: AnalysisSetup) -> float:
    """Pixels in the SAXS region of the geometry (the SAXS intensity of a frame of 1 count)."""
    analyzer = FrameAnalyzer(load_geometry(setup.poni_path), load_peak_model(setup.peaks_path))
    return float(analyzer.table.saxs_pixel_count_geometric)


def counts_of(frame_index: int) -> int:
    """Counts per pixel of frame ``frame_index``: distinct for every frame."""
    return 100 + 7 * frame_index


def flat_frame(frame_index: int) -> np.ndarray:
    """The uint32 frame whose every pixel counts :func:`counts_of` ``(frame_index)``."""
    return np.full(SHAPE, counts_of(frame_index), dtype=np.uint32)

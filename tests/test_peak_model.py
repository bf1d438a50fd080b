"""Peak model files and PONI geometry files: defaults load, bad files give one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis.errors import ConfigurationError, GeometryError
from analysis.peak_model import (SAXS_FRIEDEL_PAIRS, OverloadPolicy, PeakModel, PeakWindow,
                                 hkl_from_waxs_name)
from stream.config_files import load_geometry, load_peak_model, parse_peak_model

CONFIG = Path(__file__).resolve().parents[1] / "config"
LAPKIN = CONFIG / "peaks_cspbbr2cl_lapkin.yaml"
HILLER = CONFIG / "peaks_cspbbr3_hiller.yaml"


def _in_window(window: PeakWindow, q_nm: float, chi_deg: float, chi_margin_deg: float = 0.0,
               q_margin_nm: float = 0.0) -> bool:
    start, end = window.chi_range_deg
    offset = (chi_deg - start) % 360.0
    return (window.q_range_nm[0] + q_margin_nm <= q_nm <= window.q_range_nm[1] - q_margin_nm
            and chi_margin_deg <= offset <= (end - start) - chi_margin_deg)


def _write_model(tmp_path: Path, edit) -> Path:
    """A copy of the Lapkin default with ``edit(document)`` applied."""
    document = yaml.safe_load(LAPKIN.read_text())
    edit(document)
    path = tmp_path / "peaks.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _peak(document: dict, name: str) -> dict:
    return next(p for p in document["peaks"] if p["name"] == name)


# -- defaults ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [LAPKIN, HILLER])
def test_default_models_load(path):
    model = load_peak_model(path)
    assert model.peak_names == ("saxs_1", "saxs_2", "saxs_3", "saxs_4",
                                "waxs_010", "waxs_020", "waxs_110", "waxs_m110")
    assert model.saxs_integration_q_max_nm == 2.0
    assert model.williamson_hall_K == pytest.approx(0.86)
    assert model.peak("waxs_m110").hkl == (-1, 1, 0)
    assert model.peak("waxs_020").hkl == (0, 2, 0)
    for first, second in SAXS_FRIEDEL_PAIRS:
        gap = (model.peak(second).chi_centre_deg - model.peak(first).chi_centre_deg) % 360.0
        assert gap == pytest.approx(180.0)
    for window in model.peaks:
        assert window.n_q <= 40 and window.n_chi <= 90
    assert not model.peak("waxs_110").overlaps(model.peak("waxs_m110"))


def test_lapkin_windows_hold_the_synthetic_supercrystal_peaks():
    """science.md ranges: SAXS q 0.55..0.95 nm^-1 with FWHM <= 0.2, phi 75..95, gamma 80..100;
    WAXS at a_AL = 0.574 nm, psi = phi + 45."""
    model = load_peak_model(LAPKIN)
    a_al_nm = 0.574
    for phi in np.linspace(75, 95, 5):
        for gamma in np.linspace(80, 100, 5):
            omega1 = phi + gamma / 2 - 90
            omega2 = phi - gamma / 2 + 90
            for q0 in (0.55, 0.95):
                for name, chi in (("saxs_1", omega1), ("saxs_2", omega2),
                                  ("saxs_3", omega1 + 180), ("saxs_4", omega2 + 180)):
                    # the peak's centre plus one FWHM of 0.2 nm^-1 on either side fit in q,
                    # and the centre stays >= 10 deg inside the chi window
                    assert _in_window(model.peak(name), q0, chi, chi_margin_deg=10, q_margin_nm=0.19), (name, phi, gamma)
            psi = phi + 45
            for name, chi in (("waxs_010", psi), ("waxs_020", psi), ("waxs_110", psi - 45),
                              ("waxs_m110", psi + 45)):
                window = model.peak(name)
                q0 = 2 * math.pi * math.sqrt(sum(i * i for i in window.hkl)) / a_al_nm
                # 1.5 FWHM (0.8 nm^-1) each side radially, >= 10 deg inside in chi
                assert _in_window(window, q0, chi, chi_margin_deg=10, q_margin_nm=1.2), (name, phi)


def test_chi_window_crossing_180_is_normalised_and_continuous():
    window = PeakWindow("waxs_m110", "waxs", (13.9, 17.1), (-225.0, -145.0), 40, 80, hkl=(-1, 1, 0))
    assert window.chi_range_deg == (135.0, 215.0)
    assert window.chi_centre_deg == pytest.approx(175.0)
    across = PeakWindow("waxs_100", "waxs", (1.0, 2.0), (170.0, 190.0), 4, 4, hkl=(1, 0, 0))
    assert across.chi_centre_deg == pytest.approx(-180.0)
    assert across.overlaps(PeakWindow("waxs_001", "waxs", (1.5, 3.0), (-175.0, -160.0), 4, 4, hkl=(0, 0, 1)))
    assert not across.overlaps(PeakWindow("waxs_001", "waxs", (1.5, 3.0), (-170.0, -160.0), 4, 4, hkl=(0, 0, 1)))


def test_waxs_names_encode_miller_indices():
    assert hkl_from_waxs_name("waxs_m110") == (-1, 1, 0)
    assert hkl_from_waxs_name("waxs_0m20") == (0, -2, 0)
    assert hkl_from_waxs_name("waxs_11") is None
    assert hkl_from_waxs_name("saxs_1") is None


def test_model_built_in_code_is_checked_like_a_file():
    window = PeakWindow("waxs_010", "waxs", (9.35, 12.55), (90.0, 170.0), 40, 80, hkl=(0, 1, 0))
    model = PeakModel(peaks=(window,), overload=OverloadPolicy(max_saturated_pixels=2))
    assert model.has_waxs and not model.has_saxs
    assert model.peak_index("waxs_010") == 0
    with pytest.raises(ConfigurationError, match="no peak 'waxs_020'"):
        model.peak("waxs_020")
    with pytest.raises(ConfigurationError, match="more than once"):
        PeakModel(peaks=(window, window))
    with pytest.raises(ConfigurationError, match="williamson_hall_L_nm=-1"):
        PeakModel(peaks=(window,), williamson_hall_L_nm=-1.0)
    with pytest.raises(ConfigurationError, match="n_q=1"):
        PeakWindow("waxs_010", "waxs", (9.35, 12.55), (90.0, 170.0), 1, 80, hkl=(0, 1, 0))


# -- bad peak model files -----------------------------------------------------------------------
def _unknown_top_key(doc):
    doc["fit_method"] = "lm"


def _unknown_peak_key(doc):
    _peak(doc, "waxs_020")["fwhm_guess"] = 0.8


def _reversed_q(doc):
    _peak(doc, "waxs_110")["q_range_nm"] = [17.1, 13.9]


def _three_saxs_peaks(doc):
    doc["peaks"] = [p for p in doc["peaks"] if p["name"] != "saxs_4"]


def _overlapping_110(doc):
    _peak(doc, "waxs_110")["chi_range_deg"] = [60, 140]


def _reversed_chi(doc):
    _peak(doc, "saxs_2")["chi_range_deg"] = [170, 90]


def _too_wide_chi(doc):
    _peak(doc, "waxs_010")["chi_range_deg"] = [0, 400]


def _hkl_mismatch(doc):
    _peak(doc, "waxs_m110")["hkl"] = [1, 1, 0]


def _bins_not_integer(doc):
    _peak(doc, "saxs_1")["n_q"] = 32.5


def _friedel_pair_swapped(doc):
    _peak(doc, "saxs_3")["chi_range_deg"] = [90, 170]
    _peak(doc, "saxs_2")["chi_range_deg"] = [-180, -100]


def _q_range_short(doc):
    _peak(doc, "saxs_1")["q_range_nm"] = [0.35]


@pytest.mark.parametrize("edit, expected", [
    (_unknown_top_key, ["fit_method", "unknown key"]),
    (_unknown_peak_key, ["'waxs_020'", "fwhm_guess", "unknown key"]),
    (_reversed_q, ["'waxs_110'", "q_range_nm", "[17.1, 13.9]", "reversed"]),
    (_three_saxs_peaks, ["saxs_first_order", "exactly the 4 peaks", "got 3"]),
    (_overlapping_110, ["'waxs_110'", "'waxs_m110'", "overlap"]),
    (_reversed_chi, ["'saxs_2'", "chi_range_deg", "[170.0, 90.0]", "reversed"]),
    (_too_wide_chi, ["'waxs_010'", "wider than 360"]),
    (_hkl_mismatch, ["'waxs_m110'", "hkl [1, 1, 0]", "expected [-1, 1, 0]"]),
    (_bins_not_integer, ["'saxs_1'", "n_q", "32.5"]),
    (_friedel_pair_swapped, ["'saxs_1'", "'saxs_3'", "Friedel"]),
    (_q_range_short, ["'saxs_1'", "q_range_nm"]),
])
def test_bad_peak_model_files_name_the_problem(tmp_path, edit, expected):
    path = _write_model(tmp_path, edit)
    with pytest.raises(ConfigurationError) as info:
        load_peak_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message


def test_missing_or_non_yaml_peak_model_file(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_peak_model(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("peaks: [\n  {name: saxs_1\n")
    with pytest.raises(ConfigurationError, match=r"not valid YAML at line \d+"):
        load_peak_model(broken)
    with pytest.raises(ConfigurationError, match="expected a mapping"):
        parse_peak_model("- just\n- a list\n", source="inline")


def test_overload_and_williamson_hall_sections_are_read(tmp_path):
    def edit(doc):
        doc["overload"] = {"max_saturated_pixels": 3, "saturation_value": 120000}
        doc["williamson_hall"] = {"K": 0.85, "L_nm": 6.8}

    model = load_peak_model(_write_model(tmp_path, edit))
    assert model.overload == OverloadPolicy(max_saturated_pixels=3, saturation_value=120000.0)
    assert (model.williamson_hall_K, model.williamson_hall_L_nm) == (0.85, 6.8)


# -- PONI files ------------------------------------------------------------------------------------
def test_default_poni_files_load():
    geometry = load_geometry(CONFIG / "p10_lapkin_eiger4m.poni")
    assert geometry.shape == (2167, 2070)
    assert geometry.distance_m == pytest.approx(0.412)
    assert geometry.energy_kev == pytest.approx(13.8, abs=0.01)
    row, column = geometry.beam_centre_px
    assert (row, column) == (pytest.approx(1884.0), pytest.approx(1835.0))
    hiller = load_geometry(CONFIG / "p10_hiller_eiger4m.poni")
    assert hiller.energy_kev == pytest.approx(13.0, abs=0.01)


@pytest.mark.parametrize("text, expected", [
    ("this is not a poni file\n", "missing Distance, Poni1, Poni2, Wavelength"),
    ("poni_version: 2.1\nDetector: Eiger4M\nDistance: 0.4\nPoni1: 0.1\nPoni2: 0.1\n", "missing Wavelength"),
    ("poni_version: 2\nDistance: abc\nPoni1: 0.1\n", "not a valid PONI file"),
    ("poni_version: 2.1\nDetector: NoSuchCamera9000\nDistance: 0.4\nPoni1: 0.1\nPoni2: 0.1\n"
     "Wavelength: 1e-10\n", "NoSuchCamera9000"),
    ('poni_version: 2.1\nDetector: Eiger4M\nDetector_config: {"orientation": 2}\nDistance: 0.4\n'
     "Poni1: 0.1\nPoni2: 0.1\nWavelength: 1e-10\n", "orientation 2"),
])
def test_malformed_poni_files_give_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.poni"
    path.write_text(text)
    with pytest.raises(GeometryError) as info:
        load_geometry(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert expected.lower() in message.lower(), message


def test_missing_poni_file(tmp_path):
    with pytest.raises(GeometryError, match="does not exist") as info:
        load_geometry(tmp_path / "nowhere.poni")
    assert "\n" not in str(info.value)

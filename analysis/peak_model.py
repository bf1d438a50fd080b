"""Which Bragg peaks are fitted, and in which polar (q, chi) window each one is looked for.

A peak model is a plain frozen dataclass (:class:`PeakModel` holding :class:`PeakWindow`
objects); reading it from a YAML file, with pydantic, happens at the edge
(``stream.config_files.load_peak_model``). Every consistency rule lives here, in
``__post_init__``, so a model built in code is checked exactly like one read from a file.

Families (science.md sections 3-4):

* ``saxs_first_order``: exactly four peaks ``saxs_1`` .. ``saxs_4``; 1/3 and 2/4 are Friedel
  pairs (window centres about 180 deg apart).
* ``waxs``: atomic-lattice peaks named ``waxs_<h><k><l>`` in pseudo-cubic indexing, a minus
  sign written ``m`` (``waxs_010``, ``waxs_020``, ``waxs_110``, ``waxs_m110``); the Miller
  indices ``hkl`` are given explicitly and must agree with the name.

Azimuth windows follow the project convention (counter-clockwise as seen on the image, see
``analysis.geometry``). A window ``(start, end)`` may cross +-180 deg (``(135, 215)``); it is
stored with ``start`` in [-180, 180) and ``end = start + width``, so the window's chi axis is
continuous ("unwrapped").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from analysis.errors import ConfigurationError

SAXS_FAMILY = "saxs_first_order"
WAXS_FAMILY = "waxs"
PEAK_FAMILIES = (SAXS_FAMILY, WAXS_FAMILY)
SAXS_PEAK_NAMES = ("saxs_1", "saxs_2", "saxs_3", "saxs_4")
SAXS_FRIEDEL_PAIRS = (("saxs_1", "saxs_3"), ("saxs_2", "saxs_4"))
FRIEDEL_TOLERANCE_DEG = 30.0
"""Largest departure from 180 deg between the window centres of a SAXS Friedel pair."""
MAX_BINS_PER_AXIS = 1000

_WAXS_NAME = re.compile(r"^waxs_(m?\d)(m?\d)(m?\d)$")


def hkl_from_waxs_name(name: str) -> tuple[int, int, int] | None:
    """Miller indices encoded in a WAXS peak name (``"waxs_m110"`` -> ``(-1, 1, 0)``), or None."""
    match = _WAXS_NAME.match(name)
    if match is None:
        return None
    return tuple(-int(part[1:]) if part.startswith("m") else int(part) for part in match.groups())


def _arcs_overlap(start_a: float, width_a: float, start_b: float, width_b: float) -> bool:
    """Whether two half-open azimuth arcs ``[start, start + width)`` (degrees) share an angle."""
    return (start_b - start_a) % 360.0 < width_a or (start_a - start_b) % 360.0 < width_b


@dataclass(frozen=True)
class PeakWindow:
    """One peak and the polar window it is fitted in.

    Attributes
    ----------
    name : str
        ``saxs_1`` .. ``saxs_4`` or ``waxs_<hkl>``.
    family : {"saxs_first_order", "waxs"}
    q_range_nm : tuple of float
        (q_min, q_max) of the window, nm^-1, 0 <= q_min < q_max.
    chi_range_deg : tuple of float
        (start, end) azimuth, degrees; normalised on construction to start in [-180, 180) and
        end = start + width with 0 < width <= 360 (end may exceed 180).
    n_q, n_chi : int
        Number of q and chi bins (2 .. 1000).
    hkl : tuple of int or None
        Pseudo-cubic Miller indices (WAXS peaks only).
    """

    name: str
    family: str
    q_range_nm: tuple[float, float]
    chi_range_deg: tuple[float, float]
    n_q: int
    n_chi: int
    hkl: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        label = f"peak {self.name!r}"
        if self.family not in PEAK_FAMILIES:
            raise ConfigurationError(f"{label}: family {self.family!r} is not one of {list(PEAK_FAMILIES)}")
        q_min, q_max = (float(v) for v in self.q_range_nm)
        if not (math.isfinite(q_min) and math.isfinite(q_max)) or q_min < 0:
            raise ConfigurationError(f"{label}: q_range_nm {[q_min, q_max]} must be finite and >= 0")
        if q_max <= q_min:
            raise ConfigurationError(f"{label}: q_range_nm {[q_min, q_max]} is reversed or empty "
                                     f"(write [min, max] with min < max)")
        start, end = (float(v) for v in self.chi_range_deg)
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ConfigurationError(f"{label}: chi_range_deg {[start, end]} must be finite")
        width = end - start
        if width <= 0:
            raise ConfigurationError(
                f"{label}: chi_range_deg {[start, end]} is reversed or empty; a window crossing "
                f"+-180 deg is written with end > 180, e.g. [{start}, {end + 360.0}]")
        if width > 360.0:
            raise ConfigurationError(f"{label}: chi_range_deg {[start, end]} is wider than 360 deg")
        start_wrapped = (start + 180.0) % 360.0 - 180.0
        object.__setattr__(self, "q_range_nm", (q_min, q_max))
        object.__setattr__(self, "chi_range_deg", (start_wrapped, start_wrapped + width))
        for axis in ("n_q", "n_chi"):
            value = getattr(self, axis)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_BINS_PER_AXIS:
                raise ConfigurationError(f"{label}: {axis}={value!r} must be an integer in 2..{MAX_BINS_PER_AXIS}")
        self._check_family(label)

    def _check_family(self, label: str) -> None:
        if self.family == SAXS_FAMILY:
            if self.name not in SAXS_PEAK_NAMES:
                raise ConfigurationError(f"{label}: a {SAXS_FAMILY} peak is named one of {list(SAXS_PEAK_NAMES)}")
            if self.hkl is not None:
                raise ConfigurationError(f"{label}: SAXS peaks take no hkl (got {self.hkl})")
            return
        expected = hkl_from_waxs_name(self.name)
        if expected is None:
            raise ConfigurationError(f"{label}: a WAXS peak is named waxs_<h><k><l> with 'm' for a minus "
                                     f"sign, e.g. waxs_010 or waxs_m110")
        if self.hkl is None:
            raise ConfigurationError(f"{label}: WAXS peaks need their Miller indices hkl, here {list(expected)}")
        hkl = tuple(int(v) for v in self.hkl)
        if hkl != expected:
            raise ConfigurationError(f"{label}: hkl {list(hkl)} does not match the name (expected {list(expected)})")
        if hkl == (0, 0, 0):
            raise ConfigurationError(f"{label}: hkl (0, 0, 0) is not a Bragg peak")
        object.__setattr__(self, "hkl", hkl)

    @property
    def q_width_nm(self) -> float:
        return self.q_range_nm[1] - self.q_range_nm[0]

    @property
    def chi_width_deg(self) -> float:
        return self.chi_range_deg[1] - self.chi_range_deg[0]

    @property
    def q_centre_nm(self) -> float:
        return 0.5 * (self.q_range_nm[0] + self.q_range_nm[1])

    @property
    def chi_centre_deg(self) -> float:
        """Window centre azimuth wrapped to [-180, 180), degrees."""
        return (self.chi_range_deg[0] + 0.5 * self.chi_width_deg + 180.0) % 360.0 - 180.0

    @property
    def q_bin_width_nm(self) -> float:
        return self.q_width_nm / self.n_q

    @property
    def chi_bin_width_deg(self) -> float:
        return self.chi_width_deg / self.n_chi

    def overlaps(self, other: "PeakWindow") -> bool:
        """Whether the two windows share any (q, chi) point."""
        q_overlap = self.q_range_nm[0] < other.q_range_nm[1] and other.q_range_nm[0] < self.q_range_nm[1]
        return q_overlap and _arcs_overlap(self.chi_range_deg[0], self.chi_width_deg,
                                           other.chi_range_deg[0], other.chi_width_deg)


@dataclass(frozen=True)
class OverloadPolicy:
    """What overloaded (saturated) pixels do to a window.

    Attributes
    ----------
    max_saturated_pixels : int
        A window with more valid pixels above the saturation value than this gets the
        ``SATURATED`` status (0: any saturated pixel flags the window).
    saturation_value : float or None
        Largest valid count; None uses the detector's value from the series header.
    """

    max_saturated_pixels: int = 0
    saturation_value: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_saturated_pixels, bool) or not isinstance(self.max_saturated_pixels, int) \
                or self.max_saturated_pixels < 0:
            raise ConfigurationError(f"overload max_saturated_pixels={self.max_saturated_pixels!r} "
                                     f"must be an integer >= 0")
        if self.saturation_value is not None and not (math.isfinite(self.saturation_value)
                                                      and self.saturation_value > 0):
            raise ConfigurationError(f"overload saturation_value={self.saturation_value!r} must be > 0")


@dataclass(frozen=True)
class PeakModel:
    """The peaks fitted on every frame and the global analysis constants.

    Attributes
    ----------
    peaks : tuple of PeakWindow
        In fit order; names are unique; windows do not overlap.
    saxs_integration_q_max_nm : float
        Pixels with q below this make the integrated SAXS intensity (science.md 2.3), nm^-1.
    significance_threshold : float
        A peak with I0 / sigma(I0) below this is ``NOT_SIGNIFICANT``.
    overload : OverloadPolicy
    williamson_hall_K : float
        Scherrer constant K of the Williamson-Hall relation (about 0.86 for cubes).
    williamson_hall_L_nm : float or None
        Fixed NC size L (nm) for per-frame g_q and delta_psi; None: not fixed in the model.
    name : str
        Free description (material, beamtime).
    """

    peaks: tuple[PeakWindow, ...]
    saxs_integration_q_max_nm: float = 2.0
    significance_threshold: float = 5.0
    overload: OverloadPolicy = field(default_factory=OverloadPolicy)
    williamson_hall_K: float = 0.86
    williamson_hall_L_nm: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "peaks", tuple(self.peaks))
        if not self.peaks:
            raise ConfigurationError("peak model has no peaks")
        names = [peak.name for peak in self.peaks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"peak model names {duplicates} more than once")
        saxs = [peak.name for peak in self.peaks if peak.family == SAXS_FAMILY]
        if saxs and sorted(saxs) != list(SAXS_PEAK_NAMES):
            raise ConfigurationError(f"the {SAXS_FAMILY} family needs exactly the 4 peaks "
                                     f"{list(SAXS_PEAK_NAMES)}, got {len(saxs)}: {saxs}")
        if saxs:
            self._check_friedel_pairs()
        for i, first in enumerate(self.peaks):
            for second in self.peaks[i + 1:]:
                if first.overlaps(second):
                    raise ConfigurationError(
                        f"windows of peaks {first.name!r} (q {list(first.q_range_nm)}, chi "
                        f"{list(first.chi_range_deg)}) and {second.name!r} (q {list(second.q_range_nm)}, "
                        f"chi {list(second.chi_range_deg)}) overlap")
        checks = {
            "saxs_integration_q_max_nm": math.isfinite(self.saxs_integration_q_max_nm)
            and self.saxs_integration_q_max_nm > 0,
            "significance_threshold": math.isfinite(self.significance_threshold) and self.significance_threshold >= 0,
            "williamson_hall_K": math.isfinite(self.williamson_hall_K) and 0 < self.williamson_hall_K <= 2,
            "williamson_hall_L_nm": self.williamson_hall_L_nm is None
            or (math.isfinite(self.williamson_hall_L_nm) and self.williamson_hall_L_nm > 0),
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigurationError(f"peak model {key}={getattr(self, key)!r} is out of range")

    def _check_friedel_pairs(self) -> None:
        for first_name, second_name in SAXS_FRIEDEL_PAIRS:
            first, second = self.peak(first_name), self.peak(second_name)
            offset = (second.chi_centre_deg - first.chi_centre_deg - 180.0 + 180.0) % 360.0 - 180.0
            if abs(offset) > FRIEDEL_TOLERANCE_DEG:
                raise ConfigurationError(
                    f"peaks {first_name!r} and {second_name!r} are a Friedel pair but their chi windows are "
                    f"centred at {first.chi_centre_deg:g} and {second.chi_centre_deg:g} deg, not 180 deg apart "
                    f"(+-{FRIEDEL_TOLERANCE_DEG:g})")

    @property
    def peak_names(self) -> tuple[str, ...]:
        return tuple(peak.name for peak in self.peaks)

    def peak(self, name: str) -> PeakWindow:
        """The window of the peak called ``name`` (ConfigurationError when absent)."""
        for peak in self.peaks:
            if peak.name == name:
                return peak
        raise ConfigurationError(f"peak model has no peak {name!r} (peaks: {list(self.peak_names)})")

    def peak_index(self, name: str) -> int:
        """Position of peak ``name`` in :attr:`peaks` (= its window index in a polar table)."""
        return self.peak_names.index(self.peak(name).name)

    @property
    def saxs_peaks(self) -> tuple[PeakWindow, ...]:
        return tuple(peak for peak in self.peaks if peak.family == SAXS_FAMILY)

    @property
    def waxs_peaks(self) -> tuple[PeakWindow, ...]:
        return tuple(peak for peak in self.peaks if peak.family == WAXS_FAMILY)

    @property
    def has_saxs(self) -> bool:
        return bool(self.saxs_peaks)

    @property
    def has_waxs(self) -> bool:
        return bool(self.waxs_peaks)

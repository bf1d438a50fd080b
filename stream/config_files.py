"""Reading the configuration files: pyFAI PONI geometries and YAML peak models.

File I/O and the pydantic schemas live here, at the edge; :mod:`analysis` receives the plain
frozen dataclasses (:class:`~analysis.geometry.DetectorGeometry`,
:class:`~analysis.peak_model.PeakModel`). Every error is one line naming the file, and for a
peak model the peak and the offending value.

Peak model file (YAML)::

    name: CsPbBr2Cl supercrystal (Lapkin et al.)
    saxs_integration_q_max_nm: 2.0
    significance_threshold: 3.0          # I0 / sigma(I0)
    overload: {max_saturated_pixels: 0, saturation_value: null}
    williamson_hall: {K: 0.86, L_nm: null}
    peaks:
      - {name: saxs_1, family: saxs_first_order, q_range_nm: [0.35, 1.15],
         chi_range_deg: [0, 80], n_q: 32, n_chi: 40}
      - {name: waxs_m110, family: waxs, hkl: [-1, 1, 0], q_range_nm: [13.9, 17.1],
         chi_range_deg: [135, 215], n_q: 40, n_chi: 80}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analysis.errors import BraggmapError, ConfigurationError, GeometryError
from analysis.geometry import DetectorGeometry
from analysis.peak_model import OverloadPolicy, PeakModel, PeakWindow

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", frozen=True)


class _PeakSpec(BaseModel):
    model_config = _STRICT
    name: str
    family: Literal["saxs_first_order", "waxs"]
    q_range_nm: tuple[float, float]
    chi_range_deg: tuple[float, float]
    n_q: int = Field(strict=True)
    n_chi: int = Field(strict=True)
    hkl: tuple[int, int, int] | None = None


class _OverloadSpec(BaseModel):
    model_config = _STRICT
    max_saturated_pixels: int = Field(default=0, strict=True)
    saturation_value: float | None = None


class _WilliamsonHallSpec(BaseModel):
    model_config = _STRICT
    K: float = 0.86
    L_nm: float | None = None


class _PeakModelSpec(BaseModel):
    model_config = _STRICT
    name: str = ""
    saxs_integration_q_max_nm: float = 2.0
    significance_threshold: float = 3.0
    overload: _OverloadSpec = _OverloadSpec()
    williamson_hall: _WilliamsonHallSpec = _WilliamsonHallSpec()
    peaks: list[_PeakSpec] = Field(min_length=1)


def _location(loc: tuple, raw: dict) -> str:
    """``('peaks', 2, 'q_range_nm', 0)`` -> ``"peak 'waxs_110' (peaks[2]) q_range_nm[0]"``."""
    parts: list[str] = []
    items = list(loc)
    if len(items) >= 2 and items[0] == "peaks" and isinstance(items[1], int):
        index = items[1]
        peaks = raw.get("peaks")
        name = None
        if isinstance(peaks, list) and index < len(peaks) and isinstance(peaks[index], dict):
            name = peaks[index].get("name")
        parts.append(f"peak {name!r} (peaks[{index}])" if name is not None else f"peaks[{index}]")
        items = items[2:]
    for item in items:
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return " ".join(parts) or "file"


def _format_validation_error(path: Path, error: ValidationError, raw: dict) -> str:
    problems = []
    for item in error.errors():
        where = _location(tuple(item["loc"]), raw)
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return f"peak model file {path}: " + "; ".join(problems)


def parse_peak_model(text: str, source: str | Path = "<text>") -> PeakModel:
    """Parse and validate the YAML text of a peak model; ``source`` names it in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigurationError(f"peak model file {source}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"peak model file {source}: expected a mapping with a 'peaks' list, "
                                 f"got {type(raw).__name__}")
    try:
        spec = _PeakModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(_format_validation_error(Path(str(source)), exc, raw)) from None
    try:
        return PeakModel(
            peaks=tuple(PeakWindow(name=p.name, family=p.family, q_range_nm=p.q_range_nm,
                                   chi_range_deg=p.chi_range_deg, n_q=p.n_q, n_chi=p.n_chi, hkl=p.hkl)
                        for p in spec.peaks),
            saxs_integration_q_max_nm=spec.saxs_integration_q_max_nm,
            significance_threshold=spec.significance_threshold,
            overload=OverloadPolicy(max_saturated_pixels=spec.overload.max_saturated_pixels,
                                    saturation_value=spec.overload.saturation_value),
            williamson_hall_K=spec.williamson_hall.K,
            williamson_hall_L_nm=spec.williamson_hall.L_nm,
            name=spec.name,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"peak model file {source}: {exc}") from None


def load_peak_model(path: str | Path) -> PeakModel:
    """Read a peak model YAML file.

    Raises
    ------
    ConfigurationError
        One line naming the file (and the peak and value) when the file is missing, not YAML,
        has unknown keys or inconsistent values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"peak model file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"peak model file {path} cannot be read: {exc}") from None
    return parse_peak_model(text, source=path)


def load_geometry(poni_path: str | Path) -> DetectorGeometry:
    """Read a pyFAI PONI file into a :class:`DetectorGeometry`.

    Raises
    ------
    GeometryError
        One line naming the file when it is missing, unreadable, lacks a distance, PONI or
        wavelength, names an unknown detector or uses a detector orientation other than
        pyFAI's default 3 (braggmap's chi convention is defined for orientation 3).
    """
    from pyFAI.io.ponifile import PoniFile

    path = Path(poni_path)
    if not path.is_file():
        raise GeometryError(f"geometry file {path} does not exist")
    try:
        config = PoniFile(str(path)).as_dict()
    except Exception as exc:  # pyFAI raises ValueError, KeyError, yaml errors... for malformed files
        detail = str(exc).splitlines()[0].split(" ! ")[0] if str(exc) else type(exc).__name__
        raise GeometryError(f"geometry file {path} is not a valid PONI file: {detail}") from None
    labels = {"dist": "Distance", "poni1": "Poni1", "poni2": "Poni2", "wavelength": "Wavelength"}
    missing = [label for key, label in labels.items() if config.get(key) is None]
    if missing:
        raise GeometryError(f"geometry file {path} is not a valid PONI file: missing {', '.join(missing)}")
    for key in ("rot1", "rot2", "rot3"):
        if config.get(key) is None:
            config[key] = 0.0
    orientation = (config.get("detector_config") or {}).get("orientation")
    if orientation is not None and int(orientation) != 3:
        raise GeometryError(f"geometry file {path}: detector orientation {int(orientation)} is not supported "
                            f"(braggmap's chi convention assumes pyFAI's default orientation 3)")
    try:
        geometry = DetectorGeometry.from_pyfai_config(config)
    except BraggmapError as exc:
        raise GeometryError(f"geometry file {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"geometry file {path} is not a valid PONI file: {exc}") from None
    log.debug("geometry %s: %s", path, geometry)
    return geometry

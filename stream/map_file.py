"""Map files: one self-describing HDF5 file per scan (maps, statuses, units, scan axes,
geometry, peak model, frame accounting, software version).

Layout::

    /                       attrs: software, software_version, created, series_id, complete,
                            by_frame_index, problems (JSON), analysis_errors (JSON)
    /maps/<parameter>       float64 (rows, columns), NaN = missing; attrs units, description
    /status/<parameter>     int32 (rows, columns), analysis.status.Status codes; attrs reasons
    /scan/row_um, column_um float64 motor positions; attrs grid (JSON), axis names
    /accounting             attrs: the frame-accounting summary (JSON) and its one-line form
    /derived/sc_mask, distance_to_edge_um   supercrystal mask (SAXS > half max) and distance to
                            its edge (science.md section 6)
    /profiles/<parameter>/{distance_um, mean, std, count}   parameter against distance to edge
    /average_pattern        per-peak fits of the summed windows; attrs williamson_hall_L_nm, _g,
                            their errors, status, K, n_frames
    /config/geometry_poni   the PONI file text;  /config/peak_model  the peak model text
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from analysis.errors import DataFileError
from analysis.scan_grid import ScanGrid
from analysis.status import STATUS_REASONS


def software_version() -> str:
    try:
        return metadata.version("braggmap")
    except metadata.PackageNotFoundError:
        return "unknown"


def _read_text(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def write_map_file(path: Path, outcome, units: dict[str, str], descriptions: dict[str, str] | None = None,
                   poni_path: str | None = None, peaks_path: str | None = None) -> Path:
    """Write a finished series (:class:`stream.collector.SeriesOutcome`) to ``path``."""
    import h5py

    descriptions = descriptions or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".h5.part")
    maps = outcome.maps
    with h5py.File(tmp, "w") as handle:
        handle.attrs["software"] = "braggmap"
        handle.attrs["software_version"] = software_version()
        handle.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        handle.attrs["series_id"] = outcome.info.series_id
        handle.attrs["complete"] = bool(outcome.complete)
        handle.attrs["by_frame_index"] = bool(outcome.grid.by_frame_index)
        handle.attrs["problems"] = json.dumps(outcome.problems)
        handle.attrs["analysis_errors"] = json.dumps(outcome.analysis_errors)
        handle.attrs["series_info"] = json.dumps(outcome.info.as_dict())
        group = handle.create_group("maps")
        status_group = handle.create_group("status")
        for name in maps.parameters:
            dataset = group.create_dataset(name, data=np.asarray(maps.values[name], dtype=np.float64))
            dataset.attrs["units"] = units.get(name, "")
            dataset.attrs["description"] = descriptions.get(name, "")
            status = status_group.create_dataset(name, data=np.asarray(maps.statuses[name], dtype=np.int32))
            status.attrs["reasons"] = json.dumps({int(k): v for k, v in STATUS_REASONS.items()})
        scan = handle.create_group("scan")
        rows_um, columns_um = outcome.grid.axes_um()
        scan.create_dataset("row_um", data=rows_um).attrs["units"] = "um"
        scan.create_dataset("column_um", data=columns_um).attrs["units"] = "um"
        scan.attrs["grid"] = json.dumps(outcome.grid.as_dict())
        accounting = handle.create_group("accounting")
        if outcome.summary is not None:
            accounting.attrs["summary"] = json.dumps(outcome.summary.as_dict())
            accounting.attrs["line"] = outcome.summary.line()
        accounting.attrs["results"] = outcome.results
        _write_derived(handle, maps, outcome.grid)
        if outcome.average is not None:
            _write_average(handle, outcome.average)
        config = handle.create_group("config")
        config.create_dataset("geometry_poni", data=_read_text(poni_path))
        config.create_dataset("peak_model", data=_read_text(peaks_path))
        config.attrs["geometry_path"] = str(poni_path or "")
        config.attrs["peak_model_path"] = str(peaks_path or "")
    tmp.replace(path)
    return path


PROFILE_PARAMETERS = ("a_mean_nm", "a_ratio", "gamma_deg", "phi_deg", "i_al", "psi_deg",
                      "delta_psi_deg", "g_q", "a_al_nm")


def _write_derived(handle, maps, grid) -> None:
    """SC mask, distance to edge and profiles (only for a real scan grid with SAXS intensity)."""
    if grid.by_frame_index or "saxs_intensity" not in maps.values:
        return
    from analysis.crystal_region import distance_to_edge_um, profile_vs_distance, supercrystal_mask

    inside = supercrystal_mask(maps.values["saxs_intensity"])
    distance = distance_to_edge_um(inside, tuple(abs(s) for s in grid.step_um))
    derived = handle.create_group("derived")
    derived.create_dataset("sc_mask", data=np.asarray(inside, dtype=np.int8)).attrs["description"] = (
        "1 inside the supercrystal (SAXS intensity above half its maximum), 0 outside or not measured")
    derived.create_dataset("distance_to_edge_um", data=distance).attrs["units"] = "um"
    profiles = handle.create_group("profiles")
    for name in PROFILE_PARAMETERS:
        if name not in maps.values:
            continue
        profile = profile_vs_distance(maps.values[name], distance, inside=inside)
        group = profiles.create_group(name)
        group.create_dataset("distance_um", data=profile.bin_centres_um)
        group.create_dataset("mean", data=profile.mean)
        group.create_dataset("std", data=profile.std)
        group.create_dataset("count", data=profile.count)


def _write_average(handle, average) -> None:
    group = handle.create_group("average_pattern")
    fits = average.fits
    group.attrs["peaks"] = json.dumps(list(fits.names))
    for quantity in ("i0", "q0_nm", "chi0_deg", "fwhm_q_nm", "fwhm_chi_deg", "q0_err_nm", "fwhm_q_err_nm"):
        group.create_dataset(quantity, data=np.asarray(getattr(fits, quantity), dtype=np.float64))
    group.create_dataset("status", data=np.asarray(fits.status, dtype=np.int32))
    wh = average.williamson_hall
    group.attrs["williamson_hall_L_nm"] = float(wh.L_nm)
    group.attrs["williamson_hall_g"] = float(wh.g)
    group.attrs["williamson_hall_L_err_nm"] = float(wh.errors.L_nm)
    group.attrs["williamson_hall_g_err"] = float(wh.errors.g)
    group.attrs["williamson_hall_status"] = int(wh.status)
    group.attrs["K"] = float(average.K)
    group.attrs["n_frames"] = int(average.n_frames)


@dataclass(frozen=True)
class MapFile:
    """Contents of a map file (for re-analysis, tests and viewers)."""

    maps: dict[str, np.ndarray]
    statuses: dict[str, np.ndarray]
    units: dict[str, str]
    grid: ScanGrid
    attrs: dict
    accounting: dict


def read_map_file(path: Path) -> MapFile:
    """Read a map file written by :func:`write_map_file`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"map file {path} does not exist")
    try:
        with h5py.File(path, "r") as handle:
            maps = {name: handle["maps"][name][()] for name in handle["maps"]}
            units = {name: str(handle["maps"][name].attrs.get("units", "")) for name in handle["maps"]}
            statuses = {name: handle["status"][name][()] for name in handle["status"]}
            grid = ScanGrid.from_dict(json.loads(handle["scan"].attrs["grid"]))
            attrs = {key: handle.attrs[key] for key in handle.attrs}
            summary = handle["accounting"].attrs.get("summary")
            accounting = json.loads(summary) if summary is not None else {}
    except (OSError, KeyError) as exc:
        raise DataFileError(f"map file {path} is not a braggmap map file: {exc}") from exc
    return MapFile(maps, statuses, units, grid, attrs, accounting)

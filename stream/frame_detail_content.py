"""What the frame-detail endpoint says about one frame: the fitted numbers of every peak (with
errors, status and reason), the derived map values, the polar windows with their fitted model
and residual, and where each fitted peak lies on the detector.

The frame goes through the same :class:`analysis.frame_analysis.FrameAnalyzer` as in the
workers (same tables, same fits), so the numbers are those on the map.
"""

from __future__ import annotations

import math
import time

import numpy as np

from analysis.frame_analysis import INVALID_VALUES, FrameAnalyzer
from analysis.peak_fits import PEAK_ERRORS, PEAK_QUANTITIES, PeakFits
from analysis.peak_pixels import ellipse_q_chi, pixel_of_q_chi, rectangle_q_chi
from analysis.status import reason

WINDOW_PLANES = ("mean_counts", "model", "residual")
"""Planes of the window array of a detail reply, in order."""


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _points(rows: np.ndarray, cols: np.ndarray) -> dict:
    return {"rows": [_number(v) for v in rows], "cols": [_number(v) for v in cols]}


def raw_window_params(analyzer: FrameAnalyzer) -> np.ndarray:
    """Fitter parameters (n_windows, 7) of the last fit of ``analyzer.fitter``, table order."""
    return analyzer.fitter.last_params.copy()


def excluded_pixels(frame: np.ndarray, pixel_mask: np.ndarray | None) -> np.ndarray:
    """uint8 image (rows, columns): 1 where the pixel mask excludes a pixel or the frame marks
    it NODATA (2^bits - 1, or NaN for float frames), else 0."""
    invalid = INVALID_VALUES.get(frame.dtype)
    excluded = np.isnan(frame) if frame.dtype.kind == "f" else frame == invalid
    if pixel_mask is not None:
        excluded |= np.asarray(pixel_mask) != 0
    return excluded.astype(np.uint8)


def window_planes(analyzer: FrameAnalyzer, params: np.ndarray) -> np.ndarray:
    """float32 (3, n_windows, n_q, n_chi): mean counts per pixel of the last regrouped frame,
    the fitted model in the same unit (the fitter models the intensity density in (q, chi) as
    the bins' pixels sample it; times the bins' mean pixel area it is counts per pixel again)
    where the fit gave finite parameters, and the residual; NaN in padding bins."""
    table = analyzer.table
    planes = np.full((len(WINDOW_PLANES), *table.bins_shape), np.nan, dtype=np.float32)
    planes[0] = analyzer.buffers.mean_counts
    for window in range(table.n_windows):
        q_bins, chi_bins = table.window_bins(window)
        planes[0, window, q_bins.stop:, :] = np.nan
        planes[0, window, :, chi_bins.stop:] = np.nan
        if not np.all(np.isfinite(params[window])):
            continue
        area = table.pixel_area_per_bin[window, q_bins, chi_bins]
        model = analyzer.fitter.window_model(window, params[window]) * area
        planes[1, window, q_bins, chi_bins] = model
        planes[2, window, q_bins, chi_bins] = planes[0, window, q_bins, chi_bins] - model
    return planes


def peak_records(analyzer: FrameAnalyzer, fits: PeakFits, integrator) -> list[dict]:
    """One JSON-ready record per peak: values, errors, status, reason, detector positions of the
    fitted centre, of its FWHM ellipse and of the window outline (fractional pixel indices)."""
    table = analyzer.table
    records = []
    for window, name in enumerate(fits.names):
        status = int(fits.status[window])
        record = {
            "name": name,
            "status": status,
            "reason": reason(status),
            "values": {q: _number(fits.get(q, name)) for q in PEAK_QUANTITIES},
            "errors": {q: _number(fits.get(e, name)) for q, e in zip(PEAK_QUANTITIES, PEAK_ERRORS)},
            "centre_px": None,
            "ellipse_px": None,
        }
        n_q, n_chi = int(table.n_q_per_window[window]), int(table.n_chi_per_window[window])
        q_outline, chi_outline = rectangle_q_chi(
            (table.q_edges_nm[window, 0], table.q_edges_nm[window, n_q]),
            (table.chi_edges_deg[window, 0], table.chi_edges_deg[window, n_chi]))
        record["window_outline_px"] = _points(*pixel_of_q_chi(analyzer.geometry, q_outline, chi_outline,
                                                              integrator))
        q0, chi0 = fits.get("q0_nm", name), fits.get("chi0_deg", name)
        if np.isfinite(q0) and np.isfinite(chi0):
            rows, cols = pixel_of_q_chi(analyzer.geometry, np.array([q0]), np.array([chi0]), integrator)
            record["centre_px"] = {"row": _number(rows[0]), "col": _number(cols[0])}
            half_q, half_chi = fits.get("fwhm_q_nm", name) / 2, fits.get("fwhm_chi_deg", name) / 2
            if np.isfinite(half_q) and np.isfinite(half_chi):
                q_ring, chi_ring = ellipse_q_chi(float(q0), float(chi0), float(half_q), float(half_chi))
                record["ellipse_px"] = _points(*pixel_of_q_chi(analyzer.geometry, q_ring, chi_ring, integrator))
        records.append(record)
    return records


def frame_detail_content(analyzer: FrameAnalyzer, frame: np.ndarray, pixel_mask: np.ndarray | None,
                         saturation_value: float | None, integrator=None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Analyse one frame and describe it.

    Parameters
    ----------
    analyzer : FrameAnalyzer
        Built for the frame's series (its geometry and pixel mask).
    frame : ndarray, shape (rows, columns)
        Decoded counts.
    pixel_mask : ndarray of uint32, shape (rows, columns), or None
        The series' EIGER pixel mask.
    saturation_value : float or None
        From the series header.
    integrator : pyFAI AzimuthalIntegrator, optional
        Of ``analyzer.geometry`` (built when not given).

    Returns
    -------
    meta : dict
        JSON-ready: ``peaks`` (see :func:`peak_records`), ``parameters`` (name -> value, status,
        reason, unit), ``windows`` (peak names, bins per window, bin centres), ``analysis_ms``.
    excluded : ndarray of uint8, shape (rows, columns)
        See :func:`excluded_pixels`.
    planes : ndarray of float32, shape (3, n_windows, n_q, n_chi)
        See :func:`window_planes`.
    """
    started = time.perf_counter()
    integrator = integrator if integrator is not None else analyzer.geometry.integrator()
    names = analyzer.parameter_names
    values = np.empty(len(names))
    statuses = np.empty(len(names), np.int32)
    analyzer.analyse(frame, values, statuses, saturation_value=saturation_value, accumulate=False)
    buffers = analyzer.buffers
    fits = analyzer.fit_regrouped(buffers)
    params = raw_window_params(analyzer)
    units = FrameAnalyzer.parameter_units_for(analyzer.peak_model)
    table = analyzer.table
    meta = {
        "peaks": peak_records(analyzer, fits, integrator),
        "parameters": {
            name: {"value": _number(values[i]), "status": int(statuses[i]), "reason": reason(statuses[i]),
                   "unit": units.get(name, "")}
            for i, name in enumerate(names)
        },
        "windows": {
            "planes": list(WINDOW_PLANES),
            "shape": list(table.bins_shape),
            "peak_names": list(table.peak_names),
            "n_q": [int(v) for v in table.n_q_per_window],
            "n_chi": [int(v) for v in table.n_chi_per_window],
            "q_centres_nm": [[_number(v) for v in table.window_centres(w)[0]] for w in range(table.n_windows)],
            "chi_centres_deg": [[_number(v) for v in table.window_centres(w)[1]] for w in range(table.n_windows)],
        },
        "saturated_pixels": [int(v) for v in buffers.n_saturated],
    }
    excluded = excluded_pixels(frame, pixel_mask)
    planes = window_planes(analyzer, params)
    meta["analysis_ms"] = round((time.perf_counter() - started) * 1e3, 1)
    return meta, excluded, planes

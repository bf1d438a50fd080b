"""Fit 2D Gaussian peaks to a batch of polar windows: the Python entry points.

``fit_windows`` allocates the outputs and returns them in a :class:`Gauss2DFitResult`;
``fit_windows_into`` writes into caller-owned arrays (the service preallocates them once).
Both validate shapes and dtypes (``ValueError`` naming the array) and call the Numba kernel
of :mod:`analysis.gauss2d_lm`, which never raises for data conditions: each window gets a
``analysis.status.Status`` code instead. The model, parameter order and units are in
:mod:`analysis.gauss2d_model`; the algorithm, error scaling and status rules in
:mod:`analysis.gauss2d_lm`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np

from analysis.errors import ConfigurationError
from analysis.gauss2d_lm import (N_MATRIX_SCRATCH, N_VECTOR_SCRATCH, fit_batch_parallel,
                                 fit_batch_serial)
from analysis.gauss2d_model import (I_CHI0, I_I0, I_Q0, I_SCHI, I_SQ, N_PARAMS, PARAM_NAMES, POINT_ROWS,
                                    fwhm_from_sigma)

__all__ = ["FitSettings", "Gauss2DFitResult", "PreparedFit", "default_bounds", "fit_windows",
           "fit_windows_into", "fwhm_from_sigma", "warm_up", "PARAM_NAMES"]

logger = logging.getLogger(__name__)

WIDTH_MIN_BINS = 0.5
"""Default lower bound of the rms widths, in bins (a FWHM of about 1.2 bins)."""
WIDTH_MAX_FRACTION_OF_SPAN = 0.25
"""Default upper bound of the rms widths as a fraction of the window span (FWHM ~0.6 span)."""


@dataclass(frozen=True)
class FitSettings:
    """Numbers that steer the fit (see :mod:`analysis.gauss2d_lm` for their meaning).

    Attributes
    ----------
    max_iterations : int
        Cap on attempted Levenberg-Marquardt steps per window.
    ftol : float
        Relative chi2 change below which the fit has converged.
    xtol : float
        Step size, in units of the parameters' standard errors, below which it has converged.
    xtol_at_points : float or None
        ``xtol`` of Poisson fits at per-bin points (``points`` given), which take no Newton
        steps and so converge only linearly: a looser ``xtol`` costs them more accuracy than
        it costs the fits at bin centres. None: ``xtol``.
    min_significance : float
        ``I0 / sigma(I0)`` below which a peak is NOT_SIGNIFICANT.
    edge_margin_bins : float
        A centre closer than this (in bins) to the window edge is CENTRE_AT_EDGE.
    min_valid_bins : int
        Fewer valid bins than this: TOO_FEW_POINTS (at least 8 is enforced).
    """

    max_iterations: int = 100
    ftol: float = 1e-10
    xtol: float = 1e-8
    xtol_at_points: float | None = None
    min_significance: float = 3.0
    edge_margin_bins: float = 1.0
    min_valid_bins: int = 3 * N_PARAMS

    def __post_init__(self) -> None:
        checks = {
            "max_iterations": self.max_iterations >= 1,
            "ftol": 0 <= self.ftol < 1,
            "xtol": self.xtol >= 0,
            "xtol_at_points": self.xtol_at_points is None or self.xtol_at_points >= 0,
            "min_significance": self.min_significance >= 0,
            "edge_margin_bins": self.edge_margin_bins >= 0,
            "min_valid_bins": self.min_valid_bins >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (value is not None and not np.isfinite(value)):
                raise ConfigurationError(f"fit setting {name}={value!r} is out of range")


@dataclass
class Gauss2DFitResult:
    """Results of a batch fit; every array has a leading ``n_win`` axis.

    Attributes
    ----------
    params, errors : ndarray (n_win, 7) float64
        Fitted parameters and 1-sigma errors (order ``PARAM_NAMES``); NaN unless status OK.
    status : ndarray (n_win,) int32
        ``analysis.status.Status`` codes.
    chi2_reduced : ndarray (n_win,) float64
        chi2 / (n_valid - 7) at the end of the fit (diagnostic; NaN where no fit ran).
    n_iterations : ndarray (n_win,) int32
        Attempted steps.
    raw_params : ndarray (n_win, 7) float64
        Last parameters of every fit that ran, whatever its status (for debugging).
    initial : ndarray (n_win, 7) float64
        Start points (guess moved inside the bounds).
    lower, upper : ndarray (n_win, 7) float64
        Bounds used.
    """

    params: np.ndarray
    errors: np.ndarray
    status: np.ndarray
    chi2_reduced: np.ndarray
    n_iterations: np.ndarray
    raw_params: np.ndarray
    initial: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def fwhm_q_nm(self) -> np.ndarray:
        """Radial FWHM in nm^-1, shape (n_win,)."""
        return fwhm_from_sigma(self.params[:, I_SQ])

    @property
    def fwhm_chi_deg(self) -> np.ndarray:
        """Azimuthal FWHM in degrees, shape (n_win,)."""
        return fwhm_from_sigma(self.params[:, I_SCHI])


def default_bounds(q_centres_nm, chi_centres_deg) -> tuple[np.ndarray, np.ndarray]:
    """Default bounds of every window, derived from its bin centres.

    ``I0 >= 0``; centres within the first and last bin centres; rms widths between
    ``WIDTH_MIN_BINS`` bins and ``WIDTH_MAX_FRACTION_OF_SPAN`` of the window span; background
    free.

    Parameters
    ----------
    q_centres_nm : ndarray (n_win, n_q), chi_centres_deg : ndarray (n_win, n_chi)

    Returns
    -------
    lower, upper : ndarray (n_win, 7) float64
    """
    q = np.atleast_2d(np.asarray(q_centres_nm, dtype=np.float64))
    chi = np.atleast_2d(np.asarray(chi_centres_deg, dtype=np.float64))
    n_win = max(q.shape[0], chi.shape[0])
    lower = np.full((n_win, N_PARAMS), -np.inf)
    upper = np.full((n_win, N_PARAMS), np.inf)
    lower[:, I_I0] = 0.0
    for i_centre, i_width, axis in ((I_Q0, I_SQ, q), (I_CHI0, I_SCHI, chi)):
        bin_width = np.abs(axis[:, -1] - axis[:, 0]) / (axis.shape[1] - 1)
        lower[:, i_centre] = np.minimum(axis[:, 0], axis[:, -1])
        upper[:, i_centre] = np.maximum(axis[:, 0], axis[:, -1])
        lower[:, i_width] = WIDTH_MIN_BINS * bin_width
        upper[:, i_width] = WIDTH_MAX_FRACTION_OF_SPAN * axis.shape[1] * bin_width
    return lower, upper


def _float64_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a C-contiguous float64 array of ``shape`` (broadcast), or a ValueError."""
    array = np.asarray(value)
    if (array.dtype == np.float64 and array.shape == shape and array.flags.c_contiguous
            and array.flags.writeable):
        return array                                             # the per-frame case: no copy
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, not dtype {array.dtype}")
    try:
        result = np.ascontiguousarray(np.broadcast_to(array.astype(np.float64, copy=False), shape))
    except ValueError:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}") from None
    # one kernel signature: read-only inputs (broadcast views, frozen buffers) are copied
    return result if result.flags.writeable else result.copy()


def _check_output(name: str, array, shape: tuple[int, ...], dtype) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
        got = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise ValueError(f"output {name} must be a {np.dtype(dtype)} array of shape {shape}, "
                         f"got {got}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"output {name} must be C-contiguous and writeable")


def _bounds(name: str, given, default: np.ndarray) -> np.ndarray:
    if given is None:
        return default
    values = _float64_array(name, given, default.shape)
    return np.where(np.isnan(values), default, values)


class PreparedFit:
    """Repeated fits of batches of one shape: everything but the data checked and allocated once.

    The service fits the same windows on every frame: bounds, model points, broadening, the
    kernel's scratch and the debug outputs depend only on the table, so they are validated
    here once and :meth:`run` checks only the data and the outputs of each call.

    Parameters
    ----------
    shape : (n_win, n_q, n_chi)
        Shape of every batch of data.
    q_centres_nm, chi_centres_deg, points, broadening, lower, upper, settings, parallel
        As in :func:`fit_windows_into`.
    poisson : bool
        Poisson maximum likelihood (:meth:`run` then needs ``exposure``) or least squares.

    Raises
    ------
    ValueError
        Wrong shapes or dtypes, fewer than 2 bins along an axis, or a lower bound above an
        upper one.
    """

    def __init__(self, shape, q_centres_nm, chi_centres_deg, *, poisson: bool, points=None,
                 broadening=None, lower=None, upper=None, settings: FitSettings | None = None,
                 parallel: bool = False) -> None:
        if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
            raise ValueError(f"mean_counts must have shape (n_win, n_q >= 2, n_chi >= 2), "
                             f"got {tuple(shape)}")
        self.shape = n_win, n_q, n_chi = tuple(int(n) for n in shape)
        self.settings = FitSettings() if settings is None else settings
        self.poisson = bool(poisson)
        self.at_points = points is not None
        if broadening is not None:
            q_var = _float64_array("broadening q", broadening[0], self.shape)
            chi_var = _float64_array("broadening chi", broadening[1], self.shape)
            with np.errstate(invalid="ignore"):
                if np.any(q_var < 0) or np.any(chi_var < 0):
                    raise ValueError("broadening variances must be >= 0 (NaN where a bin is empty)")
            self.var_q, self.var_chi = (np.array([np.nanmean(v[w]) if np.isfinite(v[w]).any() else 0.0
                                                  for w in range(n_win)]) for v in (q_var, chi_var))
        else:
            q_var = chi_var = np.zeros(self.shape)
            self.var_q = self.var_chi = np.zeros(n_win)
        if self.at_points:
            # q, chi and the broadening of every bin, packed for the point kernel
            self.points = np.ascontiguousarray(np.stack(
                [_float64_array("q_points", points[0], self.shape),
                 _float64_array("chi_points", points[1], self.shape), q_var, chi_var], axis=1))
        else:
            self.points = np.zeros((n_win, 4, 1, 1))  # placeholder, never read
        self.q = _float64_array("q_centres_nm", q_centres_nm, (n_win, n_q))
        self.chi = _float64_array("chi_centres_deg", chi_centres_deg, (n_win, n_chi))
        default_lower, default_upper = default_bounds(self.q, self.chi)
        self.lower = _bounds("lower", lower, default_lower)
        self.upper = _bounds("upper", upper, default_upper)
        bad = np.argwhere(self.lower > self.upper)
        if bad.size:
            w, k = bad[0]
            raise ValueError(f"window {w}: lower bound {self.lower[w, k]!r} of {PARAM_NAMES[k]} is "
                             f"above the upper bound {self.upper[w, k]!r}")
        self.raw_params = np.empty((n_win, N_PARAMS))
        self.initial = np.empty((n_win, N_PARAMS))
        self.parallel = parallel
        n_chunks = min(numba.get_num_threads(), max(n_win, 1)) if parallel else 0
        lead = (n_chunks,) if parallel else ()
        self._scratch = (np.empty(lead + (n_q,)), np.empty(lead + (6, n_chi)),
                         np.empty(lead + (n_q * n_chi,)),
                         np.empty(lead + (N_MATRIX_SCRATCH, N_PARAMS, N_PARAMS)),
                         np.empty(lead + (N_VECTOR_SCRATCH, N_PARAMS)),
                         np.empty(lead + (2, POINT_ROWS, n_q * n_chi)), np.empty(lead + (n_q, n_chi)))
        self._no_data = np.zeros((n_win, 1, 1))
        # least squares at points: the point kernel reads the offsets of the usable bins
        self._no_offset = np.zeros(self.shape) if self.at_points else self._no_data

    def run(self, mean_counts, variance, params, errors, status, chi2_reduced, n_iterations, *,
            exposure=None, offset=None, raw_params=None, initial=None) -> None:
        """Fit one batch into caller-owned outputs (arguments as in :func:`fit_windows_into`;
        ``raw_params`` and ``initial`` default to this object's own arrays)."""
        counts = _float64_array("mean_counts", mean_counts, self.shape)
        var = _float64_array("variance", variance, self.shape)
        if offset is not None and not self.poisson:
            raise ValueError("offset needs exposure (it only enters the Poisson likelihood)")
        if self.poisson:
            if exposure is None:
                raise ValueError("a Poisson fit needs exposure")
            expo = _float64_array("exposure", exposure, self.shape)
            off = (np.zeros(self.shape) if offset is None
                   else _float64_array("offset", offset, self.shape))
        else:
            if exposure is not None:
                raise ValueError("exposure was given to a least-squares fit")
            expo, off = self._no_data, self._no_offset  # placeholder, never read; zeros
        n_win = self.shape[0]
        raw_params = self.raw_params if raw_params is None else raw_params
        initial = self.initial if initial is None else initial
        for name, array, shape, dtype in (
                ("params", params, (n_win, N_PARAMS), np.float64),
                ("errors", errors, (n_win, N_PARAMS), np.float64),
                ("status", status, (n_win,), np.int32),
                ("chi2_reduced", chi2_reduced, (n_win,), np.float64),
                ("n_iterations", n_iterations, (n_win,), np.int32),
                ("raw_params", raw_params, (n_win, N_PARAMS), np.float64),
                ("initial", initial, (n_win, N_PARAMS), np.float64)):
            _check_output(name, array, shape, dtype)
        if n_win == 0:
            return
        s = self.settings
        xtol = s.xtol_at_points if self.at_points and s.xtol_at_points is not None else s.xtol
        kernel = fit_batch_parallel if self.parallel else fit_batch_serial
        kernel(counts, var, expo, off, self.poisson, self.points, self.var_q, self.var_chi,
               self.at_points, self.q, self.chi, self.lower,
               self.upper, int(s.max_iterations), float(s.ftol), float(xtol),
               float(s.min_significance), float(s.edge_margin_bins), int(s.min_valid_bins), params,
               errors, status, chi2_reduced, n_iterations, raw_params, initial, *self._scratch)


def fit_windows_into(mean_counts, variance, q_centres_nm, chi_centres_deg, params, errors, status,
                     chi2_reduced, n_iterations, *, exposure=None, offset=None, points=None,
                     broadening=None, lower=None, upper=None, raw_params=None, initial=None,
                     settings: FitSettings | None = None, parallel: bool = False) -> None:
    """Fit a batch of windows into caller-owned output arrays.

    Parameters
    ----------
    mean_counts : array_like (n_win, n_q, n_chi)
        Background-subtracted mean counts per pixel; NaN where a bin has no valid pixel.
    variance : array_like (n_win, n_q, n_chi)
        Variance of each value (> 0; inf or NaN for an empty bin). A bin with variance 0 is
        skipped: window builders should floor the Poisson variance (e.g. ``max(counts, 1)``).
        With ``exposure`` it serves the start point (guess and first stage) only.
    exposure : array_like (n_win, n_q, n_chi), optional
        Photons per data unit in each bin (counts = ``exposure * (mean_counts + offset)``;
        e.g. pixels per bin for mean counts per pixel). Given: Poisson maximum likelihood,
        weights from the model (see :mod:`analysis.gauss2d_lm`); a bin with exposure 0 or
        NaN is skipped. None: least squares with the fixed ``variance``.
    offset : array_like (n_win, n_q, n_chi), optional
        Known background already subtracted from ``mean_counts`` (data units; default 0),
        which still adds its Poisson noise. Only with ``exposure``.
    points : tuple of two array_like (n_win, n_q, n_chi), optional
        ``(q_points_nm, chi_points_deg)``: where to evaluate the model in each bin, e.g. the
        mean position of the bin's pixels (``PolarTable.pixel_q_mean_nm`` /
        ``pixel_chi_mean_deg``), on the same continuous chi axis as ``chi_centres_deg``; a NaN
        point skips its bin. None: the bin centres (faster: the model is then separable).
    broadening : tuple of two array_like (n_win, n_q, n_chi), optional
        ``(var_q, var_chi)``, nm^-2 and deg^2: the variance of the positions a bin averages
        over (its pixels' spread and each pixel's extent); the model peak of each bin then has
        the rms widths ``sqrt(sigma^2 + var)``, so that the fitted widths are the intrinsic
        ones. With ``points`` per bin, else the window's mean (the model stays separable).
        None: no broadening.
    q_centres_nm : array_like (n_win, n_q) or (n_q,)
        Evenly spaced, increasing bin centres in q, nm^-1.
    chi_centres_deg : array_like (n_win, n_chi) or (n_chi,)
        Evenly spaced, increasing, continuous bin centres in chi, degrees.
    params, errors : ndarray (n_win, 7) float64
    status : ndarray (n_win,) int32
    chi2_reduced : ndarray (n_win,) float64
    n_iterations : ndarray (n_win,) int32
        Outputs, C-contiguous (see :class:`Gauss2DFitResult`).
    lower, upper : array_like (n_win, 7) or (7,), optional
        Bounds; None or NaN entries take :func:`default_bounds`.
    raw_params, initial : ndarray (n_win, 7) float64, optional
        Debug outputs (last parameters of every fit, start points).
    settings : FitSettings, optional
    parallel : bool
        Use the ``prange`` kernel (same results; for large batches in a single process).

    Raises
    ------
    ValueError
        Wrong shapes or dtypes, fewer than 2 bins along an axis, or a lower bound above an
        upper one.
    """
    counts = np.asarray(mean_counts)
    prepared = PreparedFit(counts.shape, q_centres_nm, chi_centres_deg, poisson=exposure is not None,
                           points=points, broadening=broadening, lower=lower, upper=upper,
                           settings=settings, parallel=parallel)
    prepared.run(counts, variance, params, errors, status, chi2_reduced, n_iterations,
                 exposure=exposure, offset=offset, raw_params=raw_params, initial=initial)


def fit_windows(mean_counts, variance, q_centres_nm, chi_centres_deg, lower=None, upper=None, *,
                exposure=None, offset=None, points=None, broadening=None,
                settings: FitSettings | None = None,
                parallel: bool = False) -> Gauss2DFitResult:
    """Fit a batch of windows and return newly allocated results.

    Arguments as in :func:`fit_windows_into`; a single window of shape (n_q, n_chi) is
    accepted too (it becomes a batch of one).
    """
    counts = np.asarray(mean_counts)
    if counts.ndim == 2:
        counts = counts[None]
        variance = np.asarray(variance)[None]
        exposure = None if exposure is None else np.asarray(exposure)[None]
        offset = None if offset is None else np.asarray(offset)[None]
        points = None if points is None else tuple(np.asarray(a)[None] for a in points)
        broadening = (None if broadening is None
                      else tuple(np.asarray(a)[None] for a in broadening))
        q_centres_nm = np.atleast_2d(q_centres_nm)
        chi_centres_deg = np.atleast_2d(chi_centres_deg)
    n_win = counts.shape[0] if counts.ndim == 3 else 0
    q = np.asarray(q_centres_nm)
    chi = np.asarray(chi_centres_deg)
    default_lower, default_upper = default_bounds(
        np.broadcast_to(q, (n_win, q.shape[-1])) if q.ndim else q,
        np.broadcast_to(chi, (n_win, chi.shape[-1])) if chi.ndim else chi)
    result = Gauss2DFitResult(
        params=np.empty((n_win, N_PARAMS)), errors=np.empty((n_win, N_PARAMS)),
        status=np.empty(n_win, np.int32), chi2_reduced=np.empty(n_win),
        n_iterations=np.empty(n_win, np.int32), raw_params=np.empty((n_win, N_PARAMS)),
        initial=np.empty((n_win, N_PARAMS)),
        lower=_bounds("lower", lower, default_lower), upper=_bounds("upper", upper, default_upper))
    fit_windows_into(counts, variance, q_centres_nm, chi_centres_deg, result.params,
                     result.errors, result.status, result.chi2_reduced, result.n_iterations,
                     exposure=exposure, offset=offset, points=points, broadening=broadening,
                     lower=result.lower,
                     upper=result.upper, raw_params=result.raw_params, initial=result.initial,
                     settings=settings, parallel=parallel)
    return result


def warm_up(parallel: bool = False) -> None:
    """Compile (or load from the Numba cache) the fit kernels on a tiny batch of two windows."""
    q = np.linspace(0.5, 0.9, 12)
    chi = np.linspace(150.0, 200.0, 16)
    peak = np.exp(-((q[:, None] - 0.7) ** 2) / 0.005 - ((chi[None, :] - 175.0) ** 2) / 50.0)
    counts = np.stack([100.0 * peak + 1.0, np.ones_like(peak)])
    variance = np.maximum(counts, 1.0)
    exposure = np.ones_like(counts)
    fit_windows(counts, variance, q, chi)
    result = fit_windows(counts, variance, q, chi, exposure=exposure, offset=0.0 * counts)
    if parallel:
        fit_windows(counts, variance, q, chi, parallel=True)
        fit_windows(counts, variance, q, chi, exposure=exposure, parallel=True)
    logger.debug("gauss2d fit kernels ready (status of the warm-up windows: %s)",
                 result.status.tolist())

"""Time the Numba batch 2D-Gaussian fit (serial kernel) against its SciPy references.

Eight simulated windows, 4 SAXS-like (q 0.45-0.95 nm^-1 x 80 deg, 40 x 90 bins) and 4
WAXS-like (q 9.3-12.6 nm^-1 x 80 deg, 40 x 90 bins), Poisson counts. Three ways to fit them:

* Poisson maximum likelihood at the bin centres (what the analysis does in windows of many
  pixels per bin, the WAXS ones), against ``scipy.optimize.minimize`` of the deviance;
* Poisson at a point per bin with a per-bin broadening (what the analysis does in windows of
  a few pixels per bin, the SAXS ones; points a tenth of a bin off the centres here);
* least squares with the observed-count variances (the former fit, still available), against
  ``scipy.optimize.curve_fit``.

Both fitters of a pair start from the same guess with the same bounds. Prints the time per
window of the batch fits, per-peak times of the Poisson pair (one window per call) and their
ratio, and the mean per-window times of the least-squares pair.

Run: ``.venv/bin/python bench/bench_fit.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from analysis.gauss2d_fit import fit_windows, warm_up
from analysis.gauss2d_model import (fit_window_curve_fit, fit_window_poisson_reference, gauss2d_model,
                                    sigma_from_fwhm)

N_Q, N_CHI = 40, 90
# (label, q range, q0, FWHM_q, chi0, FWHM_chi, counts at the peak maximum, pixels per bin)
PEAKS = [
    ("SAXS centred 300", (0.45, 0.95), 0.70, 0.10, 175.0, 6.0, 300.0, 1.0),
    ("SAXS off-centre 1000", (0.45, 0.95), 0.60, 0.10, 160.0, 6.0, 1000.0, 1.0),
    ("SAXS narrow 100", (0.45, 0.95), 0.72, 0.05, 178.0, 3.0, 100.0, 1.0),
    ("SAXS wide 3000", (0.45, 0.95), 0.68, 0.20, 172.0, 12.0, 3000.0, 1.0),
    ("WAXS centred 300", (9.3, 12.6), 10.95, 0.80, 175.0, 17.0, 300.0, 50.0),
    ("WAXS off-centre 1000", (9.3, 12.6), 11.50, 0.74, 190.0, 17.0, 1000.0, 50.0),
    ("WAXS weak 50", (9.3, 12.6), 10.90, 0.80, 170.0, 17.0, 50.0, 50.0),
    ("WAXS broad 2000", (9.3, 12.6), 11.00, 0.86, 180.0, 25.0, 2000.0, 50.0),
]


def simulate(seed: int = 7):
    """Eight windows: mean counts, variances, exposures (n_win, n_q, n_chi), q (n_win, n_q),
    chi, and per-bin points and broadening for the third mode."""
    rng = np.random.default_rng(seed)
    counts, variances, exposures, qs, chis = [], [], [], [], []
    for _, (q_lo, q_hi), q0, fwhm_q, chi0, fwhm_chi, height, n_pix in PEAKS:
        q = q_lo + (np.arange(N_Q) + 0.5) * (q_hi - q_lo) / N_Q
        chi = 135.0 + (np.arange(N_CHI) + 0.5) * 80.0 / N_CHI
        s_q, s_chi = sigma_from_fwhm(fwhm_q), sigma_from_fwhm(fwhm_chi)
        params = [height * 2 * np.pi * s_q * s_chi, q0, chi0, s_q, s_chi, 3.0, 0.0]
        raw = rng.poisson(gauss2d_model(params, q, chi)).astype(np.float64)
        counts.append(raw / n_pix)
        variances.append(np.maximum(raw, 1.0) / n_pix**2)
        exposures.append(np.full(raw.shape, n_pix))
        qs.append(q)
        chis.append(chi)
    q, chi = np.stack(qs), np.stack(chis)
    dq, dchi = (q[:, 1] - q[:, 0])[:, None, None], (chi[:, 1] - chi[:, 0])[:, None, None]
    shape = (len(PEAKS), N_Q, N_CHI)
    points = (q[:, :, None] + 0.1 * dq * rng.uniform(-1, 1, shape),
              chi[:, None, :] + 0.1 * dchi * rng.uniform(-1, 1, shape))
    broadening = (np.broadcast_to(dq**2 / 12, shape), np.broadcast_to(dchi**2 / 12, shape))
    return np.stack(counts), np.stack(variances), np.stack(exposures), q, chi, points, broadening


def best_time(function, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    warm_up()
    y, v, e, q, chi, points, broadening = simulate()
    n_win = y.shape[0]
    modes = {
        "Poisson, bin centres": dict(exposure=e),
        "Poisson, points + broadening": dict(exposure=e, points=points, broadening=broadening),
        "least squares, observed variances": {},
    }
    print(f"os.cpu_count() = {os.cpu_count()}; {n_win} windows of {N_Q} x {N_CHI} bins; "
          f"best of {args.repeats} runs")
    batches = {}
    for label, kwargs in modes.items():
        batches[label] = fit_windows(y, v, q, chi, **kwargs)
        t_batch = best_time(lambda: fit_windows(y, v, q, chi, **kwargs), args.repeats)
        print(f"batch fit (Numba, serial), {label}: {t_batch * 1e3:.3f} ms for {n_win} windows = "
              f"{t_batch / n_win * 1e6:.0f} us per window, iterations "
              f"{batches[label].n_iterations.tolist()}")
    batch = batches["Poisson, bin centres"]
    print(f"{'peak (Poisson, centres)':24s} {'status':>6s} {'iter':>4s} {'numba us':>9s} "
          f"{'scipy us':>10s} {'ratio':>6s} {'max |dp|/err':>12s}")
    total_numba = total_scipy = 0.0
    zeros = np.zeros(y.shape[1:])
    for w, peak in enumerate(PEAKS):
        t_numba = best_time(lambda: fit_windows(y[w], v[w], q[w], chi[w], exposure=e[w]), args.repeats)
        call = (y[w], v[w], e[w], zeros, q[w], chi[w], batch.initial[w], batch.lower[w], batch.upper[w])
        popt, _, _ = fit_window_poisson_reference(*call, tolerance=1e-10)
        t_scipy = best_time(lambda: fit_window_poisson_reference(*call, tolerance=1e-10),
                            max(3, args.repeats // 4))
        total_numba += t_numba
        total_scipy += t_scipy
        deviation = np.nanmax(np.abs(batch.params[w] - popt) / batch.errors[w])
        print(f"{peak[0]:24s} {int(batch.status[w]):6d} {int(batch.n_iterations[w]):4d} "
              f"{t_numba * 1e6:9.0f} {t_scipy * 1e6:10.0f} {t_scipy / t_numba:6.1f} "
              f"{deviation:12.1e}")
    print(f"{'mean per window':24s} {'':6s} {'':4s} {total_numba / n_win * 1e6:9.0f} "
          f"{total_scipy / n_win * 1e6:10.0f} {total_scipy / total_numba:6.1f}")
    fixed = batches["least squares, observed variances"]
    total_numba = total_scipy = 0.0
    for w in range(n_win):
        total_numba += best_time(lambda: fit_windows(y[w], v[w], q[w], chi[w]), args.repeats)
        call = (y[w], v[w], q[w], chi[w], fixed.initial[w], fixed.lower[w], fixed.upper[w])
        total_scipy += best_time(lambda: fit_window_curve_fit(*call, tolerance=1e-8),
                                 max(3, args.repeats // 4))
    print(f"least squares, observed variances: Numba {total_numba / n_win * 1e6:.0f} us, curve_fit "
          f"{total_scipy / n_win * 1e6:.0f} us per window, ratio {total_scipy / total_numba:.1f}")


if __name__ == "__main__":
    main()

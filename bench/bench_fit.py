"""Time the Numba batch 2D-Gaussian fit (serial kernel) against scipy.optimize.curve_fit.

Eight simulated windows, 4 SAXS-like (q 0.45-0.95 nm^-1 x 80 deg, 40 x 90 bins) and 4
WAXS-like (q 9.3-12.6 nm^-1 x 80 deg, 40 x 90 bins), Poisson counts. Both fitters start from
the same guess with the same bounds. Prints the time per window of the batch fit, per-peak
times of both fitters (one window per call) and their ratio.

Run: ``.venv/bin/python bench/bench_fit.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from analysis.gauss2d_fit import fit_windows, warm_up
from analysis.gauss2d_model import fit_window_curve_fit, gauss2d_model, sigma_from_fwhm

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
    """Eight windows: mean counts, variances (n_win, n_q, n_chi), q (n_win, n_q), chi."""
    rng = np.random.default_rng(seed)
    counts, variances, qs, chis = [], [], [], []
    for _, (q_lo, q_hi), q0, fwhm_q, chi0, fwhm_chi, height, n_pix in PEAKS:
        q = q_lo + (np.arange(N_Q) + 0.5) * (q_hi - q_lo) / N_Q
        chi = 135.0 + (np.arange(N_CHI) + 0.5) * 80.0 / N_CHI
        s_q, s_chi = sigma_from_fwhm(fwhm_q), sigma_from_fwhm(fwhm_chi)
        params = [height * 2 * np.pi * s_q * s_chi, q0, chi0, s_q, s_chi, 3.0, 0.0]
        raw = rng.poisson(gauss2d_model(params, q, chi)).astype(np.float64)
        counts.append(raw / n_pix)
        variances.append(np.maximum(raw, 1.0) / n_pix**2)
        qs.append(q)
        chis.append(chi)
    return np.stack(counts), np.stack(variances), np.stack(qs), np.stack(chis)


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
    y, v, q, chi = simulate()
    n_win = y.shape[0]
    batch = fit_windows(y, v, q, chi)
    t_batch = best_time(lambda: fit_windows(y, v, q, chi), args.repeats)
    print(f"os.cpu_count() = {os.cpu_count()}; {n_win} windows of {N_Q} x {N_CHI} bins; "
          f"best of {args.repeats} runs")
    print(f"batch fit (Numba, serial): {t_batch * 1e3:.3f} ms for {n_win} windows = "
          f"{t_batch / n_win * 1e6:.0f} us per window")
    print(f"{'peak':22s} {'status':>6s} {'iter':>4s} {'numba us':>9s} {'curve_fit us':>12s} "
          f"{'ratio':>6s} {'max |dp|/err':>12s}")
    total_numba = total_scipy = 0.0
    for w, peak in enumerate(PEAKS):
        t_numba = best_time(lambda: fit_windows(y[w], v[w], q[w], chi[w]), args.repeats)
        call = (y[w], v[w], q[w], chi[w], batch.initial[w], batch.lower[w], batch.upper[w])
        popt, _, _ = fit_window_curve_fit(*call, tolerance=1e-8)
        t_scipy = best_time(lambda: fit_window_curve_fit(*call, tolerance=1e-8),
                            max(3, args.repeats // 4))
        total_numba += t_numba
        total_scipy += t_scipy
        deviation = np.nanmax(np.abs(batch.params[w] - popt) / batch.errors[w])
        print(f"{peak[0]:22s} {int(batch.status[w]):6d} {int(batch.n_iterations[w]):4d} "
              f"{t_numba * 1e6:9.0f} {t_scipy * 1e6:12.0f} {t_scipy / t_numba:6.1f} "
              f"{deviation:12.1e}")
    print(f"{'mean per window':22s} {'':6s} {'':4s} {total_numba / n_win * 1e6:9.0f} "
          f"{total_scipy / n_win * 1e6:12.0f} {total_scipy / total_numba:6.1f}")
    print(f"curve_fit / batch-per-window ratio: {total_scipy / n_win / (t_batch / n_win):.1f}")


if __name__ == "__main__":
    main()

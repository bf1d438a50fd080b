"""Per-frame cost of the whole analysis on synthetic EIGER X 4M frames, stage by stage.

Prints decode (bitshuffle-LZ4 of a 4M uint32 frame), regroup, the fused decode + regroup straight
from the payload (``stream.bslz4_regroup``), fits of all configured peaks, derived quantities, and
the whole ``FrameAnalyzer.analyse``, what a worker does per frame (fused decode + regroup, then
fits and physics, one frame at a time and per frame of a batch of ``--batch`` waiting frames),
plus the reference pipeline a user would write with the peer tools (dectris-compression decode,
pyFAI integrate2d onto a polar grid per peak window, scipy curve_fit of the same peaks), whole and
stage by stage (decode, integrate2d of a decoded frame, curve_fit of integrated windows), and the
ratios, whole and per stage. Figures go to BENCHMARKS.md.

Run: ``.venv/bin/python bench/bench_frame.py [--frames N] [--batch 8]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10, help="frames timed per stage (median)")
    parser.add_argument("--batch", type=int, default=8, help="frames of the worker's batch (its --max-batch)")
    args = parser.parse_args()

    import logging

    logging.getLogger("silx").setLevel(logging.ERROR)
    from dectris.compression import decompress as dectris_decompress
    from scipy.optimize import curve_fit

    from analysis.gauss2d_model import gauss2d_model
    from analysis.regroup_kernel import regroup_frame
    from stream.codecs import decompress
    from worker_path import WorkerPath

    path = WorkerPath(args.batch)
    scan, frame, payload, batch_payloads = path.scan, path.frame, path.payload, path.batch_payloads
    geometry, analyzer, fused = path.geometry, path.analyzer, path.fused
    values = np.empty(len(analyzer.parameter_names))
    statuses = np.empty(values.shape, np.int32)
    n = args.frames
    worker_path = path.run

    ours = {
        "decode (bitshuffle C, whole frame)": lambda: decompress(payload, "bslz4", "uint32", frame.shape),
        "regroup (Numba, all windows + SAXS region)": lambda: regroup_frame(
            frame, analyzer.table, invalid_value=2**32 - 1, background=analyzer.background, out=analyzer.buffers),
        "fused decode + regroup (payload -> bins, no frame)": lambda: fused.regroup(
            payload, invalid_value=2**32 - 1, background=analyzer.background, out=analyzer.buffers),
        "fit all 8 peaks (Numba Poisson LM, batched)": lambda: analyzer.fit_regrouped(analyzer.buffers),
        "analyse (regroup + fits + physics)": lambda: analyzer.analyse(frame, values, statuses, accumulate=False),
        "worker, one frame (fused + fits + physics)": lambda: worker_path([payload]),
        f"worker, batch of {args.batch} frames (fused + fits + physics)": lambda: worker_path(batch_payloads),
    }
    fits = analyzer.fit_regrouped(analyzer.buffers)
    derive = lambda: analyzer.derive(fits)  # noqa: E731
    ours["derive physics (a1, a2, gamma, phi, psi, WH...)"] = derive

    integrator = geometry.integrator()
    mask = (frame == 2**32 - 1) | (scan.pixel_mask != 0)
    table = analyzer.table

    def reference_decode() -> np.ndarray:
        return np.frombuffer(dectris_decompress(payload, "bslz4", elem_size=4), np.uint32).reshape(frame.shape)

    def reference_integrate(image: np.ndarray) -> list:
        """pyFAI integrate2d of each peak window onto its polar grid: (intensity (n_q, n_chi), q, chi)."""
        windows = []
        for window in range(table.n_windows):
            n_q, n_chi = int(table.n_q_per_window[window]), int(table.n_chi_per_window[window])
            q_edges, chi_edges = table.q_edges_nm[window], table.chi_edges_deg[window]
            result = integrator.integrate2d_ng(image, n_q, n_chi, unit="q_nm^-1", mask=mask,
                                               radial_range=(q_edges[0], q_edges[n_q]),
                                               azimuth_range=(-chi_edges[n_chi], -chi_edges[0])
                                               if chi_edges[n_chi] <= 180 else None,
                                               correctSolidAngle=False, method=("no", "histogram", "cython"))
            intensity = np.asarray(result.intensity, dtype=np.float64)[::-1].T  # (n_q, n_chi)
            windows.append((intensity, np.asarray(result.radial), -np.asarray(result.azimuthal)[::-1]))
        return windows

    def reference_fit(windows: list) -> None:
        """scipy curve_fit of the 2D Gaussian of each window."""
        for intensity, q, chi in windows:
            good = np.isfinite(intensity) & (intensity != 0)
            grid_q, grid_chi = np.meshgrid(q, chi, indexing="ij")
            p0 = [float(np.nansum(intensity)) * (q[1] - q[0]) * abs(chi[1] - chi[0]), q.mean(), chi.mean(),
                  (q[-1] - q[0]) / 8, (chi[-1] - chi[0]) / 8, 0.0, 0.0]

            def model(xy, *p):
                return gauss2d_model(np.asarray(p), xy[0][:, 0], xy[1][0, :]).ravel()

            try:
                curve_fit(lambda _x, *p: model((grid_q, grid_chi), *p)[good.ravel()], None,
                          intensity[good], p0=p0, maxfev=2000)
            except (RuntimeError, ValueError):
                pass

    def reference_pipeline() -> None:
        reference_fit(reference_integrate(reference_decode()))

    print(f"os.cpu_count() = {os.cpu_count()}; EIGER X 4M frame {frame.shape} uint32, "
          f"payload {len(payload) / 1e6:.2f} MB, {table.n_windows} peak windows, "
          f"{table.n_entries} table entries; median of {n} runs")
    results = {}
    for name, function in ours.items():
        results[name] = median_ms(function, n)
        print(f"  ours       {name:52s} {results[name]:8.2f} ms")
    decode_ref = median_ms(reference_decode, n)
    print(f"  reference  {'decode (dectris-compression)':52s} {decode_ref:8.2f} ms")
    image = reference_decode()
    integrate_ref = median_ms(lambda: reference_integrate(image), max(3, n // 3))
    print(f"  reference  {f'regroup (pyFAI integrate2d, {table.n_windows} windows)':52s} {integrate_ref:8.2f} ms")
    integrated = reference_integrate(image)
    fit_ref = median_ms(lambda: reference_fit(integrated), max(3, n // 3))
    print(f"  reference  {f'fit all {table.n_windows} peaks (scipy curve_fit)':52s} {fit_ref:8.2f} ms")
    reference = median_ms(reference_pipeline, max(3, n // 3))
    print(f"  reference  {'decode + pyFAI integrate2d + curve_fit, 8 peaks':52s} {reference:8.2f} ms")
    for stage, ref_ms, ours_name in (
            ("decode", decode_ref, "decode (bitshuffle C, whole frame)"),
            ("regroup", integrate_ref, "regroup (Numba, all windows + SAXS region)"),
            ("fits", fit_ref, "fit all 8 peaks (Numba Poisson LM, batched)")):
        print(f"  stage      {stage + ' alone, reference / ours':52s} {ref_ms / results[ours_name]:8.1f}x")
    separate = results["decode (bitshuffle C, whole frame)"] + results["regroup (Numba, all windows + SAXS region)"]
    fused_ms = results["fused decode + regroup (payload -> bins, no frame)"]
    n_decoded, n_popcounted, _ = fused.last_blocks
    print(f"  ours       {'fused decode + regroup vs decode, then regroup':52s} {fused_ms:8.2f} ms vs "
          f"{separate:.2f} ms ({separate / fused_ms:.1f}x; {n_decoded} blocks decoded, {n_popcounted} without "
          f"untranspose)")
    decoded_first = results["decode (bitshuffle C, whole frame)"] + results["analyse (regroup + fits + physics)"]
    print(f"  ours       {'decode, then analyse (the worker before the fused path)':52s} {decoded_first:8.2f} ms = "
          f"{1e3 / decoded_first:.0f} frames/s per core")
    single = results["worker, one frame (fused + fits + physics)"]
    print(f"  ours       {'worker, one frame at a time':52s} {single:8.2f} ms = {1e3 / single:.0f} frames/s per core")
    batched = results[f"worker, batch of {args.batch} frames (fused + fits + physics)"] / args.batch
    print(f"  ours       {f'worker, per frame in a batch of {args.batch}':52s} {batched:8.2f} ms = "
          f"{1e3 / batched:.0f} frames/s per core")
    print(f"  ratio reference / ours: {reference / batched:.1f}x per frame batched, {reference / single:.1f}x one "
          f"frame at a time")


if __name__ == "__main__":
    main()

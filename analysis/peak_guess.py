"""Initial guesses for the 2D Gaussian fit of one polar window, from background and moments.

The guess (parameter order of ``analysis.gauss2d_model.PARAM_NAMES``) is built in five steps,
identically in the Numba kernel and in the NumPy reference:

1. Valid bins: finite value, finite variance > 0 (``gauss2d_model.valid_bins``).
2. Background ``b0 + b1 (q - q_mid)`` from the border ring of the window (``k`` bins wide,
   ``k = max(1, min(n_q, n_chi) // 10)``): the level of the ring bins below ``q_mid`` and the
   level of those at or above it, placed at their mean q, define the line. Fewer than 3 bins
   in a half: a flat background at the level of the whole ring; fewer than 3 ring bins: the
   level of all valid bins. A level is the mean of the bins at most 3 sigma (of each bin)
   above the median: the clip keeps a peak reaching into the ring from pulling it, the mean
   stays unbiased for low, discrete counts where a median would not.
3. The excess over the background is summed 3 x 3 over the valid neighbours, in units of its
   noise (sum / sqrt(sum of variances)), only to find its maximum: robust against single
   noisy bins, and against the bins of few pixels at a detector edge, whose values scatter
   most.
4. Centre and rms widths from the first and second moments of the *positive* excess in a box
   around that maximum (half-sizes ``max(2, n // 4)`` bins); then once more in a box of
   +-3 sigma around that first centre. Widths are clipped to [1 bin, 0.2 x window span],
   centres to the window's bin centres.
5. ``I0`` = sum of the (signed) excess in the second box x bin area, scaled up by the
   fraction of masked bins in the box, and at least ``0.1 x sqrt(mean variance) x 2 pi s_q
   s_chi`` (a peak a tenth of the noise high) so that it is strictly positive.

Empty, all-NaN, all-zero or peak-less windows give finite numbers (never NaN); whether a peak
is there is decided by the fit (status codes), not here.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.gauss2d_model import N_PARAMS, VECTOR_MATH, q_mid_of, valid_bins

RING_FRACTION_DIVISOR = 10
WIDTH_MAX_FRACTION_OF_SPAN = 0.2
I0_FLOOR_NOISE_FRACTION = 0.1
CLIP_SIGMAS = 3.0


@numba.njit(cache=True, error_model="numpy", inline="always")
def _valid_bin(y, v):
    """Whether a bin enters the guess (as ``gauss2d_model.valid_bins``): finite value, finite
    variance > 0; evaluated without branches, so loops using it can select instead."""
    return math.isfinite(y) & math.isfinite(v) & (v > 0.0)


QUICKSELECT_MAX_ROUNDS = 64
"""Partition rounds of :func:`_select_in_place` before it hands the rest to ``np.partition``
(whose introselect bounds the worst case)."""


@numba.njit(cache=True, error_model="numpy")
def _select_in_place(values, n, k, max_rounds):
    """The ``k``-th smallest of ``values[:n]`` (finite), reordering them in place so that
    ``values[:k]`` are all <= it: Hoare's quickselect with a median-of-three pivot (equal
    values split evenly, so ties do not slow it), without the copy ``np.partition`` makes;
    after ``max_rounds`` partitions ``np.partition`` finishes the part still unsorted."""
    lo = 0
    hi = n - 1
    for _ in range(max_rounds):
        if hi <= lo:
            return values[k]
        a, b, c = values[lo], values[(lo + hi) // 2], values[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i = lo
        j = hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                swap = values[i]
                values[i] = values[j]
                values[j] = swap
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:  # between the two parts: equal to the pivot
            return values[k]
    values[lo:hi + 1] = np.partition(values[lo:hi + 1], k - lo)
    return values[k]


@numba.njit(cache=True, error_model="numpy")
def _median(buffer, n):
    """Median of ``buffer[:n]`` (finite values, reordered in place); ``n`` >= 1."""
    half = n // 2
    upper = _select_in_place(buffer, n, half, QUICKSELECT_MAX_ROUNDS)
    if n % 2 == 1:
        return upper
    lower = buffer[0]
    for i in range(1, half):
        lower = max(lower, buffer[i])
    return 0.5 * (lower + upper)


@numba.njit(cache=True, error_model="numpy")
def _clip(value, low, high):
    """``value`` clipped to [low, high]; ``low`` wins when high < low."""
    if value > high:
        value = high
    if value < low:
        value = low
    return value


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def _box_moments(mean_counts, variance, q_nm, chi_deg, b0, b1, q_mid, i_c, j_c, half_q,
                 half_chi):
    """Moments of the excess in the box (i_c +- half_q, j_c +- half_chi), clipped to the window.

    Returns ``(sum_pos, q_centre, chi_centre, var_q, var_chi, sum_signed, n_box, n_box_valid)``
    (centre and variances NaN when ``sum_pos`` is 0). The loops select instead of branching:
    the sign of a noisy excess is unpredictable, and a mispredicted branch per bin cost more
    than the sums.
    """
    n_q = q_nm.shape[0]
    n_chi = chi_deg.shape[0]
    i_lo = max(0, i_c - half_q)
    i_hi = min(n_q - 1, i_c + half_q)
    j_lo = max(0, j_c - half_chi)
    j_hi = min(n_chi - 1, j_c + half_chi)
    s0 = 0.0
    s_q = 0.0
    s_chi = 0.0
    signed = 0.0
    n_valid = 0
    for i in range(i_lo, i_hi + 1):
        background = b0 + b1 * (q_nm[i] - q_mid)
        row_positive = 0.0
        for j in range(j_lo, j_hi + 1):
            y = mean_counts[i, j]
            v = variance[i, j]
            valid = _valid_bin(y, v)
            excess = (y - background) if valid else 0.0
            positive = excess if excess > 0.0 else 0.0
            n_valid += 1 if valid else 0
            signed += excess
            row_positive += positive
            s_chi += positive * chi_deg[j]
        s0 += row_positive
        s_q += row_positive * q_nm[i]
    n_box = (i_hi - i_lo + 1) * (j_hi - j_lo + 1)
    if not s0 > 0.0:
        return s0, np.nan, np.nan, np.nan, np.nan, signed, n_box, n_valid
    q_c = s_q / s0
    chi_c = s_chi / s0
    m_q = 0.0
    m_chi = 0.0
    for i in range(i_lo, i_hi + 1):
        background = b0 + b1 * (q_nm[i] - q_mid)
        row_positive = 0.0
        for j in range(j_lo, j_hi + 1):
            y = mean_counts[i, j]
            v = variance[i, j]
            valid = _valid_bin(y, v)
            excess = (y - background) if valid else 0.0
            positive = excess if excess > 0.0 else 0.0
            row_positive += positive
            m_chi += positive * (chi_deg[j] - chi_c) ** 2
        m_q += row_positive * (q_nm[i] - q_c) ** 2
    return s0, q_c, chi_c, m_q / s0, m_chi / s0, signed, n_box, n_valid


@numba.njit(cache=True, error_model="numpy")
def _row_selected(q_value, q_mid, which):
    """Whether a q row takes part in a selection (see ``_background_level``)."""
    return which >= 2 or (q_value >= q_mid) == (which == 1)


@numba.njit(cache=True, error_model="numpy")
def _row_ring_columns(i, n_q, n_chi, ring, which):
    """Column ranges ``[0, a)`` and ``[b, n_chi)`` of row ``i`` in a selection: the whole row
    for the ring's first and last ``ring`` rows (and for ``which == 3``, all bins), else its
    first and last ``ring`` columns."""
    if which == 3 or i < ring or i >= n_q - ring:
        return n_chi, n_chi
    return min(ring, n_chi), max(n_chi - ring, min(ring, n_chi))


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def _visit_selection(mean_counts, variance, q_nm, q_mid, ring, which, median, sort_buffer):
    """One row-major pass over the valid bins of a selection (see ``_background_level``).

    With ``median`` NaN their values go to ``sort_buffer`` and ``(n, 0, 0)`` is returned; else
    ``(n_kept, sum, q_sum)`` of the values at most ``CLIP_SIGMAS`` sigma above ``median``.
    """
    n_q = q_nm.shape[0]
    n_chi = mean_counts.shape[1]
    collect = math.isnan(median)
    n = 0
    total = 0.0
    q_sum = 0.0
    for i in range(n_q):
        if not _row_selected(q_nm[i], q_mid, which):
            continue
        first_end, second_start = _row_ring_columns(i, n_q, n_chi, ring, which)
        for part in range(2):
            j_start = 0 if part == 0 else second_start
            j_end = first_end if part == 0 else n_chi
            if collect:
                for j in range(j_start, j_end):
                    y = mean_counts[i, j]
                    v = variance[i, j]
                    if _valid_bin(y, v):
                        sort_buffer[n] = y
                        n += 1
                continue
            row_total = 0.0
            row_kept = 0
            for j in range(j_start, j_end):  # selects: a peak's bins make branches mispredict
                y = mean_counts[i, j]
                v = variance[i, j]
                kept = _valid_bin(y, v) & (y <= median + CLIP_SIGMAS * math.sqrt(abs(v)))
                row_total += y if kept else 0.0
                row_kept += 1 if kept else 0
            total += row_total
            q_sum += row_kept * q_nm[i]
            n += row_kept
    return n, total, q_sum


@numba.njit(cache=True, error_model="numpy")
def _background_level(mean_counts, variance, q_nm, q_mid, ring, which, sort_buffer):
    """Clipped mean of the valid bins of a selection: 0/1 the low/high-q half of the border
    ring (rows below / at or above ``q_mid``), 2 the ring, 3 all bins.

    The mean of the values at most ``CLIP_SIGMAS`` standard deviations (of each bin) above
    the selection's median: unbiased for low, discrete counts (where a median is not) and
    blind to a peak reaching into the selection. Only the selection's bins are visited, in
    row-major order.

    Returns ``(n_bins, level, q_mean)``; level and q_mean are 0 when ``n_bins`` is 0.
    """
    n, _, _ = _visit_selection(mean_counts, variance, q_nm, q_mid, ring, which, np.nan, sort_buffer)
    if n == 0:
        return 0, 0.0, 0.0
    median = _median(sort_buffer, n)
    n_kept, total, q_sum = _visit_selection(mean_counts, variance, q_nm, q_mid, ring, which, median,
                                            sort_buffer)
    return n, total / n_kept, q_sum / n_kept


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def _three_row_sums(excess, variance, i, n_q, n_chi, sums):
    """Per column, the sums over rows i - 1 .. i + 1 (inside the window) of the valid excess
    (``excess`` row-major (n_q * n_chi,), NaN marks an invalid bin) into ``sums[0]`` and of
    their variances into ``sums[1]``. Unsigned indices and selects, not branches: LLVM
    vectorizes the loops (scattered invalid bins made a branch mispredict)."""
    width = np.uint64(n_chi)
    for k in range(n_chi):
        j = np.uint64(k)
        sums[0, j] = 0.0
        sums[1, j] = 0.0
    for row in range(max(0, i - 1), min(n_q, i + 2)):
        ii = np.uint64(row)
        start = ii * width
        for k in range(n_chi):
            j = np.uint64(k)
            e = excess[start + j]
            valid = not math.isnan(e)
            sums[0, j] += e if valid else 0.0
            sums[1, j] += variance[ii, j] if valid else 0.0


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def _smoothed_row(excess, i, n_chi, sums):
    """``sums[2, j]``: the 3 x 3 sum of the valid excess around bin (i, j) in units of its noise,
    ``-inf`` where that bin is invalid (NaN excess), from the row sums of
    :func:`_three_row_sums` in ``sums[0]`` and ``sums[1]`` (n_chi >= 2). The loops have no
    branch, so LLVM vectorizes the square roots and divisions; every column adds centre, left,
    right in that order."""
    row = np.uint64(i) * np.uint64(n_chi)
    one = np.uint64(1)
    last = np.uint64(n_chi - 1)
    sums[2, 0] = (sums[0, 0] + sums[0, 1]) / math.sqrt(sums[1, 0] + sums[1, 1])
    for k in range(1, n_chi - 1):
        j = np.uint64(k)
        total = (sums[0, j] + sums[0, j - one]) + sums[0, j + one]
        total_variance = (sums[1, j] + sums[1, j - one]) + sums[1, j + one]
        sums[2, j] = total / math.sqrt(total_variance)
    sums[2, last] = (sums[0, last] + sums[0, last - one]) / math.sqrt(sums[1, last] + sums[1, last - one])
    for k in range(n_chi):
        j = np.uint64(k)
        sums[2, j] = -np.inf if math.isnan(excess[row + j]) else sums[2, j]


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def guess_peak_kernel(mean_counts, variance, q_nm, chi_deg, guess_out, sort_buffer, row_scratch):
    """Initial guess for one window (Numba; algorithm in the module docstring).

    Parameters
    ----------
    mean_counts, variance : float64 (n_q, n_chi)
        Background-subtracted mean counts and their variances (NaN/inf/<=0 variance: skipped).
    q_nm : float64 (n_q,), chi_deg : float64 (n_chi,)
        Strictly increasing, evenly spaced bin centres (nm^-1, degrees); n_q, n_chi >= 2.
    guess_out : float64 (7,)
        Output: ``[I0, q0_nm, chi0_deg, sigma_q_nm, sigma_chi_deg, b0, b1]``.
    sort_buffer : float64 (>= n_q * n_chi,)
        Scratch for the medians and the excess.
    row_scratch : float64 (>= 3, >= n_chi)
        Scratch for the 3 x 3 sums.

    Returns
    -------
    int
        Number of valid bins.
    """
    n_q = q_nm.shape[0]
    n_chi = chi_deg.shape[0]
    dq = (q_nm[n_q - 1] - q_nm[0]) / (n_q - 1)
    dchi = (chi_deg[n_chi - 1] - chi_deg[0]) / (n_chi - 1)
    q_mid = 0.5 * (q_nm[0] + q_nm[n_q - 1])
    ring = max(1, min(n_q, n_chi) // RING_FRACTION_DIVISOR)

    n_valid = 0
    sum_variance = 0.0
    for i in range(n_q):
        for j in range(n_chi):
            y = mean_counts[i, j]
            v = variance[i, j]
            # selects, not branches: scattered invalid bins made a branch mispredict
            valid = _valid_bin(y, v)
            n_valid += 1 if valid else 0
            sum_variance += v if valid else 0.0

    # 2. background line from the two halves of the border ring
    b0 = 0.0
    b1 = 0.0
    n_low, level_low, q_low = _background_level(mean_counts, variance, q_nm, q_mid,
                                                ring, 0, sort_buffer)
    n_high, level_high, q_high = _background_level(mean_counts, variance, q_nm, q_mid,
                                                   ring, 1, sort_buffer)
    if n_low >= 3 and n_high >= 3:
        b1 = (level_high - level_low) / (q_high - q_low)
        b0 = level_low + b1 * (q_mid - q_low)
    else:
        which = 2 if n_low + n_high >= 3 else 3
        b0 = _background_level(mean_counts, variance, q_nm, q_mid, ring, which,
                               sort_buffer)[1]

    # 3. maximum of the 3 x 3 smoothed excess (the excess, NaN where invalid, in the buffer)
    for i in range(n_q):
        background = b0 + b1 * (q_nm[i] - q_mid)
        for j in range(n_chi):
            y = mean_counts[i, j]
            v = variance[i, j]
            valid = _valid_bin(y, v)
            sort_buffer[i * n_chi + j] = y - background if valid else np.nan
    i_max = n_q // 2
    j_max = n_chi // 2
    best = -np.inf
    for i in range(n_q):
        _three_row_sums(sort_buffer, variance, i, n_q, n_chi, row_scratch)
        _smoothed_row(sort_buffer, i, n_chi, row_scratch)
        row_best = -np.inf  # (a row without a bin above ``best`` is not searched: fewer branches)
        for j in range(n_chi):
            smoothed = row_scratch[2, j]
            row_best = smoothed if smoothed > row_best else row_best
        if row_best > best:
            for j in range(n_chi):
                smoothed = row_scratch[2, j]
                if smoothed > best:
                    best = smoothed
                    i_max = i
                    j_max = j

    # 4. moments around the maximum, twice
    span_q = n_q * dq
    span_chi = n_chi * dchi
    q_c = q_nm[i_max]
    chi_c = chi_deg[j_max]
    s_q = 2.0 * dq
    s_chi = 2.0 * dchi
    signed = 0.0
    n_box = 0
    n_box_valid = 0
    for rep in range(2):
        if rep == 0:
            i_c = i_max
            j_c = j_max
            half_q = max(2, n_q // 4)
            half_chi = max(2, n_chi // 4)
        else:
            i_c = int(_clip(math.floor((q_c - q_nm[0]) / dq + 0.5), 0, n_q - 1))
            j_c = int(_clip(math.floor((chi_c - chi_deg[0]) / dchi + 0.5), 0, n_chi - 1))
            half_q = max(2, int(math.ceil(3.0 * s_q / dq)))
            half_chi = max(2, int(math.ceil(3.0 * s_chi / dchi)))
        s0, q_m, chi_m, var_q, var_chi, signed, n_box, n_box_valid = _box_moments(
            mean_counts, variance, q_nm, chi_deg, b0, b1, q_mid, i_c, j_c, half_q, half_chi)
        if s0 > 0.0:
            q_c = _clip(q_m, q_nm[0], q_nm[n_q - 1])
            chi_c = _clip(chi_m, chi_deg[0], chi_deg[n_chi - 1])
            s_q = _clip(math.sqrt(var_q), dq, WIDTH_MAX_FRACTION_OF_SPAN * span_q)
            s_chi = _clip(math.sqrt(var_chi), dchi, WIDTH_MAX_FRACTION_OF_SPAN * span_chi)

    # 5. integrated intensity
    i0 = 0.0
    if n_box_valid > 0:
        i0 = signed * dq * dchi * n_box / n_box_valid
    noise = math.sqrt(sum_variance / n_valid) if n_valid > 0 else 0.0
    i0_floor = I0_FLOOR_NOISE_FRACTION * noise * 2.0 * math.pi * s_q * s_chi
    if not i0_floor > 0.0:
        i0_floor = 1e-12 * dq * dchi
    if not i0 > i0_floor:
        i0 = i0_floor
    guess_out[0] = i0
    guess_out[1] = q_c
    guess_out[2] = chi_c
    guess_out[3] = s_q
    guess_out[4] = s_chi
    guess_out[5] = b0
    guess_out[6] = b1
    return n_valid


def guess_peak(mean_counts, variance, q_centres_nm, chi_centres_deg) -> np.ndarray:
    """Initial guess for one window with the Numba kernel (allocating convenience wrapper).

    Parameters
    ----------
    mean_counts, variance : ndarray, shape (n_q, n_chi), float64
    q_centres_nm : ndarray (n_q,), chi_centres_deg : ndarray (n_chi,)
        Strictly increasing, evenly spaced, n_q and n_chi >= 2.

    Returns
    -------
    ndarray, shape (7,), float64
    """
    y = np.ascontiguousarray(mean_counts, dtype=np.float64)
    v = np.ascontiguousarray(variance, dtype=np.float64)
    q = np.ascontiguousarray(q_centres_nm, dtype=np.float64)
    chi = np.ascontiguousarray(chi_centres_deg, dtype=np.float64)
    if y.ndim != 2 or v.shape != y.shape or y.shape != (q.size, chi.size) or min(y.shape) < 2:
        raise ValueError(f"guess_peak: mean_counts {y.shape}, variance {v.shape}, q {q.shape} "
                         f"and chi {chi.shape} do not form one (n_q >= 2, n_chi >= 2) window")
    out = np.empty(N_PARAMS)
    guess_peak_kernel(y, v, q, chi, out, np.empty(y.size), np.empty((3, y.shape[1])))
    return out


def guess_peak_reference(mean_counts, variance, q_centres_nm, chi_centres_deg) -> np.ndarray:
    """NumPy reference of :func:`guess_peak_kernel` (same algorithm, vectorised)."""
    y = np.asarray(mean_counts, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    q = np.asarray(q_centres_nm, dtype=np.float64)
    chi = np.asarray(chi_centres_deg, dtype=np.float64)
    n_q, n_chi = y.shape
    dq = (q[-1] - q[0]) / (n_q - 1)
    dchi = (chi[-1] - chi[0]) / (n_chi - 1)
    q_mid = q_mid_of(q)
    ok = valid_bins(y, v)
    ring_width = max(1, min(n_q, n_chi) // RING_FRACTION_DIVISOR)
    i_idx, j_idx = np.meshgrid(np.arange(n_q), np.arange(n_chi), indexing="ij")
    ring = ((i_idx < ring_width) | (i_idx >= n_q - ring_width)
            | (j_idx < ring_width) | (j_idx >= n_chi - ring_width))
    low = np.broadcast_to((q < q_mid)[:, None], y.shape)
    q_grid = np.broadcast_to(q[:, None], y.shape)
    def level(selection):
        values = y[selection]
        kept = values <= np.median(values) + CLIP_SIGMAS * np.sqrt(v[selection])
        return values[kept].mean(), q_grid[selection][kept].mean()

    halves = [ok & ring & low, ok & ring & ~low]
    b0, b1 = 0.0, 0.0
    if all(h.sum() >= 3 for h in halves):
        (level_low, q_low), (level_high, q_high) = level(halves[0]), level(halves[1])
        b1 = (level_high - level_low) / (q_high - q_low)
        b0 = level_low + b1 * (q_mid - q_low)
    elif (ok & ring).sum() >= 3:
        b0 = float(level(ok & ring)[0])
    elif ok.any():
        b0 = float(level(ok)[0])

    excess = np.where(ok, y - (b0 + b1 * (q_grid - q_mid)), 0.0)
    padded = np.pad(excess, 1)
    padded_variance = np.pad(np.where(ok, v, 0.0), 1)
    total = np.zeros(y.shape)
    total_variance = np.zeros(y.shape)
    for di in range(3):
        for dj in range(3):
            total += padded[di:di + n_q, dj:dj + n_chi]
            total_variance += padded_variance[di:di + n_q, dj:dj + n_chi]
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed = np.where(ok, total / np.sqrt(total_variance), -np.inf)
    i_max, j_max = (np.unravel_index(np.argmax(smoothed), y.shape) if ok.any()
                    else (n_q // 2, n_chi // 2))

    q_c, chi_c, s_q, s_chi = q[i_max], chi[j_max], 2.0 * dq, 2.0 * dchi
    box = None
    for rep in range(2):
        if rep == 0:
            i_c, j_c, half_q, half_chi = i_max, j_max, max(2, n_q // 4), max(2, n_chi // 4)
        else:
            i_c = int(np.clip(np.floor((q_c - q[0]) / dq + 0.5), 0, n_q - 1))
            j_c = int(np.clip(np.floor((chi_c - chi[0]) / dchi + 0.5), 0, n_chi - 1))
            half_q = max(2, int(np.ceil(3.0 * s_q / dq)))
            half_chi = max(2, int(np.ceil(3.0 * s_chi / dchi)))
        box = (slice(max(0, i_c - half_q), min(n_q - 1, i_c + half_q) + 1),
               slice(max(0, j_c - half_chi), min(n_chi - 1, j_c + half_chi) + 1))
        e = excess[box]
        positive = ok[box] & (e > 0)
        weight = np.where(positive, e, 0.0)
        s0 = weight.sum()
        if s0 > 0:
            qb = q_grid[box]
            chib = np.broadcast_to(chi[None, :], y.shape)[box]
            qm = (weight * qb).sum() / s0
            cm = (weight * chib).sum() / s0
            var_q = (weight * (qb - qm) ** 2).sum() / s0
            var_chi = (weight * (chib - cm) ** 2).sum() / s0
            q_c = float(np.clip(qm, q[0], q[-1]))
            chi_c = float(np.clip(cm, chi[0], chi[-1]))
            s_q = max(dq, min(np.sqrt(var_q), WIDTH_MAX_FRACTION_OF_SPAN * n_q * dq))
            s_chi = max(dchi, min(np.sqrt(var_chi), WIDTH_MAX_FRACTION_OF_SPAN * n_chi * dchi))

    n_box_valid = int(ok[box].sum())
    i0 = 0.0
    if n_box_valid:
        i0 = excess[box][ok[box]].sum() * dq * dchi * excess[box].size / n_box_valid
    noise = np.sqrt(v[ok].mean()) if ok.any() else 0.0
    floor = I0_FLOOR_NOISE_FRACTION * noise * 2 * np.pi * s_q * s_chi
    if not floor > 0:
        floor = 1e-12 * dq * dchi
    i0 = i0 if i0 > floor else floor
    return np.array([i0, q_c, chi_c, s_q, s_chi, b0, b1], dtype=np.float64)

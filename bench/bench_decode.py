"""Per-frame bitshuffle-LZ4 decode times for a synthetic EIGER X 4M uint32 frame.

Compares the stock full-frame decoders (bitshuffle C, dectris-compression) with our Numba
decoder (``stream.bslz4_kernel``), full frame and with 5 % of the blocks selected.
Run: ``.venv/bin/python bench/bench_decode.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.bslz4_kernel import BslZ4Decoder, warm_up  # noqa: E402

ROWS, COLS = 2167, 2070          # EIGER X 4M: 4 x 2 modules of 514 x 1030, gaps 37 / 10 px
BLOCK_BYTES = 8192


def synthetic_frame(rng: np.random.Generator) -> np.ndarray:
    """Low Poisson background (mean 0.3 counts), 40 Gaussian Bragg peaks of 1e2-1e5 counts,
    module gaps at 2**32 - 1 as the detector writes them."""
    frame = rng.poisson(0.3, size=(ROWS, COLS)).astype(np.uint32)
    rows, cols = np.mgrid[-12:13, -12:13]
    for _ in range(40):
        r0, c0 = rng.integers(20, ROWS - 20), rng.integers(20, COLS - 20)
        amplitude, sigma = 10 ** rng.uniform(2, 5), rng.uniform(1.5, 4.0)
        peak = amplitude * np.exp(-(rows ** 2 + cols ** 2) / (2 * sigma ** 2))
        frame[r0 - 12:r0 + 13, c0 - 12:c0 + 13] += rng.poisson(peak).astype(np.uint32)
    for module_row in range(1, 4):
        start = module_row * 514 + (module_row - 1) * 37
        frame[start:start + 37, :] = np.iinfo(np.uint32).max
    frame[:, 1030:1040] = np.iinfo(np.uint32).max
    return frame


def bslz4_payload(frame: np.ndarray) -> bytes:
    import bitshuffle

    block_elements = BLOCK_BYTES // frame.itemsize
    return (struct.pack(">QI", frame.nbytes, BLOCK_BYTES)
            + bitshuffle.compress_lz4(frame, block_size=block_elements).tobytes())


def per_frame_ms(decoders: dict, repeats: int) -> dict:
    """Median ms per call of each decoder; the decoders take turns so that the load of a
    shared machine hits them alike."""
    times = {name: [] for name in decoders}
    for decode in decoders.values():
        decode()
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            decode()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import bitshuffle
    from dectris.compression import decompress

    rng = np.random.default_rng(7)
    frame = synthetic_frame(rng)
    payload = bslz4_payload(frame)
    warm_up()
    decoder = BslZ4Decoder(np.uint32, frame.shape, BLOCK_BYTES)
    out = np.zeros_like(frame)
    selected = np.sort(rng.choice(decoder.n_blocks, decoder.n_blocks // 20, replace=False))
    compressed = np.frombuffer(payload, np.uint8)[12:]

    def bitshuffle_full():
        return bitshuffle.decompress_lz4(compressed, frame.shape, np.dtype(np.uint32),
                                         BLOCK_BYTES // 4)

    def dectris_full():
        return np.frombuffer(decompress(payload, "bslz4", elem_size=4), np.uint32)

    assert np.array_equal(decoder.decode(payload, out), frame)
    assert np.array_equal(bitshuffle_full(), frame)
    assert np.array_equal(dectris_full().reshape(frame.shape), frame)

    print(f"os.cpu_count() = {os.cpu_count()}; frame {ROWS} x {COLS} uint32 "
          f"({frame.nbytes / 1e6:.1f} MB), payload {len(payload) / 1e6:.2f} MB, "
          f"{decoder.n_blocks} blocks; median of {args.repeats}")
    decoders = {
        "bitshuffle C, full frame": bitshuffle_full,
        "dectris-compression, full frame": dectris_full,
        "ours (Numba), full frame": lambda: decoder.decode(payload, out),
        f"ours (Numba), {selected.size} blocks (5 %)":
            lambda: decoder.decode_blocks(payload, selected, out),
        "ours, block index only": lambda: decoder.index(payload),
    }
    for name, ms in per_frame_ms(decoders, args.repeats).items():
        print(f"  {name:<38s} {ms:8.2f} ms/frame")


if __name__ == "__main__":
    main()

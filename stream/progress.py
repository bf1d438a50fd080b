"""A one-line progress display: frames done, rate, time left (rewritten in place on a terminal,
a line every few seconds otherwise)."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """Call :meth:`update` with a collector series state after every result."""

    def __init__(self, stream=None, min_interval_s: float = 0.25) -> None:
        self.stream = stream or sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval_s = min_interval_s if self.interactive else 5.0
        self._started = time.monotonic()
        # off a terminal (logs, pipes), the first line waits one interval: a run that fails at
        # once then ends with its one-line error alone
        self._last = 0.0 if self.interactive else self._started
        self._shown = False

    def text(self, done: int, expected: int | None, elapsed_s: float) -> str:
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        if expected:
            fraction = min(done / expected, 1.0)
            bar = "#" * int(25 * fraction) + "-" * (25 - int(25 * fraction))
            left = (expected - done) / rate if rate > 0 else float("inf")
            eta = f"{left:4.0f} s left" if left != float("inf") else "   ? s left"
            return f"[{bar}] {done}/{expected} frames  {rate:6.1f} frames/s  {eta}"
        return f"{done} frames  {rate:6.1f} frames/s"

    def update(self, series) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last = now
        line = self.text(series.results, series.info.n_images, now - self._started)
        if self.interactive:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown and self.interactive:
            self.stream.write("\n")
            self.stream.flush()

"""A one-line progress display: frames done, rate, time left (rewritten in place on a terminal,
a line every few seconds otherwise)."""

from __future__ import annotations

import sys
import time
from typing import Callable

TERMINAL_INTERVAL_S = 0.25
"""Default seconds between redraws on a terminal."""
LOG_INTERVAL_S = 5.0
"""Default seconds between lines off a terminal (logs, pipes)."""


class ProgressLine:
    """Call :meth:`update` with a collector series state after every result.

    Parameters
    ----------
    stream : file-like, optional
        Where the line goes (default ``sys.stderr``); a terminal gets it rewritten in place.
    interval_s : float, optional
        Least time between two lines (default :data:`TERMINAL_INTERVAL_S` on a terminal,
        :data:`LOG_INTERVAL_S` otherwise).
    clock : callable, optional
        Monotonic seconds (default ``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, stream=None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        default = TERMINAL_INTERVAL_S if self.interactive else LOG_INTERVAL_S
        self.min_interval_s = default if interval_s is None else interval_s
        self._clock = clock
        self._started = clock()
        # off a terminal (logs, pipes), the first line waits one interval: a run that fails at
        # once then ends with its one-line error alone
        self._last = float("-inf") if self.interactive else self._started
        self._shown = False

    def text(self, done: int, expected: int | None, elapsed_s: float) -> str:
        """The progress line for ``done`` of ``expected`` frames after ``elapsed_s`` seconds."""
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        if expected:
            fraction = min(done / expected, 1.0)
            bar = "#" * int(25 * fraction) + "-" * (25 - int(25 * fraction))
            left = (expected - done) / rate if rate > 0 else float("inf")
            eta = f"{left:4.0f} s left" if left != float("inf") else "   ? s left"
            return f"[{bar}] {done}/{expected} frames  {rate:6.1f} frames/s  {eta}"
        return f"{done} frames  {rate:6.1f} frames/s"

    def update(self, series) -> None:
        """Show the progress of ``series`` (``results`` done of ``info.n_images``), at most
        once per interval."""
        now = self._clock()
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
        """End the in-place line on a terminal (nothing to do elsewhere)."""
        if self._shown and self.interactive:
            self.stream.write("\n")
            self.stream.flush()

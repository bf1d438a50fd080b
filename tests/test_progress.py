"""The replay progress line: frames done, rate and time left, at most once per interval (a
fake clock drives it, so nothing here sleeps)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from stream.progress import LOG_INTERVAL_S, ProgressLine


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def series(done: int, expected: int | None):
    """What :meth:`ProgressLine.update` reads of a collector series."""
    return SimpleNamespace(results=done, info=SimpleNamespace(n_images=expected))


def test_off_a_terminal_a_line_per_interval_with_done_rate_and_time_left():
    clock, out = FakeClock(), io.StringIO()
    progress = ProgressLine(stream=out, clock=clock)
    assert progress.min_interval_s == LOG_INTERVAL_S  # the default off a terminal
    progress.update(series(3, 100))
    clock.now += LOG_INTERVAL_S - 1.0
    progress.update(series(9, 100))
    assert out.getvalue() == "", "off a terminal the first line waits one interval"
    clock.now += 1.0
    progress.update(series(10, 100))
    assert out.getvalue() == "[##-----------------------] 10/100 frames     2.0 frames/s    45 s left\n"
    clock.now += 1.0
    progress.update(series(12, 100))  # within the interval: nothing
    clock.now += LOG_INTERVAL_S
    progress.update(series(100, 100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1] == "[#########################] 100/100 frames     9.1 frames/s     0 s left"
    progress.finish()
    assert out.getvalue().count("\n") == 2


def test_on_a_terminal_the_line_is_rewritten_in_place_at_the_injected_interval():
    clock, out = FakeClock(), Terminal()
    progress = ProgressLine(stream=out, interval_s=0.5, clock=clock)
    progress.update(series(0, 40))  # at once on a terminal; no rate yet
    assert out.getvalue() == "\r[-------------------------] 0/40 frames     0.0 frames/s     ? s left"
    clock.now += 0.25
    progress.update(series(4, 40))
    clock.now += 0.25
    progress.update(series(5, 40))
    redraws = out.getvalue().split("\r")[1:]
    assert len(redraws) == 2
    assert redraws[1] == "[###----------------------] 5/40 frames    10.0 frames/s     4 s left"
    progress.finish()
    assert out.getvalue().endswith(" s left\n")


def test_unknown_frame_count_shows_frames_and_rate_only():
    clock, out = FakeClock(), io.StringIO()
    progress = ProgressLine(stream=out, interval_s=1.0, clock=clock)
    clock.now += 4.0
    progress.update(series(50, None))
    assert out.getvalue() == "50 frames    12.5 frames/s\n"

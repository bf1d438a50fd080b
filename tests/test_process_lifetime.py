"""No worker process outlives its service: ``braggmap serve`` stopped with SIGTERM shuts down
as on Ctrl-C, and workers whose service was killed (SIGKILL: no clean-up at all) stop by
themselves. Real ``serve`` processes with two worker processes, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _start_serve(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A ``serve`` with two workers, once it says it is ready, and the pids of its worker processes."""
    command = [sys.executable, "-m", "stream.cli", "serve", "--workers", "2", "--detector", "tcp://127.0.0.1:9",
               "--publish", "tcp://127.0.0.1:0", "--detail", "none", "--steering", "none",
               "--output", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = ""
    for line in process.stdout:
        if "braggmap: ready" in line:
            ready = line
            break
    if not ready:
        process.kill()
        pytest.fail(f"serve ended before it was ready: {process.stdout.read()}")
    workers = [pid for pid in _children(process.pid)
               if "--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
               and "spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    return process, workers


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after up to ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_serve_shuts_down_its_workers_on_sigterm(tmp_path):
    process, workers = _start_serve(tmp_path)
    try:
        assert len(workers) >= 2, f"expected two worker processes, found {workers}"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "braggmap: stopping" in output
        assert _wait_gone(workers, 5) == []
    finally:
        process.kill()
        _kill_all(workers)


def test_workers_stop_by_themselves_when_their_service_is_killed(tmp_path):
    process, workers = _start_serve(tmp_path)
    try:
        assert len(workers) >= 2, f"expected two worker processes, found {workers}"
        process.kill()
        process.wait(10)
        left = _wait_gone(workers, 15)
        assert left == [], f"worker processes {left} outlived their service"
    finally:
        process.kill()
        _kill_all(workers)


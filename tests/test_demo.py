"""The README's first command: ``braggmap demo`` (what ``make demo`` runs) works end to end on
the embedded default, and every subcommand answers ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.map_file import read_map_file

BRAGGMAP = [sys.executable, "-m", "stream.cli"]


@pytest.mark.parametrize("command", ["demo", "replay", "serve", "worker", "view"])
def test_every_subcommand_has_help(command):
    result = subprocess.run([*BRAGGMAP, command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and f"usage: braggmap {command}" in result.stdout


def test_worker_refuses_a_batch_or_credits_below_one():
    for option in ("--max-batch", "--credits"):
        result = subprocess.run([*BRAGGMAP, "worker", "--work-endpoint", "tcp://127.0.0.1:1", "--collector-endpoint",
                                 "tcp://127.0.0.1:2", option, "0"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "must be >= 1" in result.stderr, result.stderr[-2000:]


def test_workers_default_to_one_per_available_core_and_bad_counts_are_refused(monkeypatch):
    from stream import cli

    parser = cli.build_parser()
    for cores, expected in ((1, 1), (2, 2), (64, cli.MAX_AUTO_WORKERS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        for argv in (["serve", "--detector", "tcp://127.0.0.1:9"], ["demo", "--workers", "auto"],
                     ["replay", "scan_master.h5"]):
            assert parser.parse_args(argv).workers == expected, (argv, cores)
    assert parser.parse_args(["demo", "--workers", "3"]).workers == 3
    for bad, message in (("0", "at least 1 worker"), ("many", "number of workers or 'auto'")):
        result = subprocess.run([*BRAGGMAP, "demo", "--workers", bad], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_demo_streams_the_synthetic_scan_through_the_service(tmp_path):
    environment = dict(os.environ, BRAGGMAP_CACHE=str(tmp_path / "cache"))
    environment.pop("DISPLAY", None)
    environment.pop("WAYLAND_DISPLAY", None)
    output = tmp_path / "out"
    result = subprocess.run([*BRAGGMAP, "demo", "--output", str(output)], capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "frames: expected 625, received 625, lost 0" in lines
    assert lines[-1].startswith("braggmap demo: done") and str(output) in lines[-1]
    maps = read_map_file(output / "maps_series0001.h5")
    assert "RunEngine" in result.stdout  # the raster runs through bluesky by default
    assert maps.grid.shape == (25, 25) and maps.grid.step_um == (0.5, 0.5) and not maps.grid.by_frame_index
    assert maps.grid.axis_names == ("sample_y", "sample_x")  # placed from the run documents
    assert (output / "maps_series0001.png").stat().st_size > 10_000
    # the maps hold the crystal: a1 where the SAXS intensity is high, nothing far outside
    inside = maps.maps["saxs_intensity"] > 0.5 * maps.maps["saxs_intensity"].max()
    assert inside.sum() > 100
    assert (maps.statuses["a1_nm"][inside] == 0).mean() > 0.95
    empty = maps.maps["saxs_intensity"] < 0.05 * maps.maps["saxs_intensity"].max()
    assert empty.sum() > 100 and not (maps.statuses["a1_nm"][empty] == 0).any()

"""An external v1 consumer, libertem-dectris (Rust), receives the simulator's stream pixel-exact.

libertem binds nothing: the simulator binds PUSH on an OS-assigned loopback port and libertem's
``DectrisConnection`` connects to it in passive mode, as it would to a detector. The libertem side
runs in a child process with a hard timeout, so a peer that blocks in native code can never hang
the test session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from simulators.eiger_files import EigerMetadata
from simulators.eiger_server import EigerStreamServer
from simulators.frame_sources import ArrayFrameSource

pytest.importorskip("libertem_dectris", reason="libertem-dectris (the external v1 reference peer) is not installed")

PEER_TIMEOUT_S = 60
SHAPE = (37, 45)

# The consumer: libertem-dectris' passive low-level API (examples/passive_low_level.py of
# LiberTEM-rs), collecting every frame into one array saved as .npy.
HARNESS = r"""
import json, os, sys
import numpy as np
import libertem_dectris

endpoint, out_path, handle_dir, bytes_per_frame = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = libertem_dectris.DectrisConnection(uri=endpoint, handle_path=os.path.join(handle_dir, "shm"),
                                          frame_stack_size=4, num_slots=64, bytes_per_frame=bytes_per_frame,
                                          huge=False)
cam = None
report = {}
try:
    conn.start_passive(timeout=10.0)
    armed = conn.wait_for_arm(timeout=20.0)
    if armed is None:
        raise RuntimeError("never armed")
    config, series = armed
    report.update(series=series, n_frames=config.get_num_frames())
    cam = libertem_dectris.CamClient(conn.get_socket_path())
    stacks, encodings = [], set()
    while sum(len(stack) for stack in stacks) < config.get_num_frames():
        handle = conn.get_next_stack(max_size=16)
        if handle is None:
            break
        frame_shape = tuple(reversed(handle.get_shape()))
        buffer = np.zeros((len(handle),) + frame_shape, dtype=handle.get_dtype_string())
        cam.decode_range_into_buffer(handle, buffer, 0, len(handle))
        cam.done(handle)
        stacks.append(buffer)
    np.save(out_path, np.concatenate(stacks) if stacks else np.zeros((0,)))
except Exception as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"
finally:
    conn.close()
    if cam is not None:
        cam.close()
print(json.dumps(report), flush=True)
"""


def _run_peer_against(send, endpoint: str, bytes_per_frame: int, tmp_path: Path,
                      sender_may_fail: bool = False) -> tuple[dict, Path]:
    """Start the libertem peer on ``endpoint``, call ``send()`` meanwhile; returns its report and .npy path."""
    out_path = tmp_path / "frames.npy"
    with tempfile.TemporaryDirectory(prefix="lt") as handle_dir:  # short: a unix socket path lives there
        peer = subprocess.Popen([sys.executable, "-c", HARNESS, endpoint, str(out_path), handle_dir,
                                 str(bytes_per_frame)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors = []
        sender = threading.Thread(target=lambda: _capture(send, errors), daemon=True)
        sender.start()
        try:
            out, err = peer.communicate(timeout=PEER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            peer.kill()
            out, err = peer.communicate()
            pytest.fail(f"libertem peer did not finish in {PEER_TIMEOUT_S} s: {err[-2000:]}")
        sender.join(PEER_TIMEOUT_S)
    assert sender_may_fail or not errors, errors
    assert peer.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1]), out_path


def _capture(send, errors: list) -> None:
    try:
        send()
    except Exception as exc:  # reported by the test thread
        errors.append(exc)


@pytest.mark.parametrize("dtype, encoding, wire", [
    ("uint32", "bslz4", "bs32-lz4<"),
    ("uint16", "bslz4", "bs16-lz4<"),
    ("uint32", "lz4", "lz4<"),
    ("uint16", "lz4", "lz4<"),
])
def test_libertem_dectris_decodes_our_v1_stream_pixel_exact(tmp_path, dtype, encoding, wire):
    frames = np.random.default_rng(1).poisson(4.0, (9, *SHAPE)).astype(dtype)
    frames[:, 0, 0] = np.iinfo(dtype).max
    frames[:, -1, -1] = 0
    source = ArrayFrameSource(frames, EigerMetadata(SHAPE, dtype, wavelength_m=1e-10, count_time_s=0.001))
    with EigerStreamServer("tcp://127.0.0.1:0", protocol="v1", header_detail="basic", encoding=encoding,
                           send_timeout_s=30) as server:
        report, out_path = _run_peer_against(
            lambda: server.send_series(source, series_id=12, rate_hz=500.0, wait_for_peers_s=30),
            server.endpoint, frames[0].nbytes, tmp_path)
    assert "error" not in report, report
    assert report == {"series": 12, "n_frames": 9}
    received = np.load(out_path)
    assert received.dtype == np.dtype(dtype) and received.shape == frames.shape
    np.testing.assert_array_equal(received, frames)


@pytest.mark.parametrize("source_kind", ["real_capture", "simulator"])
def test_libertem_dectris_reads_no_header_detail_all_from_a_real_eiger_nor_from_us(tmp_path, captures_dir,
                                                                                    source_kind):
    """libertem-dectris 0.3.2 reads only parts 1-2 of the global header, so the flatfield part of
    ``header_detail: all`` (8 parts, spec 1.2) ends its acquisition. The real MAX IV capture and the
    simulator fail in exactly the same place: our ``all`` header has the real one's structure."""
    from conftest import read_zmqcap

    with EigerStreamServer("tcp://127.0.0.1:0", protocol="v1", header_detail="all", send_timeout_s=1,
                           linger_s=0.1) as server:
        if source_kind == "real_capture":
            messages = read_zmqcap(captures_dir / "eiger1m_stream_v1.zmqcap.gz")[:3]

            def send():
                assert server.wait_for_peers(30)
                for parts in messages:
                    server.send_raw(parts)
            shape = (1065, 1030)
        else:
            frames = np.ones((3, *SHAPE), np.uint32)

            def send():
                server.send_series(ArrayFrameSource(frames), wait_for_peers_s=30)
            shape = SHAPE
        # the peer may hang up before the last messages leave: the sender's timeout is expected then
        report, _ = _run_peer_against(send, server.endpoint, shape[0] * shape[1] * 4, tmp_path, sender_may_fail=True)
    assert "dflatfield-1.0" in report.get("error", ""), report

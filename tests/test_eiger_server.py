"""The EIGER stream simulator over real loopback sockets, decoded with the service's decoders."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from analysis.errors import ConfigurationError, DataFileError, ProtocolError
from simulators.__main__ import build_parser, main
from simulators.eiger_files import EigerMetadata, open_eiger_scan, write_eiger_scan
from simulators.eiger_server import EigerStreamServer, ReusedPayloads
from simulators.frame_sources import ArrayFrameSource, FrameSource
from stream.codecs import decompress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol import decode_message

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 41)
LIBERTEM_KEYS = {"ntrigger", "nimages", "trigger_mode", "x_pixels_in_detector", "y_pixels_in_detector",
                 "bit_depth_image"}


def _metadata(dtype="uint16", **changes) -> EigerMetadata:
    mask = np.zeros(SHAPE, np.uint32)
    mask[:, 9] = 1
    values = dict(shape=SHAPE, dtype=dtype, wavelength_m=0.8984e-10, detector_distance_m=0.412,
                  beam_centre_px=(20.5, 11.0), count_time_s=0.0009, frame_time_s=0.001, pixel_mask=mask,
                  flatfield=np.linspace(0.9, 1.1, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE))
    values.update(changes)
    return EigerMetadata(**values)


def _frames(n=4, dtype=np.uint16, seed=0) -> np.ndarray:
    frames = np.random.default_rng(seed).poisson(5.0, (n, *SHAPE)).astype(dtype)
    frames[:, 3, 4] = np.iinfo(dtype).max
    return frames


@contextmanager
def _pull(endpoint: str, timeout_ms: int = 5000):
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
    socket.connect(endpoint)
    try:
        yield socket
    finally:
        socket.close()
        context.term()


def _receive(socket, n_messages: int) -> list[list[bytes]]:
    return [socket.recv_multipart() for _ in range(n_messages)]


def _serve(source, n_messages, **server_options):
    """Send one series to a PULL peer; returns (report, raw messages, server endpoint)."""
    send_options = {key: server_options.pop(key) for key in
                    ("rate_hz", "n_frames", "send_header", "send_end", "series_id") if key in server_options}
    with EigerStreamServer("tcp://127.0.0.1:0", **server_options) as server, _pull(server.endpoint) as pull:
        report = server.send_series(source, wait_for_peers_s=10.0, **send_options)
        raw = _receive(pull, n_messages)
    return report, raw, server.endpoint


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.parametrize("header_detail", ["none", "basic", "all"])
@pytest.mark.parametrize("encoding", ["bslz4", "lz4", "none"])
def test_series_decodes_pixel_identical(protocol, header_detail, encoding):
    frames, metadata = _frames(), _metadata()
    source = ArrayFrameSource(frames, metadata)
    report, raw, endpoint = _serve(source, 6, protocol=protocol, header_detail=header_detail, encoding=encoding,
                                   header_appendix={"scan": "s1"}, image_appendix=lambda i: {"pixel": i * 10},
                                   series_id=7, rate_hz=2000.0)
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    messages = [decode_message(parts) for parts in raw]
    start, images, end = messages[0], messages[1:5], messages[5]
    assert isinstance(start, SeriesStart) and isinstance(end, SeriesEnd)
    assert (start.series_id, end.series_id, start.protocol) == (7, 7, protocol)
    assert start.appendix == {"scan": "s1"}
    if protocol == "v1" and header_detail == "none":
        assert start.config == {} and start.n_images is None
    else:
        assert (start.n_images, start.image_shape, start.image_dtype) == (4, SHAPE, "uint16")
        assert start.wavelength_m == pytest.approx(0.8984e-10)
        assert start.beam_centre_px == pytest.approx((20.5, 11.0))
    if header_detail == "all":
        np.testing.assert_array_equal(start.pixel_mask, metadata.pixel_mask)
        np.testing.assert_array_equal(start.flatfield, metadata.flatfield)
        assert start.countrate_table is not None and start.countrate_table.size > 1000
    else:
        assert start.pixel_mask is None and start.flatfield is None
    expected_compression = {"bslz4": "bslz4", "lz4": "lz4-raw" if protocol == "v1" else "lz4-hdf5",
                            "none": "none"}[encoding]
    period_ns = 500_000  # 2000 Hz
    for i, image in enumerate(images):
        assert isinstance(image, ImageFrame)
        assert (image.series_id, image.frame_index, image.compression) == (7, i, expected_compression)
        assert (image.start_time_ns, image.real_time_ns) == (i * period_ns, 500_000)
        assert image.stop_time_ns == i * period_ns + 500_000
        assert image.appendix == {"pixel": i * 10}
        np.testing.assert_array_equal(decompress(image.payload, image.compression, image.dtype, image.shape), frames[i])
    if protocol == "v2":
        assert start.series_unique_id and start.series_unique_id == images[0].series_unique_id == end.series_unique_id
    assert report.frames_sent == 4 and report.header_sent and report.end_sent


@pytest.mark.parametrize("dtype, encoding, expected", [
    (np.uint8, "bslz4", "bs8-lz4<"), (np.uint16, "bslz4", "bs16-lz4<"), (np.uint32, "bslz4", "bs32-lz4<"),
    (np.uint32, "lz4", "lz4<"), (np.uint16, "none", "<")])
def test_v1_wire_format_is_that_of_a_real_eiger(dtype, encoding, expected):
    frames = _frames(2, dtype)
    source = ArrayFrameSource(frames, _metadata(np.dtype(dtype).name))
    _, raw, _ = _serve(source, 4, protocol="v1", header_detail="all", encoding=encoding, image_appendix="const")
    header, first, second, end = raw
    assert len(header) == 8
    config = json.loads(header[1])
    assert LIBERTEM_KEYS <= set(config) and config["trigger_mode"] in ("ints", "inte", "exts", "exte")
    assert header[1] == json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    assert (config["x_pixels_in_detector"], config["y_pixels_in_detector"]) == (SHAPE[1], SHAPE[0])
    assert config["bit_depth_image"] == 8 * np.dtype(dtype).itemsize and config["nimages"] * config["ntrigger"] == 2
    assert json.loads(header[2]) == {"htype": "dflatfield-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "float32"}
    assert len(header[7]) == 4000 * 2 * 4
    for index, parts in enumerate((first, second)):
        assert len(parts) == 5 and parts[4] == b"const"
        dimage, dimage_d, blob, dconfig = (json.loads(parts[0]), json.loads(parts[1]), parts[2], json.loads(parts[3]))
        assert dimage == {"frame": index, "hash": hashlib.md5(parts[1]).hexdigest(), "htype": "dimage-1.0",
                          "series": 1}
        assert dimage_d["encoding"] == expected and dimage_d["size"] == len(blob)
        assert dimage_d["shape"] == [SHAPE[1], SHAPE[0]] and dimage_d["type"] == np.dtype(dtype).name
        assert set(dconfig) == {"htype", "real_time", "start_time", "stop_time"}
    assert json.loads(end[0]) == {"htype": "dseries_end-1.0", "series": 1}


@pytest.mark.parametrize("detail, n_parts", [("none", 1), ("basic", 2), ("all", 8)])
def test_v1_header_part_counts_with_and_without_appendix(detail, n_parts):
    source = ArrayFrameSource(_frames(1), _metadata())
    _, raw, _ = _serve(source, 3, protocol="v1", header_detail=detail)
    assert len(raw[0]) == n_parts
    _, raw, _ = _serve(source, 3, protocol="v1", header_detail=detail, header_appendix='{"a": 1}')
    assert len(raw[0]) == n_parts + 1 and raw[0][-1] == b'{"a": 1}'  # user text verbatim, as SIMPLON sends it
    assert decode_message(raw[0]).appendix == {"a": 1}


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_hdf5_bslz4_chunks_go_on_the_wire_unchanged(tmp_path, protocol):
    frames = _frames(5, np.uint32)
    master = write_eiger_scan(tmp_path / "s_master.h5", frames, metadata=_metadata("uint32"), nimages_per_file=2)[0]
    with open_eiger_scan(master) as scan:
        assert isinstance(scan, FrameSource)
        chunks = [payload for _, _, payload in scan.iter_chunks()]
        _, raw, _ = _serve(scan, 7, protocol=protocol)
    images = [decode_message(parts) for parts in raw[1:6]]
    assert [bytes(image.payload) for image in images] == chunks


def _real_scan(tmp_path, captures_dir, prefix) -> tuple[Path, np.ndarray]:
    """A master written by our writer around the chunks of two real EIGER data files."""
    paths = [captures_dir / "h5_eiger_datafiles" / f"{prefix}_data_00000{i}.h5" for i in (1, 2)]
    chunks, decoded = [], []
    for path in paths:
        with h5py.File(path, "r") as file:
            dataset = file["/entry/data/data"]
            chunks += [dataset.id.read_direct_chunk((i, 0, 0))[1] for i in range(dataset.shape[0])]
            decoded.append(dataset[()])
            shape, dtype = dataset.shape[1:], dataset.dtype.name
            compression = "bslz4" if "bslz4" in prefix else "lz4-hdf5"
    master = write_eiger_scan(tmp_path / f"{prefix}_master.h5", chunks, compression=compression,
                              metadata=EigerMetadata(shape, dtype, wavelength_m=1e-10), nimages_per_file=2)[0]
    return master, np.concatenate(decoded)


@pytest.mark.parametrize("prefix, protocol, encoding", [
    ("eiger1_testmode10_2datafiles_4images_bslz4", "v1", "bslz4"),
    ("eiger1_testmode10_2datafiles_4images_lz4", "v1", "lz4"),
    ("eiger2_simread7_2datafiles_4images_lz4", "v2", "lz4"),
    ("eiger2_simread7_2datafiles_4images_lz4", "v1", "lz4"),
    ("eiger2_simread7_2datafiles_4images_bslz4_uint32", "v2", "bslz4"),
])
def test_replay_of_real_eiger_data_files(tmp_path, captures_dir, prefix, protocol, encoding):
    master, expected = _real_scan(tmp_path, captures_dir, prefix)
    with open_eiger_scan(master) as scan:
        on_disk = [payload for _, _, payload in scan.iter_chunks()]
        _, raw, _ = _serve(scan, 6, protocol=protocol, encoding=encoding, header_detail="all")
    images = [decode_message(parts) for parts in raw[1:5]]
    for i, image in enumerate(images):
        assert image.frame_index == i
        np.testing.assert_array_equal(decompress(image.payload, image.compression, image.dtype, image.shape),
                                      expected[i])
    if encoding == "bslz4" or protocol == "v2":  # the file's framing is the wire's: sent verbatim
        assert [bytes(image.payload) for image in images] == on_disk
    elif prefix.startswith("eiger1"):  # one LZ4 block per frame: the lz4< blob is the chunk minus 16 bytes
        assert [bytes(image.payload) for image in images] == [chunk[16:] for chunk in on_disk]


def test_rate_pacing_on_a_real_clock():
    source = ArrayFrameSource(_frames(3), _metadata())
    report, raw, _ = _serve(source, 14, rate_hz=100.0, n_frames=12)
    assert report.frames_sent == 12
    assert 0.1 <= report.elapsed_s < 5.0  # 11 periods of 10 ms, never faster
    assert report.achieved_rate_hz <= 110.0
    images = [decode_message(parts) for parts in raw[1:13]]
    assert [image.start_time_ns for image in images] == [i * 10_000_000 for i in range(12)]


class _FakeClock:
    """Monotonic clock whose sleeps always oversleep by ``late_s`` (a slow machine)."""

    def __init__(self, late_s: float):
        self.now, self.late_s, self.sleeps = 1000.0, late_s, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.late_s


def test_pacing_follows_an_absolute_schedule_without_drift():
    clock = _FakeClock(late_s=0.004)
    source = ArrayFrameSource(_frames(2), _metadata())
    with EigerStreamServer("tcp://127.0.0.1:0", clock=clock, sleep=clock.sleep) as server, _pull(server.endpoint):
        report = server.send_series(source, rate_hz=100.0, n_frames=11)
    # frame k leaves at t0 + k * 10 ms; each oversleep is made up at the next frame
    assert clock.sleeps[0] == pytest.approx(0.010)
    assert clock.sleeps[1:] == pytest.approx([0.006] * 9)
    assert report.elapsed_s == pytest.approx(0.104)  # not 10 * 14 ms


def test_cycling_through_a_short_source_and_sending_fewer_frames():
    frames = _frames(3)
    source = ArrayFrameSource(frames, _metadata())
    _, raw, _ = _serve(source, 9, n_frames=7)
    start, images = decode_message(raw[0]), [decode_message(parts) for parts in raw[1:8]]
    assert start.n_images == 7 and isinstance(decode_message(raw[8]), SeriesEnd)
    for i, image in enumerate(images):
        assert image.frame_index == i
        np.testing.assert_array_equal(decompress(image.payload, "bslz4", "uint16", SHAPE), frames[i % 3])
    _, raw, _ = _serve(source, 4, n_frames=2)
    assert [type(decode_message(parts)).__name__ for parts in raw] == ["SeriesStart", "ImageFrame", "ImageFrame",
                                                                        "SeriesEnd"]


def test_a_cycled_source_sends_each_large_payload_from_one_shared_frame():
    big = (512, 1024)  # bitshuffle-LZ4 payloads above zmq.COPY_THRESHOLD
    frames = np.random.default_rng(3).poisson(50.0, (3, *big)).astype(np.uint32)
    source = ArrayFrameSource(frames, _metadata(dtype="uint32", shape=big, pixel_mask=None, flatfield=None))
    assert all(len(source.chunk(i)) >= zmq.COPY_THRESHOLD for i in range(3))
    _, raw, _ = _serve(source, 10, n_frames=8)
    images = [decode_message(parts) for parts in raw[1:9]]
    assert [image.frame_index for image in images] == list(range(8))
    for i, image in enumerate(images):
        np.testing.assert_array_equal(decompress(image.payload, "bslz4", "uint32", big), frames[i % 3])
    assert isinstance(decode_message(raw[9]), SeriesEnd)


def test_reused_payloads_share_a_frame_per_object_within_a_byte_limit():
    size = 2 * zmq.COPY_THRESHOLD
    reused = ReusedPayloads(max_bytes=5 * zmq.COPY_THRESHOLD)
    first = bytes(size)
    equal = bytes(bytearray(first))  # the same bytes in another object
    frame = reused.part(first)
    assert isinstance(frame, zmq.Frame) and reused.part(first) is frame and frame.bytes == first
    other = reused.part(equal)
    assert isinstance(other, zmq.Frame) and other is not frame and reused.part(equal) is other
    third = b"x" * size
    assert reused.part(third) is third  # over the limit: sent as bytes, not held
    small = b"y" * 100
    assert reused.part(small) is small and reused.held_bytes == 2 * size


def test_dropped_header_and_end_and_raw_bad_messages():
    source = ArrayFrameSource(_frames(2), _metadata())
    with EigerStreamServer("tcp://127.0.0.1:0", protocol="v2") as server, _pull(server.endpoint, 2000) as pull:
        server.send_series(source, send_header=False, send_end=False)
        server.send_raw([b"{not json", b"x"])
        server.send_raw(b"\xd9\xd9\xf7\xa0")
        received = _receive(pull, 4)
        pull.setsockopt(zmq.RCVTIMEO, 300)
        with pytest.raises(zmq.Again):
            pull.recv_multipart()
    assert [decode_message(parts).frame_index for parts in received[:2]] == [0, 1]
    assert received[2] == [b"{not json", b"x"]
    for parts in received[2:]:
        with pytest.raises(ProtocolError):
            decode_message(parts)


def test_no_peer_and_blocked_sends_fail_in_bounded_time():
    source = ArrayFrameSource(_frames(1), _metadata())
    with EigerStreamServer("tcp://127.0.0.1:0", send_timeout_s=0.2, linger_s=0.1) as server:
        assert server.peer_count == 0
        with pytest.raises(ProtocolError, match=r"no PULL peer connected to tcp://127\.0\.0\.1:\d+ within 0.2 s"):
            server.send_series(source, wait_for_peers_s=0.2)
        with pytest.raises(ProtocolError, match="sending the global header timed out"):
            server.send_series(source, wait_for_peers_s=0)


def test_waits_for_several_peers_and_round_robins_whole_messages():
    source = ArrayFrameSource(_frames(2), _metadata())
    with EigerStreamServer("tcp://127.0.0.1:0") as server, _pull(server.endpoint) as a, _pull(server.endpoint) as b:
        assert server.wait_for_peers(5.0, min_peers=2) and server.peer_count == 2
        server.send_series(source, min_peers=2, n_frames=4)
        poller, received = zmq.Poller(), {a: [], b: []}
        poller.register(a, zmq.POLLIN)
        poller.register(b, zmq.POLLIN)
        while sum(map(len, received.values())) < 6 and (ready := dict(poller.poll(5000))):
            for socket in ready:
                received[socket].append(socket.recv_multipart())
    assert received[a] and received[b]  # whole messages shared out between the peers
    kinds = [type(decode_message(parts)).__name__ for parts in received[a] + received[b]]
    assert sorted(kinds) == ["ImageFrame"] * 4 + ["SeriesEnd", "SeriesStart"]


def test_bad_options_and_busy_endpoint():
    with pytest.raises(ConfigurationError, match="'v3'"):
        EigerStreamServer("tcp://127.0.0.1:0", protocol="v3")
    with pytest.raises(ConfigurationError, match="'zstd'"):
        EigerStreamServer("tcp://127.0.0.1:0", encoding="zstd")
    with pytest.raises(ConfigurationError, match="'most'"):
        EigerStreamServer("tcp://127.0.0.1:0", header_detail="most")
    with EigerStreamServer("tcp://127.0.0.1:0") as server:
        with pytest.raises(ConfigurationError, match="cannot bind"):
            EigerStreamServer(server.endpoint)


def test_non_square_pixels_travel_in_the_config(captures_dir):
    with open_eiger_scan(captures_dir / "h5_artificial_small" / "test_master.h5") as scan:
        _, raw, _ = _serve(scan, 7, protocol="v1", header_detail="basic", encoding="lz4")
    config = decode_message(raw[0]).config
    assert (config["x_pixel_size"], config["y_pixel_size"]) == (0.25, 0.5)
    assert "wavelength" not in config  # unknown to that master: not invented
    assert [decode_message(parts).frame_index for parts in raw[1:6]] == list(range(5))


def test_cli_parser_help_and_bad_file(tmp_path, capsys):
    args = build_parser().parse_args(["serve", "x_master.h5", "--protocol", "v2", "--rate", "50"])
    assert (args.protocol, args.rate, args.header_detail, args.encoding) == ("v2", 50.0, "basic", "bslz4")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0 and "--wait-for-peers" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "missing_master.h5"), "--endpoint", "tcp://127.0.0.1:0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: EIGER master file") and "missing_master.h5 does not exist" in error
    assert len(error.splitlines()) == 1
    with pytest.raises(DataFileError):
        open_eiger_scan(tmp_path / "missing_master.h5")


def test_cli_serves_a_master_file_to_a_peer(tmp_path):
    frames = _frames(3)
    master = write_eiger_scan(tmp_path / "cli_master.h5", frames, metadata=_metadata())[0]
    command = [sys.executable, "-m", "simulators", "serve", str(master), "--endpoint", "tcp://127.0.0.1:0",
               "--protocol", "v2", "--header-detail", "all", "--rate", "200", "--series-id", "3",
               "--wait-for-peers", "20", "--header-appendix", '{"grid": [1, 3]}']
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("endpoint tcp://127.0.0.1:"), process.stderr.read()
        with _pull(line.split()[1], 20000) as pull:
            messages = [decode_message(parts) for parts in _receive(pull, 5)]
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "sent 3 frames of series 3" in out
    assert messages[0].appendix == '{"grid": [1, 3]}' and messages[0].series_id == 3
    for i, image in enumerate(messages[1:4]):
        np.testing.assert_array_equal(decompress(image.payload, image.compression, image.dtype, image.shape), frames[i])
    assert isinstance(messages[4], SeriesEnd)


def test_header_fields_are_those_of_real_eiger_captures(captures_dir):
    """Our v1 config part and v2 start message carry the keys a SIMPLON 1.8 EIGER sends."""
    import cbor2
    from conftest import read_zmqcap

    real_v1 = json.loads(read_zmqcap(captures_dir / "eiger1m_stream_v1.zmqcap.gz")[0][1])
    real_v2 = cbor2.loads(read_zmqcap(captures_dir / "eiger_stream_v2.zmqcap.gz")[0][0])
    source = ArrayFrameSource(_frames(1), _metadata())
    _, raw_v1, _ = _serve(source, 3, protocol="v1", header_detail="all")
    _, raw_v2, _ = _serve(source, 3, protocol="v2", header_detail="all", header_appendix="{}")
    ours_v1, ours_v2 = json.loads(raw_v1[0][1]), cbor2.loads(raw_v2[0][0])
    assert set(ours_v1) == set(real_v1)
    assert {key: type(value) for key, value in ours_v1.items()} == {key: type(value) for key, value in real_v1.items()}
    assert set(real_v2) <= set(ours_v2) and set(ours_v2) - set(real_v2) == {"goniometer", "image_dtype"}
    assert list(ours_v2)[0] == "type" and raw_v2[0][0][:3] == b"\xd9\xd9\xf7"
    assert decode_message(raw_v2[0]).countrate_table.dtype == np.uint32


def test_a_slow_consumer_gets_the_whole_series_after_the_server_closed():
    """Like a detector, the simulator delivers the tail of a series (and its end) to a consumer
    that is still reading when the sender has finished and closed (regression: a short linger
    dropped the last queued frames)."""
    import threading
    import time

    shape = (1024, 1024)  # ~2 MB of noise per frame: far more than the kernel's socket buffers
    frames = np.random.default_rng(1).integers(0, 65000, (30, *shape), dtype=np.uint16)
    metadata = _metadata(shape=shape, pixel_mask=None, flatfield=None)
    server = EigerStreamServer("tcp://127.0.0.1:0", protocol="v1", sndhwm=2)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(server.endpoint)
    try:
        sender = threading.Thread(target=lambda: (server.send_series(ArrayFrameSource(frames, metadata),
                                                                     wait_for_peers_s=10), server.close()))
        sender.start()
        received = []
        while True:
            assert pull.poll(20_000), f"the series stopped after {len(received)} messages"
            message = decode_message(pull.recv_multipart())
            received.append(message)
            time.sleep(0.05)  # slower than the sender
            if isinstance(message, SeriesEnd):
                break
        sender.join(30)
        assert [m.frame_index for m in received if isinstance(m, ImageFrame)] == list(range(30))
    finally:
        pull.close(linger=0)
        context.term()

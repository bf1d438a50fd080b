"""EIGER master + data files: write -> open round trips, real DECTRIS files, and errors."""

from __future__ import annotations

import struct

import h5py
import hdf5plugin
import numpy as np
import pytest

from analysis.errors import ConfigurationError, DataFileError, GeometryError
from simulators.eiger_files import EigerMetadata, data_file_path, open_eiger_scan, write_eiger_scan

SHAPE = (37, 53)  # odd sizes: the bitshuffle tail (n mod 8 elements) is exercised


def _frames(n: int, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.poisson(2.0, (n, *SHAPE)).astype(dtype)
    frames[:, 5, 7] = np.iinfo(dtype).max  # a saturated/NODATA pixel survives the round trip
    return frames


def _metadata(dtype="uint16", **changes) -> EigerMetadata:
    mask = np.zeros(SHAPE, np.uint32)
    mask[:, 20] = 1
    mask[3, 4] = 8
    values = dict(shape=SHAPE, dtype=dtype, wavelength_m=0.8984e-10, pixel_size_m=75e-6, detector_distance_m=0.412,
                  beam_centre_px=(18.25, 11.5), count_time_s=0.009, frame_time_s=0.01, pixel_mask=mask,
                  flatfield=np.full(SHAPE, 1.01, np.float32), saturation_value=123456, description="Dectris EIGER X 4M",
                  sensor="Si", threshold_energy_ev=6900.0,
                  extra={"grid_shape": (3, 4), "snake": True, "step_x_um": 0.25, "motor_fast": "pix"})
    values.update(changes)
    return EigerMetadata(**values)


def _direct_chunks(path, n):
    with h5py.File(path, "r") as file:
        dataset = file["/entry/data/data"]
        return [dataset.id.read_direct_chunk((i, 0, 0))[1] for i in range(n)]


def test_round_trip_arrays_metadata_links_and_chunks(tmp_path):
    frames = _frames(7)
    metadata = _metadata()
    written = write_eiger_scan(tmp_path / "scan_master.h5", frames, metadata=metadata, nimages_per_file=3)
    assert [p.name for p in written] == ["scan_master.h5"] + [f"scan_data_00000{i}.h5" for i in (1, 2, 3)]

    with h5py.File(written[0], "r") as master:
        links = {name: master["/entry/data"].get(name, getlink=True) for name in master["/entry/data"]}
        assert set(links) == {"data_000001", "data_000002", "data_000003"}
        for name, link in links.items():
            assert isinstance(link, h5py.ExternalLink)
            assert (link.filename, link.path) == (f"scan_{name}.h5", "/entry/data/data")
        detector = master["/entry/instrument/detector"]
        assert detector["x_pixel_size"].attrs["units"] == b"m"
        assert detector["detectorSpecific/nimages"][()] == 7
        assert detector["detectorSpecific/x_pixels_in_detector"][()] == SHAPE[1]
        assert detector["bit_depth_image"][()] == 16
        assert master["/entry/instrument/beam/incident_wavelength"][()] == pytest.approx(0.8984)
    for path, low, high in zip(written[1:], (1, 4, 7), (3, 6, 7)):
        with h5py.File(path, "r") as data:
            dataset = data["/entry/data/data"]
            assert dataset.chunks == (1, *SHAPE)
            assert hdf5plugin.BSHUF_ID in dataset._filters or str(hdf5plugin.BSHUF_ID) in dataset._filters
            assert (int(dataset.attrs["image_nr_low"]), int(dataset.attrs["image_nr_high"])) == (low, high)

    with open_eiger_scan(written[0]) as scan:
        read = scan.metadata
        assert scan.n_frames == 7 and scan.data_files == written[1:]
        assert (read.shape, read.dtype) == (SHAPE, "uint16")
        assert read.wavelength_m == pytest.approx(metadata.wavelength_m)
        assert read.detector_distance_m == pytest.approx(0.412)
        assert read.beam_centre_px == pytest.approx((18.25, 11.5))
        assert (read.count_time_s, read.frame_time_s) == pytest.approx((0.009, 0.01))
        assert read.saturation_value == 123456 and read.threshold_energy_ev == pytest.approx(6900.0)
        np.testing.assert_array_equal(read.pixel_mask, metadata.pixel_mask)
        np.testing.assert_array_equal(read.flatfield, metadata.flatfield)
        assert read.extra == {"grid_shape": (3, 4), "snake": True, "step_x_um": 0.25, "motor_fast": "pix"}
        chunks = list(scan.iter_chunks())
        decoded = list(scan.iter_frames())
    assert [c[0] for c in chunks] == list(range(7)) and {c[1] for c in chunks} == {"bslz4"}
    on_disk = _direct_chunks(written[1], 3) + _direct_chunks(written[2], 3) + _direct_chunks(written[3], 1)
    assert [c[2] for c in chunks] == on_disk
    for (index0, frame), expected in zip(decoded, frames):
        np.testing.assert_array_equal(frame, expected)
    assert [index0 for index0, _ in decoded] == list(range(7))


@pytest.mark.parametrize("compression", ["bslz4", "lz4-hdf5"])
def test_precompressed_chunks_are_written_and_read_back_verbatim(tmp_path, compression):
    frames = _frames(4, np.uint32, seed=1)
    first = write_eiger_scan(tmp_path / "a_master.h5", frames, metadata=_metadata("uint32"),
                             compression=compression, nimages_per_file=10)
    with open_eiger_scan(first[0]) as scan:
        chunks = [payload for _, kind, payload in scan.iter_chunks()]
        assert {kind for _, kind, _ in scan.iter_chunks()} == {compression}
    second = write_eiger_scan(tmp_path / "b_master.h5", iter(chunks), metadata=_metadata("uint32"),
                              compression=compression, nimages_per_file=3)
    with open_eiger_scan(second[0]) as scan:
        assert [payload for _, _, payload in scan.iter_chunks()] == chunks
        np.testing.assert_array_equal(np.stack([f for _, f in scan.iter_frames()]), frames)


def test_frames_stored_in_the_master(tmp_path):
    frames = _frames(3, np.uint8)
    written = write_eiger_scan(tmp_path / "m_master.h5", frames, metadata=_metadata("uint8"), nimages_per_file=0)
    assert written == [tmp_path / "m_master.h5"]
    with open_eiger_scan(written[0]) as scan:
        assert scan.n_frames == 3 and scan.data_files == [written[0]]
        np.testing.assert_array_equal(np.stack([f for _, f in scan.iter_frames()]), frames)
        assert [payload for _, _, payload in scan.iter_chunks(1, 3)] == _direct_chunks(written[0], 3)[1:]


def test_chunk_identical_to_h5py_bitshuffle_filter_and_to_the_stream_codec(tmp_path):
    frame = np.random.default_rng(3).poisson(40.0, (211, 307)).astype(np.uint32)
    reference = tmp_path / "reference.h5"
    with h5py.File(reference, "w") as file:
        file.create_dataset("/entry/data/data", data=frame[None], chunks=(1, *frame.shape),
                            **hdf5plugin.Bitshuffle(cname="lz4"))
    written = write_eiger_scan(tmp_path / "x_master.h5", [frame], metadata=EigerMetadata(frame.shape, "uint32"))
    with open_eiger_scan(written[0]) as scan:
        _, kind, chunk = next(scan.iter_chunks())
    assert kind == "bslz4"
    assert chunk == _direct_chunks(reference, 1)[0]
    assert struct.unpack(">QI", chunk[:12]) == (frame.nbytes, 8192)
    codecs = pytest.importorskip("stream.codecs")
    assert codecs.compress(frame, "bslz4") == chunk


def test_unfiltered_frames_are_compressed_on_the_fly(tmp_path):
    codecs = pytest.importorskip("stream.codecs")
    frames = _frames(2)
    written = write_eiger_scan(tmp_path / "raw_master.h5", frames, metadata=_metadata(), compression="none")
    with open_eiger_scan(written[0]) as scan:
        for (index0, kind, payload), expected in zip(scan.iter_chunks(), frames):
            assert kind == "bslz4"
            np.testing.assert_array_equal(codecs.decompress(payload, "bslz4", np.dtype("uint16"), SHAPE), expected)


def test_dectris_artificial_master_and_data_file(captures_dir):
    folder = captures_dir / "h5_artificial_small"
    with h5py.File(folder / "test_master.h5", "r") as master:
        expected_frames = master["/entry/data/data_000001"][()]  # h5py follows the external link
        expected_mask = master["/entry/instrument/detector/detectorSpecific/pixel_mask"][()]
    with open_eiger_scan(folder / "test_master.h5") as scan:
        assert scan.n_frames == 5 == expected_frames.shape[0]
        assert (scan.metadata.shape, scan.metadata.dtype) == ((13, 11), "uint16")
        assert (scan.metadata.pixel_size_m, scan.metadata.pixel_size_y_m) == (0.25, 0.5)
        assert scan.metadata.wavelength_m is None
        np.testing.assert_array_equal(scan.metadata.pixel_mask, expected_mask)
        chunks = list(scan.iter_chunks())
        decoded = np.stack([f for _, f in scan.iter_frames()])
    assert [(i, kind) for i, kind, _ in chunks] == [(i, "lz4-hdf5") for i in range(5)]
    assert [c for _, _, c in chunks] == _direct_chunks(folder / "test_data_000001.h5", 5)
    np.testing.assert_array_equal(decoded, expected_frames)


@pytest.mark.parametrize("name, dtype, kind", [
    ("eiger1_testmode10_2datafiles_4images_bslz4_data_000002.h5", "uint16", "bslz4"),
    ("eiger2_simread7_2datafiles_4images_lz4_data_000002.h5", "uint16", "lz4-hdf5"),
    ("eiger2_simread7_2datafiles_4images_bslz4_uint8_data_000001.h5", "uint8", "bslz4"),
])
def test_real_data_files_open_on_their_own(captures_dir, name, dtype, kind):
    path = captures_dir / "h5_eiger_datafiles" / name
    with open_eiger_scan(path) as scan:
        low = int(h5py.File(path, "r")["/entry/data/data"].attrs["image_nr_low"])
        chunks = list(scan.iter_chunks())
        assert scan.metadata.dtype == dtype and scan.n_frames == 2
        assert [(i, k) for i, k, _ in chunks] == [(low - 1, kind), (low, kind)]
        assert [c for _, _, c in chunks] == _direct_chunks(path, 2)
        assert all(frame.dtype == np.dtype(dtype) for _, frame in scan.iter_frames())


def test_unit_attributes_are_honoured(tmp_path):
    written = write_eiger_scan(tmp_path / "u_master.h5", _frames(1), metadata=_metadata())
    with h5py.File(written[0], "r+") as master:
        distance = master["/entry/instrument/detector/detector_distance"]
        distance[()] = 412.0
        distance.attrs["units"] = b"mm"
        del master["/entry/instrument/beam"]
        master["/entry/instrument/detector/detectorSpecific/photon_energy"][()] = 13800.0
    with open_eiger_scan(written[0]) as scan:
        assert scan.metadata.detector_distance_m == pytest.approx(0.412)
        assert scan.metadata.wavelength_m == pytest.approx(0.89845e-10, rel=1e-4)  # from the photon energy


def test_missing_master_and_missing_data_file(tmp_path):
    with pytest.raises(DataFileError, match="nowhere_master.h5 does not exist"):
        open_eiger_scan(tmp_path / "nowhere_master.h5")
    written = write_eiger_scan(tmp_path / "s_master.h5", _frames(4), metadata=_metadata(), nimages_per_file=2)
    written[2].unlink()
    with pytest.raises(DataFileError, match=r"data_000002.*s_data_000002.h5 does not exist"):
        open_eiger_scan(written[0])


@pytest.mark.parametrize("victim", [0, 1])
def test_truncated_files_are_reported(tmp_path, victim):
    written = write_eiger_scan(tmp_path / "t_master.h5", _frames(2), metadata=_metadata(), nimages_per_file=2)
    data = written[victim].read_bytes()
    written[victim].write_bytes(data[: len(data) // 3])
    with pytest.raises(DataFileError, match=f"{written[victim].name} is not a readable HDF5 file"):
        open_eiger_scan(written[0])


def test_not_hdf5_and_unknown_layouts(tmp_path):
    text = tmp_path / "notes_master.h5"
    text.write_text("not an HDF5 file\n")
    with pytest.raises(DataFileError, match="notes_master.h5 is not a readable HDF5 file"):
        open_eiger_scan(text)
    with h5py.File(tmp_path / "empty.h5", "w") as file:
        file.create_group("/entry/instrument")
    with pytest.raises(DataFileError, match="unknown layout, no /entry/data group"):
        open_eiger_scan(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "flat.h5", "w") as file:
        file["/entry/data/data"] = np.zeros((4, 5), np.uint16)
    with pytest.raises(DataFileError, match="not an \\(n, rows, cols\\)"):
        open_eiger_scan(tmp_path / "flat.h5")
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["/entry/data/image"] = np.zeros((1, 4, 5), np.uint16)
    with pytest.raises(DataFileError, match="no data_NNNNNN links"):
        open_eiger_scan(tmp_path / "other.h5")


def test_writer_rejects_inconsistent_frames(tmp_path):
    metadata = _metadata()
    with pytest.raises(GeometryError, match=r"frame 1 has shape \(5, 5\)"):
        write_eiger_scan(tmp_path / "a_master.h5", [_frames(1)[0], np.zeros((5, 5), np.uint16)], metadata=metadata)
    with pytest.raises(GeometryError, match="frame 0 has dtype uint32"):
        write_eiger_scan(tmp_path / "b_master.h5", [_frames(1, np.uint32)[0]], metadata=metadata)
    short_chunk = struct.pack(">QI", 10, 8192) + b"\0" * 8
    with pytest.raises(GeometryError, match="chunk holds 10 bytes decoded"):
        write_eiger_scan(tmp_path / "c_master.h5", [short_chunk], metadata=metadata)
    with pytest.raises(ConfigurationError, match="'lz4-raw'"):
        write_eiger_scan(tmp_path / "d_master.h5", [], metadata=metadata, compression="lz4-raw")
    with pytest.raises(GeometryError, match="pixel_mask has shape"):
        EigerMetadata(SHAPE, "uint16", pixel_mask=np.zeros((2, 2), np.uint32))
    with pytest.raises(ConfigurationError, match="float32"):
        EigerMetadata(SHAPE, "float32")
    assert data_file_path(tmp_path / "run7_master.h5", 12).name == "run7_data_000012.h5"

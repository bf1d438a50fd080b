"""Reading a Kapton-only background frame (science.md section 1) from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.errors import DataFileError


def load_background(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Background frame in counts per exposure, float32 of the detector ``shape``.

    Accepts ``.npy`` files and HDF5 files holding a ``background`` dataset (as written next to
    synthetic scans, ``<name>_truth.h5``) or a single 2-D dataset at ``/entry/data/data`` (mean
    over frames is taken for a 3-D stack).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"background file {path} does not exist")
    try:
        if path.suffix == ".npy":
            frame = np.load(path, allow_pickle=False)
        else:
            import h5py
            import hdf5plugin  # noqa: F401  (registers the EIGER compression filters)

            with h5py.File(path, "r") as handle:
                for name in ("background", "entry/data/data"):
                    if name in handle:
                        frame = handle[name][()]
                        break
                else:
                    raise DataFileError(f"background file {path} has no 'background' or "
                                        f"'entry/data/data' dataset")
    except DataFileError:
        raise
    except Exception as exc:
        raise DataFileError(f"background file {path} cannot be read: {exc}") from exc
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 3:
        frame = frame.mean(axis=0)
    if frame.shape != tuple(shape):
        raise DataFileError(f"background frame {path} has shape {frame.shape}, the detector {tuple(shape)}")
    return frame

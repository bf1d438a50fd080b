"""Shared pytest fixtures: paths to the real detector captures, loopback endpoints."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTURES_DIR = Path(os.environ.get("BRAGGMAP_CAPTURES", REPO_ROOT.parent / "shared" / "captures"))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Channel Access stays on loopback in every test (see README).
for _name, _value in {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
}.items():
    os.environ[_name] = _value


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The folder of real EIGER captures (``../shared/captures``); skips when absent."""
    if not CAPTURES_DIR.is_dir():
        pytest.skip(f"real detector captures not found at {CAPTURES_DIR}")
    return CAPTURES_DIR


def read_zmqcap(path: Path) -> list[list[bytes]]:
    """All ZeroMQ messages of a ``.zmqcap.gz`` capture: a list of multipart part lists."""
    import cbor2

    messages = []
    with gzip.open(path, "rb") as handle:
        while True:
            try:
                item = cbor2.load(handle)
            except (EOFError, cbor2.CBORDecodeEOF):
                break
            messages.append([bytes(part) for part in item])
    return messages

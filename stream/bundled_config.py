"""Where the bundled configuration files (PONI geometries, peak models) live."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_config_dir() -> Path:
    """The ``config/`` folder: ``$BRAGGMAP_CONFIG_DIR``, the source checkout's ``config/``
    (editable installs), or ``<prefix>/share/braggmap/config`` (wheel installs)."""
    override = os.environ.get("BRAGGMAP_CONFIG_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[1] / "config"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "braggmap" / "config"

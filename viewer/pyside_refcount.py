"""Work around a PySide6 / shiboken6 defect: with the abi3 wheels of PySide6 6.12 on Python
3.11, every call of a Qt method returning ``void`` releases one reference to ``None`` that it
never took (Python >= 3.12 makes ``None``, ``True`` and ``False`` immortal, so the wheels no
longer count them), and some calls do the same to ``True``/``False``. A pyqtgraph window makes
thousands of such calls per redraw (``QPainter.drawLine``, ``setRenderHint``, ``save``...), and
after a few seconds Python aborts with "Fatal Python error: none_dealloc: deallocating None"
(or ``bool_dealloc``).

:func:`protect_none` detects the leak with a short probe and, only when it is there, does what
Python 3.12 does: gives ``None``, ``True`` and ``False`` reference counts so large that they
can never reach zero. These singletons are never freed in any case; nothing else changes.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

PROBE_CALLS = 64
IMMORTAL_REFERENCES = 1 << 48


def none_leak_per_call() -> float:
    """References to ``None`` lost per call of a void Qt method (0 on a sound binding)."""
    from PySide6 import QtCore

    point = QtCore.QPointF(0.0, 0.0)
    before = sys.getrefcount(None)
    for _ in range(PROBE_CALLS):
        point.setX(1.0)
    return (before - sys.getrefcount(None)) / PROBE_CALLS


def protect_none() -> bool:
    """Make ``None``, ``True`` and ``False`` effectively immortal when the binding leaks
    ``None``; True when it did."""
    if sys.version_info >= (3, 12) or sys.getrefcount(None) > IMMORTAL_REFERENCES // 2:
        return False
    if none_leak_per_call() < 0.5:
        return False
    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += IMMORTAL_REFERENCES
    log.info("PySide6 releases references to None it never took; None, True and False made immortal")
    return True

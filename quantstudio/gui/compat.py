"""Work-arounds for binding bugs, applied once when the GUI package is imported.

PySide6 6.12.0 on Python < 3.12 returns ``None`` (and ``True``/``False``) from many
wrapped functions without taking a reference (e.g. every ``QLabel.setText`` call
lowers ``sys.getrefcount(None)`` by one). After a few thousand calls CPython
aborts with "none_dealloc: deallocating None". PySide6 6.11.2 does not do this, and
Python 3.12+ is immune (None is immortal there, PEP 683).

When the leak is detected, :func:`guard_singleton_refcounts` gives None, True and
False a very large extra reference count, which is what Python 3.12 does for them
anyway: they can then never reach zero. Nothing else changes.
"""

from __future__ import annotations

import ctypes
import sys

_EXTRA = 1 << 40
_applied = False


def singleton_refcount_leaks() -> bool:
    """True when a void PySide call drops a reference to None (the 6.12.0 bug)."""
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(20):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before - 10


def guard_singleton_refcounts() -> bool:
    """Make None/True/False effectively immortal if the leak is present. Returns whether applied."""
    global _applied
    if _applied:
        return True
    if sys.version_info >= (3, 12) or not hasattr(sys, "getrefcount"):
        return False
    if not singleton_refcount_leaks():
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _EXTRA
    _applied = True
    return True

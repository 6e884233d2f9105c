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
from typing import Callable

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


# --------------------------------------------------------------------------- PySide's import hook

_hook_quieted = False


def quiet_feature_import_hook() -> bool:
    """Stop PySide reading the source of every module imported after it (returns whether done).

    Importing PySide6 replaces ``builtins.__import__`` with shiboken's ``__feature_import__``,
    which, for every new module, calls ``shibokensupport.feature._mod_uses_pyside`` --
    ``inspect.getsource(module)`` -- to learn whether the module might say
    ``from __feature__ import snake_case``. This application never selects a PySide feature, so
    the answer does not matter, and the check is costly where this app imports the most:
    torch & co. on the worker thread. Measured here (AMD EPYC, 2 cores; torch, torchvision,
    onnx and onnxruntime imported after PySide6): 6.65 s and 801 MB peak with the check, 4.60 s
    and 706 MB without it (1,814 source files kept in ``linecache`` vs 34). Other projects
    found that hook on worker-thread imports behind crashes (kamook #36, #46: lazy imports on
    a worker thread) and it was on the worker's stack in the one hang this test suite had
    (a lazy torch import while building a model). Answering "does not use PySide features"
    marks each module as ignored by feature selection, which is PySide's own answer for
    modules without source (``_mod_uses_pyside`` returns False when ``getsource`` fails).

    Private API: applied only if it looks as expected; otherwise nothing changes.
    """
    global _hook_quieted
    if _hook_quieted:
        return True
    import PySide6.QtCore  # noqa: F401 - installs the hook (and shibokensupport) if not yet done

    feature = sys.modules.get("shibokensupport.feature")
    if feature is None or not callable(getattr(feature, "_mod_uses_pyside", None)):
        return False
    feature._mod_uses_pyside = _uses_no_pyside_features
    _hook_quieted = True
    return True


def _uses_no_pyside_features(module: object) -> bool:
    return False


# --------------------------------------------------------------------------- garbage collection

_collector: object | None = None


def collect_garbage_on_gui_thread(interval_s: float = 1.0, paused: Callable[[], bool] | None = None) -> None:
    """Run Python's cyclic garbage collector only on the GUI thread (idempotent).

    Python collects cycles on whichever thread happens to allocate when a threshold is
    crossed. On a worker thread that may free cyclic garbage holding Qt objects -- a closed
    dialog, a window from before -- and so run Qt destructors off the GUI thread, which Qt
    does not allow: a crash, or a deadlock when the destructor needs a Qt lock the GUI thread
    holds while it waits for the GIL. The worker threads here allocate millions of objects
    (importing torch, building models), so a collection there is the rule, not the
    exception. pyqtgraph's ``GarbageCollector`` (made for exactly this) turns automatic
    collection off and collects on a GUI-thread timer instead, generation by generation
    with Python's own thresholds. Call it on the GUI thread, with a QApplication.

    ``paused``: while it returns True the timer collects nothing (the start-up imports: a full
    collection of the million objects they create would stall the window 50-300 ms, and
    they are frozen out of later collections once done, see gui/warmup.py).
    """
    global _collector
    if _collector is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        class _GuiThreadCollector(GarbageCollector):
            def check(self) -> None:
                if paused is None or not paused():
                    super().check()

        _collector = _GuiThreadCollector(interval=interval_s)

"""Import the heavy libraries on the worker thread without freezing the GUI thread.

The GUI never imports torch & co. itself; the first job does, on the worker thread.
Two parts of those imports hold the GIL, so the GUI thread cannot run at all while
they last (measured on the 2-core reference machine, in one stretch each):

* Loading the shared libraries: torch's ``libtorch_cpu`` / ``libtorch_cuda`` and
  the CUDA libraries (up to 1 GB of code with their static initialisers: 200-450 ms
  per library). Python's import machinery and ``ctypes.CDLL`` call ``dlopen`` while
  holding the GIL. A ``dlopen`` made through a ctypes *foreign function call*
  releases it, and once a library is loaded the real import finds it and only
  bumps its reference count. So the libraries are loaded that way first, in the
  order torch itself uses: ``ctypes.CDLL`` is pointed at the GIL-free ``dlopen``
  while the imports run, and ``libtorch`` is loaded just before ``torch._C``.
* Cyclic garbage collection: imports create a million objects, which triggers full
  (generation 2) collections that walk all of them (50-300 ms each). The collector
  is paused during the imports, and the imported objects are then frozen
  (:func:`gc.freeze`): later full collections, during every run, skip them.

:func:`warm_up` is idempotent and best effort: on any problem the normal imports
happen as they would have.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.abc
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger("quantstudio.gui")

# What every session needs sooner or later (opening a model, reading images, quantizing).
HEAVY_MODULES = ("torch", "torchvision", "onnx", "onnxruntime")

_lock = threading.Lock()
_done = False
_importing = False


def importing() -> bool:
    """True while :func:`warm_up` imports (the GUI-thread garbage collector waits for it)."""
    return _importing


def warm_up() -> None:
    """Import :data:`HEAVY_MODULES` (once per process; call it on the worker thread)."""
    global _done, _importing
    with _lock:
        if _done:
            return
        _done = True
        missing = [m for m in HEAVY_MODULES if m not in sys.modules]
        if not missing:
            return
        was_enabled = gc.isenabled()
        gc.disable()
        _importing = True
        try:
            with _gil_free_library_loading():
                for name in missing:
                    try:
                        importlib.import_module(name)
                    except Exception as exc:  # noqa: BLE001 - the job that needs it reports it properly
                        log.debug("warm-up: %s not imported: %s", name, exc)
        finally:
            # Everything imported so far lives as long as the process: keep full
            # collections from walking it again and again.
            gc.freeze()
            _importing = False
            if was_enabled:
                gc.enable()


# --------------------------------------------------------------------------- dlopen without the GIL

# Libraries to load (relative to the package's folder) just before an extension module is imported.
_PRELOAD_BEFORE = {
    "torch._C": ("lib/libtorch", ),
}


def _native_dlopen():
    """libc's ``dlopen``/``dlerror`` as ctypes foreign functions (called without the GIL)."""
    if sys.platform not in ("linux", "darwin"):
        return None
    try:
        libc = ctypes.CDLL(None)
        dlopen, dlerror = libc.dlopen, libc.dlerror
    except (OSError, AttributeError):
        return None
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    dlerror.restype = ctypes.c_char_p
    dlerror.argtypes = []
    return dlopen, dlerror


class _PreloadFinder(importlib.abc.MetaPathFinder):
    """Loads a module's big native libraries (GIL-free) right before the module is imported."""

    def __init__(self, dlopen) -> None:
        self._dlopen = dlopen

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - MetaPathFinder API
        libs = _PRELOAD_BEFORE.get(fullname)
        if libs:
            package = sys.modules.get(fullname.rpartition(".")[0])
            folder = Path(package.__file__).parent if package is not None and package.__file__ else None
            suffix = ".dylib" if sys.platform == "darwin" else ".so"
            for lib in libs:
                if folder is not None and (folder / (lib + suffix)).exists():
                    self._dlopen(str(folder / (lib + suffix)), os.RTLD_NOW | os.RTLD_LOCAL)
        return None  # the normal finders import it


class _gil_free_library_loading:
    """Context manager: ``ctypes.CDLL`` and the preloads use a GIL-free ``dlopen``."""

    def __enter__(self):
        self._saved = None
        self._finder = None
        native = _native_dlopen()
        if native is None:
            return self
        dlopen_fn, dlerror_fn = native

        def dlopen(name, mode=ctypes.DEFAULT_MODE):
            # Same contract as _ctypes.dlopen (what ctypes.CDLL calls): a handle or OSError.
            sys.audit("ctypes.dlopen", name)
            handle = dlopen_fn(os.fsencode(name) if name is not None else None, mode | os.RTLD_NOW)
            if not handle:
                err = dlerror_fn()
                raise OSError(err.decode(errors="replace") if err else "dlopen() error")
            return handle

        def preload(path: str, mode: int) -> None:
            try:
                dlopen(path, mode)
            except OSError as exc:  # the import will load it (or fail) itself
                log.debug("warm-up: preloading %s failed: %s", path, exc)

        self._saved = ctypes._dlopen
        ctypes._dlopen = dlopen
        self._finder = _PreloadFinder(preload)
        sys.meta_path.insert(0, self._finder)
        return self

    def __exit__(self, *exc) -> None:
        if self._finder is not None:
            try:
                sys.meta_path.remove(self._finder)
            except ValueError:
                pass
        if self._saved is not None:
            ctypes._dlopen = self._saved

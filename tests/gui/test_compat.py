"""Binding work-arounds applied when the GUI package is imported (quantstudio/gui/compat.py)."""

from __future__ import annotations

import linecache
import sys


def test_modules_imported_after_pyside_are_not_read_by_its_import_hook(tmp_path, monkeypatch):
    import quantstudio.gui  # noqa: F401 - applies the work-arounds
    from quantstudio.gui.compat import quiet_feature_import_hook

    assert quiet_feature_import_hook()
    source = tmp_path / "qs_fresh_module_for_hook_test.py"
    source.write_text("VALUE = 41 + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    linecache.clearcache()
    # An import statement (importlib.import_module would bypass the hook on builtins.__import__).
    module = __import__("qs_fresh_module_for_hook_test")
    try:
        assert module.VALUE == 42
        # PySide's own check reads the whole source (inspect.getsource -> linecache) of every
        # module imported after it: 1,800 files and ~95 MB for torch & co.
        assert str(source) not in linecache.cache
        assert sys.modules["shibokensupport.feature"].pyside_feature_dict.get("qs_fresh_module_for_hook_test") == -1
    finally:
        sys.modules.pop("qs_fresh_module_for_hook_test", None)


def test_widgets_still_work_after_the_hook_is_quieted(qtbot):
    import quantstudio.gui  # noqa: F401
    from PySide6.QtWidgets import QLabel

    label = QLabel("before")
    qtbot.addWidget(label)
    label.setText("after")
    assert label.text() == "after"


def test_cyclic_garbage_made_on_a_worker_thread_is_freed_on_the_gui_thread(qtbot, window):
    import gc
    import threading

    assert not gc.isenabled()  # collections run on the GUI thread's timer only
    freed_on_gui_thread: list[bool] = []

    class Cycle:
        def __del__(self) -> None:
            freed_on_gui_thread.append(threading.current_thread() is threading.main_thread())

    kept: list[list] = []

    def worker() -> None:
        for _ in range(20):
            c = Cycle()
            c.me = c  # unreachable once the loop moves on, but only the collector can free it
        # Far past every collection threshold (kept alive: freeing them would lower the count
        # of allocations that triggers a collection again).
        kept.append([[] for _ in range(50_000)])

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert freed_on_gui_thread == []  # nothing was collected on the worker thread
    qtbot.waitUntil(lambda: len(freed_on_gui_thread) >= 20, timeout=10_000)
    assert all(freed_on_gui_thread)

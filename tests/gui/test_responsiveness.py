"""What keeps the window responsive: cheap layer-tree updates, the worker's warm-up, GIL-free library loading.

No timings here (tests/benchmarks/gui_stall.py measures those); these check behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import threading

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QStyledItemDelegate

from quantstudio.core.inventory import LayerNode
from quantstudio.core.plan import PrecisionPlan
from quantstudio.gui import app as gui_app
from quantstudio.gui import warmup
from quantstudio.gui.layer_model import COL_SQNR, LayerNameRole, LayerTreeModel
from quantstudio.gui.layer_view import LayerPanel
from quantstudio.gui.worker import WORKER_NICE, Job, JobRunner


def _tree(n_blocks: int = 6) -> LayerNode:
    blocks = []
    for b in range(n_blocks):
        leaves = [LayerNode(name=f"b{b}.conv{i}", type="Conv2d", output_shape=(1, 8, 4, 4), params=10, macs=10)
                  for i in range(4)]
        blocks.append(LayerNode(name=f"b{b}", type="Sequential", params=40, macs=40, children=leaves))
    return LayerNode(name="", type="Net", params=40 * n_blocks, macs=40 * n_blocks, children=blocks)


class CountingDelegate(QStyledItemDelegate):
    calls = 0

    def sizeHint(self, option, index):  # noqa: N802 - Qt API
        CountingDelegate.calls += 1
        return super().sizeHint(option, index)


@pytest.fixture
def panel(qtbot):
    model = LayerTreeModel()
    model.set_tree(_tree(), PrecisionPlan(), root_label="net")
    p = LayerPanel(model)
    qtbot.addWidget(p)
    p.resize(900, 600)
    p.show()
    p.view.expandAll()
    p.view.setItemDelegate(CountingDelegate(p.view))
    qtbot.waitExposed(p)
    qtbot.wait(20)  # the delayed layout after the delegate change
    return p


def test_results_burst_does_not_remeasure_every_row(qtbot, panel):
    model = panel.model
    sqnr = {name: 30.0 for name in model.layer_names()}
    CountingDelegate.calls = 0
    model.set_layer_results(sqnr=sqnr)  # one dataChanged per layer
    assert CountingDelegate.calls == 0
    qtbot.wait(20)
    # The top row (it sets the height of every row) is measured again once, after the burst.
    assert 0 < CountingDelegate.calls <= model.columnCount() * 2
    proxy = panel.view.model()
    first_leaf = proxy.index(0, COL_SQNR, proxy.index(0, 0, proxy.index(0, 0)))
    assert first_leaf.data() == "30.0"


def test_top_row_height_follows_its_data(qtbot, panel):
    view, model = panel.view, panel.model
    root = view.model().index(0, 0)
    model.set_layer_results(fused=[["", "b0"]])  # the fused icon on the top row
    qtbot.waitUntil(lambda: view.rowHeight(root) == view.sizeHintForRow(0), timeout=2000)


def test_panel_applies_results_with_one_repaint_and_keeps_a_sort(qtbot, panel):
    model, proxy = panel.model, panel.proxy
    emitted = []
    model.dataChanged.connect(lambda *a: emitted.append(a))
    panel.view.setSortingEnabled(True)
    panel.view.sortByColumn(COL_SQNR, Qt.SortOrder.AscendingOrder)
    names = [n for n in model.layer_names() if n.startswith("b0.")]
    panel.set_layer_results(sqnr={n: float(10 - i) for i, n in enumerate(names)}, fused=[["", "b0"]])
    assert emitted == []  # no signal per row
    b0 = next(proxy.index(r, 0, proxy.index(0, 0)) for r in range(proxy.rowCount(proxy.index(0, 0)))
              if proxy.index(r, 0, proxy.index(0, 0)).data(LayerNameRole) == "b0")
    shown = [proxy.index(r, 0, b0).data(LayerNameRole) for r in range(proxy.rowCount(b0))]
    assert shown == list(reversed(names))  # re-sorted by the new SQNR
    assert proxy.index(0, COL_SQNR, b0).data() == "7.0"
    root = proxy.index(0, 0)
    qtbot.waitUntil(lambda: panel.view.rowHeight(root) == panel.view.sizeHintForRow(0), timeout=2000)


def test_before_first_job_runs_once_on_the_worker_first(qtbot):
    calls = []

    def warm():
        calls.append(("warm", threading.current_thread() is threading.main_thread()))
        raise RuntimeError("a failed warm-up must not fail the job")

    def fn(ctx, x):
        calls.append(("job", x))
        return x

    runner = JobRunner(before_first_job=warm)
    try:
        results = []
        for x in (1, 2):
            with qtbot.waitSignal(runner.finished, timeout=10000):
                assert runner.start(Job("j", fn, (x,), on_done=results.append))
        assert results == [1, 2]
        assert calls == [("warm", False), ("job", 1), ("job", 2)]
    finally:
        runner.shutdown()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_worker_runs_below_the_gui_thread(qtbot):
    def nice(ctx):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    runner = JobRunner()
    try:
        got = []
        with qtbot.waitSignal(runner.finished, timeout=10000):
            runner.start(Job("nice", nice, on_done=got.append))
        gui = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert got == [min(gui + WORKER_NICE, 19)]
    finally:
        runner.shutdown()


def test_application_shortens_the_gil_switch_interval(qapp):
    gui_app.make_application([])
    assert sys.getswitchinterval() == pytest.approx(gui_app.GIL_SWITCH_INTERVAL_S)


@pytest.mark.skipif(sys.platform != "linux", reason="GIL-free dlopen is used on Linux and macOS; tested on Linux")
def test_gil_free_library_loading_keeps_ctypes_contract():
    saved_dlopen, saved_meta_path = ctypes._dlopen, list(sys.meta_path)
    with warmup._gil_free_library_loading():
        assert ctypes._dlopen is not saved_dlopen
        libm = ctypes.CDLL(ctypes.util.find_library("m"))
        libm.cos.restype = ctypes.c_double
        libm.cos.argtypes = [ctypes.c_double]
        assert libm.cos(0.0) == 1.0
        with pytest.raises(OSError, match="no-such-library"):
            ctypes.CDLL("/nonexistent/libno-such-library.so")
    assert ctypes._dlopen is saved_dlopen
    assert sys.meta_path == saved_meta_path


def test_warm_up_imports_working_libraries():
    """In a fresh process (the only place the first import of torch happens)."""
    code = (
        "import gc, threading\n"
        "from quantstudio.gui import warmup\n"
        "t = threading.Thread(target=warmup.warm_up); t.start(); t.join()\n"
        "import torch, torchvision, onnxruntime\n"
        "boxes = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]])\n"
        "keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)\n"  # torchvision's own library
        "assert keep.tolist() == [0], keep\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 0\n"
        "warmup.warm_up()\n"  # idempotent
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_ort_tool_failures_and_cancel_come_back_from_the_child(tmp_path):
    """ONNX Runtime's tools run in a child process (they starve the GUI thread of the GIL)."""
    from quantstudio.core.engines.ort.tools import ToolFailed, run_ort_tool
    from quantstudio.core.errors import Cancelled
    from quantstudio.core.jobs import NullContext, RecordingContext

    job = {"tool": "pre_process", "src": str(tmp_path / "missing.onnx"), "dst": str(tmp_path / "pre.onnx")}
    with pytest.raises(ToolFailed) as info:
        run_ort_tool(job, NullContext())
    assert "missing.onnx" in str(info.value) + info.value.details

    ctx = RecordingContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        run_ort_tool(job, ctx)

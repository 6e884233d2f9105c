"""Regenerate resources/screenshots/*.png from the real app on the bundled demo.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.gui.screenshots
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.gui.screenshots auto   # only auto_precision.png
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
tmp = tempfile.mkdtemp(prefix="qs-shots-")
os.environ["QUANTSTUDIO_SETTINGS"] = str(Path(tmp) / "settings.ini")
os.environ["QUANTSTUDIO_DATA_DIR"] = str(Path(tmp) / "data")

from PySide6.QtCore import QEvent, QEventLoop, Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from quantstudio.gui.app import make_application  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "resources" / "screenshots"
W, H = 1440, 900


def pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        # processEvents outside an event loop leaves deleteLater() undone (Qt retires
        # replaced dock tab bars that way); app.exec() would have deleted them.
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
        time.sleep(0.01)


def wait(app, cond, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError
        pump(app, 0.1)


def save(widget, name: str, width: int = 1200) -> None:
    pix = widget.grab()
    if pix.width() > width:
        pix = pix.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
    path = OUT / name
    pix.save(str(path), "PNG", 9)
    print(path, path.stat().st_size // 1024, "KB")


def main() -> int:
    app = make_application([])
    from quantstudio.gui.main_window import MainWindow

    OUT.mkdir(parents=True, exist_ok=True)
    w = MainWindow()
    w.resize(W, H)
    w.show()
    pump(app, 0.5)
    save(w, "welcome.png")

    w.open_demo()
    wait(app, lambda: w.loaded is not None)
    wait(app, lambda: w.data_panel.summary is not None and not w.runner.busy)
    pump(app, 1.0)
    w.layer_panel.view.expandToDepth(1)
    save(w, "demo_tree.png")

    p = w.data_panel
    p.calib_spin.setValue(128)
    p.eval_spin.setValue(400)
    p.runs_spin.setValue(20)
    p.batches_edit.setText("1,8")
    # A mixed plan: keep the classifier in FP32.
    w.layer_model.set_precision("classifier", "fp32")
    done = []
    w.run_finished.connect(done.append)
    w.quantize()
    wait(app, lambda: bool(done) or not w.runner.busy)
    if not done:
        print("the run did not finish", file=sys.stderr)
        return 1
    pump(app, 1.0)
    w.layer_error_panel.click_bar(max(range(len(w.layer_error_panel.values)), key=lambda i: -w.layer_error_panel.values[i]))
    w.variants_dock.raise_()
    pump(app, 0.5)
    save(w, "after_run.png")

    def raise_dock(title: str) -> None:
        for dock in w.plot_docks:
            if dock.windowTitle() == title:
                dock.raise_()

    # The tree sorted by sensitivity (most sensitive first) beside the size and memory bars.
    from quantstudio.gui.layer_model import COL_SENSITIVITY

    w.layer_panel.view.sortByColumn(COL_SENSITIVITY, Qt.SortOrder.DescendingOrder)
    w.layer_panel.view.expandAll()
    w.layer_panel.view.scrollToTop()
    raise_dock("Size")
    pump(app, 0.5)
    save(w, "after_run_sensitivity.png")
    w.layer_panel.view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    w.layer_panel.view.expandToDepth(1)

    raise_dock("Confusion")
    pump(app, 0.5)
    save(w, "after_run_confusion.png")

    from quantstudio.gui.export_dialog import ExportDialog

    dlg = ExportDialog(w)
    dlg.folder_edit.setText(str(Path(tmp) / "export"))
    dlg.show()
    dlg.start_export()
    wait(app, lambda: not w.runner.busy)
    pump(app, 0.5)
    save(dlg, "export_dialog.png")
    dlg.reject()

    # Fine-tuning (QAT), where this build has it: the Training panel after a real run on the demo.
    try:
        from quantstudio.core import qat  # noqa: F401
    except ImportError:
        print("this build has no quantization-aware training: after_qat.png not made", file=sys.stderr)
    else:
        p.qat_check.setChecked(True)
        p.qat_epochs_spin.setValue(2)
        pump(app, 1.0)  # the estimate job starts once the settings settle
        wait(app, lambda: not w.runner.busy)
        done.clear()
        w.quantize()
        wait(app, lambda: bool(done) or not w.runner.busy)
        if done:
            raise_dock("Training")
            p.ensureWidgetVisible(p.qat_check)
            pump(app, 0.5)
            save(w, "after_qat.png")
        else:
            print("the QAT run did not finish", file=sys.stderr)
    w.shutdown()  # not close(): it would ask "Save changes?" and wait for an answer nobody gives
    auto_precision_shot(app)
    return 0


# --------------------------------------------------------------------------- auto precision (issue 13)

# A real search, measured by tests/benchmarks/auto_precision_bench.py and kept in its results
# file: MobileNetV2 with outlier channels at three sites of its residual stream (the case the
# default equalization does not fix), ONNX Runtime, budget 1 point of top-1, min-max start.
AUTO_RECORD = "mobilenet_v2 3 sites s300 | onnxruntime | auto"


def auto_search_record() -> dict:
    import json

    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "auto_bench_results.json").read_text())
    return results[AUTO_RECORD]["auto"]


def auto_search_events() -> list:
    from quantstudio.core.results import CandidateTried

    return [CandidateTried(c["index"], c["label"], c["calibration"], tuple(c["fp32_layers"]), c["metric"], c["drop"],
                           c["latency_ms"], c["meets_budget"]) for c in auto_search_record()["candidates"]]


def auto_precision_shot(app) -> None:
    """The Auto precision panel after a real search, as the README shows it."""
    from quantstudio.gui.plots import CandidatesPanel

    record = auto_search_record()
    panel = CandidatesPanel()
    panel.resize(960, 640)
    panel.show()
    pump(app, 0.3)
    panel.start(record["budget"])
    for event in auto_search_events():
        panel.feed(event)
    panel.set_search(record)
    panel.splitter.setSizes([430, 210])
    pump(app, 0.5)
    save(panel, "auto_precision.png", width=960)
    panel.close()


def auto_only() -> int:
    """Only the auto-precision shot, and the window's settings with the budget field and the Auto button (to /tmp)."""
    app = make_application([])
    from quantstudio.gui.main_window import MainWindow

    OUT.mkdir(parents=True, exist_ok=True)
    auto_precision_shot(app)
    w = MainWindow()
    w.resize(W, H)
    w.show()
    w.open_demo()
    wait(app, lambda: w.loaded is not None)
    wait(app, lambda: w.data_panel.summary is not None and not w.runner.busy)
    w.data_panel.ensureWidgetVisible(w.data_panel.budget_spin)
    for event in auto_search_events():
        w._on_partial(event)
    for dock in w.plot_docks:
        if dock.widget() is w.candidates_panel:
            dock.raise_()
    pump(app, 1.0)
    path = Path(tmp) / "window_auto.png"
    w.grab().save(str(path), "PNG")
    print(path)
    w.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(auto_only() if sys.argv[1:] == ["auto"] else main())

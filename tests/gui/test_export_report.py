"""Export dialog: the report shows the exported run's own plots; every failure ends in the error box."""

from __future__ import annotations

import pytest

from quantstudio.gui import report
from quantstudio.gui.export_dialog import ExportDialog
from tests.gui.conftest import wait_idle
from tests.gui.test_plots_readable import make_run


@pytest.fixture
def two_runs(window):
    """Run #1 and run #2 with different numbers; the window shows #2 (the latest)."""
    r1 = make_run("#1 onnxruntime static (3 INT8)", top1=(0.99, 0.90), latency=(7.0, 1.0), size_mb=(9.0, 2.0),
                  ort_latency=1.4, batches=(1, 8), sqnr={"conv1": 31.0, "fc": 11.0})
    r2 = make_run("#2 torch static (3 INT8)", top1=(0.99, 0.97), latency=(6.0, 5.0), size_mb=(9.5, 3.0),
                  sqnr={"conv1": 21.0, "conv2": 19.0, "fc": 17.0})
    for run in (r1, r2):
        window.variants_panel.model.add(run)
    window._show_run(r2)
    return r1, r2


def _dialog(window, folder, variant_row, **checks) -> ExportDialog:
    dlg = ExportDialog(window)
    dlg.variant_combo.setCurrentIndex(variant_row)
    dlg.folder_edit.setText(str(folder))
    for name, on in checks.items():
        getattr(dlg, name).setChecked(on)
    return dlg


def test_report_plots_come_from_the_exported_run(qtbot, window, two_runs, tmp_path, monkeypatch):
    r1, r2 = two_runs
    seen = {}
    draw = report.plot_png

    def record(panel):  # what each plot was built from, at the moment it is drawn
        seen[panel.title] = panel
        seen[panel.title + " values"] = {
            "Latency": lambda: {n: sorted(per) for n, per in panel.throughput.items()},
            "Accuracy": lambda: panel.shown_values(),
            "Size and memory": lambda: panel.shown_values(),
            "Per-layer error": lambda: list(panel.names),
            "Confusion matrix": lambda: panel.shown_run.name,
            "Speed vs accuracy": lambda: {n: lat for n, lat, _ in panel.points},
        }[panel.title]()
        return draw(panel)

    monkeypatch.setattr(report, "plot_png", record)
    dlg = _dialog(window, tmp_path, 0, recipe_check=False)
    assert dlg.run is r1 and dlg.targets().keys() == {"report"}
    assert dlg.start_export()
    wait_idle(qtbot, window)
    assert not window.shown_errors
    assert seen["Accuracy values"]["quantized"]["top-1"] == pytest.approx(90.0)  # #1's, not #2's 97
    assert seen["Size and memory values"]["quantized"]["model size"] == pytest.approx(2.0)
    assert seen["Latency values"] == {"original": [1, 8], "quantized": [1, 8], "original (onnxruntime)": [1, 8]}
    assert seen["Per-layer error values"] == ["conv1", "fc"]
    assert seen["Confusion matrix values"] == r1.name
    assert seen["Speed vs accuracy values"][r1.name] == 1.0
    assert all(seen[t].shown_run is r1 for t in ("Latency", "Accuracy", "Size and memory", "Per-layer error"))
    # The window still shows #2: exporting #1 changed nothing on screen.
    assert window.accuracy_panel.shown_values()["quantized"]["top-1"] == pytest.approx(97.0)
    html = next(tmp_path.glob("*.report.html")).read_text()
    assert r1.name in html and html.count("data:image/png;base64,") == 6


def test_a_failed_model_export_ends_in_the_error_box(qtbot, window, two_runs, tmp_path, monkeypatch):
    r1, _ = two_runs
    r1.raw = object()  # a run that can be exported (the job itself is replaced below)
    from quantstudio.gui import pipeline_adapter

    def failing_export(ctx, raw, paths, data_spec, measure_memory=False, **files):
        raise FileNotFoundError(2, "No such file or directory", "/proc/qs_nope")

    monkeypatch.setattr(pipeline_adapter, "export_job", failing_export)
    dlg = _dialog(window, "/proc/qs_nope", 0)
    assert dlg.targets().keys() & {"onnx", "pth"}
    assert dlg.start_export()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: bool(window.shown_errors), timeout=5000)
    [box] = window.shown_errors
    assert box["title"] == "Export failed"
    assert "/proc/qs_nope" in box["text"] and "No such file or directory" in box["text"]
    assert "folder" in box["hint"] and "Nothing was overwritten" in box["hint"]
    assert "FileNotFoundError" in box["details"]  # the traceback, folded away
    summary = dlg.result_label.text()
    assert "Export failed" in summary and "details below" not in summary
    assert dlg.export_button.isEnabled() and dlg.written == []  # no report after a failed model export


def test_an_unwritable_report_fails_before_anything_starts(window, two_runs, tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    dlg = _dialog(window, not_a_folder, 1, recipe_check=False)
    assert dlg.targets().keys() == {"report"}
    assert not dlg.start_export() and not window.runner.busy
    [box] = window.shown_errors
    assert box["title"] == "Export failed"
    assert "file.txt" in box["text"] and "a file is in the way" in box["text"]
    assert box["hint"] and box["details"]
    assert "Export failed" in dlg.result_label.text() and dlg.written == []
    assert not_a_folder.read_text() == "x" and not list(tmp_path.glob("*.html"))


def test_a_variant_without_its_model_in_memory_still_exports_its_recipe(qtbot, window, two_runs, tmp_path):
    """A reopened project: the variant's results only, no quantized model; its plan and settings make a recipe."""
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.recipe import Recipe

    r1, _ = two_runs
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp32")
    r1.plan = plan.to_dict()
    assert r1.raw is None
    window.data_panel.set_data("random")
    dlg = _dialog(window, tmp_path, 0, report_check=False)
    assert dlg.targets().keys() == {"recipe"} and not dlg.onnx_check.isEnabled()
    assert dlg.start_export()
    wait_idle(qtbot, window)
    recipe = Recipe.load(next(tmp_path.glob("*.recipe.json")))
    assert recipe.precision_plan().precision_for("fc").value == "fp32"
    assert recipe.engine == "torch" and recipe.data["spec"] == "random"
    assert not window.shown_errors


# --------------------------------------------------------------------------- one transaction, both formats

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.fixture
def real_run(window):
    """A real ONNX Runtime run of a PyTorch (pickled) model, with its QuantizeResult in ``raw``."""
    from quantstudio.core.data import RandomSource
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.pipeline import run_quantize
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.gui.pipeline_adapter import reduce_result
    from tests.core.models import tiny_net
    from tests.core.test_engines import batches, bn_ready, loaded

    model = loaded(bn_ready(tiny_net(), batches(2)))
    data = RandomSource(16, (3, 32, 32), seed=0)
    result = run_quantize(model, data, None, PrecisionPlan(), QuantConfig(calib_samples=8), eval_samples=8,
                          benchmark=False)
    run = reduce_result(result, "#1 onnxruntime static", data)
    window.variants_panel.model.add(run)
    return run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pytorch_source_exports_both_formats_in_one_transaction(qtbot, window, real_run, tmp_path):
    tmp_path = tmp_path / "out"  # beside the app's data folder
    dlg = _dialog(window, tmp_path, 0, memory_check=False)
    dlg.name_edit.setText("model")
    partials = []
    window.runner.partial.connect(partials.append)
    assert dlg.onnx_check.isChecked()  # the variant's own format
    assert dlg.pth_check.isEnabled() and not dlg.pth_check.isChecked()  # offered, built on demand
    assert "made on export" in dlg.pth_check.text()
    dlg.pth_check.setChecked(True)
    assert dlg.targets().keys() == {"onnx", "pth", "recipe", "report"}
    assert dlg.start_export()
    wait_idle(qtbot, window, 120000)
    assert not window.shown_errors, window.shown_errors
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model.onnx", "model.pth", "model.recipe.json", "model.report.html"]  # no temporary
    recipe = json.loads((tmp_path / "model.recipe.json").read_text())
    assert recipe["engine"] == "onnxruntime"  # the variant's own recipe
    assert {n: e["sha256"] for n, e in recipe["exports"].items()} == {
        n: _sha(tmp_path / n) for n in ("model.onnx", "model.pth")}
    report = (tmp_path / "model.report.html").read_text()
    assert "model.onnx" in report and "model.pth" in report and "passed" in report
    import torch

    torch.jit.load(str(tmp_path / "model.pth"))  # a real TorchScript file
    assert [p.name for p in dlg.written] == names[:2] + ["model.recipe.json", "model.report.html"]
    assert "model.pth" in dlg.result_label.text()
    assert partials == []  # building the .pth did not redraw the window's plots


def test_the_tflite_format_is_offered_for_a_pytorch_source(qtbot, window, real_run, tmp_path):
    from quantstudio.core.engines.tflite.convert import extra_missing_reason

    dlg = _dialog(window, tmp_path / "out", 0, memory_check=False)
    missing = extra_missing_reason()
    assert not dlg.tflite_check.isChecked()  # not the variant's own format
    if missing:  # greyed, saying how to get it
        assert not dlg.tflite_check.isEnabled() and "tflite extra" in dlg.tflite_check.toolTip()
    else:
        assert dlg.tflite_check.isEnabled() and "made on export" in dlg.tflite_check.text()
        dlg.tflite_check.setChecked(True)
        assert dlg.targets()["tflite"].name == dlg.name_edit.text() + ".tflite"


def test_a_blocked_report_path_keeps_every_earlier_file(qtbot, window, real_run, tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    old = {"model.onnx": b"earlier model", "model.recipe.json": b"{}"}
    for n, b in old.items():
        (tmp_path / n).write_bytes(b)
    (tmp_path / "model.report.html").mkdir()  # a folder in the way of the report only
    dlg = _dialog(window, tmp_path, 0, memory_check=False)
    dlg.name_edit.setText("model")
    assert not dlg.start_export() and not window.runner.busy
    [box] = window.shown_errors
    assert "model.report.html" in box["text"] and "folder is in the way" in box["text"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == old


def test_sigterm_while_exporting_cancels_cleans_up_and_quits(qtbot, window, real_run, tmp_path, monkeypatch):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    from PySide6.QtWidgets import QApplication

    from quantstudio.core.transaction import TEMP_RE, ExportTransaction
    from quantstudio.gui import pipeline_adapter

    (tmp_path / "model.onnx").write_bytes(b"earlier model")
    started = []

    def slow_export(ctx, raw, paths, data_spec, measure_memory=False, **files):
        with ExportTransaction([Path(p) for p in paths]) as txn:
            txn.write_bytes(paths[0], b"half a model")
            started.append(True)
            while True:  # a long step that checks for cancel, as the real ones do
                ctx.check_cancelled()
                time.sleep(0.02)

    exits = []
    monkeypatch.setattr(pipeline_adapter, "export_job", slow_export)
    monkeypatch.setattr(QApplication, "exit", staticmethod(lambda code=0: exits.append(code)))
    monkeypatch.setattr("quantstudio.gui.export_dialog.ask_yes_no", lambda *a, **k: True)
    dlg = _dialog(window, tmp_path, 0, recipe_check=False, report_check=False)
    dlg.name_edit.setText("model")
    before = signal.getsignal(signal.SIGTERM)
    assert dlg.start_export()
    qtbot.waitUntil(lambda: bool(started), timeout=10000)
    assert any(TEMP_RE.match(p.name) for p in tmp_path.iterdir())
    os.kill(os.getpid(), signal.SIGTERM)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: bool(exits), timeout=5000)
    assert exits == [128 + signal.SIGTERM]
    assert "cancelled" in dlg.result_label.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the temporary is gone
    assert (tmp_path / "model.onnx").read_bytes() == b"earlier model"
    assert signal.getsignal(signal.SIGTERM) == before  # the app's own handling is back

"""Quantize through the worker: live panels, variants, export, projects, cancel."""

from __future__ import annotations

import json
import time

import pytest
from PySide6.QtWidgets import QDialog

from quantstudio.core.results import (LatencySample, LayerErrors, LayersFused, MetricsReady, ThroughputMeasured,
                                      VariantMetrics)
from quantstudio.gui.dialogs import ImportDialog
from quantstudio.gui.tasks import RunOutcome
from tests.gui.conftest import wait_idle


def fake_quantize(ctx, request):
    """Stands in for the pipeline: streams the payload types the pipeline sends."""
    for i in range(20):
        ctx.check_cancelled()
        for v, base in (("original", 2.0), ("quantized", 1.0)):
            ctx.partial(LatencySample(v, 1, base + 0.01 * i))
        ctx.report((i + 1) / 40, "timing")
        time.sleep(0.002)
    ctx.partial(ThroughputMeasured("original", 1, 500.0))
    ctx.partial(ThroughputMeasured("quantized", 1, 1000.0))
    ctx.partial(MetricsReady(VariantMetrics(top1=0.9), VariantMetrics(top1=0.88, agreement=0.95)))
    ctx.partial(LayerErrors({"conv1": 30.0, "conv2": 25.0, "fc": float("inf")}))
    ctx.partial(LayersFused((("conv1", "bn1", "relu1"),)))
    return RunOutcome(
        name=request.name, quantized="quantized", plan=request.plan, config=request.config, data="fake",
        metrics={"original": {"top1": 0.9, "latency_ms": 2.0, "size_bytes": 4e6},
                 "quantized": {"top1": 0.88, "agreement": 0.95, "latency_ms": 1.0, "size_bytes": 1e6}},
        latency_samples={"original": {1: [2.0, 2.1]}, "quantized": {1: [1.0, 1.1]}},
        throughput={"original": {1: 500.0}, "quantized": {1: 1000.0}},
        layer_sqnr={"conv1": 30.0, "conv2": 25.0, "fc": float("inf")},
        layer_precisions={"conv1": "int8", "conv2": "int8", "fc": "int8"},
        confusion={"quantized": ([[3, 1], [0, 4]], ["a", "b"])},
        changed=[{"index": 1, "path": None, "reference": "a", "prediction": "b", "label": "a"}],
        n_evaluated=8, labeled=True,
    )


def open_tiny(qtbot, window, path, monkeypatch):
    def trust(dlg):
        dlg.trust_check.setChecked(True)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ImportDialog, "exec", trust)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(path)


def small_settings(window, folder):
    p = window.data_panel
    p.calib_spin.setValue(8)
    p.eval_spin.setValue(16)
    p.runs_spin.setValue(3)
    p.batches_edit.setText("1,4")
    p.set_data("folder", str(folder))


def test_fake_job_fills_panels_and_variants(qtbot, window, tiny_files, monkeypatch):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)
    from quantstudio.gui.tasks import QuantizeRequest

    req = QuantizeRequest(name="fake run", model=window.loaded, tree=None, plan=window.plan.to_dict(),
                          config={"engine": "onnxruntime", "mode": "static"}, data_spec="random", preprocessing=None,
                          calib_samples=1, eval_samples=1)
    with qtbot.waitSignal(window.run_finished, timeout=30000):
        window.run_job(fake_quantize, req, "fake run")
    lat = window.latency_panel
    assert len(lat.hist_items["quantized"].getData()[1]) > 0
    assert len(lat.tp_items["quantized"].getData()[0]) == 1
    assert window.accuracy_panel.items["quantized"].opts["height"]
    assert window.layer_error_panel.names == ["conv1", "conv2", "fc"]
    assert window.confusion_panel.image.image.shape == (2, 2)
    assert window.tradeoff_panel.points and window.changed_panel.model.rowCount() == 1
    assert window.variants_panel.model.rowCount() == 1
    # Clicking a bar selects the layer in the tree; selecting a layer highlights its bar.
    window.layer_error_panel.click_bar(1)
    assert window.layer_panel.current_layer() == "conv2"
    window.layer_panel.select_layer("conv1")
    assert window.layer_error_panel.selected == "conv1"
    from quantstudio.gui.layer_model import COL_SQNR

    assert window.layer_model.data(window.layer_model.index_for_name("conv2", COL_SQNR)) == "25.0"


def test_quantize_measures_what_the_data_panel_asks_for(qtbot, window, tiny_files, monkeypatch):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)
    sent = []
    monkeypatch.setattr(window, "run_job", lambda fn, request, name: sent.append(request) or True)
    window.quantize()
    window.data_panel.sensitivity_check.setChecked(False)
    window.data_panel.memory_check.setChecked(False)
    window.quantize()
    assert [(r.sensitivity, r.measure_memory) for r in sent] == [(True, True), (False, False)]


def test_plot_exports_png_and_svg(qtbot, window, tmp_path):
    window.latency_panel.feed(LatencySample("a", 1, 1.0))
    window.latency_panel.redraw()
    png = window.latency_panel.save(tmp_path / "lat.png")
    svg = window.accuracy_panel.save(tmp_path / "acc.svg")
    assert png.stat().st_size > 1000 and svg.read_text().startswith("<?xml")


@pytest.mark.slow
def test_quantize_export_and_project_end_to_end(qtbot, window, tiny_files, image_folder, tmp_path, monkeypatch):
    open_tiny(qtbot, window, tiny_files["whole"], monkeypatch)
    small_settings(window, image_folder)
    qtbot.waitUntil(lambda: window.data_panel.summary is not None, timeout=60000)
    assert window.data_panel.summary.class_counts == [("0", 9), ("1", 8), ("2", 8)]
    window.layer_model.set_precision("fc", "fp32")
    from quantstudio.gui.layer_model import COL_SENSITIVITY, COL_SQNR

    view = window.layer_panel.view
    assert view.isColumnHidden(COL_SQNR) and view.isColumnHidden(COL_SENSITIVITY)  # nothing to show yet
    with qtbot.waitSignal(window.run_finished, timeout=120000) as blocker:
        window.quantize()
    run = blocker.args[0]
    assert not view.isColumnHidden(COL_SQNR) and not view.isColumnHidden(COL_SENSITIVITY)
    # Named by what sets it apart: engine, mode, calibration, plan.
    assert run.name == "#1 ORT INT8 · minmax (7 INT8, 1 FP32)" and window.variants_panel.model.runs[0].name == run.name
    assert run.evaluation_data.endswith("not used for calibration") and run.n_evaluated > 0
    assert f"n={run.n_evaluated}" in window.accuracy_panel.plot_widget.title_label.text
    assert window.warning_banner.isVisibleTo(window) == bool(run.warnings)
    assert run.metrics["quantized"]["latency_ms"] > 0
    assert run.labeled and run.metrics["quantized"]["top1"] is not None
    assert run.layer_precisions["fc"] == "fp32"
    assert any(len(item.getData()[1]) for item in window.latency_panel.hist_items.values())
    assert window.layer_error_panel.names
    assert window.variants_panel.model.rowCount() == 1
    assert window.export_action.isEnabled()
    # Sensitivity: a value per quantizable layer, shown in the tree, and the context menu's
    # "keep most sensitive in FP32" sets exactly those layers (one undo step).
    assert run.sensitivity and all(v >= 0 for v in run.sensitivity.values())
    worst = max(run.sensitivity, key=run.sensitivity.get)
    assert window.layer_model.data(window.layer_model.index_for_name(worst, COL_SENSITIVITY)).endswith("%")
    # Sorting by sensitivity puts the most sensitive layer first; a cleared sort is model order again.
    from PySide6.QtCore import Qt

    from quantstudio.gui.layer_model import LayerNameRole

    proxy = window.layer_panel.proxy
    order = lambda: [proxy.index(r, 0, proxy.index(0, 0)).data(LayerNameRole)  # noqa: E731
                     for r in range(proxy.rowCount(proxy.index(0, 0)))]
    model_order = order()
    assert view.isSortingEnabled() and view.header().isSortIndicatorClearable()  # click a header to sort
    view.sortByColumn(COL_SENSITIVITY, Qt.SortOrder.DescendingOrder)
    assert order()[0] == worst
    view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    assert order() == model_order
    menu = window.layer_panel.build_context_menu(window.layer_panel.proxy.index(0, 0))
    keep = next(a.menu() for a in menu.actions() if a.menu() and "most sensitive" in a.text())
    assert keep.actions()[0].text() == f"The most sensitive layer: {worst}"
    keep.actions()[-1].trigger()  # "The 3 most sensitive": all three layers
    assert {n: window.plan.precision_for(n).value for n in run.sensitivity} == {n: "fp32" for n in run.sensitivity}
    window.undo_action.trigger()
    assert window.plan.precision_for("conv1").value == "int8" and window.plan.precision_for("fc").value == "fp32"
    # Peak memory of both models, measured in fresh processes, reaches the Size panel.
    for variant in ("original", "quantized"):
        assert run.metrics[variant]["model_peak_bytes"] > 0
        assert window.size_panel.values[variant]["memory running it"] > 0

    # Export: model + recipe + report, checked by reloading.
    from quantstudio.gui.export_dialog import ExportDialog

    dlg = ExportDialog(window)
    dlg.folder_edit.setText(str(tmp_path / "out"))
    dlg.memory_check.setChecked(False)
    assert dlg.onnx_check.isChecked() and not dlg.pth_check.isChecked()  # .pth: offered, built on demand
    assert dlg.start_export()
    wait_idle(qtbot, window, 120000)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(n.endswith(".onnx") for n in names) and any(n.endswith(".report.html") for n in names), names
    assert any(n.endswith(".recipe.json") for n in names)
    assert dlg.export_summary["check"]["passed"]
    from quantstudio.core.loading import load_model

    onnx_path = next((tmp_path / "out").glob("*.onnx"))
    assert load_model(onnx_path).kind == "onnx"
    report = next((tmp_path / "out").glob("*.html")).read_text()
    assert "data:image/png;base64," in report
    # A second export to the same names asks first; saying no leaves the files alone.
    mtime = onnx_path.stat().st_mtime_ns
    monkeypatch.setattr("quantstudio.gui.export_dialog.ask_yes_no", lambda *a, **k: False)
    assert not dlg.start_export()
    assert onnx_path.stat().st_mtime_ns == mtime
    dlg.reject()

    # Project round trip: model, plan, data settings and variants come back.
    window._write_project(tmp_path / "p.qsproj")
    saved = json.loads((tmp_path / "p.qsproj").read_text())
    assert saved["version"] == 1 and len(saved["variants"]) == 1
    window.layer_model.set_all("fp16")
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_project(tmp_path / "p.qsproj")
    assert window.plan.precision_for("fc").value == "fp32" and window.plan.default.value == "int8"
    assert window.variants_panel.model.rowCount() == 1
    assert window.data_panel.calib_spin.value() == 8

    # Re-apply the variant's plan (undoable).
    window.layer_model.set_all("fp16")
    window.apply_variant_plan(0)
    assert window.plan.precision_for("fc").value == "fp32"
    window.undo_action.trigger()
    assert window.plan.default.value == "fp16"


@pytest.mark.slow
def test_cancel_mid_run_returns_to_idle(qtbot, window, tiny_files, image_folder, monkeypatch):
    open_tiny(qtbot, window, tiny_files["whole"], monkeypatch)
    small_settings(window, image_folder)
    window.data_panel.runs_spin.setValue(2000)  # long benchmark: there is time to cancel
    qtbot.waitUntil(lambda: window.data_panel.summary is not None, timeout=60000)
    stages = []
    window.runner.partial.connect(stages.append)
    window.quantize()
    qtbot.waitUntil(lambda: any(isinstance(p, LatencySample) for p in stages), timeout=120000)
    with qtbot.waitSignal(window.runner.cancelled, timeout=60000):
        window.cancel_button.click()
    assert not window.runner.busy
    assert window.quantize_action.isEnabled() and not window.cancel_button.isVisible()
    assert window.variants_panel.model.rowCount() == 0
    assert not window.shown_errors

"""The Variants panel: layer counts that agree with the tree, B − A with sign and unit,
panels put back after a cancelled or failed run, and Re-run of a stored variant."""

from __future__ import annotations

import re
import time

import pytest
from PySide6.QtWidgets import QApplication

from quantstudio.core.errors import InputError
from quantstudio.core.results import LatencySample, LayerErrors, MetricsReady, RunSummary, VariantMetrics, VariantRole
from quantstudio.gui.tasks import QuantizeRequest, RunOutcome
from quantstudio.gui.variants import MINUS, format_delta
from tests.gui.conftest import wait_idle


def fake_run(ctx, request):
    """Stands in for the pipeline: one latency sample per variant, then the outcome.

    What the engine reports per layer is what ONNX Runtime reports: graph ops that are no
    layer of the tree (a residual add) and not every layer (Dropout is gone after export).
    """
    engine = request.config.get("engine", "onnxruntime")
    slow = 2.0 if engine == "torch" else 1.0
    ctx.partial(LatencySample(VariantRole.QUANTIZED.value, 1, slow))
    built = {name: "int8" for name in ("conv1", "conv2", "fc", "add", "add_1", "flatten_op")}
    summary = RunSummary(
        plan=request.plan, config=request.config,
        variants={VariantRole.ORIGINAL.value: VariantMetrics(top1=0.9, latency_ms=2.0, size_bytes=4_000_000, n=8),
                  VariantRole.QUANTIZED.value: VariantMetrics(
                      top1=0.9 if engine == "torch" else 0.88, agreement=0.95, sqnr_db=30.0, latency_ms=slow, n=8,
                      size_bytes=1_000_000 + (2560 if engine == "torch" else 0))},
        latency_samples={VariantRole.QUANTIZED.value: {1: [slow, slow]}},
        layer_sqnr={"conv1": 30.0}, layer_precisions=built, evaluation_samples=8,
    )
    return RunOutcome.from_summary(summary, request.name, data="fake")


def endless_run(ctx, request):
    """Streams half a run, then waits to be cancelled."""
    ctx.partial(LatencySample("quantized", 1, 99.0))
    ctx.partial(MetricsReady(VariantMetrics(top1=0.5), VariantMetrics(top1=0.1)))
    ctx.partial(LayerErrors({"conv1": 1.0}))
    while True:
        ctx.check_cancelled()
        time.sleep(0.01)


def failing_run(ctx, request):
    ctx.partial(LatencySample("quantized", 1, 99.0))
    raise InputError("ONNX Runtime could not quantize this model", hint="Keep the failing layers in FP32.")


@pytest.fixture
def tiny_window(qtbot, window, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)
    return window


def quantize_with(qtbot, window, fn, engine: str = "onnxruntime") -> RunOutcome | None:
    """Press Quantize with ``fn`` standing in for the pipeline; returns the new variant."""
    panel = window.data_panel
    panel.engine_combo.setCurrentIndex(panel.engine_combo.findData(engine))
    real = window.run_job
    window.run_job = lambda job_fn, request, name: real(fn, request, name)
    try:
        with qtbot.waitSignal(window.run_finished, timeout=30000) as blocker:
            window.quantize()
    finally:
        window.run_job = real
    return blocker.args[0]


def tree_summary_counts(window) -> tuple[int, int, int]:
    text = re.sub("<[^>]+>", "", window.layer_panel.summary.text())
    found = dict(re.findall(r"(INT8|FP16|FP32): (\d+)", text))
    return int(found["INT8"]), int(found["FP16"]), int(found["FP32"])


def comparison(window) -> dict[str, tuple[str, str, str]]:
    return {label: (a, b, d) for label, a, b, d in window.variants_panel.comparison()}


def test_layer_counts_agree_in_name_tree_and_comparison(qtbot, tiny_window):
    window = tiny_window
    window.layer_model.set_precision("fc", "fp32")
    run = quantize_with(qtbot, window, fake_run)
    int8, fp16, fp32 = tree_summary_counts(window)
    assert (fp16, fp32) == (0, 1)
    assert f"({int8} INT8, {fp32} FP32)" in run.name
    row = comparison(window)["layers INT8/FP16/FP32"]
    assert row[0] == row[1] == f"{int8} / {fp16} / {fp32}"  # not the engine's 6 entries


def test_b_minus_a_has_sign_and_the_unit_of_the_values(qtbot, tiny_window):
    window = tiny_window
    quantize_with(qtbot, window, fake_run, "onnxruntime")
    quantize_with(qtbot, window, fake_run, "onnxruntime")
    rows = comparison(window)
    assert rows["top-1"] == ("88.00%", "88.00%", "±0.00 pt")
    # A new run is compared with the one before it.
    panel = window.variants_panel
    assert (panel.a_combo.currentIndex(), panel.b_combo.currentIndex()) == (0, 1)
    window.run_job(fake_run, QuantizeRequest(
        name="slow", model=window.loaded, tree=window.layer_model.tree, plan=window.plan.to_dict(),
        config={"engine": "torch", "mode": "dynamic"}, data_spec="random", preprocessing=None,
        calib_samples=1, eval_samples=1), "slow")
    wait_idle(qtbot, window)
    rows = comparison(window)
    assert (panel.a_combo.currentText(), panel.b_combo.currentText()) == (window.variants_panel.model.names()[1], "slow")
    assert rows["top-1"] == ("88.00%", "90.00%", "+2.00 pt")
    assert rows["latency (batch 1)"] == ("1.00 ms", "2.00 ms", "+1.00 ms")
    assert rows["speed-up"] == ("2.00×", "1.00×", f"{MINUS}1.00×")
    assert rows["file size"][2] == "+2.5 KB"
    assert rows["settings"][2] == ""
    # Combos keep the full name for their tooltip (the box elides it in the middle).
    assert panel.b_combo.toolTip() == "slow"
    # A chosen pair survives renaming or deleting another variant.
    panel.a_combo.setCurrentIndex(0)
    panel.b_combo.setCurrentIndex(2)
    model = panel.model
    assert model.setData(model.index(1, 0), "renamed")
    assert (panel.a_combo.currentIndex(), panel.b_combo.currentText()) == (0, "slow")
    model.remove(1)
    assert (panel.a_combo.currentText(), panel.b_combo.currentText()) == (model.names()[0], "slow")


def test_format_delta():
    assert format_delta(0.5, 0.25, "pct") == f"{MINUS}25.00 pt"
    assert format_delta(1024, 0, "bytes") == f"{MINUS}1.0 KB"
    assert format_delta(20.0, float("inf"), "db") == "—"
    assert format_delta(None, 1.0, "ms") == ""
    assert format_delta(1.0, 1.004, "ms") == "±0.00 ms"


def test_cancel_puts_back_the_current_variant(qtbot, tiny_window):
    window = tiny_window
    quantize_with(qtbot, window, fake_run)
    shown_latency = {k: dict(v) for k, v in window.latency_panel.samples.items()}
    shown_accuracy = {k: dict(v) for k, v in window.accuracy_panel.values.items()}
    window.run_job(endless_run, QuantizeRequest(
        name="half", model=window.loaded, tree=window.layer_model.tree, plan=window.plan.to_dict(),
        config={"engine": "onnxruntime", "mode": "static"}, data_spec="random", preprocessing=None,
        calib_samples=1, eval_samples=1), "half")
    # The partial events reach the window in batches: wait for both before comparing.
    qtbot.waitUntil(lambda: 99.0 in window.latency_panel.samples.get("quantized", {}).get(1, [])
                    and "quantized" in window.accuracy_panel.values, timeout=10000)
    assert window.accuracy_panel.values["quantized"]["top-1"] == pytest.approx(10.0)  # the partial run shows
    with qtbot.waitSignal(window.runner.cancelled, timeout=10000):
        window.cancel_job()
    QApplication.processEvents()
    assert window.latency_panel.samples == shown_latency
    assert window.accuracy_panel.values == shown_accuracy
    assert window.layer_model.data(window.layer_model.index_for_name("conv1", _sqnr_column())) == "30.0"
    assert window.variants_panel.model.rowCount() == 1


def test_failure_puts_back_an_empty_view_when_there_is_no_variant(qtbot, tiny_window):
    window = tiny_window
    window.run_job(failing_run, QuantizeRequest(
        name="bad", model=window.loaded, tree=window.layer_model.tree, plan=window.plan.to_dict(),
        config={"engine": "onnxruntime", "mode": "static"}, data_spec="random", preprocessing=None,
        calib_samples=1, eval_samples=1), "bad")
    wait_idle(qtbot, window)
    assert window.shown_errors and window.shown_errors[-1]["title"] == "Quantization failed"
    assert window.latency_panel.samples == {} and window.accuracy_panel.values == {}


def _sqnr_column() -> int:
    from quantstudio.gui.layer_model import COL_SQNR

    return COL_SQNR


def test_rerun_of_a_reopened_variant_applies_its_plan_and_settings(qtbot, tiny_window, tmp_path):
    window = tiny_window
    panel = window.data_panel
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("dynamic"))
    panel.calib_combo.setCurrentIndex(panel.calib_combo.findData("entropy"))
    window.layer_model.set_precision("fc", "fp32")
    run = quantize_with(qtbot, window, fake_run)
    assert window._write_project(tmp_path / "p.qsproj")
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_project(tmp_path / "p.qsproj")
    wait_idle(qtbot, window)
    stored = window.variants_panel.model.runs[0]
    assert stored.raw is None  # results only: nothing to export until it runs again
    # Something else is set up now.
    window.layer_model.set_all("fp16")
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("static"))
    panel.calib_combo.setCurrentIndex(panel.calib_combo.findData("minmax"))
    sent = []
    window.run_job = lambda fn, request, name: sent.append(request) or True
    vp = window.variants_panel
    vp.table.selectRow(0)
    assert vp.rerun_button.isEnabled()
    vp.rerun_button.click()
    assert len(sent) == 1
    assert sent[0].plan == run.plan and sent[0].config["mode"] == "dynamic"
    assert sent[0].config["calibration"] == "entropy"
    assert window.plan.precision_for("fc").value == "fp32" and window.plan.default.value == "int8"
    window.undo_action.trigger()  # the plan change is one undo step
    assert window.plan.default.value == "fp16"

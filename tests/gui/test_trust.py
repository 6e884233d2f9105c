"""The app says what a result was measured on and flags what cannot be right (issue: trust)."""

from __future__ import annotations

from pathlib import Path

from quantstudio.core.results import BenchmarkDone, RunSummary, VariantMetrics, VariantRole
from quantstudio.gui.tasks import QuantizeRequest, RunOutcome
from quantstudio.gui.variants import COLUMNS, export_stem, settings_label, variant_name
from tests.gui.conftest import wait_idle


def _open(qtbot, window, path, **kw):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(path, **kw)
    wait_idle(qtbot, window)


def _scan(qtbot, window):
    window.scan_data()
    wait_idle(qtbot, window)


def test_settings_show_the_counts_a_run_really_uses(qtbot, window, tiny_files, image_folder):
    _open(qtbot, window, tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    panel = window.data_panel
    panel.set_data("folder", str(image_folder))
    wait_idle(qtbot, window)
    panel.calib_spin.setValue(8)
    panel.eval_spin.setValue(500)
    text = panel.split_label.text()
    # 25 files of which one is damaged: the count is of the files found.
    assert "calibrate on <b>8</b> of 25" in text and "evaluate on <b>17</b> of the 17 not used" in text
    assert "fewer than asked" in text
    # Unreadable images are counted when the data is chosen, not only after a run.
    assert panel.summary.unreadable == 1
    assert any("1 of 25 images" in w and "cannot be read" in w for w in panel.summary.warnings)
    # ...and the model does not fit: 5 outputs, 3 class folders.
    assert any("5 outputs but the data has 3 classes" in w for w in panel.summary.warnings)
    assert "5 outputs" in panel.summary_label.text()


def test_separate_evaluation_folder_goes_into_the_run(qtbot, window, tiny_files, image_folder, monkeypatch):
    _open(qtbot, window, tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    panel = window.data_panel
    panel.set_data("folder", str(image_folder))
    wait_idle(qtbot, window)
    panel.eval_path_edit.setText(str(image_folder / "1"))  # a flat folder of 8 images
    _scan(qtbot, window)
    assert panel.summary.eval_count == 8
    assert "of 8 in the evaluation data" in panel.split_label.text()
    seen: list[QuantizeRequest] = []
    monkeypatch.setattr(window, "run_job", lambda fn, request, name: seen.append(request))
    window.quantize()
    assert seen and seen[0].eval_data_spec == str(image_folder / "1")
    panel.eval_clear_button.click()
    wait_idle(qtbot, window)
    assert panel.eval_data_spec() is None


def fake_run(ctx, request):
    ctx.partial(BenchmarkDone(("the computer was busy",)))
    summary = RunSummary(
        plan=request.plan, config=request.config,
        variants={VariantRole.ORIGINAL.value: VariantMetrics(top1=0.31, latency_ms=2.0, n=40),
                  VariantRole.QUANTIZED.value: VariantMetrics(top1=0.30, agreement=0.95, latency_ms=1.0, n=40)},
        evaluation_samples=40, evaluation_data="40 samples of 100 images (x) not used for calibration",
        warnings=["the original model scores near chance on this data", "the computer was busy"],
        benchmark={"warnings": ["the computer was busy"]},
    )
    return RunOutcome.from_summary(summary, request.name, data="fake")


def test_run_warnings_show_in_a_banner_and_timings_are_marked(qtbot, window, tiny_files):
    _open(qtbot, window, tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)
    assert not window.warning_banner.isVisibleTo(window)
    with qtbot.waitSignal(window.run_finished, timeout=60000):
        window.run_job(fake_run, QuantizeRequest(
            name="#1 x", model=window.loaded, tree=window.layer_model.tree, plan=window.plan.to_dict(),
            config={"engine": "onnxruntime", "mode": "static"}, data_spec="random", preprocessing=None,
            calib_samples=1, eval_samples=1), "#1 x")
    assert window.warning_banner.isVisibleTo(window)
    assert "near chance" in window.warning_banner.label.text()
    assert "n=40" in window.accuracy_panel.plot_widget.title_label.text
    assert "unreliable" in window.latency_panel.note_label.text()
    model = window.variants_panel.model
    row = model.rowCount() - 1
    assert model.data(model.index(row, COLUMNS.index("n eval"))) == "40"
    assert model.data(model.index(row, COLUMNS.index("Speed-up"))).endswith("⚠")
    assert model.data(model.index(row, COLUMNS.index("Calibration"))) == "minmax"


def test_variant_names_and_export_names_tell_variants_apart():
    from quantstudio.core.plan import Precision

    counts = {Precision.INT8: 52, Precision.FP16: 0, Precision.FP32: 1}
    names = {variant_name(3, {"engine": "onnxruntime", "mode": "static", "calibration": c}, counts)
             for c in ("minmax", "entropy", "percentile")}
    assert len(names) == 3 and "#3 ORT INT8 · entropy (52 INT8, 1 FP32)" in names
    assert settings_label({"engine": "torch", "mode": "static", "calibration": "minmax", "per_channel": False,
                           "backend": "qnnpack"}) == "PyTorch INT8 · minmax · per-tensor · ARM"
    assert settings_label({"engine": "torch", "mode": "dynamic", "calibration": "entropy"}) == "PyTorch dynamic INT8"
    run = RunOutcome(name="#3 ORT INT8 · entropy (52 INT8, 1 FP32)",
                     config={"engine": "onnxruntime", "mode": "static", "calibration": "entropy"})
    assert export_stem("resnet18", run) == "resnet18_ort_int8_entropy_3"


def test_a_confirmed_input_shape_is_remembered_for_the_file(qtbot, window, tiny_files, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from quantstudio.gui.dialogs import ImportDialog
    from quantstudio.gui.model_import import remembered_input

    asked: list[str] = []

    def answer(dlg):
        asked.append(dlg.windowTitle())
        dlg.shape_edit.setText("1,3,64,64")
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ImportDialog, "exec", answer)
    _open(qtbot, window, tiny_files["state_dict"])
    assert asked and window.loaded.input_shape == (1, 3, 64, 64)
    assert remembered_input(tiny_files["state_dict"]) == ((1, 3, 64, 64), "squeezenet1_1")
    asked.clear()
    _open(qtbot, window, tiny_files["state_dict"])  # reopened (recent files): not asked again
    assert not asked and window.loaded.input_shape == (1, 3, 64, 64)
    assert Path(window.loaded.path) == Path(tiny_files["state_dict"])


def test_report_states_what_the_figures_were_measured_on(qapp):
    from quantstudio.gui.report import build_report

    run = RunOutcome(name="#1 ORT INT8 · minmax (3 INT8)", quantized="quantized", data="540 images",
                     metrics={"original": {"top1": 0.99}, "quantized": {"top1": 0.98}},
                     evaluation_data="284 samples of 540 images in 10 class folders (d) not used for calibration",
                     n_calibrated=256, calibration_data="540 images in 10 class folders (d)", input_shape=[1, 3, 64, 64],
                     preprocessing_steps=["resize shorter side to 64", "center crop 64x64"],
                     timing_warnings=["the computer was busy"], warnings=["the computer was busy", "near chance <b>"])
    page = build_report(run, "model.pth", {})
    assert "Accuracy measured on 284 samples of 540 images" in page and "Calibrated on 256 samples" in page
    assert "Model input 1x3x64x64" in page and "resize shorter side to 64, center crop 64x64" in page
    assert "Timings unreliable" in page and "near chance &lt;b&gt;" in page

"""Fine-tuning (QAT, issue 14) in the app: the option and its settings, the Training panel fed with
live events, the variant's name and tooltip, the report's section, and Cancel that stops training only."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.loading import KIND_ONNX, KIND_PICKLED, KIND_TORCHSCRIPT, LoadedModel
from quantstudio.core.results import RunSummary, StageStarted, TrainingEpoch, TrainingStep, VariantMetrics
from quantstudio.gui import glossary
from quantstudio.gui.tasks import RunOutcome

TRAINING = {
    "settings": {"epochs": 3, "lr": 0.0001, "batch_size": 16, "signal": "distill", "train_samples": 900,
                 "val_samples": 100, "seed": 0},
    "history": [{"epoch": 0, "train_loss": None, "val_metric": 62.0},
                {"epoch": 1, "train_loss": 0.9, "val_metric": 91.0},
                {"epoch": 2, "train_loss": 0.5, "val_metric": 96.0},
                {"epoch": 3, "train_loss": 0.4, "val_metric": 95.0}],
    "metric": "agreement", "best_epoch": 2, "stopped_early": False, "cancelled": True,
    "ptq_val_metric": 62.0, "seconds": 41.5, "peak_memory_bytes": 450_000_000,
}


def _feed_training(panel) -> None:
    panel.feed(TrainingEpoch(0, 3, None, 62.0, "agreement", 0))
    for epoch, (loss, val, best) in enumerate([(0.9, 91.0, 1), (0.5, 96.0, 2), (0.4, 95.0, 2)], start=1):
        for step in (1, 2, 3, 4):
            panel.feed(TrainingStep(epoch, 3, step, 4, loss + 0.1 * (4 - step)))
        panel.feed(TrainingEpoch(epoch, 3, loss, val, "agreement", best))
    panel.redraw()


def _summary_with_training(training: dict | None = TRAINING) -> RunSummary:
    cfg = QuantConfig(engine="torch", qat=True, qat_epochs=3, qat_batch_size=16, qat_signal="distill").to_dict()
    return RunSummary(engine="torch", mode="static", config=cfg, plan={"version": 1, "default": "int8", "rules": []},
                      variants={"original": VariantMetrics(agreement=1.0, n=50),
                                "quantized": VariantMetrics(agreement=0.95, n=50)},
                      evaluation_samples=50, training=dict(training or {}))


# ---------------------------------------------------------------- the Training panel


def test_training_panel_draws_live_steps_epochs_ptq_line_and_kept_epoch(qtbot):
    from quantstudio.gui.plots import TrainingPanel

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    assert not panel.has_data() and panel.empty_text == glossary.EMPTY_PANEL["training"]
    _feed_training(panel)
    curves = panel.curves()
    # Every step at its fraction of an epoch; the epoch means at whole epochs; validation from epoch 0.
    assert curves["steps"][0][:4] == [0.25, 0.5, 0.75, 1.0]
    assert len(curves["steps"][0]) == 12 and curves["steps"][1][0] == pytest.approx(1.2)
    assert curves["epoch_loss"] == ([1.0, 2.0, 3.0], [0.9, 0.5, 0.4])
    assert curves["validation"] == ([0.0, 1.0, 2.0, 3.0], [62.0, 91.0, 96.0, 95.0])
    assert panel.ptq_line.isVisible() and panel.ptq_line.value() == pytest.approx(62.0)
    assert "62.0 %" in panel.ptq_text.toPlainText()
    bx, by = panel.best_item.getData()
    assert list(bx) == [2.0] and list(by) == [96.0]
    assert "epoch kept: 2 (96.0 %)" in panel.legend.names()
    assert "agreement" in panel.val_plot.titleLabel.text
    assert panel.has_data()

    # The finished run: its history; n in the title; the step curve of the same run is kept.
    run = RunOutcome.from_summary(_summary_with_training(), "#1 QAT")
    panel.show_run(run, [run])
    assert "n=100" in panel.val_plot.titleLabel.text and len(panel.curves()["steps"][0]) == 12
    assert "Stopped by you" in panel.note_label.text()
    # Another run's history: no step curve that is not its own.
    other = dict(TRAINING, history=TRAINING["history"][:2], best_epoch=1, cancelled=False)
    panel.show_run(RunOutcome.from_summary(_summary_with_training(other), "#2"), [])
    assert panel.curves()["steps"] == ([], []) and panel.curves()["validation"][1] == [62.0, 91.0]
    # A run that was not fine-tuned: the panel is empty again.
    panel.show_run(RunOutcome.from_summary(_summary_with_training({}), "#3"), [])
    assert not panel.has_data() and not panel.ptq_line.isVisible()


def test_training_panel_save_writes_a_png(qtbot, tmp_path):
    from quantstudio.gui.plots import TrainingPanel

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.resize(700, 380)
    panel.show()
    _feed_training(panel)
    out = panel.save(tmp_path / "training.png")
    assert out.exists() and out.stat().st_size > 2000


# ---------------------------------------------------------------- the option and its settings


def _model(kind: str) -> LoadedModel:
    from tests.core.models import tiny_net

    module = tiny_net() if kind == KIND_PICKLED else None
    return LoadedModel(path=Path(f"m.{kind}"), kind=kind, input_shape=(1, 3, 32, 32), module=module)


def test_qat_settings_reach_the_quant_config_and_round_trip_through_settings_and_projects(qtbot):
    from quantstudio.core.schema import project_schema, validate
    from quantstudio.gui.data_panel import DataPanel

    panel = DataPanel()
    qtbot.addWidget(panel)
    panel.set_model(_model(KIND_PICKLED))
    assert panel.quant_config()["qat"] is False and not panel.qat_box.isEnabled()
    assert not panel.qat_estimate_label.isVisibleTo(panel)
    panel.qat_check.setChecked(True)
    assert panel.qat_box.isEnabled() and panel.qat_estimate_label.isVisibleTo(panel)
    panel.qat_epochs_spin.setValue(5)
    panel.qat_lr_spin.setValue(0.0005)
    panel.qat_batch_spin.setValue(8)
    panel.qat_signal_combo.setCurrentIndex(panel.qat_signal_combo.findData("distill"))
    config = QuantConfig.from_dict(panel.quant_config())
    assert (config.qat, config.qat_epochs, config.qat_lr, config.qat_batch_size, config.qat_signal) == (
        True, 5, pytest.approx(0.0005), 8, "distill")

    # A project's data part holds the keys, fits the project schema, and restores them.
    state = panel.state()
    validate({"format": "quantstudio-project", "data": state}, project_schema(), None, "project")
    panel.save_settings()
    fresh = DataPanel()  # remembered settings
    qtbot.addWidget(fresh)
    fresh.set_model(_model(KIND_PICKLED))
    assert fresh.quant_config() == panel.quant_config()
    other = DataPanel()
    qtbot.addWidget(other)
    other.restore_state({**state, "qat_epochs": 7, "qat_lr": 0.0})
    other.set_model(_model(KIND_PICKLED))
    assert other.qat_config()["qat_epochs"] == 7 and other.qat_config()["qat_lr"] == 0.0
    assert other.qat_lr_spin.text() == "Auto"


def test_qat_is_greyed_out_with_the_reason_for_models_it_cannot_fine_tune(qtbot):
    from quantstudio.gui.data_panel import DataPanel

    panel = DataPanel()
    qtbot.addWidget(panel)
    panel.qat_check.setChecked(True)
    for kind, words in ((KIND_ONNX, "an ONNX model cannot be fine-tuned"),
                        (KIND_TORCHSCRIPT, "a TorchScript archive cannot be fine-tuned")):
        panel.set_model(_model(kind))
        assert not panel.qat_check.isEnabled()
        assert "QAT needs the PyTorch model" in panel.qat_reason_label.text()
        assert words in panel.qat_reason_label.text() and words in panel.qat_check.toolTip()
        assert panel.qat_reason_label.isVisibleTo(panel) and not panel.qat_box.isEnabled()
        assert panel.quant_config()["qat"] is False  # ticked, but a run will not fine-tune
        assert panel.state()["qat"] is True  # the user's choice is kept for the next model
    panel.set_model(_model(KIND_PICKLED))
    assert panel.qat_check.isEnabled() and panel.quant_config()["qat"] is True
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("dynamic"))
    assert not panel.qat_check.isEnabled() and panel.qat_reason_label.text() == glossary.QAT_NEEDS_STATIC


def test_the_estimate_is_shown_before_starting_or_says_it_is_unavailable(qtbot, monkeypatch):
    from quantstudio.gui import tasks
    from quantstudio.gui.data_panel import DataPanel
    from quantstudio.core.jobs import NullContext

    panel = DataPanel()
    qtbot.addWidget(panel)
    panel.set_summary(tasks.DataSummary(spec="x", kind="folder", description="30 images", count=1030, labeled=True,
                                        is_random=False))
    panel.eval_spin.setValue(30)
    assert panel.qat_train_samples() == 1000  # the evaluation images are never trained on
    panel.eval_spin.setValue(5000)
    assert panel.qat_train_samples() == 256  # every image calibration did not use is evaluated on
    # The real estimate (two timed training steps of a tiny model), shown with its units.
    from tests.core.models import tiny_net
    from tests.core.test_engines import loaded

    estimate = tasks.qat_estimate_job(NullContext(), loaded(tiny_net()), (1, 3, 32, 32), 1000, 2, 32)
    seconds, memory = estimate
    assert 0 < seconds < 3600 and memory > 0
    more = tasks.qat_estimate_job(NullContext(), loaded(tiny_net()), (1, 3, 32, 32), 4000, 2, 32)
    assert more[0] > seconds  # four times the images: longer
    panel.set_qat_estimate((150.0, 3 << 30))
    assert panel.qat_estimate_label.text() == "about 2 min, 3.0 GB of memory"
    panel.set_qat_estimate(None)  # the estimate failed
    assert panel.qat_estimate_label.text() == glossary.QAT_ESTIMATE_UNAVAILABLE


# ---------------------------------------------------------------- the variant, the report


def test_a_fine_tuned_variant_says_so_in_its_name_tooltip_report_and_project():
    from PySide6.QtCore import Qt

    from quantstudio.core.plan import Precision
    from quantstudio.core.schema import project_schema, validate
    from quantstudio.gui.report import build_report
    from quantstudio.gui.variants import VariantTableModel, export_stem, settings_label, variant_name

    summary = _summary_with_training()
    name = variant_name(4, summary.config, {Precision.INT8: 12})
    assert name == "#4 PyTorch INT8 · minmax · QAT 3 ep (12 INT8)"
    assert "QAT" not in settings_label({**summary.config, "qat": False})
    run = RunOutcome.from_summary(summary, name)
    assert run.training["best_epoch"] == 2
    assert export_stem("net", run).startswith("net_pytorch_int8_minmax_qat_3_ep")
    model = VariantTableModel()
    model.add(run)
    tip = model.data(model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert "Fine-tuned (QAT): 3 epochs, learning rate 0.0001, batch 16, from distillation" in tip
    assert "62.0 % (plain INT8) → 96.0 % (epoch 2 kept)" in tip and "stopped by the user" in tip

    page = build_report(run, "net.pth", {})
    section = page[page.index("<h2>Fine-tuning (QAT)</h2>"):]
    assert "<td>0 — plain INT8 start</td><td>—</td><td>62.00</td>" in section
    assert "<td>2 (kept)</td><td>0.5000</td><td>96.00</td>" in section
    assert "validation agreement with the original (%)" in section and "by the user (best epoch kept)" in section
    assert "Fine-tuning (QAT)" not in build_report(RunOutcome.from_summary(_summary_with_training({}), "#1"), "n", {})

    # A project keeps it.
    stored = run.to_dict()
    validate({"format": "quantstudio-project", "variants": [stored]}, project_schema(), None, "project")
    assert RunOutcome.from_dict(stored).training == run.training


def test_the_report_draws_the_training_curve_of_a_fine_tuned_variant(qtbot):
    from quantstudio.gui.report import render_plots

    run = RunOutcome.from_summary(_summary_with_training(), "#1 QAT")
    plots = render_plots(run, [run])
    captions = [c for c in plots if c.startswith("Training")]
    assert captions and plots[captions[0]][:4] == b"\x89PNG"
    assert not any(c.startswith("Training") for c in render_plots(RunOutcome.from_summary(_summary_with_training({}),
                                                                                           "#2"), []))


# ---------------------------------------------------------------- Cancel during training


def _training_job(ctx, request):
    """A stand-in for a QAT run: trains until stopped (keeping the best epoch), then evaluates."""
    ctx.partial(StageStarted("calibrate"))
    ctx.check_cancelled()
    ctx.partial(StageStarted("train"))
    ctx.partial(TrainingEpoch(0, 50, None, 60.0, "top1", 0))
    stopped = False
    epoch = 0
    try:
        for epoch in range(1, 51):
            for step in range(1, 5):
                ctx.partial(TrainingStep(epoch, 50, step, 4, 1.0 / epoch))
                request["go"].wait(0.01)
                ctx.check_cancelled()
            ctx.partial(TrainingEpoch(epoch, 50, 1.0 / epoch, 60.0 + epoch, "top1", epoch))
    except Exception as exc:  # noqa: BLE001 - the core catches Cancelled the same way
        from quantstudio.core.errors import Cancelled

        if not isinstance(exc, Cancelled):
            raise
        stopped = True
    ctx.partial(StageStarted("evaluate"))
    for _ in range(3):
        request["go"].wait(0.05)
        ctx.check_cancelled()  # evaluation goes on after training was stopped
    return {"stopped": stopped, "epochs": epoch}


def test_cancel_during_training_stops_training_only_and_the_run_finishes(qtbot, window):
    from quantstudio.gui.worker import Job

    results = []
    request = {"go": threading.Event()}
    window.start_job(Job("QAT stand-in", _training_job, (request,), on_done=results.append))
    qtbot.waitUntil(lambda: window.cancel_button.text() == glossary.STOP_TRAINING, timeout=10000)
    assert window.training_dock.widget() is window.training_panel
    qtbot.waitUntil(lambda: len(window.training_panel.steps) > 0, timeout=10000)  # the panel fills in live
    window.cancel_button.click()
    assert window.stage_label.text() == glossary.STOPPING_TRAINING and window.cancel_button.text() == "Cancel"
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=10000)
    assert results and results[0]["stopped"] and results[0]["epochs"] < 50
    assert window.cancel_button.text() == "Cancel"

    # Outside training, Cancel cancels the run as before.
    cancelled = []
    window.start_job(Job("QAT stand-in 2", _training_job, (request,), on_done=results.append,
                         on_cancelled=lambda: cancelled.append(True)))
    qtbot.waitUntil(lambda: window.cancel_button.text() == glossary.STOP_TRAINING, timeout=10000)
    window.cancel_button.click()  # stop training…
    window.cancel_button.click()  # …and then the whole run
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=10000)
    assert cancelled == [True] and len(results) == 1


def test_a_real_fine_tune_from_the_app_and_stop_training_keeps_the_best_epoch(qtbot, window, tiny_files, image_folder,
                                                                              monkeypatch):
    """The real core (PyTorch engine, tiny model, 3 class folders): the Training panel fills
    in live, Stop training ends the training but not the run, and the variant says QAT."""
    from quantstudio.core.results import TrainingStep
    from quantstudio.gui.worker import QtJobContext
    from tests.gui.conftest import wait_idle
    from tests.gui.test_run import open_tiny, small_settings

    open_tiny(qtbot, window, tiny_files["whole"], monkeypatch)
    small_settings(window, image_folder)
    wait_idle(qtbot, window)
    p = window.data_panel
    p.engine_combo.setCurrentIndex(p.engine_combo.findData("torch"))
    p.qat_check.setChecked(True)
    p.qat_epochs_spin.setValue(50)  # far more than the stop lets it run
    p.qat_batch_spin.setValue(4)
    assert p.qat_enabled(), p.qat_unavailable_reason()
    wait_idle(qtbot, window)  # the estimate job
    # Press Stop training as soon as training steps arrive (in the worker thread: a queued
    # click could come after a tiny model's training has ended).
    original_partial = QtJobContext.partial

    def partial(self, payload):
        original_partial(self, payload)
        if isinstance(payload, TrainingStep) and payload.epoch == 1 and self._interrupt is not None:
            self._interrupt.request("train")

    monkeypatch.setattr(QtJobContext, "partial", partial)
    finished = []
    window.run_finished.connect(finished.append)
    window.quantize()
    wait_idle(qtbot, window, 240000)
    assert finished and not window.shown_errors, window.shown_errors
    run = finished[0]
    t = run.training
    assert t["cancelled"] and t["settings"]["epochs"] == 50 and len(t["history"]) < 50
    assert t["history"][0]["epoch"] == 0  # the PTQ start was validated
    assert "QAT" in run.name and run.metrics.get(run.quantized)
    assert window.training_panel.steps  # the live curve got the steps

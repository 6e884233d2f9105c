"""The main window's answers for when INT8 hurts accuracy: the Auto button (automatic mixed
precision to a budget, issue 13) and fine-tuning (QAT, issue 14).

Mixins of :class:`~quantstudio.gui.main_window.MainWindow`, split from it by concern like
:mod:`~quantstudio.gui.model_import`; they use the window's panels, runner and actions.
Nothing here runs torch: the search and the training run in the worker's jobs.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from PySide6.QtCore import QTimer, Slot
from PySide6.QtWidgets import QDockWidget, QWidget

from quantstudio.core.errors import InputError
from quantstudio.core.plan import Precision
from quantstudio.gui import glossary, tasks
from quantstudio.gui.dialogs import show_error
from quantstudio.gui.variants import variant_name
from quantstudio.gui.worker import Job

log = logging.getLogger("quantstudio.gui")


class AutoPrecisionMixin:
    """The Auto button: a Quantize run with the Data panel's budget, its chart, and the plan it chose."""

    _pending_budget: Any = None  # the Auto button's budget, for the request quantize() builds
    _auto_running = False  # the running job searches for a plan (Cancel keeps the best so far)

    @Slot()
    def auto_quantize(self) -> None:
        """Quantize with the Data panel's budget: the core searches for the fastest plan within it."""
        if self.loaded is None:
            return
        try:
            budget = self.data_panel.budget()
        except InputError as exc:
            show_error(self, "Auto precision", exc)
            return
        summary = self.data_panel.summary
        if budget.max_drop is not None and summary is not None and (summary.is_random or not summary.labeled):
            show_error(self, "Auto precision", message="A maximum accuracy drop needs labeled data: this data has no labels.",
                       hint="Choose 'Min agreement (%)' under Auto precision in the Data & settings panel, or a folder "
                            "with one sub-folder per class.")
            return
        self._pending_budget = budget
        try:
            self.quantize()
        finally:
            self._pending_budget = None

    def _attach_budget(self, request: tasks.QuantizeRequest) -> None:
        if self._pending_budget is not None:
            request.budget = self._pending_budget

    def _plot_dock(self, panel: QWidget) -> QDockWidget | None:
        return next((d for d in self.plot_docks if d.widget() is panel), None)

    def _prepare_auto_run(self, request: Any) -> None:
        """A started run that searches: the chart starts empty with its budget, and Cancel says what it keeps."""
        budget = getattr(request, "budget", None)
        self._auto_running = budget is not None
        if budget is None:
            return
        self.candidates_panel.start(budget)
        dock = self._plot_dock(self.candidates_panel)
        if dock is not None:
            dock.raise_()
        for w in (self.cancel_action, self.cancel_button):
            w.setToolTip(glossary.AUTO_CANCEL_HELP)
        self.cancel_action.setStatusTip(glossary.AUTO_CANCEL_HELP)

    @Slot(bool)
    def _on_busy_for_auto(self, busy: bool) -> None:
        if busy or not self._auto_running:
            return
        self._auto_running = False
        for w in (self.cancel_action, self.cancel_button):
            w.setToolTip("Stop the running job")
        self.cancel_action.setStatusTip("Stop the running job")

    def _fp32_results(self, run: tasks.RunOutcome) -> dict[str, Any]:
        return {"fp32_reasons": dict(getattr(run, "fp32_reasons", {}) or {}),
                "sensitivity_fix": dict(getattr(run, "sensitivity_fix", {}) or {}),
                "sqnr_isolated": dict(getattr(run, "layer_sqnr_isolated", {}) or {})}

    def _apply_auto_result(self, run: tasks.RunOutcome) -> None:
        """A finished search: name the variant by the plan chosen and apply that plan to the tree (one undo step)."""
        search = getattr(run, "auto_precision", None) or {}
        if not search:
            return
        chosen = search.get("chosen")
        candidate = next((c for c in search.get("candidates") or [] if c.get("index") == chosen), None)
        tree = self.layer_model.tree
        if tree is not None and run.layer_precisions:
            leaves = {n.name for n in tree.leaves()}
            counts = {p: sum(1 for k, v in run.layer_precisions.items() if k in leaves and v == p.value) for p in Precision}
            number = re.match(r"#(\d+)", run.name)
            if number and any(counts.values()):
                run.name = variant_name(int(number.group(1)), run.config, counts)
        run.name += " · auto"
        stopped = " (search stopped early: the best plan found so far)" if search.get("cancelled") else ""
        if candidate is None:
            log.info("Auto precision: no plan tried met the budget%s; the layer tree is unchanged.", stopped)
            return
        changed = self.layer_model.apply_layer_precisions(run.layer_precisions, f"Auto precision plan of {run.name}")
        calibration = candidate.get("calibration")
        if calibration and calibration != self.data_panel.quant_config().get("calibration"):
            self.data_panel.restore_state({"calibration": calibration})
            log.info("Auto precision: calibration set to %s (the chosen plan's).", calibration)
        log.info("Auto precision chose #%s %s: %d layers in FP32, %.2f ms%s. Applied to the tree (%d layers "
                 "changed; Ctrl+Z undoes it).", chosen, candidate.get("label", ""), len(candidate.get("fp32_layers") or []),
                 float(candidate.get("latency_ms") or 0.0), stopped, len(changed))


class FineTuningMixin:
    """Fine-tuning (QAT): Cancel stops the training only while a run trains; the estimate job."""

    _in_training = False  # the running job is fine-tuning: Cancel stops training only
    _training_stop_sent = False
    _qat_estimate_pending = False

    def _on_training_event(self, event: Any) -> None:
        """While a run fine-tunes, Cancel stops the training only (the best epoch is kept)."""
        from quantstudio.core.results import StageStarted, TrainingEpoch, TrainingStep

        if isinstance(event, (TrainingStep, TrainingEpoch)) or (isinstance(event, StageStarted) and event.name == "train"):
            if not self._in_training:
                self._in_training = True
                self.training_dock.raise_()
                if not self._training_stop_sent:
                    for w in (self.cancel_button, self.cancel_action):
                        w.setText(glossary.STOP_TRAINING)
                        w.setToolTip(glossary.STOP_TRAINING_HELP)
        elif isinstance(event, StageStarted):
            self._end_training_stage()

    def _end_training_stage(self) -> None:
        if self._in_training or self._training_stop_sent:
            self.cancel_button.setText("Cancel")
            self.cancel_button.setToolTip("")
            self.cancel_action.setText("&Cancel")
            self.cancel_action.setToolTip("Stop the running job")
        self._in_training = False
        if not self.runner.busy:
            self._training_stop_sent = False

    def _stop_training(self) -> bool:
        """The first Cancel during fine-tuning: stop training, keep the best epoch; True when sent."""
        if not (self._in_training and not self._training_stop_sent and self.runner.stop_stage("train")):
            return False
        self._training_stop_sent = True
        self.stage_label.setText(glossary.STOPPING_TRAINING)
        log.info("%s", glossary.STOPPING_TRAINING)
        self.cancel_button.setText("Cancel")  # a second press cancels the whole run
        self.cancel_action.setText("&Cancel")
        return True

    @Slot()
    def estimate_qat(self) -> None:
        """Estimate time and memory of fine-tuning with the panel's settings (a worker job)."""
        samples = self.data_panel.qat_train_samples()
        if self.loaded is None or samples is None or not self.data_panel.qat_enabled():
            return
        if self.runner.busy:
            self._qat_estimate_pending = True  # after the current job
            return
        self._qat_estimate_pending = False
        qat = self.data_panel.qat_config()
        self.start_job(Job(
            "Estimating fine-tuning", tasks.qat_estimate_job,
            (self.loaded, self.loaded.input_shape, samples, qat["qat_epochs"], qat["qat_batch_size"]),
            on_done=self.data_panel.set_qat_estimate, on_failed=self._on_qat_estimate_failed,
        ))

    def _on_qat_estimate_failed(self, exc: BaseException) -> None:
        log.info("Could not estimate fine-tuning: %s", exc)
        self.data_panel.set_qat_estimate(None)

    @Slot()
    def _on_idle_for_qat_estimate(self) -> None:
        if self._qat_estimate_pending:
            QTimer.singleShot(0, self.estimate_qat)

"""The Data panel's settings for when INT8 hurts accuracy: the Auto button's accuracy budget
(issue 13) and fine-tuning (QAT, issue 14).

Mixins of :class:`~quantstudio.gui.data_panel.DataPanel`, split from it by concern; they use
its combo boxes, summary and the ``qat_estimate_requested`` signal.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSignalBlocker, QTimer, Slot
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QSpinBox, QWidget

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.loading import with_article
from quantstudio.gui import glossary
from quantstudio.gui.form_widgets import _combo, _select


class BudgetSettingsMixin:
    """The accuracy budget the Auto button searches to (remembered in the app's settings)."""

    def _make_budget_box(self) -> QGroupBox:
        """The accuracy budget the Auto button searches to: a maximum top-1 drop or a minimum agreement."""
        box = QGroupBox("Auto precision")
        box.setToolTip(glossary.AUTO_HELP)
        form = QFormLayout(box)
        self.budget_combo = _combo(glossary.BUDGET_CHOICES)
        self.budget_combo.setToolTip(glossary.BUDGET_HELP)
        self.budget_spin = QDoubleSpinBox()
        self.budget_spin.setDecimals(2)
        self.budget_spin.setRange(0.0, 100.0)
        self.budget_spin.setToolTip(glossary.BUDGET_HELP)
        self._budget_values = dict(glossary.BUDGET_DEFAULTS)  # metric -> value, each remembered
        self._budget_metric = "drop"  # the metric the spin box shows
        self.budget_user_chosen = False  # the user picked the metric: stop following the data
        form.addRow("Budget:", self.budget_combo)
        form.addRow("Limit:", self.budget_spin)
        self.budget_combo.activated.connect(self._on_budget_metric_chosen)  # the user's pick only
        self.budget_combo.currentIndexChanged.connect(self._on_budget_metric_changed)
        self._show_budget_metric("drop", keep_shown=False)
        return box

    @property
    def budget_metric(self) -> str:
        return self.budget_combo.currentData()

    def budget(self):
        """The core ``Budget`` the Auto button runs with (InputError for an out-of-range value)."""
        from quantstudio.core.auto_precision import Budget

        value = float(self.budget_spin.value())
        return Budget(max_drop=value) if self.budget_metric == "drop" else Budget(min_agreement=value)

    @Slot(int)
    def _on_budget_metric_chosen(self, _row: int) -> None:
        self.budget_user_chosen = True

    @Slot(int)
    def _on_budget_metric_changed(self, _row: int) -> None:
        self._show_budget_metric(self.budget_metric)

    def _show_budget_metric(self, metric: str, keep_shown: bool = True) -> None:
        """Show ``metric``'s value with its unit; ``keep_shown``: remember the value shown for the metric left."""
        if metric not in self._budget_values:
            return
        if keep_shown:
            self._budget_values[self._budget_metric] = float(self.budget_spin.value())
        self._budget_metric = metric
        with QSignalBlocker(self.budget_combo):
            _select(self.budget_combo, metric)
        self.budget_spin.setSuffix(" pt" if metric == "drop" else " %")
        self.budget_spin.setSingleStep(0.5 if metric == "drop" else 0.1)
        self.budget_spin.setValue(self._budget_values[metric])

    def set_budget_metric(self, metric: str, user: bool = False) -> None:
        """Choose the budget's metric ("drop" / "agreement"); ``user``: as if picked by hand (stops following the data)."""
        self._show_budget_metric(metric)
        if user:
            self.budget_user_chosen = True

    def _budget_follow_data(self) -> None:
        """Labeled data: a top-1 drop; unlabeled or random data: agreement — until the user picks one."""
        if self.budget_user_chosen or self.summary is None:
            return
        labeled = bool(self.summary.labeled) and not self.summary.is_random
        self._show_budget_metric("drop" if labeled else "agreement")

    def budget_state(self) -> dict[str, Any]:
        values = dict(self._budget_values)
        values[self.budget_metric] = float(self.budget_spin.value())
        return {"budget_metric": self.budget_metric if self.budget_user_chosen else "auto",
                "budget_max_drop": values["drop"], "budget_min_agreement": values["agreement"]}

    def restore_budget_state(self, state: dict[str, Any]) -> None:
        for key, metric in (("budget_max_drop", "drop"), ("budget_min_agreement", "agreement")):
            value = state.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100:
                self._budget_values[metric] = float(value)
        chosen = state.get("budget_metric")
        if chosen in self._budget_values:
            self.budget_user_chosen = True
            self._show_budget_metric(chosen, keep_shown=False)
        else:
            if chosen == "auto":
                self.budget_user_chosen = False
            self._show_budget_metric(self._budget_metric, keep_shown=False)
            self._budget_follow_data()


class QatSettingsMixin:
    """The "Fine-tune (QAT)" option and its few settings, greyed out with the reason where it cannot run."""

    def _build_qat(self, form: QFormLayout) -> None:
        """The "Fine-tune (QAT)" check box and its few settings (usable while it is ticked)."""
        defaults = QuantConfig()
        self._qat_model: Any = None  # the open LoadedModel (None: no model)
        self.qat_check = QCheckBox(glossary.QAT_LABEL)
        self.qat_check.setToolTip(glossary.QAT_HELP)
        form.addRow("", self.qat_check)
        self.qat_reason_label = QLabel()  # why fine-tuning is not offered, or why a setting will not work
        self.qat_reason_label.setWordWrap(True)
        self.qat_reason_label.setStyleSheet("color: #a05000")
        self.qat_reason_label.setVisible(False)
        form.addRow(self.qat_reason_label)
        # Shown always (what fine-tuning offers is visible), usable while the box is ticked.
        self.qat_box = QWidget()
        self._qat_form = qat_form = QFormLayout(self.qat_box)
        qat_form.setContentsMargins(16, 0, 0, 0)
        self.qat_epochs_spin = QSpinBox()
        self.qat_epochs_spin.setRange(1, 1000)
        self.qat_epochs_spin.setValue(defaults.qat_epochs)
        self.qat_epochs_spin.setToolTip(glossary.QAT_EPOCHS_HELP)
        # 0 shows "Auto": the core picks a rate for fine-tuning (QuantConfig.qat_lr = 0).
        self.qat_lr_spin = QDoubleSpinBox()
        self.qat_lr_spin.setDecimals(6)
        self.qat_lr_spin.setRange(0.0, 1.0)
        self.qat_lr_spin.setSingleStep(0.0001)
        self.qat_lr_spin.setSpecialValueText("Auto")
        self.qat_lr_spin.setValue(defaults.qat_lr)
        self.qat_lr_spin.setToolTip(glossary.QAT_LR_HELP)
        self.qat_batch_spin = QSpinBox()
        self.qat_batch_spin.setRange(1, 4096)
        self.qat_batch_spin.setValue(defaults.qat_batch_size)
        self.qat_batch_spin.setToolTip(glossary.QAT_BATCH_HELP)
        self.qat_signal_combo = _combo(glossary.QAT_SIGNAL_CHOICES, glossary.QAT_SIGNAL_HELP)
        self.qat_signal_combo.setToolTip("\n".join(glossary.QAT_SIGNAL_HELP.values()))
        _select(self.qat_signal_combo, defaults.qat_signal)
        self.qat_estimate_label = QLabel()
        self.qat_estimate_label.setWordWrap(True)
        self.qat_estimate_label.setToolTip("What fine-tuning will take on this computer, estimated before it starts.")
        qat_form.addRow("Epochs:", self.qat_epochs_spin)
        qat_form.addRow("Learning rate:", self.qat_lr_spin)
        qat_form.addRow("Batch size:", self.qat_batch_spin)
        qat_form.addRow("Learn from:", self.qat_signal_combo)
        qat_form.addRow("Estimate:", self.qat_estimate_label)
        form.addRow(self.qat_box)
        self.qat_box.setEnabled(False)
        qat_form.setRowVisible(self.qat_estimate_label, False)
        # Settings change in bursts (typing 10 in a spin box): estimate once they settle.
        self._qat_estimate_timer = QTimer(self)
        self._qat_estimate_timer.setSingleShot(True)
        self._qat_estimate_timer.setInterval(600)
        self._qat_estimate_timer.timeout.connect(self._on_qat_estimate_due)
        self.qat_check.toggled.connect(self._update_qat_availability)
        self.qat_signal_combo.currentIndexChanged.connect(self._update_qat_availability)
        self.mode_combo.currentIndexChanged.connect(self._update_qat_availability)
        self.kind_combo.currentIndexChanged.connect(self._update_qat_availability)
        for spin in (self.qat_epochs_spin, self.qat_batch_spin, self.eval_spin, self.calib_spin):
            spin.valueChanged.connect(self._schedule_qat_estimate)

    def qat_unavailable_reason(self) -> str | None:
        """Why fine-tuning cannot be offered for the open model and settings, or None."""
        model = self._qat_model
        if model is not None and not getattr(model, "is_eager", False):
            return glossary.QAT_NEEDS_TORCH.format(a_kind=with_article(getattr(model, "kind_label", "model")))
        if self.mode_combo.currentData() != "static":
            return glossary.QAT_NEEDS_STATIC
        if self.kind == "random":
            return glossary.QAT_NEEDS_IMAGES
        return None

    def qat_enabled(self) -> bool:
        """Fine-tuning will run: ticked, and possible for this model and these settings."""
        return self.qat_check.isChecked() and self.qat_unavailable_reason() is None

    def qat_config(self) -> dict[str, Any]:
        """The QAT fields of core.engines.base.QuantConfig."""
        return {
            "qat": self.qat_enabled(),
            "qat_epochs": self.qat_epochs_spin.value(),
            "qat_lr": float(self.qat_lr_spin.value()),
            "qat_batch_size": self.qat_batch_spin.value(),
            "qat_signal": self.qat_signal_combo.currentData(),
        }

    def qat_train_samples(self) -> int | None:
        """About how many images fine-tuning has (training and validation split share them), or None."""
        summary = self.summary
        if summary is None or summary.is_random:
            return None
        if getattr(summary, "eval_count", None) is not None:
            return int(summary.count)
        # Calibration images may be trained on; the evaluation images never are.
        n = int(summary.count)
        calib = min(self.calib_spin.value(), n) if self.mode_combo.currentData() == "static" else 0
        return max(n - min(self.eval_spin.value(), n - calib), 0)

    def _qat_state(self) -> dict[str, Any]:
        # What the user ticked is kept even where fine-tuning is not possible now.
        return {**self.qat_config(), "qat": self.qat_check.isChecked()}

    def _restore_qat(self, state: dict[str, Any]) -> None:
        """The QAT widgets from ``state`` (wrong types skipped, as in :meth:`restore_state`)."""
        if isinstance(state.get("qat"), bool):
            with QSignalBlocker(self.qat_check):
                self.qat_check.setChecked(state["qat"])
        for spin, key in ((self.qat_epochs_spin, "qat_epochs"), (self.qat_batch_spin, "qat_batch_size")):
            value = state.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                spin.setValue(max(spin.minimum(), min(spin.maximum(), value)))
        lr = state.get("qat_lr")
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            self.qat_lr_spin.setValue(max(0.0, min(1.0, float(lr))))
        if isinstance(state.get("qat_signal"), str):
            with QSignalBlocker(self.qat_signal_combo):
                _select(self.qat_signal_combo, state["qat_signal"])
        self._update_qat_availability()

    def _set_qat_model(self, model: Any) -> None:
        self._qat_model = model
        self._update_qat_availability()

    @Slot()
    def _update_qat_availability(self) -> None:
        """Grey the option out with the reason shown; its settings are usable while it is ticked."""
        reason = self.qat_unavailable_reason()
        self.qat_check.setEnabled(reason is None)
        self.qat_check.setToolTip(glossary.QAT_HELP + (f"\n\n{reason}" if reason else ""))
        on = reason is None and self.qat_check.isChecked()
        self.qat_box.setEnabled(on)
        self._qat_form.setRowVisible(self.qat_estimate_label, on)
        if reason is None and on and self.qat_signal_combo.currentData() == "labels" \
                and self.summary is not None and not self.summary.labeled:
            reason = glossary.QAT_NEEDS_LABELS
        self.qat_reason_label.setText(reason or "")
        self.qat_reason_label.setVisible(bool(reason) and (on or not self.qat_check.isEnabled()))
        self._schedule_qat_estimate()

    @Slot()
    def _schedule_qat_estimate(self) -> None:
        if not self.qat_enabled():
            self._qat_estimate_timer.stop()
            return
        samples = self.qat_train_samples()
        if samples is None:
            self.qat_estimate_label.setText(glossary.QAT_ESTIMATE_NEEDS_DATA)
            return
        if samples == 0:
            self.qat_estimate_label.setText(glossary.QAT_NO_TRAINING_IMAGES)
            return
        self.qat_estimate_label.setText("estimating…")
        self._qat_estimate_timer.start()

    @Slot()
    def _on_qat_estimate_due(self) -> None:
        if self.qat_enabled() and self._qat_model is not None:
            self.qat_estimate_requested.emit()

    def set_qat_estimate(self, estimate: tuple[float, int] | None) -> None:
        """Show the estimate (seconds, bytes), or None: it could not be made."""
        from quantstudio.gui.style import human_bytes

        if estimate is None:
            self.qat_estimate_label.setText(glossary.QAT_ESTIMATE_UNAVAILABLE)
            return
        seconds, memory = estimate
        self.qat_estimate_label.setText(f"about {_duration(seconds)}, {human_bytes(memory)} of memory")


def _duration(seconds: float) -> str:
    """A rough duration for an estimate: "40 s", "3 min", "1 h 20 min"."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{max(round(seconds / 5) * 5, 5):.0f} s" if seconds >= 10 else f"{max(round(seconds), 1):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"

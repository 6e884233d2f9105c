"""The data & settings panel: what data to use, how to preprocess it, how to quantize.

It holds only widget state; the window reads it through :meth:`DataPanel.run_settings`
when a run starts and saves it through :meth:`state` in projects. Scanning a folder
runs on the worker (the window does it when ``scan_requested`` is emitted).

Signals: ``scan_requested()`` when the data choice changed and needs a (re)scan;
``engine_note(str)`` when the engine had to change for the model (a line for the log);
``qat_estimate_requested()`` when fine-tuning is on and what its cost depends on changed
(the window estimates it on the worker and answers with :meth:`set_qat_estimate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.engines.base import QuantConfig, available_engines
from quantstudio.gui import glossary, style
from quantstudio.gui.settings import SETTINGS
from quantstudio.gui.form_widgets import _combo, _select
from quantstudio.gui.recovery_settings import BudgetSettingsMixin, QatSettingsMixin
from quantstudio.gui.thumbnails import ThumbnailModel

DATA_KINDS = (
    ("folder", "Image folder"),
    ("tensor", "Tensor file (.npy / .npz / .pt)"),
    ("random", style.RANDOM_DATA_LABEL),
)
PRESETS = (("default", "Default (model's size, ImageNet mean/std)"), ("imagenet", "ImageNet (resize 256, crop 224)"), ("custom", "Custom…"))
# The custom fields show core's ImageNet statistics (declared once, in core.data).
IMAGENET_MEAN = SETTINGS.declared["preprocess_mean"].default
IMAGENET_STD = SETTINGS.declared["preprocess_std"].default
# The Auto button's budget: remembered in the settings, not in projects (a project's data settings are a fixed schema).
BUDGET_KEYS = ("budget_metric", "budget_max_drop", "budget_min_agreement")
class DataPanel(BudgetSettingsMixin, QatSettingsMixin, QScrollArea):
    scan_requested = Signal()
    engine_note = Signal(str)
    qat_estimate_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.summary = None  # the last DataSummary
        body = QWidget()
        self.setWidget(body)
        col = QVBoxLayout(body)
        col.setContentsMargins(6, 6, 6, 6)

        # ---------------------------------------------------------------- data
        data_box = QGroupBox("Data")
        form = QFormLayout(data_box)
        self.kind_combo = _combo(DATA_KINDS)
        self.kind_combo.setToolTip(
            "Your own images give meaningful accuracy. Random data only measures speed and size."
        )
        form.addRow("Source:", self.kind_combo)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Choose a folder of images…")
        self.path_edit.setReadOnly(True)
        self.path_edit.textChanged.connect(self.path_edit.setToolTip)  # the whole path; the box shows its end
        self.browse_button = QPushButton("Choose…")
        self.browse_button.clicked.connect(self._on_browse)
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        form.addRow("Location:", row)
        self.summary_label = QLabel("No data chosen yet.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.summary_label)
        self.counts_label = QLabel()
        self.counts_label.setWordWrap(True)
        self.counts_label.setVisible(False)
        form.addRow(self.counts_label)
        self.thumb_model = ThumbnailModel(self)
        self.thumb_view = QListView()
        self.thumb_view.setViewMode(QListView.ViewMode.IconMode)
        self.thumb_view.setIconSize(QSize(48, 48))
        self.thumb_view.setGridSize(QSize(64, 70))
        self.thumb_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.thumb_view.setMovement(QListView.Movement.Static)
        self.thumb_view.setUniformItemSizes(True)
        self.thumb_view.setModel(self.thumb_model)
        self.thumb_view.setMinimumHeight(150)
        # As many columns as fit the dock (Adjust re-flows), never a horizontal scroll bar.
        self.thumb_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.thumb_view.setWrapping(True)
        self.thumb_view.setMinimumWidth(2 * 64 + 8)
        self.thumb_view.setVisible(False)
        self.thumb_view.setToolTip("A few of the images, with their class (sub-folder) name")
        form.addRow(self.thumb_view)
        self.skipped_label = QLabel()
        self.skipped_label.setWordWrap(True)
        self.skipped_label.setStyleSheet("color: #a05000")
        form.addRow(self.skipped_label)
        col.addWidget(data_box)

        # ---------------------------------------------------------------- preprocessing
        prep_box = QGroupBox("Preprocessing")
        prep_box.setToolTip("How images are turned into the numbers the model was trained on. Use what was used in training.")
        pform = QFormLayout(prep_box)
        self.preset_combo = _combo(PRESETS)
        pform.addRow("Preset:", self.preset_combo)
        self.resize_edit = QLineEdit()
        self.resize_edit.setPlaceholderText("model size")
        self.resize_edit.setToolTip("One number scales the shorter side; H,W resizes exactly. Empty: the model's input size.")
        self.crop_edit = QLineEdit()
        self.crop_edit.setPlaceholderText("none")
        self.crop_edit.setToolTip("Centre crop after resizing (one number or H,W). Empty: no crop.")
        self.mean_edit = QLineEdit(IMAGENET_MEAN)
        self.mean_edit.setToolTip("Mean subtracted per channel (0..1 scale)")
        self.std_edit = QLineEdit(IMAGENET_STD)
        self.std_edit.setToolTip("Standard deviation divided per channel (0..1 scale)")
        pform.addRow("Resize:", self.resize_edit)
        pform.addRow("Crop:", self.crop_edit)
        pform.addRow("Mean:", self.mean_edit)
        pform.addRow("Std:", self.std_edit)
        col.addWidget(prep_box)

        # ---------------------------------------------------------------- samples
        samples_box = QGroupBox("Samples")
        sform = QFormLayout(samples_box)
        self.calib_spin = QSpinBox()
        self.calib_spin.setRange(1, 100000)
        self.calib_spin.setToolTip(style.CALIBRATION_HELP)
        self.eval_spin = QSpinBox()
        self.eval_spin.setRange(1, 1000000)
        self.eval_spin.setToolTip("How many images (not used for calibration) measure the accuracy of each variant.")
        sform.addRow("Calibration:", self.calib_spin)
        sform.addRow("Evaluation:", self.eval_spin)
        erow = QHBoxLayout()
        self.eval_path_edit = QLineEdit()
        self.eval_path_edit.setReadOnly(True)
        self.eval_path_edit.setPlaceholderText("held-out images of the data above")
        self.eval_path_edit.setToolTip(
            "Where accuracy is measured. Empty: images of the data above that calibration did not use.\n"
            "Choose another folder (e.g. val/ beside train/) to calibrate on one and evaluate on the other."
        )
        self.eval_browse_button = QPushButton("Choose…")
        self.eval_browse_button.clicked.connect(self._on_browse_eval)
        self.eval_clear_button = QPushButton("Clear")
        self.eval_clear_button.clicked.connect(self._on_clear_eval)
        erow.addWidget(self.eval_path_edit, 1)
        erow.addWidget(self.eval_browse_button)
        erow.addWidget(self.eval_clear_button)
        sform.addRow("Evaluate on:", erow)
        self.split_label = QLabel()
        self.split_label.setWordWrap(True)
        self.split_label.setTextFormat(Qt.TextFormat.RichText)
        self.split_label.setToolTip("The numbers a run will really use, from what the data holds.")
        sform.addRow(self.split_label)
        col.addWidget(samples_box)
        for spin in (self.calib_spin, self.eval_spin):
            spin.valueChanged.connect(self._update_split_label)

        # ---------------------------------------------------------------- quantization
        q_box = QGroupBox("Quantization")
        qform = QFormLayout(q_box)
        # The registered engines, in registry order; each says itself which models it cannot take.
        self._engines = available_engines()
        default_engine = QuantConfig().engine
        self.engine_combo = _combo(((e.name, e.label + (" (recommended)" if e.name == default_engine else ""))
                                    for e in self._engines), style.ENGINE_HELP)
        self.engine_combo.setToolTip("\n".join(style.ENGINE_HELP.values()))
        self.mode_combo = _combo(glossary.MODE_CHOICES, style.MODE_HELP)
        self.mode_combo.setToolTip("\n".join(style.MODE_HELP.values()))
        self.backend_combo = _combo(glossary.BACKEND_CHOICES, style.BACKEND_HELP)
        self.backend_combo.setToolTip("The processor the quantized model will run on.\n" + "\n".join(style.BACKEND_HELP.values()))
        self.calib_combo = _combo(glossary.CALIBRATION_CHOICES, style.CALIBRATION_METHOD_HELP)
        self.calib_combo.setToolTip(style.CALIBRATION_HELP + "\n\n" + "\n".join(style.CALIBRATION_METHOD_HELP.values()))
        self._engine_reasons: dict[str, str] = {}  # engine name → why it cannot quantize the open model
        self.per_channel_check = QCheckBox("Per-channel weights")
        self.per_channel_check.setToolTip(style.PER_CHANNEL_HELP)
        qform.addRow("Engine:", self.engine_combo)
        qform.addRow("Mode:", self.mode_combo)
        qform.addRow("Target CPU:", self.backend_combo)
        qform.addRow("Calibration:", self.calib_combo)
        qform.addRow("", self.per_channel_check)
        self.equalize_check = QCheckBox("Equalize outlier channels")  # "(recommended)" is in the tooltip: the panel must stay narrow
        self.equalize_check.setToolTip(glossary.EQUALIZE_HELP)
        self.equalize_check.setChecked(True)  # the default: see core/equalize.py for the measured reason
        qform.addRow("", self.equalize_check)
        self._build_qat(qform)
        self.runs_spin = QSpinBox()
        self.runs_spin.setRange(1, 10000)
        self.runs_spin.setToolTip("How many timed runs per variant and batch size (more: steadier numbers, slower).")
        self.batches_edit = QLineEdit()
        self.batches_edit.setToolTip("Batch sizes to measure speed at, e.g. 1,8,32")
        qform.addRow("Timed runs:", self.runs_spin)
        qform.addRow("Batch sizes:", self.batches_edit)
        self.sensitivity_check = QCheckBox("Per-layer sensitivity")
        self.sensitivity_check.setToolTip(style.SENSITIVITY_HELP)
        self.memory_check = QCheckBox("Peak memory")
        self.memory_check.setToolTip(style.MEMORY_HELP)
        qform.addRow("Also measure:", self.sensitivity_check)
        qform.addRow("", self.memory_check)
        col.addWidget(q_box)
        col.addWidget(self._make_budget_box())

        help_label = QLabel(
            "<small><b>INT8</b>: 4× smaller, usually faster, may lose a little accuracy. "
            "<b>FP16</b>: 2× smaller, almost lossless. <b>FP32</b>: unchanged.</small>"
        )
        help_label.setWordWrap(True)
        help_label.setToolTip("\n\n".join(style.PRECISION_HELP.values()))
        col.addWidget(help_label)
        col.addStretch(1)

        for combo in (self.kind_combo, self.preset_combo, self.engine_combo, self.mode_combo,
                      self.backend_combo, self.calib_combo):
            combo.currentIndexChanged.connect(self._on_combo_changed)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_changed)
        self.mode_combo.currentIndexChanged.connect(self._update_split_label)
        self.preset_combo.currentIndexChanged.connect(self._on_preset_changed)
        self._base_tips = {c: c.toolTip() for c in (self.kind_combo, self.preset_combo, self.engine_combo,
                                                     self.mode_combo, self.backend_combo, self.calib_combo)}
        self.load_settings()
        self._on_kind_changed()
        self._on_preset_changed()
        self._refresh_tooltips()
        self.summary = None  # the last DataSummary

    def minimumSizeHint(self) -> QSize:
        """Overrides QScrollArea.minimumSizeHint: as wide as the form needs, so the dock
        cannot be made narrower than its content (which would cut combo boxes off)."""
        frame = 2 * self.frameWidth()
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(self.widget().minimumSizeHint().width() + bar + frame, 160)

    @Slot()
    def _on_combo_changed(self) -> None:
        if isinstance(self.sender(), QComboBox):
            self._show_current_in_tooltip(self.sender())

    def _show_current_in_tooltip(self, combo: QComboBox) -> None:
        # A narrow combo elides its text: its tooltip starts with the full current choice.
        base = getattr(self, "_base_tips", {}).get(combo, "")
        reasons = "\n\n".join(self._engine_reason_text(n) for n in self._engine_reasons)
        extra = f"\n\n{reasons}" if combo is self.engine_combo and reasons else ""
        combo.setToolTip(f"<b>{combo.currentText()}</b><br>" + (base + extra).replace("\n", "<br>"))

    # ------------------------------------------------------------------ the model
    def set_model(self, model: Any) -> bool:
        """Offer only the engines that can quantize ``model`` (a core LoadedModel, or None).

        An engine whose ``unsupported_reason`` names one is greyed out, with the reason as
        its tooltip; when it was chosen, the first engine that can is chosen instead and
        ``engine_note`` says so. Returns True when the engine changed.
        """
        self._engine_reasons = {}
        for engine in self._engines:
            # An engine whose optional extra is missing is greyed out before any model is open.
            install = getattr(engine, "install_reason", None)
            reason = install() if callable(install) else None
            if not reason and model is not None:
                reason = engine.unsupported_reason(model)
            if reason:
                self._engine_reasons[engine.name] = reason
        combo_model = self.engine_combo.model()
        for engine in self._engines:
            i = self.engine_combo.findData(engine.name)
            if isinstance(combo_model, QStandardItemModel) and i >= 0:
                item = combo_model.item(i)
                usable = engine.name not in self._engine_reasons
                item.setEnabled(usable)
                item.setToolTip(style.ENGINE_HELP.get(engine.name, engine.label) if usable
                                else self._engine_reason_text(engine.name))
        changed = self._leave_unusable_engine()
        self._show_current_in_tooltip(self.engine_combo)
        self._set_qat_model(model)
        return changed

    def _fallback_engine(self) -> Any:
        return next((e for e in self._engines if e.name not in self._engine_reasons), None)

    def _engine_reason_text(self, name: str) -> str:
        """Why engine ``name`` is greyed out, and which engine quantizes the model instead."""
        reason = self._engine_reasons.get(name, "")
        fallback = self._fallback_engine()
        text = reason[:1].upper() + reason[1:]
        return f"{text}; it is quantized with {fallback.label}." if fallback is not None else f"{text}."

    def _leave_unusable_engine(self) -> bool:
        """Choose the first usable engine when the chosen one cannot take the open model."""
        current = self.engine_combo.currentData()
        fallback = self._fallback_engine()
        if current not in self._engine_reasons or fallback is None:
            return False
        _select(self.engine_combo, fallback.name)
        self.engine_note.emit(f"Engine set to {fallback.label}: {self._engine_reason_text(current)}")
        return True

    # ------------------------------------------------------------------ data choice
    @property
    def kind(self) -> str:
        return self.kind_combo.currentData()

    def data_spec(self) -> str | None:
        """What to give core.data.open_data: a path, "random", or None when nothing is chosen."""
        if self.kind == "random":
            return "random"
        text = self.path_edit.text().strip()
        return text or None

    def eval_data_spec(self) -> str | None:
        """A separate evaluation folder or file, or None (held-out samples of the data)."""
        if self.kind == "random":
            return None
        return self.eval_path_edit.text().strip() or None

    @Slot()
    def _on_browse_eval(self) -> None:
        start = SETTINGS["last_data_dir"] or str(Path.home())
        if self.kind == "tensor":
            path, _ = QFileDialog.getOpenFileName(self, "Evaluation tensor file", start, "Tensor files (*.npy *.npz *.pt *.pth)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Folder of evaluation images (one sub-folder per class)", start)
        if path:
            self.eval_path_edit.setText(path)
            self.scan_requested.emit()

    @Slot()
    def _on_clear_eval(self) -> None:
        if self.eval_path_edit.text():
            self.eval_path_edit.clear()
            self.scan_requested.emit()

    @Slot()
    def _update_split_label(self) -> None:
        """Say how many samples a run will calibrate and evaluate on: never a number it ignores."""
        summary = self.summary
        if summary is None:
            self.split_label.setText("")
            return
        n = summary.count
        calib_asked, eval_asked = self.calib_spin.value(), self.eval_spin.value()
        static = self.mode_combo.currentData() == "static"
        calib = min(calib_asked, n) if static else 0
        eval_count = getattr(summary, "eval_count", None)
        if eval_count is not None:
            evaluate = min(eval_asked, eval_count)
            where = f"of {eval_count} in the evaluation data"
        else:
            left = n - calib
            evaluate = min(eval_asked, left)
            where = f"of the {left} not used for calibration" if static else f"of {n}"
        parts = []
        if static:
            parts.append(f"calibrate on <b>{calib}</b> of {n}")
        parts.append(f"evaluate on <b>{evaluate}</b> {where}")
        text = "A run will " + ", ".join(parts) + "."
        if summary.is_random:
            text = f"A run will use {calib + evaluate} random samples (speed only)."
        elif (static and calib < calib_asked) or evaluate < eval_asked:
            text += " <span style='color:#a05000'>(fewer than asked: the data holds no more)</span>"
        self.split_label.setText(text)

    def set_data(self, kind: str, path: str = "") -> None:
        """Choose data without a file dialog (demo, projects, tests); requests a scan."""
        self.kind_combo.blockSignals(True)
        _select(self.kind_combo, kind)
        self.kind_combo.blockSignals(False)
        self.path_edit.setText(path)
        self._update_kind_widgets()
        self._refresh_tooltips()
        self.scan_requested.emit()

    @Slot()
    def _on_kind_changed(self) -> None:
        self._update_kind_widgets()
        if self.kind == "random" or self.path_edit.text():
            if self.kind == "random":
                self.path_edit.clear()
            self.scan_requested.emit()

    def _update_kind_widgets(self) -> None:
        random = self.kind == "random"
        self.path_edit.setEnabled(not random)
        self.browse_button.setEnabled(not random)
        for w in (self.eval_path_edit, self.eval_browse_button, self.eval_clear_button):
            w.setEnabled(not random)
        self.path_edit.setPlaceholderText(
            {"folder": "Choose a folder of images…", "tensor": "Choose a .npy/.npz/.pt file…"}.get(self.kind, "")
        )

    @Slot()
    def _on_browse(self) -> None:
        start = SETTINGS["last_data_dir"] or str(Path.home())
        if self.kind == "folder":
            path = QFileDialog.getExistingDirectory(self, "Folder of images (one sub-folder per class, or flat)", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Tensor file", start, "Tensor files (*.npy *.npz *.pt *.pth)")
        if path:
            SETTINGS["last_data_dir"] = str(Path(path).parent if Path(path).is_file() else path)
            self.path_edit.setText(path)
            self.scan_requested.emit()

    def set_summary(self, summary) -> None:
        """Show what a scan found (a tasks.DataSummary), or None to clear."""
        self.summary = summary
        self._update_qat_availability()
        self.skipped_label.clear()
        self.counts_label.clear()
        self.counts_label.setVisible(False)
        if summary is None:
            self.summary_label.setText("No data chosen yet.")
            self.thumb_model.set_items([])
            self.thumb_view.setVisible(False)
            self._update_split_label()
            return
        from html import escape  # paths and messages are shown as rich text

        lines = []
        if summary.is_random:
            lines.append(f"<b style='color:#a05000'>{style.RANDOM_DATA_LABEL}</b>")
            # The description repeats the warning in brackets: say only how much data.
            lines.append(f"<b>{summary.description.split(' (')[0]}</b>")
        else:
            lines.append(f"<b>{escape(summary.description)}</b>")
        if summary.class_counts:
            shown = ", ".join(f"{name}:\u00a0{n}" for name, n in summary.class_counts[:20])
            more = f" … (+{len(summary.class_counts) - 20} classes)" if len(summary.class_counts) > 20 else ""
            self.counts_label.setText(f"Per class — {shown}{more}")
            self.counts_label.setToolTip("\n".join(f"{name}: {n} images" for name, n in summary.class_counts))
            self.counts_label.setVisible(True)
        steps = getattr(summary, "steps", None)
        if steps and not summary.is_random:
            lines.append(f"<span style='color:#444'>Preprocessing: {escape(', '.join(steps))}</span>")
        for w in summary.warnings:
            if not (summary.is_random and "random" in w):
                lines.append(f"<span style='color:#a02020'>⚠ {escape(w)}</span>")
        for n in summary.notes:
            lines.append(f"<span style='color:#666'>{escape(n)}</span>")
        self.summary_label.setText("<br>".join(lines))
        self._update_split_label()
        self.thumb_model.set_items(
            [(path, label, arr, f"{label}\n{path}" if path else label) for path, label, arr in summary.thumbnails]
        )
        self.thumb_view.setVisible(bool(summary.thumbnails))
        self._budget_follow_data()

    def set_error(self, message: str) -> None:
        self.summary = None
        self._update_qat_availability()
        self._update_split_label()
        from html import escape

        self.summary_label.setText(f"<span style='color:#a02020'>{escape(message)}</span>")
        self.counts_label.setVisible(False)
        self.thumb_model.set_items([])
        self.thumb_view.setVisible(False)

    def set_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """Files a run could not read (path, reason)."""
        if not skipped:
            self.skipped_label.clear()
            return
        lines = [f"{len(skipped)} files skipped (unreadable):"]
        lines += [f"  {Path(p).name}: {r}" for p, r in skipped[:5]]
        if len(skipped) > 5:
            lines.append(f"  … and {len(skipped) - 5} more")
        self.skipped_label.setText("\n".join(lines))
        self.skipped_label.setToolTip("\n".join(f"{p}: {r}" for p, r in skipped[:200]))

    # ------------------------------------------------------------------ preprocessing
    @Slot()
    def _on_preset_changed(self) -> None:
        preset = self.preset_combo.currentData()
        custom = preset == "custom"
        for w in (self.resize_edit, self.crop_edit, self.mean_edit, self.std_edit):
            w.setEnabled(custom)
        if preset == "default":
            self.resize_edit.clear()
            self.crop_edit.clear()
        elif preset == "imagenet":
            self.resize_edit.setText("256")
            self.crop_edit.setText("224")
        if not custom:
            self.mean_edit.setText(IMAGENET_MEAN)
            self.std_edit.setText(IMAGENET_STD)

    def preprocessing_dict(self) -> dict[str, Any]:
        """Settings for core.data.Preprocessing.from_dict (validated there)."""

        def size(text: str):
            text = text.strip()
            if not text:
                return None
            parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
            return parts[0] if len(parts) == 1 else parts

        def floats(text: str):
            return [float(p) for p in text.split(",") if p.strip()]

        return {
            "resize": size(self.resize_edit.text()),
            "crop": size(self.crop_edit.text()),
            "mean": floats(self.mean_edit.text()),
            "std": floats(self.std_edit.text()),
        }

    # ------------------------------------------------------------------ run settings
    def quant_config(self) -> dict[str, Any]:
        """Fields of core.engines.base.QuantConfig."""
        return {
            "engine": self.engine_combo.currentData(),
            "mode": self.mode_combo.currentData(),
            "backend": self.backend_combo.currentData(),
            "calibration": self.calib_combo.currentData(),
            "per_channel": self.per_channel_check.isChecked(),
            "equalize": self.equalize_check.isChecked(),
            "calib_samples": self.calib_spin.value(),
            **self.qat_config(),
        }

    def benchmark_batches(self) -> list[int]:
        try:
            values = sorted({int(p) for p in self.batches_edit.text().split(",") if p.strip()})
        except ValueError:
            values = []
        return [v for v in values if v > 0] or [1]

    def state(self) -> dict[str, Any]:
        """Everything the panel holds, for projects."""
        return {
            "data_kind": self.kind,
            "data_path": self.path_edit.text(),
            "eval_data_path": self.eval_path_edit.text(),
            "preprocess_preset": self.preset_combo.currentData(),
            "preprocess_resize": self.resize_edit.text(),
            "preprocess_crop": self.crop_edit.text(),
            "preprocess_mean": self.mean_edit.text(),
            "preprocess_std": self.std_edit.text(),
            "calib_samples": self.calib_spin.value(),
            "eval_samples": self.eval_spin.value(),
            "engine": self.engine_combo.currentData(),
            "backend": self.backend_combo.currentData(),
            "mode": self.mode_combo.currentData(),
            "calibration": self.calib_combo.currentData(),
            "per_channel": self.per_channel_check.isChecked(),
            "equalize": self.equalize_check.isChecked(),
            "benchmark_runs": self.runs_spin.value(),
            "benchmark_batches": self.batches_edit.text(),
            "sensitivity": self.sensitivity_check.isChecked(),
            "measure_memory": self.memory_check.isChecked(),
            **self._qat_state(),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Set the widgets from ``state`` (missing keys keep their value); no scan.

        Values of the wrong type (a hand-edited project, a variant's stored settings) are
        skipped, and the panel's signals are unblocked however this ends.
        """
        from PySide6.QtCore import QSignalBlocker  # a context manager: unblocks on any exit

        if not isinstance(state, dict):
            return
        with QSignalBlocker(self):
            for combo, key in (
                (self.engine_combo, "engine"),
                (self.backend_combo, "backend"),
                (self.mode_combo, "mode"),
                (self.calib_combo, "calibration"),
            ):
                if isinstance(state.get(key), str):
                    _select(combo, state[key])
            if isinstance(state.get("preprocess_preset"), str):
                with QSignalBlocker(self.preset_combo):
                    _select(self.preset_combo, state["preprocess_preset"])
            for edit, key in (
                (self.resize_edit, "preprocess_resize"),
                (self.crop_edit, "preprocess_crop"),
                (self.mean_edit, "preprocess_mean"),
                (self.std_edit, "preprocess_std"),
                (self.batches_edit, "benchmark_batches"),
            ):
                if isinstance(state.get(key), (str, int, float)) and not isinstance(state.get(key), bool):
                    edit.setText(str(state[key]))
            for spin, key in ((self.calib_spin, "calib_samples"), (self.eval_spin, "eval_samples"), (self.runs_spin, "benchmark_runs")):
                value = state.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    spin.setValue(max(spin.minimum(), min(spin.maximum(), value)))
            for check, key in ((self.per_channel_check, "per_channel"), (self.equalize_check, "equalize"),
                               (self.sensitivity_check, "sensitivity"),
                               (self.memory_check, "measure_memory")):
                if isinstance(state.get(key), bool):
                    check.setChecked(state[key])
            self._restore_qat(state)
            custom = self.preset_combo.currentData() == "custom"
            for w in (self.resize_edit, self.crop_edit, self.mean_edit, self.std_edit):
                w.setEnabled(custom)
            if isinstance(state.get("data_kind"), str):
                with QSignalBlocker(self.kind_combo):
                    _select(self.kind_combo, state["data_kind"])
            if isinstance(state.get("data_path"), str):
                self.path_edit.setText(state["data_path"])
            if isinstance(state.get("eval_data_path"), str):
                self.eval_path_edit.setText(state["eval_data_path"])
            self._update_kind_widgets()
        self._leave_unusable_engine()  # a saved choice the open model cannot use
        self._refresh_tooltips()

    def _refresh_tooltips(self) -> None:
        for combo in getattr(self, "_base_tips", {}):
            self._show_current_in_tooltip(combo)

    def load_settings(self) -> None:
        self.restore_state({key: SETTINGS[key] for key in self._keys()})
        self.restore_budget_state({key: SETTINGS[key] for key in BUDGET_KEYS})

    def save_settings(self) -> None:
        state = self.state()
        for key in self._keys():
            SETTINGS[key] = state[key]
        for key, value in self.budget_state().items():
            SETTINGS[key] = value

    def _keys(self) -> tuple[str, ...]:
        """The settings this panel keeps: the keys of :meth:`state`, so they are listed once."""
        return tuple(self.state())

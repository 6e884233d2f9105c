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

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
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
COMBO_MIN_CHARS = 14  # combo boxes shrink to this and elide longer items (full text in the popup)


def _combo(items, tips: dict[str, str] | None = None) -> QComboBox:
    c = QComboBox()
    for value, label in items:
        c.addItem(label, value)
        if tips and value in tips:
            c.setItemData(c.count() - 1, tips[value], Qt.ItemDataRole.ToolTipRole)
    # Sized by its longest item the panel would be wider than its dock and be cut off.
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(COMBO_MIN_CHARS)
    c.view().setMinimumWidth(c.view().sizeHintForColumn(0) + 24)
    return c


def _select(combo: QComboBox, value: Any) -> None:
    i = combo.findData(value)
    if i >= 0:
        combo.setCurrentIndex(i)


class DataPanel(QScrollArea):
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

    # ------------------------------------------------------------------ auto precision budget (issue 13)
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
        from PySide6.QtCore import QSignalBlocker

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
    # ------------------------------------------------------------------ fine-tuning (QAT, issue 14)
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
            kind = getattr(model, "kind_label", "model")
            return glossary.QAT_NEEDS_TORCH.format(n="n" if kind[:1].lower() in "aeiou" else "", kind=kind)
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
        return {
            "qat": self.qat_check.isChecked(),  # what the user ticked (kept where it is not possible)
            "qat_epochs": self.qat_epochs_spin.value(),
            "qat_lr": float(self.qat_lr_spin.value()),
            "qat_batch_size": self.qat_batch_spin.value(),
            "qat_signal": self.qat_signal_combo.currentData(),
        }

    def _restore_qat(self, state: dict[str, Any]) -> None:
        """The QAT widgets from ``state`` (wrong types skipped, as in :meth:`restore_state`)."""
        from PySide6.QtCore import QSignalBlocker

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

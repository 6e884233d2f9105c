"""Every run kept as a named variant: a table model, and a panel to compare, re-apply, re-run, delete.

Signals of :class:`VariantsPanel`: ``apply_plan_requested(int)``, ``rerun_requested(int)``,
``variants_changed()``.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.engines.base import available_engines
from quantstudio.core.errors import InputError
from quantstudio.core.plan import Precision, PrecisionPlan
from quantstudio.gui.style import human_bytes
from quantstudio.gui.tasks import RunOutcome

COLUMNS = ("Variant", "Engine / mode", "Calibration", "Top-1", "n eval", "Agreement", "Latency (ms)", "Speed-up",
           "Size", "Data")
ENGINE_SHORT = {e.name: e.short_label for e in available_engines()}
MODE_SHORT = {"static": "INT8", "dynamic": "dynamic INT8", "fp16": "FP16"}


def settings_label(config: dict[str, Any]) -> str:
    """What sets a run apart, in a few words: "ORT INT8 · entropy · per-tensor".

    Calibration only where it is used (static INT8); per-channel weights, x86 and plain
    activations are the defaults and are not repeated.
    """
    engine = ENGINE_SHORT.get(str(config.get("engine")), str(config.get("engine", "?")))
    mode = str(config.get("mode", "static"))
    parts = [f"{engine} {MODE_SHORT.get(mode, mode)}"]
    if mode == "static":
        parts.append(str(config.get("calibration", "minmax")))
        if config.get("symmetric_activations"):
            parts.append("symmetric")
    if mode == "static" and config.get("equalize") is False:
        parts.append("no equalize")
    if mode != "fp16" and config.get("per_channel") is False:
        parts.append("per-tensor")
    if config.get("backend") == "qnnpack":
        parts.append("ARM")
    if config.get("qat"):
        parts.append(f"QAT {config.get('qat_epochs', 2)} ep")
    return " · ".join(parts)


def training_text(run: RunOutcome) -> str:
    """How a fine-tuned variant was trained, in one line ("" when it was not)."""
    t = run.training or {}
    if not t:
        return ""
    s = t.get("settings") or {}
    signal = {"labels": "labels", "distill": "distillation"}.get(str(s.get("signal")), str(s.get("signal", "?")))
    lr = s.get("lr")
    parts = [f"Fine-tuned (QAT): {s.get('epochs', '?')} epochs, learning rate {lr:.2g}" if isinstance(lr, (int, float))
             else f"Fine-tuned (QAT): {s.get('epochs', '?')} epochs",
             f"batch {s.get('batch_size', '?')}", f"from {signal}",
             f"{s.get('train_samples', '?')} training / {s.get('val_samples', '?')} validation images"]
    line = ", ".join(parts)
    metric = {"top1": "top-1", "agreement": "agreement"}.get(str(t.get("metric")), str(t.get("metric", "")))
    best = next((h for h in t.get("history") or [] if h.get("epoch") == t.get("best_epoch")), None)
    if best is not None and isinstance(t.get("ptq_val_metric"), (int, float)):
        line += (f"; validation {metric} {float(t['ptq_val_metric']):.1f} % (plain INT8) → "
                 f"{float(best['val_metric']):.1f} % (epoch {t.get('best_epoch')} kept)")
    if t.get("cancelled"):
        line += "; stopped by the user"
    elif t.get("stopped_early"):
        line += "; stopped early"
    return line


def variant_name(number: int, config: dict[str, Any], counts: dict[Precision, int]) -> str:
    """A run's name: its number, what sets it apart, and its plan ("#3 ORT INT8 · entropy (52 INT8, 1 FP32)")."""
    plan = [f"{counts[p]} {p.value.upper()}" for p in (Precision.INT8, Precision.FP16, Precision.FP32) if counts.get(p)]
    return f"#{number} {settings_label(config)} ({', '.join(plan) or 'no layers'})"


def export_stem(model_stem: str, run: RunOutcome) -> str:
    """A file name (no extension) that tells variants apart: "resnet18_ort_int8_entropy_3"."""
    import re

    label = settings_label(run.config).lower().replace(" · ", "_").replace(" ", "_")
    number = re.match(r"#(\d+)", run.name)
    return re.sub(r"[^a-z0-9_.-]+", "", f"{model_stem}_{label}" + (f"_{number.group(1)}" if number else ""))


def quantized_metrics(run: RunOutcome) -> dict[str, Any]:
    return run.metrics.get(run.quantized) or {}


def reference_metrics(run: RunOutcome) -> dict[str, Any]:
    return run.metrics.get(run.reference) or {}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.2f}%"


def speedup(run: RunOutcome) -> float | None:
    """Against the FP32 model in the same runtime when the run timed it (a fair comparison)."""
    return run.speedup


class VariantTableModel(QAbstractTableModel):
    """Rows are runs (RunOutcome), newest last. The name column is editable (rename)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.runs: list[RunOutcome] = []

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.runs)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        f = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == 0:
            f |= Qt.ItemFlag.ItemIsEditable
        return f

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.runs):
            return None
        run = self.runs[index.row()]
        q = quantized_metrics(run)
        col = index.column()
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            if col == 0:
                return run.name
            key = COLUMNS[col]
            if key == "Engine / mode":
                return f"{run.config.get('engine', '?')} / {run.config.get('mode', '?')}"
            if key == "Calibration":
                return calibration_text(run.config)
            if key == "Top-1":
                return _pct(q.get("top1"))
            if key == "n eval":
                return str(q["n"]) if q.get("n") else "—"
            if key == "Agreement":
                return _pct(q.get("agreement"))
            if key == "Latency (ms)":
                v = q.get("latency_ms")
                return "—" if v is None else f"{float(v):.2f}" + (" ⚠" if run.timing_warnings else "")
            if key == "Speed-up":
                s = speedup(run)
                return "—" if s is None else f"{s:.2f}×" + (" ⚠" if run.timing_warnings else "")
            if key == "Size":
                return human_bytes(q.get("size_bytes")) if q.get("size_bytes") else "—"
            if key == "Data":
                return run.data
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [run.name, run.data]
            if run.evaluation_data:
                lines.append(f"accuracy on {run.evaluation_data}")
            if run.training:
                lines.append(training_text(run))
            lines += [f"⚠ {w}" for w in run.warnings[:5]]
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole and COLUMNS[col] == "Data" and run.is_random:
            return QColor(160, 80, 0)
        if role == Qt.ItemDataRole.ForegroundRole and COLUMNS[col] in ("Latency (ms)", "Speed-up") and run.timing_warnings:
            return QColor(160, 80, 0)
        return None

    def setData(self, index: QModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """Overrides QAbstractTableModel.setData: renames a variant."""
        if not index.isValid() or index.column() != 0 or role != Qt.ItemDataRole.EditRole:
            return False
        name = str(value).strip()
        if not name or name in {r.name for r in self.runs if r is not self.runs[index.row()]}:
            return False
        self.runs[index.row()].name = name
        self.dataChanged.emit(index, index)
        return True

    def add(self, run: RunOutcome) -> int:
        existing = {r.name for r in self.runs}
        base, n = run.name, 2
        while run.name in existing:
            run.name = f"{base} ({n})"
            n += 1
        row = len(self.runs)
        self.beginInsertRows(QModelIndex(), row, row)
        self.runs.append(run)
        self.endInsertRows()
        return row

    def remove(self, row: int) -> None:
        if 0 <= row < len(self.runs):
            self.beginRemoveRows(QModelIndex(), row, row)
            del self.runs[row]
            self.endRemoveRows()

    def set_runs(self, runs: list[RunOutcome]) -> None:
        self.beginResetModel()
        self.runs = list(runs)
        self.endResetModel()

    def names(self) -> list[str]:
        return [r.name for r in self.runs]


def layer_counts(run: RunOutcome, tree: Any) -> dict[Precision, int] | None:
    """INT8 / FP16 / FP32 layers of ``run``, counted like the summary under the layer tree.

    The run's plan resolved on the model's layer tree (leaf layers, INT8 falling back to
    FP32 where a layer cannot be quantized): the same count as the tree's summary and the
    variant's name. ``run.layer_precisions`` is not counted: it is keyed by what the engine
    built (ONNX Runtime also lists graph ops that are no layer of the tree, such as
    residual adds, and drops layers the export removed, such as Dropout).
    """
    if tree is None or not run.plan:
        return None
    try:
        return PrecisionPlan.from_dict(run.plan).counts(tree)
    except (InputError, KeyError, TypeError, ValueError):
        return None


def _count_text(counts: dict[Precision, int] | None) -> str:
    if counts is None:
        return "—"
    return " / ".join(str(counts[p]) for p in (Precision.INT8, Precision.FP16, Precision.FP32))


def calibration_text(config: dict[str, Any]) -> str:
    """The calibration method where one is used (static INT8), else why there is none."""
    mode = config.get("mode", "static")
    if mode == "dynamic":
        return "— (at run time)"
    if mode == "fp16":
        return "— (none needed)"
    return str(config.get("calibration", "minmax"))


def _settings_text(run: RunOutcome) -> str:
    return settings_label(run.config)


# (label, value of a run, kind, which way is better: +1 higher, -1 lower, 0 neither)
COMPARE_ROWS = (
    ("top-1", lambda r, t: quantized_metrics(r).get("top1"), "pct", +1),
    ("top-5", lambda r, t: quantized_metrics(r).get("top5"), "pct", +1),
    ("F1", lambda r, t: quantized_metrics(r).get("f1"), "pct", +1),
    ("agreement", lambda r, t: quantized_metrics(r).get("agreement"), "pct", +1),
    ("output SQNR", lambda r, t: quantized_metrics(r).get("sqnr_db"), "db", +1),
    ("latency (batch 1)", lambda r, t: quantized_metrics(r).get("latency_ms"), "ms", -1),
    ("speed-up", lambda r, t: speedup(r), "x", +1),
    ("file size", lambda r, t: quantized_metrics(r).get("size_bytes"), "bytes", -1),
    ("settings", lambda r, t: _settings_text(r), "text", 0),
    ("layers INT8/FP16/FP32", lambda r, t: _count_text(layer_counts(r, t)), "text", 0),
)
COMPARE_TIPS = {
    "agreement": "How often the quantized model predicts what the original model predicts",
    "output SQNR": "Signal-to-quantization-noise ratio of the model's output (higher is better)",
    "latency (batch 1)": "Median time of one batch of 1 on this computer",
    "speed-up": "Against the original FP32 model, timed in the same runtime when the run did so",
    "settings": "Engine, mode, calibration method and the options that differ from the defaults",
    "layers INT8/FP16/FP32": "Leaf layers of the model in each precision, counted like the summary under the layer tree",
}
UNITS = {"ms": " ms", "db": " dB", "x": "×"}
MINUS = "\u2212"


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * float(value):.2f}%"
    if kind in UNITS:
        v = float(value)
        return "∞" if math.isinf(v) else f"{v:.2f}{UNITS[kind]}"
    if kind == "bytes":
        return human_bytes(value)
    return str(value)


def _signed(number: float, text: str) -> str:
    """``text`` (the magnitude) with an explicit sign: +1.20 ms, −2.5 KB, ±0.00 pt."""
    if not any(ch in "123456789" for ch in text):  # rounds to zero
        return "±" + text
    return ("+" if number > 0 else MINUS) + text


def format_delta(a: Any, b: Any, kind: str) -> str:
    """B − A with an explicit sign, in the unit the two values are shown in ("" when not numeric)."""
    va, vb = _finite(a), _finite(b)
    if kind == "text" or a is None or b is None:
        return ""
    if va is None or vb is None:  # an infinite SQNR: no meaningful difference
        return "—"
    d = vb - va
    if kind == "pct":
        return _signed(d, f"{abs(100 * d):.2f} pt")
    if kind in UNITS:
        return _signed(d, f"{abs(d):.2f}{UNITS[kind]}")
    if kind == "bytes":
        return _signed(d, human_bytes(abs(d)))
    return ""


class ElidedComboBox(QComboBox):
    """A combo box that elides its current text in the middle ("#1 onnxr…(136 INT8)"),
    where the distinguishing number and the counts stay visible; the popup and the
    tooltip show the full names."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.currentIndexChanged.connect(self._update_tooltip)

    @Slot()
    def _update_tooltip(self) -> None:
        self.setToolTip(self.currentText())

    def set_names(self, names: list[str], current: int) -> None:
        self.blockSignals(True)
        self.clear()
        for i, name in enumerate(names):
            self.addItem(name)
            self.setItemData(i, name, Qt.ItemDataRole.ToolTipRole)
        self.setCurrentIndex(current)
        self.blockSignals(False)
        self._update_tooltip()
        # The popup is as wide as the longest name, not as the (narrower) box.
        width = max((self.fontMetrics().horizontalAdvance(n) for n in names), default=0) + 40
        self.view().setMinimumWidth(width)

    def paintEvent(self, event) -> None:
        """Overrides QComboBox.paintEvent: draw the current text elided in the middle."""
        painter = QStylePainter(self)
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, opt)
        field = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                            QStyle.SubControl.SC_ComboBoxEditField, self)
        opt.currentText = self.fontMetrics().elidedText(opt.currentText, Qt.TextElideMode.ElideMiddle, field.width())
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, opt)


def _column(top: QHBoxLayout, body: QWidget) -> QWidget:
    """A row of controls above a widget that takes the rest of the height."""
    column = QWidget()
    layout = QVBoxLayout(column)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    layout.addLayout(top)
    layout.addWidget(body, 1)
    return column


class VariantsPanel(QWidget):
    apply_plan_requested = Signal(int)
    rerun_requested = Signal(int)
    variants_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = None  # the model's LayerNode tree: layer counts are resolved on it
        self.rerun_allowed = True  # False while a job runs or no model is open
        self.model = VariantTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self._compact_rows(self.table)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)

        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        self.apply_button = QPushButton("Re-apply plan to tree")
        self.apply_button.setToolTip("Set every layer's precision as in this variant (Ctrl+Z undoes it)")
        self.rerun_button = QPushButton("Re-run")
        self.rerun_button.setToolTip(
            "Apply this variant's plan (undoable) and quantization settings, then quantize again "
            "with the data chosen in the Data panel: a variant from a reopened project can then be exported"
        )
        self.delete_button = QPushButton("Delete")
        self.apply_button.clicked.connect(self._on_apply)
        self.rerun_button.clicked.connect(self._on_rerun)
        self.delete_button.clicked.connect(self._on_delete)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.rerun_button)
        buttons.addWidget(self.delete_button)
        buttons.addStretch(1)
        left = _column(buttons, self.table)

        pick = QHBoxLayout()
        pick.setContentsMargins(0, 0, 0, 0)
        self.a_combo = ElidedComboBox()
        self.b_combo = ElidedComboBox()
        self.a_combo.currentIndexChanged.connect(self.update_comparison)
        self.b_combo.currentIndexChanged.connect(self.update_comparison)
        pick.addWidget(QLabel("A:"))
        pick.addWidget(self.a_combo, 1)
        pick.addWidget(QLabel("B:"))
        pick.addWidget(self.b_combo, 1)
        self.compare = QTableWidget(0, 4)
        self.compare.setHorizontalHeaderLabels(["", "A", "B", "B − A"])
        self.compare.horizontalHeaderItem(3).setToolTip(
            "B minus A, in the unit of the values (percentages: percentage points, pt). Green: B is better."
        )
        self.compare.verticalHeader().setVisible(False)
        self._compact_rows(self.compare)
        self._size_compare_columns()
        self.compare.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        right = _column(pick, self.compare)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([500, 500])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.splitter, 1)
        self.model.rowsInserted.connect(self._on_rows_inserted)
        # Through lambdas: these signals pass a QModelIndex first, which would land in
        # ``newest`` (always true) and reset the A/B choice on every rename or delete.
        self.model.rowsRemoved.connect(lambda *_: self._refresh_combos())
        self.model.modelReset.connect(lambda *_: self._refresh_combos())
        self.model.dataChanged.connect(lambda *_: self._refresh_combos())
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self._update_buttons()

    def _size_compare_columns(self) -> None:
        # Labels and B − A as wide as their text; A and B share the rest (long text elides,
        # its tooltip has it whole): no horizontal scrolling to reach B − A.
        header = self.compare.horizontalHeader()
        header.setStretchLastSection(False)
        for col, mode in enumerate((QHeaderView.ResizeMode.ResizeToContents, QHeaderView.ResizeMode.Stretch,
                                    QHeaderView.ResizeMode.Stretch, QHeaderView.ResizeMode.ResizeToContents)):
            header.setSectionResizeMode(col, mode)

    @staticmethod
    def _compact_rows(table: QTableView) -> None:
        # One line of text per row: the comparison's 10 rows fit a dock of ~280 px.
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 6)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)

    def set_tree(self, tree: Any) -> None:
        """The model's layer tree: the comparison counts the layers of a variant's plan on it."""
        self.tree = tree
        self.update_comparison()

    def set_rerun_allowed(self, allowed: bool) -> None:
        self.rerun_allowed = allowed
        self._update_buttons()

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectionModel().selectedRows()})

    def _update_buttons(self) -> None:
        rows = self.selected_rows()
        self.apply_button.setEnabled(len(rows) == 1)
        self.rerun_button.setEnabled(len(rows) == 1 and self.rerun_allowed)
        self.delete_button.setEnabled(bool(rows))

    @Slot()
    def _on_selection(self) -> None:
        rows = self.selected_rows()
        self._update_buttons()
        if len(rows) == 2:
            self.a_combo.setCurrentIndex(rows[0])
            self.b_combo.setCurrentIndex(rows[1])

    @Slot()
    def _on_apply(self) -> None:
        rows = self.selected_rows()
        if len(rows) == 1:
            self.apply_plan_requested.emit(rows[0])

    @Slot()
    def _on_rerun(self) -> None:
        rows = self.selected_rows()
        if len(rows) == 1:
            self.rerun_requested.emit(rows[0])

    @Slot()
    def _on_delete(self) -> None:
        for row in reversed(self.selected_rows()):
            self.model.remove(row)
        self.variants_changed.emit()

    @Slot()
    def _on_rows_inserted(self) -> None:
        self._refresh_combos(newest=True)

    @Slot()
    def _refresh_combos(self, newest: bool = False) -> None:
        """Fill A and B with the variants' names, keeping their choice; after a new run,
        B is the new run and A the one before (what was just changed is compared)."""
        names = self.model.names()
        for combo, default in ((self.a_combo, max(len(names) - 2, 0)), (self.b_combo, len(names) - 1)):
            current = combo.currentText()
            keep = current in names and not newest
            combo.set_names(names, names.index(current) if keep else default)
        self._update_buttons()
        self.update_comparison()

    def comparison(self) -> list[tuple[str, str, str, str]]:
        """The comparison as shown: (label, A, B, B − A) per row."""
        return [tuple(self.compare.item(i, j).text() for j in range(4)) for i in range(self.compare.rowCount())]

    @Slot()
    def update_comparison(self) -> None:
        runs = self.model.runs
        a = runs[self.a_combo.currentIndex()] if 0 <= self.a_combo.currentIndex() < len(runs) else None
        b = runs[self.b_combo.currentIndex()] if 0 <= self.b_combo.currentIndex() < len(runs) else None
        # With ResizeToContents the header re-measures its columns, and the window re-lays
        # out its docks, after every single setItem: 48 times per refresh, 30-40 ms in the
        # main window. Fill at fixed widths, then measure once.
        header = self.compare.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        try:
            self.compare.setRowCount(len(COMPARE_ROWS))
            for i, (label, get, kind, better) in enumerate(COMPARE_ROWS):
                va = get(a, self.tree) if a else None
                vb = get(b, self.tree) if b else None
                delta = format_delta(va, vb, kind)
                for j, text in enumerate((label, _fmt(va, kind), _fmt(vb, kind), delta)):
                    item = QTableWidgetItem(text)
                    if j and kind != "text":
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    if j == 0 and label in COMPARE_TIPS:
                        item.setToolTip(COMPARE_TIPS[label])
                    elif j in (1, 2):
                        item.setToolTip(text)
                    if j == 3 and better and delta[:1] in ("+", MINUS):
                        good = (delta[0] == "+") == (better > 0)
                        item.setForeground(QColor(40, 130, 60) if good else QColor(170, 40, 40))
                    self.compare.setItem(i, j, item)
        finally:
            self._size_compare_columns()

"""Every run kept as a named variant: a table model, and a panel to compare, re-apply, delete.

Signals of :class:`VariantsPanel`: ``apply_plan_requested(int)``, ``variants_changed()``.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from quantstudio.gui.style import human_bytes
from quantstudio.gui.tasks import RunOutcome

COLUMNS = ("Variant", "Engine / mode", "Top-1", "Agreement", "Latency (ms)", "Speed-up", "Size", "Data")


def quantized_metrics(run: RunOutcome) -> dict[str, Any]:
    return run.metrics.get(run.quantized) or {}


def reference_metrics(run: RunOutcome) -> dict[str, Any]:
    return run.metrics.get(run.reference) or {}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.2f}%"


def speedup(run: RunOutcome) -> float | None:
    """Against the FP32 model in the same runtime when the run timed it (a fair comparison)."""
    base = run.metrics.get("original (onnxruntime)") or reference_metrics(run)
    a, b = base.get("latency_ms"), quantized_metrics(run).get("latency_ms")
    if a and b:
        return float(a) / float(b)
    return None


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
            if col == 1:
                return f"{run.config.get('engine', '?')} / {run.config.get('mode', '?')}"
            if col == 2:
                return _pct(q.get("top1"))
            if col == 3:
                return _pct(q.get("agreement"))
            if col == 4:
                v = q.get("latency_ms")
                return "—" if v is None else f"{float(v):.2f}"
            if col == 5:
                s = speedup(run)
                return "—" if s is None else f"{s:.2f}×"
            if col == 6:
                return human_bytes(q.get("size_bytes")) if q.get("size_bytes") else "—"
            if col == 7:
                return run.data
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [run.name, run.data]
            lines += [f"⚠ {w}" for w in run.warnings[:5]]
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole and col == 7 and run.is_random:
            from PySide6.QtGui import QColor

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


COMPARE_ROWS = (
    ("top-1", lambda r: quantized_metrics(r).get("top1"), "pct"),
    ("top-5", lambda r: quantized_metrics(r).get("top5"), "pct"),
    ("F1", lambda r: quantized_metrics(r).get("f1"), "pct"),
    ("agreement with original", lambda r: quantized_metrics(r).get("agreement"), "pct"),
    ("output SQNR (dB)", lambda r: quantized_metrics(r).get("sqnr_db"), "num"),
    ("latency, batch 1 (ms)", lambda r: quantized_metrics(r).get("latency_ms"), "num"),
    ("speed-up vs original", speedup, "x"),
    ("file size", lambda r: quantized_metrics(r).get("size_bytes"), "bytes"),
    ("engine", lambda r: r.config.get("engine"), "text"),
    ("mode", lambda r: r.config.get("mode"), "text"),
    ("calibration", lambda r: r.config.get("calibration"), "text"),
    ("layers in INT8 / FP16 / FP32", lambda r: _count_text(r), "text"),
)


def _count_text(run: RunOutcome) -> str:
    counts = {"int8": 0, "fp16": 0, "fp32": 0}
    for p in run.layer_precisions.values():
        if p in counts:
            counts[p] += 1
    return " / ".join(str(counts[k]) for k in ("int8", "fp16", "fp32")) if run.layer_precisions else "—"


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * float(value):.2f}%"
    if kind == "num":
        v = float(value)
        return "∞" if math.isinf(v) else f"{v:.2f}"
    if kind == "x":
        return f"{float(value):.2f}×"
    if kind == "bytes":
        return human_bytes(value)
    return str(value)


class VariantsPanel(QWidget):
    apply_plan_requested = Signal(int)
    variants_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = VariantTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)

        buttons = QHBoxLayout()
        self.apply_button = QPushButton("Re-apply plan to tree")
        self.apply_button.setToolTip("Set every layer's precision as in this variant (Ctrl+Z undoes it)")
        self.delete_button = QPushButton("Delete")
        self.apply_button.clicked.connect(self._on_apply)
        self.delete_button.clicked.connect(self._on_delete)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.delete_button)
        buttons.addStretch(1)
        buttons.addWidget(QLabel("Compare:"))
        self.a_combo = QComboBox()
        self.b_combo = QComboBox()
        self.a_combo.currentIndexChanged.connect(self.update_comparison)
        self.b_combo.currentIndexChanged.connect(self.update_comparison)
        buttons.addWidget(self.a_combo)
        buttons.addWidget(QLabel("vs"))
        buttons.addWidget(self.b_combo)

        self.compare = QTableWidget(0, 4)
        self.compare.setHorizontalHeaderLabels(["", "A", "B", "B − A"])
        self.compare.verticalHeader().setVisible(False)
        self.compare.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.compare.horizontalHeader().setStretchLastSection(True)
        self.compare.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.compare)
        split.setSizes([600, 350])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(buttons)
        layout.addWidget(split, 1)
        self.model.rowsInserted.connect(self._refresh_combos)
        self.model.rowsRemoved.connect(self._refresh_combos)
        self.model.modelReset.connect(self._refresh_combos)
        self.model.dataChanged.connect(self._refresh_combos)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self._update_buttons()

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectionModel().selectedRows()})

    def _update_buttons(self) -> None:
        rows = self.selected_rows()
        self.apply_button.setEnabled(len(rows) == 1)
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
    def _on_delete(self) -> None:
        for row in reversed(self.selected_rows()):
            self.model.remove(row)
        self.variants_changed.emit()

    @Slot()
    def _refresh_combos(self) -> None:
        names = self.model.names()
        for combo, default in ((self.a_combo, max(len(names) - 2, 0)), (self.b_combo, len(names) - 1)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentIndex(names.index(current) if current in names else default)
            combo.blockSignals(False)
        self._update_buttons()
        self.update_comparison()

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
            for i, (label, get, kind) in enumerate(COMPARE_ROWS):
                va = get(a) if a else None
                vb = get(b) if b else None
                delta = ""
                if kind in ("pct", "num", "x", "bytes") and va is not None and vb is not None:
                    try:
                        d = float(vb) - float(va)
                        delta = _fmt(d, kind) if kind != "pct" else f"{100 * d:+.2f} pt"
                    except (TypeError, ValueError):
                        delta = ""
                for j, text in enumerate((label, _fmt(va, kind), _fmt(vb, kind), delta)):
                    self.compare.setItem(i, j, QTableWidgetItem(text))
        finally:
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

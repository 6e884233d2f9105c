"""The layer tree as a Qt item model: an adapter over the core's LayerNode tree + PrecisionPlan.

The model keeps no precision of its own: every precision it shows comes from
``plan.resolve(tree)``, and every edit changes the plan through an undoable
:class:`PlanEditCommand` (a before/after snapshot of the plan). After a plan change the
model emits ``dataChanged`` only for the rows whose shown precision changed.

Per-layer results of a run (SQNR, sensitivity, fused groups) are shown in extra
columns once :meth:`LayerTreeModel.set_layer_results` is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QComboBox, QStyledItemDelegate, QWidget

from quantstudio.core.inventory import LayerNode
from quantstudio.core.plan import LayerDecision, Precision, PrecisionPlan
from quantstudio.gui import glossary, style

COLUMNS = ("Layer", "Precision", "Type", "Output shape", "Params", "MACs", "SQNR (dB)", "Sensitivity", "Isolated SQNR (dB)")
(COL_NAME, COL_PRECISION, COL_TYPE, COL_SHAPE, COL_PARAMS, COL_MACS, COL_SQNR, COL_SENSITIVITY,
 COL_ISOLATED) = range(len(COLUMNS))

LayerNameRole = Qt.ItemDataRole.UserRole + 1  # str: the layer's qualified name
PrecisionRole = Qt.ItemDataRole.UserRole + 2  # str: "int8"/"fp16"/"fp32", or "mixed" on a parent
SortRole = Qt.ItemDataRole.UserRole + 3  # numbers for numeric columns

MIXED = "mixed"


@dataclass
class _Item:
    node: LayerNode
    parent: int  # item id of the parent, 0 for the root's (invisible) parent
    row: int
    children: list[int] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)  # names of the leaf layers in this subtree


class LayerTreeModel(QAbstractItemModel):
    """Rows are layers (the whole model is the single top-level row).

    Signals: ``plan_changed()`` after every change of the plan (edit, undo, redo, load).
    """

    plan_changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._tree: LayerNode | None = None
        self._plan = PrecisionPlan()
        self._items: dict[int, _Item] = {}
        self._by_name: dict[str, int] = {}
        self._decisions: dict[str, LayerDecision] = {}
        self._shown: dict[int, str] = {}  # item id -> precision text shown (for change detection)
        self._sqnr: dict[str, float] = {}
        self._sensitivity: dict[str, float] = {}
        self._fused_with: dict[str, list[str]] = {}
        # Issue 13: why each FP32 layer of the shown run is FP32; per sensitivity entry, the layers whose FP32
        # setting removes its error (producers included); each layer's error with only it quantized.
        self._fp32_reasons: dict[str, str] = {}
        self._sensitivity_fix: dict[str, list[str]] = {}
        self._sqnr_isolated: dict[str, float] = {}
        self.undo_stack = QUndoStack(self)
        self.root_label = "(model)"

    # ------------------------------------------------------------------ content
    @property
    def tree(self) -> LayerNode | None:
        return self._tree

    @property
    def plan(self) -> PrecisionPlan:
        return self._plan

    def set_tree(self, tree: LayerNode | None, plan: PrecisionPlan | None = None, root_label: str = "(model)") -> None:
        """Show a new model. The plan object is used as is (shared with the window)."""
        self.beginResetModel()
        self._tree = tree
        self._plan = plan if plan is not None else PrecisionPlan()
        self.root_label = root_label
        self._items.clear()
        self._by_name.clear()
        self._sqnr.clear()
        self._sensitivity.clear()
        self._fused_with.clear()
        self._fp32_reasons, self._sensitivity_fix, self._sqnr_isolated = {}, {}, {}
        if tree is not None:
            self._index_tree(tree)
        self._decisions = self._plan.resolve(tree) if tree is not None else {}
        self._shown = {i: self._precision_text(i) for i in self._items}
        self.endResetModel()
        self.undo_stack.clear()
        self.plan_changed.emit()

    def _index_tree(self, tree: LayerNode) -> None:
        next_id = 1

        def add(node: LayerNode, parent: int, row: int) -> int:
            nonlocal next_id
            item_id = next_id
            next_id += 1
            item = _Item(node, parent, row)
            self._items[item_id] = item
            self._by_name.setdefault(node.name, item_id)
            for r, child in enumerate(node.children):
                cid = add(child, item_id, r)
                item.children.append(cid)
                item.leaves.extend(self._items[cid].leaves)
            if not node.children:
                item.leaves.append(node.name)
            return item_id

        add(tree, 0, 0)

    def layer_names(self) -> list[str]:
        return [self._items[i].node.name for i in sorted(self._items)]

    def node_at(self, index: QModelIndex) -> LayerNode | None:
        item = self._item(index)
        return item.node if item else None

    def index_for_name(self, name: str, column: int = 0) -> QModelIndex:
        item_id = self._by_name.get(name)
        if item_id is None:
            return QModelIndex()
        return self.createIndex(self._items[item_id].row, column, item_id)

    def decision(self, name: str) -> LayerDecision | None:
        return self._decisions.get(name)

    def precision_of(self, name: str) -> str | None:
        """Effective precision shown for a layer ("mixed" for a parent with several)."""
        item_id = self._by_name.get(name)
        return self._shown.get(item_id) if item_id is not None else None

    # ------------------------------------------------------------------ plan edits
    def edit_plan(self, text: str, change: Callable[[PrecisionPlan], None]) -> None:
        """Apply ``change`` to a copy of the plan and push it as one undoable step."""
        before = self._plan.copy()
        after = self._plan.copy()
        change(after)
        if after.to_dict() == before.to_dict():
            return
        self.undo_stack.push(PlanEditCommand(self, before, after, text))

    def set_precision(self, name: str, precision: Precision | str) -> None:
        """Set a layer; on a parent (or the whole model) the whole subtree."""
        precision = Precision(precision)
        item_id = self._by_name.get(name)
        if item_id is None:
            return
        item = self._items[item_id]
        label = style.PRECISION_LABEL[precision]
        shown = name or self.root_label
        if name == "":
            self.edit_plan(f"All layers → {label}", lambda p: p.set_all(precision))
        elif item.node.children:
            self.edit_plan(f"{shown} and its layers → {label}", lambda p: p.set_subtree(name, precision))
        else:
            self.edit_plan(f"{shown} → {label}", lambda p: p.set(name, precision, "exact"))

    def set_type_precision(self, type_name: str, precision: Precision | str) -> None:
        precision = Precision(precision)
        label = style.PRECISION_LABEL[precision]
        self.edit_plan(f"All {type_name} layers → {label}", lambda p: p.set(type_name, precision, "type"))

    def set_all(self, precision: Precision | str) -> None:
        self.set_precision("", precision)

    def replace_plan(self, plan: PrecisionPlan, text: str = "Apply plan") -> None:
        """Undoably replace the whole plan (re-applying a variant's plan)."""

        def change(p: PrecisionPlan) -> None:
            p.default, p.rules = plan.default, list(plan.rules)

        self.edit_plan(text, change)

    def apply_plan_snapshot(self, snapshot: PrecisionPlan) -> None:
        """Make the plan equal ``snapshot`` (in place: others hold the same object)."""
        self._plan.default = snapshot.default
        self._plan.rules = list(snapshot.rules)
        self._refresh_precisions()

    def _refresh_precisions(self) -> None:
        self._decisions = self._plan.resolve(self._tree) if self._tree is not None else {}
        last = COL_PRECISION
        for item_id, item in self._items.items():
            text = self._precision_text(item_id)
            if self._shown.get(item_id) != text:
                self._shown[item_id] = text
                idx = self.createIndex(item.row, 0, item_id)
                self.dataChanged.emit(idx, self.createIndex(item.row, last, item_id))
        self.plan_changed.emit()

    def _precision_text(self, item_id: int) -> str:
        item = self._items[item_id]
        values = {self._decisions[n].effective.value for n in item.leaves if n in self._decisions}
        if len(values) == 1:
            return values.pop()
        return MIXED if values else ""

    # ------------------------------------------------------------------ run results
    def set_layer_results(
        self,
        sqnr: dict[str, float] | None = None,
        sensitivity: dict[str, float] | None = None,
        fused: list[list[str]] | None = None,
        fp32_reasons: dict[str, str] | None = None,
        sensitivity_fix: dict[str, list[str]] | None = None,
        sqnr_isolated: dict[str, float] | None = None,
    ) -> None:
        if sqnr is not None:
            self._sqnr = {k: float(v) for k, v in sqnr.items() if v is not None}
        if sensitivity is not None:
            self._sensitivity = {k: float(v) for k, v in sensitivity.items() if v is not None}
        if fused is not None:
            self._fused_with = {}
            for group in fused:
                for name in group:
                    self._fused_with[name] = [g for g in group if g != name]
        if fp32_reasons is not None:
            self._fp32_reasons = {str(k): str(v) for k, v in fp32_reasons.items()}
        if sensitivity_fix is not None:
            self._sensitivity_fix = {str(k): [str(n) for n in v] for k, v in sensitivity_fix.items()}
        if sqnr_isolated is not None:
            self._sqnr_isolated = {k: float(v) for k, v in sqnr_isolated.items() if v is not None}
        self._emit_all(COL_NAME, len(COLUMNS) - 1)

    def has_results(self) -> dict[int, bool]:
        """Whether the last run filled the SQNR and the sensitivity column."""
        return {COL_SQNR: bool(self._sqnr), COL_SENSITIVITY: bool(self._sensitivity), COL_ISOLATED: bool(self._sqnr_isolated)}

    def clear_layer_results(self) -> None:
        self.set_layer_results({}, {}, [])

    def most_sensitive(self, n: int) -> list[str]:
        """The ``n`` layers with the highest sensitivity of the last run, most sensitive first."""
        return [k for k, _ in sorted(self._sensitivity.items(), key=lambda kv: -kv[1]) if k in self._by_name][:n]

    def fp32_layers_for_top(self, n: int) -> list[str]:
        """The layers to set to FP32 so the ``n`` most sensitive entries stop hurting: each entry's "fix
        layers" (the layer and the producers of its input, as the engine builds the model) where the run
        sent them, else the layer itself."""
        out: list[str] = []
        for entry in self.most_sensitive(n):
            for name in self._sensitivity_fix.get(entry) or [entry]:
                if name in self._by_name and name not in out:
                    out.append(name)
        return out

    def keep_most_sensitive(self, n: int, precision: Precision | str = Precision.FP32) -> list[str]:
        """Set the ``n`` most sensitive layers to ``precision`` (FP32) as one undoable step.

        With FP32 the layers set are :meth:`fp32_layers_for_top` (producers included where known)."""
        precision = Precision(precision)
        entries = self.most_sensitive(n)
        names = self.fp32_layers_for_top(n) if precision is Precision.FP32 else entries
        if names:
            def change(p: PrecisionPlan) -> None:
                for name in names:
                    p.set(name, precision, "exact")

            label = style.PRECISION_LABEL[precision]
            extra = f" ({len(names)} layers with the producers of their input)" if len(names) != len(entries) else ""
            self.edit_plan(f"{len(entries)} most sensitive layer{'s' if len(entries) != 1 else ''} → {label}{extra}", change)
        return names

    def apply_layer_precisions(self, precisions: dict[str, str], text: str) -> list[str]:
        """Make each named layer run at its precision (a run's ``layer_precisions``) as ONE undoable step.

        Layers the tree does not have, blocks, unknown precisions and layers that already run that way
        (e.g. one that cannot be quantized and stays FP32) are left alone. Returns the layers changed.
        """
        changes: list[tuple[str, Precision]] = []
        for name, value in precisions.items():
            item_id = self._by_name.get(name)
            if item_id is None or self._items[item_id].node.children:
                continue
            try:
                precision = Precision(str(value).strip().lower())
            except ValueError:
                continue
            d = self._decisions.get(name)
            if d is not None and d.effective is precision:
                continue
            changes.append((name, precision))
        if changes:
            def change(p: PrecisionPlan) -> None:
                for name, precision in changes:
                    p.set(name, precision, "exact")

            self.edit_plan(text, change)
        return [name for name, _ in changes]

    def fp32_reason(self, name: str) -> str | None:
        """Why the shown run left ``name`` in FP32 (None when it did not say)."""
        return self._fp32_reasons.get(name)

    def _fp32_reason_lines(self, item: _Item) -> list[str]:
        """Why a layer (or the layers of a block) the shown run left in FP32 is FP32, for the tooltip."""
        node = item.node
        reasons = self._fp32_reasons
        if not reasons:
            return []
        if not node.children:
            reason = reasons.get(node.name)
            d = self._decisions.get(node.name)
            if reason and (d is None or d.effective is Precision.FP32):
                return [f"{glossary.FP32_WHY_TITLE}: {reason}"]
            return []
        inside = [(n, reasons[n]) for n in item.leaves if n in reasons]
        if not inside:
            return []
        shown = [f"  {n.rsplit('.', 1)[-1] if node.name else n}: {r}" for n, r in inside[:6]]
        more = [f"  … and {len(inside) - 6} more"] if len(inside) > 6 else []
        return [f"{glossary.FP32_WHY_TITLE} (the last run):"] + shown + more

    def _emit_all(self, first: int, last: int) -> None:
        # One dataChanged per parent (rows of one parent are contiguous), not one per row:
        # a large model has thousands of rows, and each signal makes the views repaint.
        rows: dict[int, list[int]] = {}
        for item_id, item in self._items.items():
            rows.setdefault(item.parent, []).append(item_id)
        for ids in rows.values():
            top = min(ids, key=lambda i: self._items[i].row)
            bottom = max(ids, key=lambda i: self._items[i].row)
            self.dataChanged.emit(self.createIndex(self._items[top].row, first, top),
                                  self.createIndex(self._items[bottom].row, last, bottom))

    # ------------------------------------------------------------------ Qt model API
    def _item(self, index: QModelIndex) -> _Item | None:
        if not index.isValid():
            return None
        return self._items.get(index.internalId())

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        """Overrides QAbstractItemModel.index."""
        if column < 0 or column >= len(COLUMNS) or row < 0:
            return QModelIndex()
        if not parent.isValid():
            if self._tree is None or row != 0:
                return QModelIndex()
            return self.createIndex(0, column, 1)
        if parent.column() != 0:
            return QModelIndex()
        item = self._item(parent)
        if item is None or row >= len(item.children):
            return QModelIndex()
        return self.createIndex(row, column, item.children[row])

    def parent(self, index: QModelIndex | None = None) -> Any:
        """Overrides QAbstractItemModel.parent (and QObject.parent() without arguments)."""
        if index is None:
            return super().parent()
        item = self._item(index)
        if item is None or item.parent == 0:
            return QModelIndex()
        parent = self._items[item.parent]
        return self.createIndex(parent.row, 0, item.parent)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        """Overrides QAbstractItemModel.rowCount."""
        if not parent.isValid():
            return 1 if self._tree is not None else 0
        if parent.column() != 0:
            return 0
        item = self._item(parent)
        return len(item.children) if item else 0

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        """Overrides QAbstractItemModel.columnCount."""
        return len(COLUMNS)

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:  # noqa: B008
        return self.rowCount(parent) > 0

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return _HEADER_TIPS.get(section)
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == COL_PRECISION:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        item = self._item(index)
        if item is None:
            return None
        node, col = item.node, index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(index.internalId(), item, col)
        if role == Qt.ItemDataRole.EditRole:
            if col == COL_PRECISION:
                shown = self._shown.get(index.internalId(), "")
                return shown if shown != MIXED else Precision.INT8.value
            return self._display(index.internalId(), item, col)
        if role == LayerNameRole:
            return node.name
        if role == PrecisionRole:
            return self._shown.get(index.internalId(), "")
        if role == SortRole:
            return self._sort_value(item, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(index.internalId(), item, col)
        if role == Qt.ItemDataRole.BackgroundRole and col == COL_PRECISION:
            shown = self._shown.get(index.internalId(), "")
            if shown == MIXED:
                return QBrush(style.MIXED_BACKGROUND)
            if shown:
                return QBrush(style.PRECISION_BACKGROUND[Precision(shown)])
            return None
        if role == Qt.ItemDataRole.BackgroundRole and col == COL_SQNR and node.name in self._sqnr:
            return QBrush(_sqnr_colour(self._sqnr[node.name]))
        if role == Qt.ItemDataRole.BackgroundRole and col == COL_ISOLATED and node.name in self._sqnr_isolated:
            return QBrush(_sqnr_colour(self._sqnr_isolated[node.name]))
        if role == Qt.ItemDataRole.ForegroundRole:
            if not node.quantizable:
                return QBrush(style.NOT_QUANTIZABLE_FOREGROUND)
            if node.children and col in (COL_SQNR, COL_SENSITIVITY) and node.name not in (
                    self._sqnr if col == COL_SQNR else self._sensitivity):
                return QBrush(QColor(120, 120, 120))  # a block's worst layer, not its own figure
            if col == COL_PRECISION:
                return QBrush(QColor(20, 20, 20))
            return None
        if role == Qt.ItemDataRole.DecorationRole and col == COL_NAME and node.name in self._fused_with:
            return style.fused_icon()
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_PARAMS, COL_MACS, COL_SQNR, COL_SENSITIVITY,
                                                                   COL_ISOLATED):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def setData(self, index: QModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """Overrides QAbstractItemModel.setData: only the precision column is editable."""
        item = self._item(index)
        if item is None or role != Qt.ItemDataRole.EditRole or index.column() != COL_PRECISION:
            return False
        try:
            precision = Precision(value.value if isinstance(value, Precision) else str(value).strip().lower())
        except ValueError:
            return False
        self.set_precision(item.node.name, precision)
        return True

    def _display(self, item_id: int, item: _Item, col: int) -> str:
        node = item.node
        if col == COL_ISOLATED:
            v = self._sqnr_isolated.get(node.name)
            if v is None and node.children:
                found = [self._sqnr_isolated[n] for n in item.leaves if n in self._sqnr_isolated]
                return f"min {min(found):.1f}" if found else ""
            return "" if v is None else ("∞" if math.isinf(v) else f"{v:.1f}")
        if col == COL_NAME:
            if node.name == "":
                return self.root_label
            return node.name.rsplit(".", 1)[-1]
        if col == COL_TYPE:
            return node.type
        if col == COL_SHAPE:
            return "×".join(str(d) for d in node.output_shape) if node.output_shape else "—"
        if col == COL_PARAMS:
            return style.human_count(node.params)
        if col == COL_MACS:
            return style.human_count(node.macs) if node.macs is not None else "?"
        if col == COL_PRECISION:
            shown = self._shown.get(item_id, "")
            if shown == MIXED:
                return "mixed"
            if not shown:
                return ""
            text = style.PRECISION_LABEL[Precision(shown)]
            if not node.children:
                d = self._decisions.get(node.name)
                if d is not None and d.requested is not d.effective:
                    text += f" ({style.PRECISION_LABEL[d.requested]} asked)"
            return text
        if col in (COL_SQNR, COL_SENSITIVITY):
            values = self._sqnr if col == COL_SQNR else self._sensitivity
            v, prefix = values.get(node.name), ""
            if v is None and node.children:
                worst = self._worst_inside(item, col)
                v, prefix = (worst[1], "min " if col == COL_SQNR else "max ") if worst else (None, "")
            if v is None:
                return ""
            if col == COL_SENSITIVITY:
                return f"{prefix}{v:.2f}%"
            return prefix + ("∞" if math.isinf(v) else f"{v:.1f}")
        return ""

    def _worst_inside(self, item: _Item, col: int) -> tuple[str, float] | None:
        """The layer inside a block with the lowest SQNR / highest sensitivity, and its value."""
        values = self._sqnr if col == COL_SQNR else self._sensitivity
        found = [(n, values[n]) for n in item.leaves if n in values]
        if not found:
            return None
        return min(found, key=lambda kv: kv[1]) if col == COL_SQNR else max(found, key=lambda kv: kv[1])

    def _sort_value(self, item: _Item, col: int) -> Any:
        node = item.node
        if col == COL_PARAMS:
            return float(node.params)
        if col == COL_MACS:
            return float(node.macs or 0)
        # A block sorts by its worst layer, so sorting brings the branch that holds the
        # most sensitive (or lowest-SQNR) layer to the top at every level of the tree.
        if col == COL_SQNR:
            if node.children:
                return min((self._sqnr.get(n, float("inf")) for n in item.leaves), default=float("inf"))
            return self._sqnr.get(node.name, float("inf"))
        if col == COL_SENSITIVITY:
            if node.children:
                return max((self._sensitivity.get(n, 0.0) for n in item.leaves), default=0.0)
            return self._sensitivity.get(node.name, 0.0)
        if col == COL_ISOLATED:
            return min((self._sqnr_isolated.get(n, float("inf")) for n in item.leaves), default=float("inf"))
        return self._display(0, item, col)

    def _tooltip(self, item_id: int, item: _Item, col: int) -> str | None:
        node = item.node
        lines = [node.name or self.root_label]
        if not node.quantizable:
            lines.append(f"Stays in floating point: {node.reason or 'cannot be quantized'}")
        elif node.reason:
            lines.append(node.reason)
        if not node.children:
            d = self._decisions.get(node.name)
            if d is not None and d.requested is not d.effective:
                lines.append(f"{style.PRECISION_LABEL[d.requested]} asked, runs in {style.PRECISION_LABEL[d.effective]}: {d.reason}")
        else:
            counts: dict[str, int] = {}
            for leaf in item.leaves:
                d = self._decisions.get(leaf)
                if d is not None:
                    counts[d.effective.value] = counts.get(d.effective.value, 0) + 1
            if counts:
                lines.append(", ".join(f"{n} {p.upper()}" for p, n in sorted(counts.items())) + " layers inside")
        lines += self._fp32_reason_lines(item)
        fused = self._fused_with.get(node.name)
        if fused:
            lines.append("fused with " + ", ".join(f.rsplit(".", 1)[-1] for f in fused))
        if col == COL_PRECISION:
            lines.append("Double-click to change; on a group it changes every layer inside.")
        if col == COL_SQNR and node.name in self._sqnr:
            lines.append("Signal-to-quantization-noise ratio of this layer's output: higher is better; below ~20 dB is a warning sign.")
        if col == COL_SENSITIVITY and node.name in self._sensitivity:
            lines.append(f"With only this layer in INT8, the model's output changes by {self._sensitivity[node.name]:.2f}%.\n"
                         "The most sensitive layers are the first to keep in FP32 (right-click ▸ Keep most sensitive in FP32).")
            fix = [n for n in self._sensitivity_fix.get(node.name, []) if n != node.name]
            if fix:
                lines.append("Its error goes away with these in FP32 too (they feed it): " + ", ".join(fix))
        if col == COL_ISOLATED and node.name in self._sqnr_isolated:
            lines.append(glossary.COLUMN_HELP["Isolated SQNR (dB)"])
        if col in (COL_SQNR, COL_SENSITIVITY) and node.children and node.name not in (
                self._sqnr if col == COL_SQNR else self._sensitivity):
            worst = self._worst_inside(item, col)
            if worst:
                what = "lowest SQNR" if col == COL_SQNR else "most sensitive layer"
                lines.append(f"{what} inside: {worst[0]}")
        return "\n".join(lines)


_HEADER_TIPS = {i: glossary.COLUMN_HELP.get(title) for i, title in enumerate(COLUMNS)}  # the words: gui/glossary.py


def _sqnr_colour(db: float) -> QColor:
    if math.isinf(db) or db >= 30:
        return QColor(215, 240, 215)
    if db >= 20:
        return QColor(245, 240, 200)
    return QColor(245, 205, 200)


class PlanEditCommand(QUndoCommand):
    """One precision edit, stored as plan snapshots (so undo restores rules exactly)."""

    def __init__(self, model: LayerTreeModel, before: PrecisionPlan, after: PrecisionPlan, text: str) -> None:
        super().__init__(text)
        self._model = model
        self._before = before
        self._after = after

    def redo(self) -> None:
        self._model.apply_plan_snapshot(self._after)

    def undo(self) -> None:
        self._model.apply_plan_snapshot(self._before)


class PrecisionDelegate(QStyledItemDelegate):
    """A combo box for the precision column; committing sets the plan through the model."""

    def createEditor(self, parent: QWidget, option, index: QModelIndex) -> QWidget:
        combo = QComboBox(parent)
        for p in Precision:
            combo.addItem(style.swatch_icon(style.PRECISION_COLOUR[p]), style.PRECISION_LABEL[p], p.value)
            combo.setItemData(combo.count() - 1, style.PRECISION_HELP[p], Qt.ItemDataRole.ToolTipRole)
        combo.activated.connect(self._commit_from_combo)
        return combo

    def _commit_from_combo(self, _row: int) -> None:
        editor = self.sender()
        self.commitData.emit(editor)
        self.closeEditor.emit(editor, QStyledItemDelegate.EndEditHint.NoHint)

    def setEditorData(self, editor: QWidget, index: QModelIndex) -> None:
        value = index.data(Qt.ItemDataRole.EditRole)
        pos = editor.findData(value)
        editor.setCurrentIndex(max(pos, 0))

    def setModelData(self, editor: QWidget, model, index: QModelIndex) -> None:
        model.setData(index, editor.currentData(), Qt.ItemDataRole.EditRole)


class LayerFilterProxy(QSortFilterProxyModel):
    """Filters by layer name or type; keeps the parents of matching layers (recursive)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setSortRole(SortRole)
        self.setAutoAcceptChildRows(True)
        self._needle = ""

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        """Overrides QSortFilterProxyModel.filterAcceptsRow: plain substring of name or type."""
        if not self._needle:
            return True
        model = self.sourceModel()
        name = model.data(model.index(source_row, COL_NAME, source_parent), LayerNameRole) or ""
        type_name = model.data(model.index(source_row, COL_TYPE, source_parent)) or ""
        return self._needle in name.lower() or self._needle in type_name.lower()

    def set_filter_text(self, text: str) -> None:
        needle = text.strip().lower()
        if needle == self._needle:
            return
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self._needle = needle
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._needle = needle
            self.invalidateFilter()

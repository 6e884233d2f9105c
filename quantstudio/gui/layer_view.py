"""The layer tree panel: filter box, precision buttons, tree view and its context menu.

Signals: ``layer_selected(str)`` when the current layer changes (its qualified name).
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAccessible, QAction
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.plan import Precision
from quantstudio.gui import style
from quantstudio.gui.layer_model import (
    COL_ISOLATED,
    COL_MACS,
    COL_NAME,
    COL_PARAMS,
    COL_PRECISION,
    COL_SENSITIVITY,
    COL_SHAPE,
    COL_SQNR,
    COL_TYPE,
    LayerFilterProxy,
    LayerNameRole,
    LayerTreeModel,
    PrecisionDelegate,
)


KEEP_SENSITIVE_COUNTS = (1, 3, 5, 10)  # choices in the context menu's "Keep most sensitive" submenu

# Columns that must be in sight without scrolling (in this order on screen), with the width
# each gets where there is room and the least it may shrink to, in pixels at a 9-10 pt
# font (scaled by the font's height). The tree sits between the data panel and the plots:
# about 440 px wide in a 1366x768 window. Shape, Params and MACs follow, scrolled to.
FIT_COLUMNS = {  # column: (preferred, minimum)
    COL_NAME: (190, 96),
    COL_PRECISION: (95, 66),
    COL_SQNR: (82, 72),  # "SQNR (dB)" whole
    COL_SENSITIVITY: (88, 74),
    COL_ISOLATED: (82, 72),  # only once a run sent it (issue 13)
    COL_TYPE: (130, 100),
}
OTHER_COLUMN_WIDTHS = {COL_SHAPE: 110, COL_PARAMS: 70, COL_MACS: 70}
NAME_MAX = 360  # beyond this the name column stops growing and the next columns come into sight


class LayerTreeView(QTreeView):
    """A QTreeView that repaints, instead of re-measuring, rows whose data changed.

    With uniform row heights every row is as high as the first (top) row, so a data
    change in any other row never moves a row. Plain ``QTreeView.dataChanged`` asks
    the delegate for the size hint of every column of the top row each time it sees
    that row change (about 60 Python ``data()`` calls), and the recursive filter proxy
    re-announces every ancestor, the top row included, for each changed layer: after a
    run the layer model reports each layer's SQNR/sensitivity with one ``dataChanged``,
    which meant ~200 re-measurements and froze the window for 200-700 ms. Here a change
    only schedules a repaint (Qt merges them into one paint), and a change of the top
    row re-measures it once, after the burst.
    """

    resized = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._remeasure = QTimer(self)
        self._remeasure.setSingleShot(True)
        self._remeasure.setInterval(0)
        self._remeasure.timeout.connect(self._remeasure_top_row)

    def dataChanged(self, top_left: QModelIndex, bottom_right: QModelIndex, roles=()) -> None:  # noqa: N802
        """Overrides QAbstractItemView.dataChanged (see the class docstring)."""
        if (not self.uniformRowHeights() or self.state() == QAbstractItemView.State.EditingState
                or QAccessible.isActive()):
            # Variable heights, an open editor to refresh or a screen reader to notify: Qt's way.
            super().dataChanged(top_left, bottom_right, list(roles))
            return
        if not top_left.parent().isValid() and not self._remeasure.isActive():
            self._remeasure.start()
        self.viewport().update()

    def resizeEvent(self, event) -> None:
        """Overrides QAbstractScrollArea.resizeEvent: the panel fits its columns to the new width."""
        super().resizeEvent(event)
        self.resized.emit()

    def refresh(self) -> None:
        """Repaint every row (and measure the top row again): after a change made with the model's signals blocked."""
        if not self._remeasure.isActive():
            self._remeasure.start()
        self.viewport().update()

    @Slot()
    def _remeasure_top_row(self) -> None:
        model = self.model()
        if model is None or model.rowCount() == 0:
            return
        super().dataChanged(model.index(0, 0), model.index(0, model.columnCount() - 1), [])


class LayerPanel(QWidget):
    layer_selected = Signal(str)

    def __init__(self, model: LayerTreeModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(model)

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter layers by name or type (e.g. conv, layer4, Linear)…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._on_filter)
        top.addWidget(self.filter_edit, 1)
        top.addWidget(QLabel("Set all:"))
        self.all_buttons: dict[Precision, QToolButton] = {}
        for p in Precision:
            b = QToolButton()
            b.setText(style.PRECISION_LABEL[p])
            b.setIcon(style.swatch_icon(style.PRECISION_COLOUR[p]))
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            b.setToolTip(f"Every layer to {style.PRECISION_LABEL[p]}.\n{style.PRECISION_HELP[p]}")
            b.setObjectName(f"all_{p.value}")
            b.clicked.connect(self._on_all_clicked)
            top.addWidget(b)
            self.all_buttons[p] = b

        self.view = LayerTreeView()
        self.view.setModel(self.proxy)
        self.view.setItemDelegateForColumn(COL_PRECISION, PrecisionDelegate(self.view))
        self.view.setAlternatingRowColors(True)
        self.view.setUniformRowHeights(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.SelectedClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._on_context_menu)
        header = self.view.header()
        # Click a column to sort (a block by its worst layer); a third click goes back to model order.
        header.setSortIndicatorClearable(True)
        header.setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.view.setSortingEnabled(True)
        header.setStretchLastSection(False)
        # The run's results sit next to the precision they judge (the user may drag them
        # elsewhere; the header state, order included, is remembered).
        header.moveSection(header.visualIndex(COL_SQNR), 2)
        header.moveSection(header.visualIndex(COL_SENSITIVITY), 3)
        header.moveSection(header.visualIndex(COL_ISOLATED), 4)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self._fitting = False
        self.user_sized_columns = False  # the user dragged a column edge: keep their widths
        header.sectionResized.connect(self._on_section_resized)
        self.view.resized.connect(self.fit_columns)
        for col, width in OTHER_COLUMN_WIDTHS.items():
            self.view.setColumnWidth(col, width)
        self.view.selectionModel().currentRowChanged.connect(self._on_current_changed)

        self.summary = QLabel()
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        model.plan_changed.connect(self._update_summary)
        model.modelReset.connect(self._on_model_reset)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.summary)
        self._show_result_columns()

    def set_layer_results(self, **results) -> None:
        """``model.set_layer_results(**results)``, announced to the view once.

        The model announces the new SQNR/sensitivity of every row with its own
        ``dataChanged``, and each Python ``emit`` lets go of the GIL: while the worker
        runs torch or numpy (which take and drop the GIL thousands of times a second),
        getting it back took up to milliseconds per row, and 200 rows froze the window
        for 0.1 s to seconds. The results only change cells, never rows: the model's
        signals are held back and the view repaints once (re-sorting if it is sorted).
        """
        blocked = self.model.blockSignals(True)
        try:
            self.model.set_layer_results(**results)
        finally:
            self.model.blockSignals(blocked)
        if self.proxy.sortColumn() >= 0 and self.proxy.dynamicSortFilter():
            self.proxy.invalidate()
        self._show_result_columns()
        self.view.refresh()

    def _show_result_columns(self) -> None:
        # SQNR and sensitivity columns appear once a run has filled them: before, they
        # would only push the type and shape columns out of sight.
        changed = False
        for col, filled in self.model.has_results().items():
            if self.view.isColumnHidden(col) == filled:
                self.view.setColumnHidden(col, not filled)
                changed = True
        if changed:
            self.fit_columns()

    @Slot()
    def fit_columns(self) -> None:
        """Widths that show Layer, Precision, the results and Type without scrolling.

        Each shown column of FIT_COLUMNS gets its preferred width where the tree has room,
        and all shrink evenly towards their minimum where it has not; the layer name takes
        what is left over. Not after the user has dragged a column edge.
        """
        if self.user_sized_columns:
            return
        available = self.view.viewport().width()
        if available <= 0:
            return
        scale = max(1.0, self.view.fontMetrics().height() / 17.0)
        cols = [c for c in FIT_COLUMNS if not self.view.isColumnHidden(c)]
        pref = {c: int(FIT_COLUMNS[c][0] * scale) for c in cols}
        least = {c: int(FIT_COLUMNS[c][1] * scale) for c in cols}
        total_pref, total_min = sum(pref.values()), sum(least.values())
        if available >= total_pref:
            widths = dict(pref)
            widths[COL_NAME] = min(pref[COL_NAME] + available - total_pref, int(NAME_MAX * scale))
        elif available > total_min:
            t = (available - total_min) / (total_pref - total_min)
            widths = {c: int(least[c] + t * (pref[c] - least[c])) for c in cols}
            widths[COL_NAME] += available - sum(widths.values())  # rounding: fill the row exactly
        else:
            widths = least
        self._fitting = True
        try:
            for c, w in widths.items():
                self.view.setColumnWidth(c, w)
        finally:
            self._fitting = False

    @Slot(int, int, int)
    def _on_section_resized(self, _col: int, _old: int, _new: int) -> None:
        if not self._fitting and QApplication.mouseButtons() & Qt.MouseButton.LeftButton:
            self.user_sized_columns = True

    # ------------------------------------------------------------------ slots
    @Slot(str)
    def _on_filter(self, text: str) -> None:
        self.proxy.set_filter_text(text)
        if text.strip():
            self.view.expandAll()

    @Slot()
    def _on_all_clicked(self) -> None:
        for p, b in self.all_buttons.items():
            if b is self.sender():
                self.model.set_all(p)

    @Slot()
    def _on_model_reset(self) -> None:
        self.view.expandToDepth(1)
        self._show_result_columns()

    @Slot()
    def _update_summary(self) -> None:
        tree = self.model.tree
        if tree is None:
            self.summary.setText("")
            return
        counts = self.model.plan.counts(tree)
        parts = []
        for p in Precision:
            c = style.PRECISION_COLOUR[p].name()
            parts.append(f"<span style='color:{c}'>■</span> {style.PRECISION_LABEL[p]}: <b>{counts[p]}</b>")
        leaves = tree.leaves()
        stuck = sum(1 for n in leaves if not n.quantizable)
        text = "&nbsp;&nbsp;&nbsp;".join(parts) + f"&nbsp;&nbsp;&nbsp;— {len(leaves)} layers"
        if stuck:
            text += f", {stuck} cannot be quantized (grey)"
        self.summary.setText(text)

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        name = current.data(LayerNameRole) if current.isValid() else None
        if name is not None:
            self.layer_selected.emit(name)

    def select_layer(self, name: str) -> None:
        """Select and reveal a layer (clicking its bar in the SQNR plot calls this)."""
        src = self.model.index_for_name(name)
        if not src.isValid():
            return
        if not self.proxy.mapFromSource(src).isValid():
            self.filter_edit.clear()
        idx = self.proxy.mapFromSource(src)
        self.view.setCurrentIndex(idx)
        self.view.scrollTo(idx, QAbstractItemView.ScrollHint.PositionAtCenter)

    def current_layer(self) -> str | None:
        idx = self.view.currentIndex()
        return idx.data(LayerNameRole) if idx.isValid() else None

    # ------------------------------------------------------------------ context menu
    def _on_context_menu(self, pos) -> None:
        menu = self.build_context_menu(self.view.indexAt(pos))
        if menu is not None:
            menu.exec(self.view.viewport().mapToGlobal(pos))

    def build_context_menu(self, index: QModelIndex) -> QMenu | None:
        if not index.isValid():
            return None
        node = self.model.node_at(self.proxy.mapToSource(index))
        if node is None:
            return None
        menu = QMenu(self)
        label = node.name or self.model.root_label
        inside = " and everything inside" if node.children else ""
        for p in Precision:
            act = QAction(style.swatch_icon(style.PRECISION_COLOUR[p]), f"Set {label}{inside} to {style.PRECISION_LABEL[p]}", menu)
            act.setData(("layer", node.name, p.value))
            act.triggered.connect(self._on_menu_action)
            menu.addAction(act)
        if node.type and node.name:
            menu.addSeparator()
            for p in Precision:
                act = QAction(f"Set all {node.type} layers to {style.PRECISION_LABEL[p]}", menu)
                act.setData(("type", node.type, p.value))
                act.triggered.connect(self._on_menu_action)
                menu.addAction(act)
        ranked = self.model.most_sensitive(max(KEEP_SENSITIVE_COUNTS))
        if ranked:
            menu.addSeparator()
            keep = menu.addMenu("Keep most sensitive layers in FP32")
            keep.setToolTip("The layers whose INT8 version changed the output most in the last run.")
            keep.setToolTipsVisible(True)
            for n in sorted({min(n, len(ranked)) for n in KEEP_SENSITIVE_COUNTS}):
                act = QAction(f"The most sensitive layer: {ranked[0]}" if n == 1 else f"The {n} most sensitive", keep)
                fix = self.model.fp32_layers_for_top(n)
                act.setToolTip(", ".join(ranked[:n]) + (f"\nSets to FP32 (with the layers feeding them): {', '.join(fix)}"
                                                        if fix != ranked[:n] else ""))
                act.setData(("sensitive", "", str(n)))
                act.triggered.connect(self._on_menu_action)
                keep.addAction(act)
        if node.children:
            menu.addSeparator()
            expand = QAction("Expand all below", menu)
            expand.setData(("expand", node.name, ""))
            expand.triggered.connect(self._on_menu_action)
            menu.addAction(expand)
        return menu

    @Slot()
    def _on_menu_action(self) -> None:
        kind, name, value = self.sender().data()
        if kind == "layer":
            self.model.set_precision(name, value)
        elif kind == "type":
            self.model.set_type_precision(name, value)
        elif kind == "sensitive":
            self.model.keep_most_sensitive(int(value), Precision.FP32)
        elif kind == "expand":
            self.view.expandRecursively(self.proxy.mapFromSource(self.model.index_for_name(name)))

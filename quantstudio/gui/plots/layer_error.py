"""The Per-layer error panel: SQNR of every layer, linked to the layer tree."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QWidget

from quantstudio.core.plan import Precision
from quantstudio.gui import glossary, style
from quantstudio.gui.plots.base import PlotPanel, _titled_plot


class LayerErrorPanel(PlotPanel):
    """Per-layer SQNR bars (model order), coloured by precision; linked to the layer tree.

    The y scale follows the INT8/FP16 layers: an FP32 layer (its SQNR is only float
    rounding, 100+ dB) or an exact layer (inf) is drawn cut off at the top with a ▲.

    Signals: ``layer_clicked(str)``.
    """

    title = "Per-layer error"
    empty_text = glossary.EMPTY_PANEL["layer_error"]
    hover_text = glossary.LAYER_ERROR_HOVER
    layer_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget, self.legend, self.plot = _titled_plot(
            "Per-layer SQNR (dB, higher is better)", "dB", "layer (model order)", legend_columns=3)
        self._layout.addWidget(self.plot_widget, 1)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brushes=[])
        self.highlight = pg.BarGraphItem(x=[], height=[], width=0.9, brush=QColor(0, 0, 0, 0), pen=pg.mkPen("r", width=2.5))
        self.capped_marks = pg.ScatterPlotItem(symbol="t1", size=9, pen=pg.mkPen((90, 60, 20)), brush=QColor(190, 140, 60))
        self.plot.addItem(self.bars)
        self.plot.addItem(self.highlight)
        self.plot.addItem(self.capped_marks)
        self.threshold = pg.InfiniteLine(pos=20, angle=0, pen=pg.mkPen((200, 60, 60), style=Qt.PenStyle.DashLine))
        self.plot.addItem(self.threshold)
        self.hover_label = QLabel("Click a bar to select its layer in the tree.")
        self.hover_label.setStyleSheet("color: #555")
        self._layout.addWidget(self.hover_label)
        self.names: list[str] = []
        self.values: list[float] = []  # bar heights as drawn (capped)
        self.true_values: list[float] = []  # the measured SQNR (may be inf)
        self.capped: list[bool] = []
        self.precisions: list[str] = []
        self.selected: str | None = None
        self.shown_run: Any = None
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.plot.scene().sigMouseMoved.connect(self._on_move)

    def export_target(self) -> Any:
        return self.plot_widget.ci

    def clear(self) -> None:
        self.names, self.values, self.true_values, self.capped, self.precisions = [], [], [], [], []
        self.bars.setOpts(x=[], height=[], brushes=[])
        self.highlight.setOpts(x=[], height=[])
        self.capped_marks.setData([], [])
        self.legend.set_entries([])
        self.set_note("")

    def set_layers(self, sqnr: dict[str, float], precisions: dict[str, str]) -> None:
        self.names = list(sqnr)
        raw = [float(v) for v in sqnr.values()]
        self.true_values = raw
        self.precisions = [str(precisions.get(n) or "") for n in self.names]
        # The scale comes from the layers that were quantized; FP32 layers only show float rounding.
        scale_from = [v for v, p in zip(raw, self.precisions) if p in ("int8", "fp16") and math.isfinite(v)]
        if not scale_from:
            scale_from = [v for v in raw if math.isfinite(v)]
        top = max(scale_from, default=40.0)
        bottom = min(0.0, min(scale_from, default=0.0))
        cap = top + max(0.15 * (top - bottom), 3.0)
        self.capped = [(not math.isnan(v)) and v > cap for v in raw]
        self.values = [cap if c else (0.0 if math.isnan(v) else v) for v, c in zip(raw, self.capped)]
        brushes = []
        for p in self.precisions:
            brushes.append(style.PRECISION_COLOUR[Precision(p)] if p in ("int8", "fp16", "fp32") else QColor(150, 150, 150))
        self.bars.setOpts(x=np.arange(len(self.names)), height=self.values, brushes=brushes, width=0.8)
        capped_x = [i for i, c in enumerate(self.capped) if c]
        self.capped_marks.setData(capped_x, [cap] * len(capped_x))
        self.highlight_layer(self.selected)
        n = max(len(self.names), 1)
        self.plot.setRange(xRange=(-1, n), yRange=(bottom, cap + 0.1 * (cap - bottom)), padding=0)
        present = [p for p in ("int8", "fp16", "fp32") if p in self.precisions]
        self.legend.set_entries([(p.upper(), style.PRECISION_COLOUR[Precision(p)], "square") for p in present])
        if capped_x:
            shown = ", ".join(f"{self.names[i]}: {self._fmt(i)}" for i in capped_x[:3])
            more = f" and {len(capped_x) - 3} more" if len(capped_x) > 3 else ""
            self.set_note(f"▲ drawn cut off at {cap:.0f} dB: {shown}{more}")
        else:
            self.set_note("")

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        if run.layer_sqnr:
            self.set_layers(run.layer_sqnr, run.layer_precisions)
        else:
            self.clear()

    def highlight_layer(self, name: str | None) -> None:
        self.selected = name
        if name in self.names:
            i = self.names.index(name)
            self.highlight.setOpts(x=[i], height=[self.values[i]], width=0.95)
            self.hover_label.setText(f"{name}: {self._fmt(i)}")
        else:
            self.highlight.setOpts(x=[], height=[])

    def _fmt(self, i: int) -> str:
        v = self.true_values[i] if i < len(self.true_values) else self.values[i]
        text = "no error (∞ dB)" if math.isinf(v) and v > 0 else f"{v:.1f} dB"
        p = self.precisions[i].upper() if i < len(self.precisions) and self.precisions[i] else ""
        return f"{text} ({p})" if p else text

    def _index_at(self, scene_pos) -> int | None:
        if not self.names or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        x = self.plot.vb.mapSceneToView(scene_pos).x()
        i = int(round(x))
        return i if 0 <= i < len(self.names) and abs(x - i) <= 0.45 else None

    def _on_click(self, event) -> None:
        i = self._index_at(event.scenePos())
        if i is not None:
            self.click_bar(i)

    def click_bar(self, i: int) -> None:
        self.highlight_layer(self.names[i])
        self.layer_clicked.emit(self.names[i])

    def _on_move(self, pos) -> None:
        i = self._index_at(pos)
        if i is not None:
            self.hover_label.setText(f"{self.names[i]}: {self._fmt(i)}")

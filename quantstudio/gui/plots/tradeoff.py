"""The Speed vs accuracy panel: every variant tried, latency against accuracy."""

from __future__ import annotations

import math
import re
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QWidget

from quantstudio.gui import glossary
from quantstudio.gui.plots.base import PlotPanel, RUN_COLOURS, _VariantColours, _titled_plot, _log_plot_axis


def _short_name(name: str) -> str:
    """"#3 torch static (136 INT8)" → "#3"; other names unchanged."""
    m = re.match(r"#\d+", name)
    return m.group(0) if m else name


class TradeoffPanel(PlotPanel):
    """Latency vs accuracy of every variant tried (each point one run) and of each original.

    Colours match the other panels: originals grey / amber, the run the other panels show
    blue ("quantized"), other runs their own colour. Points carry short labels placed
    where they do not cover each other; the legend above names every point in full.
    """

    title = "Speed vs accuracy"
    empty_text = glossary.EMPTY_PANEL["tradeoff"]
    hover_text = glossary.TRADEOFF_HOVER
    LOG_RATIO = 10.0  # latencies spanning more than this use a log x axis

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget, self.legend, self.plot = _titled_plot(
            "Latency vs accuracy (every variant)", "top-1 / agreement (%)", "latency, batch 1 (ms)", legend_columns=2)
        self.x_axis = _log_plot_axis(self.plot)
        self.x_axis.setLogMode(False)
        self.plot.setLabel("bottom", "latency, batch 1 (ms)")
        self.scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("k"))
        self.plot.addItem(self.scatter)
        self._labels: list[pg.TextItem] = []
        self._layout.addWidget(self.plot_widget, 1)
        self.points: list[tuple[str, float, float]] = []
        self.colours: list[QColor] = []
        self.log_x = False
        self.shown_run: Any = None
        self.plot.vb.sigResized.connect(self._place_labels)
        self.plot.vb.sigRangeChanged.connect(self._place_labels)

    def export_target(self) -> Any:
        return self.plot_widget.ci

    def clear(self) -> None:
        self.set_points([])

    def _x(self, latency: float) -> float:
        return math.log10(latency) if self.log_x else latency

    def set_points(self, points: list[tuple[str, float, float]], colours: list[QColor] | None = None) -> None:
        """(label, latency ms, accuracy %) per variant, and optionally a colour each."""
        self.points = list(points)
        self.colours = list(colours) if colours else [QColor(*RUN_COLOURS[i % len(RUN_COLOURS)]) for i in range(len(points))]
        lats = [lat for _, lat, _ in points if lat > 0]
        self.log_x = bool(lats) and min(lats) > 0 and max(lats) / min(lats) > self.LOG_RATIO
        self.x_axis.setLogMode(self.log_x)
        self.plot.setLabel("bottom", "latency, batch 1 (ms" + (", log scale)" if self.log_x else ")"))
        spots = [
            {"pos": (self._x(lat), acc), "brush": self.colours[i], "data": name}
            for i, (name, lat, acc) in enumerate(points) if lat > 0 or not self.log_x
        ]
        self.scatter.setData(spots)
        self.legend.set_entries([(name, self.colours[i], "dot") for i, (name, _, _) in enumerate(points)])
        while len(self._labels) < len(points):
            t = pg.TextItem(anchor=(0, 0), color=(40, 40, 40))
            self.plot.addItem(t, ignoreBounds=True)
            self._labels.append(t)
        for i, t in enumerate(self._labels):
            t.setVisible(i < len(points))
            if i < len(points):
                t.setText(_short_name(points[i][0]))
        self._set_view()
        self._place_labels()

    def _set_view(self) -> None:
        if not self.points:
            return
        xs = [self._x(lat) for _, lat, _ in self.points if lat > 0 or not self.log_x]
        ys = [acc for _, _, acc in self.points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        dx = (x1 - x0) or (0.3 if self.log_x else max(abs(x0) * 0.3, 0.5))
        dy = (y1 - y0) or max(abs(y0) * 0.01, 0.5)
        # Room around the outer points for their labels (left/right) and above the top one.
        self.plot.setRange(xRange=(x0 - 0.15 * dx, x1 + 0.15 * dx), yRange=(y0 - 0.2 * dy, y1 + 0.3 * dy), padding=0)

    def _place_labels(self, *args) -> None:
        """Put each label beside its point where it covers no other label, no point and stays in view."""
        vb = self.plot.vb
        view = vb.sceneBoundingRect()
        if not self.points or view.width() < 10:
            return
        centres = []
        for _, lat, acc in self.points:
            centres.append(vb.mapViewToScene(QPointF(self._x(lat), acc)) if (lat > 0 or not self.log_x) else None)
        marks = [QRectF(c.x() - 6, c.y() - 6, 12, 12) for c in centres if c is not None]
        placed: list[QRectF] = []
        for i, (t, c) in enumerate(zip(self._labels, centres)):
            if c is None:
                t.setVisible(False)
                continue
            t.setVisible(True)
            br = t.textItem.boundingRect()
            w, h = br.width(), br.height()
            offsets = [(8, -h / 2), (-w - 8, -h / 2), (6, -h - 2), (-w - 6, -h - 2), (6, 2), (-w - 6, 2),
                       (-w / 2, -h - 8), (-w / 2, 8)]
            for k in (1, 2, 3):  # further away, stacked above or below
                offsets += [(8, -h / 2 - k * h), (8, -h / 2 + k * h), (-w - 8, -h / 2 - k * h), (-w - 8, -h / 2 + k * h)]
            best, best_cost = None, None
            for dx, dy in offsets:
                r = QRectF(c.x() + dx, c.y() + dy, w, h)
                cost = 0.0
                if not view.contains(r):
                    cost += 1e6 + _area(r) - _area(r.intersected(view))
                cost += sum(_area(r.intersected(o)) for o in placed) * 10
                cost += sum(_area(r.intersected(m)) for m in marks)
                if best_cost is None or cost < best_cost:
                    best, best_cost = r, cost
                if cost == 0:
                    break
            placed.append(best)
            t.setAnchor((0, 0))
            t.setPos(vb.mapSceneToView(best.topLeft()))

    def label_rects(self) -> list[QRectF]:
        """Scene rectangles of the visible point labels (what a reader sees)."""
        out = []
        for t in self._labels[: len(self.points)]:
            if t.isVisible():
                t.updateTransform(force=True)
                out.append(t.mapRectToScene(t.boundingRect()))
        return out

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run

    def show_variants(self, variants: list[Any]) -> None:
        colours = _VariantColours()
        originals: dict[str, tuple[float, float]] = {}
        pts: list[tuple[str, float, float]] = []
        cols: list[QColor] = []
        for index, run in enumerate(variants):
            q = run.metrics.get(run.quantized) or {}
            ref = run.metrics.get(run.reference) or {}
            acc_q = q.get("top1") if run.labeled else q.get("agreement")
            acc_ref = ref.get("top1") if run.labeled else 1.0
            # Every original this run timed (PyTorch, ONNX Runtime …); a later run's timing replaces an earlier one.
            for base, m in run.metrics.items():
                if base == run.quantized or not (base == run.reference or base.startswith("original")):
                    continue
                if m.get("latency_ms") is not None and acc_ref is not None:
                    originals[base] = (float(m["latency_ms"]), 100.0 * float(acc_ref))
            if q.get("latency_ms") is not None and acc_q is not None:
                pts.append((run.name, float(q["latency_ms"]), 100.0 * float(acc_q)))
                shown = self.shown_run is run or (self.shown_run is not None and self.shown_run.name == run.name)
                cols.append(colours.colour("quantized") if shown else QColor(*RUN_COLOURS[index % len(RUN_COLOURS)]))
        base_pts = [(name, lat, acc) for name, (lat, acc) in originals.items()]
        self.set_points(base_pts + pts, [colours.colour(n) if n in colours.FIXED else QColor(90, 90, 90)
                                          for n, _, _ in base_pts] + cols)


def _area(r: QRectF) -> float:
    return max(r.width(), 0.0) * max(r.height(), 0.0) if r.isValid() else 0.0

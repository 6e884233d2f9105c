"""Live result panels (pyqtgraph). Plot items are created once and updated with setData/setOpts.

Each panel takes live payloads from the running job (``feed``) and the final outcome
of a run (``show_run``); redraws are coalesced by a short timer so a stream of
hundreds of latency samples costs a handful of redraws. Every panel can save itself
as PNG or SVG (button, or pyqtgraph's own right-click ▸ Export).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.plan import Precision
from quantstudio.gui import style
from quantstudio.gui.thumbnails import ThumbnailModel

pg.setConfigOptions(antialias=True, background="w", foreground="k")

REDRAW_MS = 120


def variant_colour(index: int, alpha: int = 255) -> QColor:
    r, g, b = style.VARIANT_COLOURS[index % len(style.VARIANT_COLOURS)]
    return QColor(r, g, b, alpha)


def export_widget(target: Any, path: str | Path) -> Path:
    """Save a pyqtgraph scene item (PlotItem / GraphicsLayout) as .png or .svg."""
    import pyqtgraph.exporters as exporters

    path = Path(path)
    if path.suffix.lower() == ".svg":
        exporter = exporters.SVGExporter(target)
    else:
        exporter = exporters.ImageExporter(target)
        exporter.parameters()["width"] = max(int(target.sceneBoundingRect().width()), 600)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")
    exporter.export(str(path))
    return path


def _render_svg(view: QWidget, path: Path) -> Path:
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    gen = QSvgGenerator()
    gen.setFileName(str(path))
    gen.setSize(view.size())
    gen.setViewBox(QRect(0, 0, view.width(), view.height()))
    gen.setTitle("QuantStudio plot")
    painter = QPainter(gen)
    try:
        view.render(painter)
    finally:
        painter.end()
    return path


class PlotPanel(QWidget):
    """Base: a title row with a Save button, a pyqtgraph area, coalesced redraws."""

    title = "Plot"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(2, 2, 2, 2)
        self._layout.setSpacing(2)
        self.header = QHBoxLayout()
        self.note_label = QLabel()
        self.note_label.setStyleSheet("color: #a05000")
        self.header.addWidget(self.note_label, 1)
        self.save_button = QToolButton()
        self.save_button.setText("Save…")
        self.save_button.setToolTip("Save this plot as PNG or SVG")
        self.save_button.clicked.connect(self._on_save)
        self.header.addWidget(self.save_button)
        self._layout.addLayout(self.header)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)

    def export_target(self) -> Any:
        raise NotImplementedError

    def export_view(self) -> QWidget:
        """The pyqtgraph view widget (for rendering without pyqtgraph's exporters)."""
        return self.export_target().scene().views()[0]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            return export_widget(self.export_target(), path)
        except (ValueError, IndexError, TypeError):
            if path.suffix.lower() != ".svg":
                raise
            # pyqtgraph's SVG post-processing cannot parse every path Qt writes; Qt's
            # own SVG generator draws the same view (without pyqtgraph's clean-ups).
            return _render_svg(self.export_view(), path)

    @Slot()
    def _on_save(self) -> None:
        from quantstudio.gui.settings import SETTINGS

        start = str(Path(SETTINGS["last_export_dir"] or Path.home()) / f"{self.title.lower().replace(' ', '_')}.png")
        path, _ = QFileDialog.getSaveFileName(self, f"Save {self.title}", start, "PNG image (*.png);;SVG image (*.svg)")
        if path:
            self.save(path)

    def schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        pass

    def feed(self, payload: dict) -> None:
        pass

    def show_run(self, run: Any, variants: list[Any]) -> None:
        pass

    def clear(self) -> None:
        pass

    def set_note(self, text: str) -> None:
        self.note_label.setText(text)


def _plot_widget(title: str, left: str, bottom: str) -> pg.PlotWidget:
    w = pg.PlotWidget()
    w.setMinimumSize(QSize(260, 180))
    p = w.getPlotItem()
    p.setTitle(title, size="10pt")
    p.setLabel("left", left)
    p.setLabel("bottom", bottom)
    p.showGrid(x=True, y=True, alpha=0.2)
    return w


class _VariantColours:
    """Stable colour per variant name (the original is always the first, grey)."""

    FIXED = {"original": QColor(90, 90, 90), "original (onnxruntime)": QColor(210, 150, 50), "quantized": QColor(50, 110, 200)}

    def __init__(self) -> None:
        self.names: list[str] = []

    def index(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def colour(self, name: str, alpha: int = 255) -> QColor:
        c = QColor(self.FIXED[name]) if name in self.FIXED else variant_colour(self.index(name) + 3, alpha)
        c.setAlpha(alpha)
        return c

    def clear(self) -> None:
        self.names.clear()


# --------------------------------------------------------------------------- speed


class LatencyPanel(PlotPanel):
    """Latency distribution per variant (histogram filling in live) and throughput vs batch."""

    title = "Latency"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.batch_combo = QComboBox()
        self.batch_combo.setToolTip("Batch size whose latency distribution is shown")
        self.batch_combo.currentIndexChanged.connect(self.schedule)
        self.header.insertWidget(0, QLabel("Batch:"))
        self.header.insertWidget(1, self.batch_combo)
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setMinimumSize(QSize(300, 220))
        self.hist_plot = self.layout_widget.addPlot(row=0, col=0, title="Latency distribution")
        self.hist_plot.setLabel("bottom", "ms per batch (log scale)")
        self.hist_plot.setLogMode(x=True, y=False)
        self.hist_plot.setLabel("left", "runs")
        self.hist_plot.showGrid(x=True, y=True, alpha=0.2)
        self.hist_legend = self.hist_plot.addLegend(offset=(-10, 10))
        self.tp_plot = self.layout_widget.addPlot(row=0, col=1, title="Throughput vs batch size")
        self.tp_plot.setLabel("bottom", "batch size")
        self.tp_plot.setLabel("left", "samples / s")
        self.tp_plot.showGrid(x=True, y=True, alpha=0.2)
        self.tp_plot.setLogMode(x=True, y=False)
        self._layout.addWidget(self.layout_widget, 1)
        self.colours = _VariantColours()
        self.samples: dict[str, dict[int, list[float]]] = {}
        self.throughput: dict[str, dict[int, float]] = {}
        self.hist_items: dict[str, pg.PlotDataItem] = {}
        self.tp_items: dict[str, pg.PlotDataItem] = {}

    def export_target(self) -> Any:
        return self.layout_widget.ci

    def clear(self) -> None:
        self.samples.clear()
        self.throughput.clear()
        for item in list(self.hist_items.values()):
            item.setData([], [])
        for item in list(self.tp_items.values()):
            item.setData([], [])
        self.batch_combo.clear()

    def _ensure_items(self, name: str) -> None:
        if name in self.hist_items:
            return
        c = self.colours.colour(name)
        fill = QColor(c)
        fill.setAlpha(80)
        hist = pg.PlotDataItem([0, 1], [0], stepMode="center", fillLevel=0, brush=fill, pen=pg.mkPen(c, width=2), name=name)
        hist.setData([], [])
        self.hist_plot.addItem(hist)
        self.hist_items[name] = hist
        tp = pg.PlotDataItem([], [], pen=pg.mkPen(c, width=2), symbol="o", symbolBrush=c, symbolSize=7, name=name)
        self.tp_plot.addItem(tp)
        self.tp_items[name] = tp

    def _ensure_batch(self, batch: int) -> None:
        if self.batch_combo.findData(batch) < 0:
            self.batch_combo.addItem(str(batch), batch)

    def feed(self, payload: dict) -> None:
        kind = payload.get("type")
        if kind == "latency":
            name, batch = str(payload["variant"]), int(payload["batch"])
            self._ensure_items(name)
            self._ensure_batch(batch)
            self.samples.setdefault(name, {}).setdefault(batch, []).append(float(payload["ms"]))
            self.schedule()
        elif kind == "throughput":
            name, batch = str(payload["variant"]), int(payload["batch"])
            self._ensure_items(name)
            self.throughput.setdefault(name, {})[batch] = float(payload["value"])
            self.schedule()

    def show_run(self, run: Any, variants: list[Any]) -> None:
        for name, per_batch in (run.latency_samples or {}).items():
            self._ensure_items(name)
            for b, xs in per_batch.items():
                self._ensure_batch(int(b))
                self.samples.setdefault(name, {})[int(b)] = list(xs)
        for name, per_batch in (run.throughput or {}).items():
            self._ensure_items(name)
            self.throughput[name] = {int(b): float(v) for b, v in per_batch.items()}
        self.redraw()

    def redraw(self) -> None:
        batch = self.batch_combo.currentData()
        if batch is None and self.batch_combo.count():
            batch = self.batch_combo.itemData(0)
        all_xs = [x for per in self.samples.values() for x in per.get(batch, [])]
        if all_xs:
            # Variants can differ 100x in speed: bins are even on a log scale (the axis is log too).
            lo = max(float(np.percentile(all_xs, 0.5)), 1e-4)
            hi = max(float(np.percentile(all_xs, 99.5)), lo * 1.01)
            edges = np.geomspace(lo, hi, 41)
        for name, item in self.hist_items.items():
            xs = self.samples.get(name, {}).get(batch, [])
            if xs and all_xs:
                counts, _ = np.histogram(np.clip(xs, edges[0], edges[-1]), bins=edges)
                item.setData(edges, counts)
            else:
                item.setData([], [])
        for name, item in self.tp_items.items():
            per = self.throughput.get(name, {})
            if per:
                bs = sorted(per)
                item.setData(bs, [per[b] for b in bs])
            else:
                item.setData([], [])


# --------------------------------------------------------------------------- bars


class _BarsPanel(PlotPanel):
    """Bars per variant on named categories, one BarGraphItem per variant (legend-friendly)."""

    categories: tuple[str, ...] = ()

    def __init__(self, title: str, left: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = _plot_widget(title, left, "")
        self.plot = self.plot_widget.getPlotItem()
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self._layout.addWidget(self.plot_widget, 1)
        self.colours = _VariantColours()
        self.values: dict[str, dict[str, float | None]] = {}
        self.items: dict[str, pg.BarGraphItem] = {}
        self._set_ticks(self.categories)

    def _set_ticks(self, categories) -> None:
        self.plot.getAxis("bottom").setTicks([[(i, c) for i, c in enumerate(categories)]])

    def export_target(self) -> Any:
        return self.plot

    def clear(self) -> None:
        self.values.clear()
        for item in self.items.values():
            item.setOpts(x=[], height=[])

    def set_values(self, name: str, values: dict[str, float | None]) -> None:
        self.values.setdefault(name, {}).update(values)
        if name not in self.items:
            c = self.colours.colour(name)
            item = pg.BarGraphItem(x=[], height=[], width=0.2, brush=c, pen=pg.mkPen(c.darker(130)))
            self.plot.addItem(item)
            self.legend.addItem(item, name)
            self.items[name] = item
        self.schedule()

    def remove(self, name: str) -> None:
        self.values.pop(name, None)
        item = self.items.pop(name, None)
        if item is not None:
            self.plot.removeItem(item)
            self.legend.removeItem(item)
        self.schedule()

    def redraw(self) -> None:
        names = [n for n in self.items if n in self.values]
        k = max(len(names), 1)
        width = 0.8 / k
        for j, name in enumerate(names):
            xs, hs = [], []
            for i, cat in enumerate(self.categories):
                v = self.values[name].get(cat)
                if v is None or (isinstance(v, float) and not math.isfinite(v)):
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                hs.append(v)
            self.items[name].setOpts(x=xs, height=hs, width=width * 0.9)


class AccuracyPanel(_BarsPanel):
    """Top-1, top-5, F1, agreement of every variant side by side (percent)."""

    title = "Accuracy"
    categories = ("top-1", "top-5", "F1", "agreement")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Accuracy (%)", "%", parent)
        self.plot.setYRange(0, 100)

    def show_run(self, run: Any, variants: list[Any]) -> None:
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {
                "top-1": _pct(m.get("top1")), "top-5": _pct(m.get("top5")),
                "F1": _pct(m.get("f1")), "agreement": _pct(m.get("agreement")),
            })
        self.set_note(run.data_note if run.is_random or not run.labeled else "")
        self.redraw()

    def feed(self, payload: dict) -> None:
        if payload.get("type") == "metrics":
            for name in ("original", "quantized"):
                m = payload.get(name) or {}
                self.set_values(name, {
                    "top-1": _pct(m.get("top1")), "top-5": _pct(m.get("top5")),
                    "F1": _pct(m.get("f1")), "agreement": _pct(m.get("agreement")),
                })
            return
        if payload.get("kind") == "evaluation" or payload.get("type") == "evaluation":
            for name, top1 in (payload.get("top1") or {}).items():
                if top1 is not None:
                    self.set_values(name, {"top-1": 100.0 * float(top1)})


def _pct(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return 100.0 * float(v)
    except (TypeError, ValueError):
        return None


class SizePanel(_BarsPanel):
    """Model size per variant, and the memory running it takes (MB)."""

    title = "Size and memory"
    categories = ("model size", "memory running it")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Size and memory (MB)", "MB", parent)
        self.plot_widget.setToolTip(
            "Model size: the file on disk.\nMemory running it: how much the peak memory of a fresh "
            "process grows when it loads the model and runs one batch (the runtime itself not counted)."
        )

    def show_run(self, run: Any, variants: list[Any]) -> None:
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {"model size": _mb(m.get("size_bytes")), "memory running it": _mb(_memory_of(m))})
        has_memory = any(_memory_of(run.metrics.get(n) or {}) for n in (run.reference, run.quantized))
        self.set_note("" if has_memory else "Memory was not measured: tick 'Peak memory' in the Data panel and run again.")
        self.redraw()

    def feed(self, payload: dict) -> None:
        if payload.get("type") == "size":
            self.set_values("original", {"model size": _mb(payload.get("original_bytes"))})
            self.set_values("quantized", {"model size": _mb(payload.get("quantized_bytes"))})
        elif payload.get("type") == "memory":
            self.set_values(str(payload["variant"]), {"memory running it": _mb(_memory_of(payload))})


def _memory_of(m: dict) -> Any:
    """What running the model adds to a fresh process; the whole process's peak when only that is known."""
    return m.get("model_peak_bytes") or m.get("peak_rss_bytes")


def _mb(v: Any) -> float | None:
    return None if v is None else float(v) / 1e6


# --------------------------------------------------------------------------- per layer


class LayerErrorPanel(PlotPanel):
    """Per-layer SQNR bars (model order), coloured by precision; linked to the layer tree.

    Signals: ``layer_clicked(str)``.
    """

    title = "Per-layer error"
    layer_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = _plot_widget("Per-layer SQNR (dB, higher is better)", "dB", "layer (model order)")
        self.plot = self.plot_widget.getPlotItem()
        self._layout.addWidget(self.plot_widget, 1)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8, brushes=[])
        self.highlight = pg.BarGraphItem(x=[], height=[], width=0.9, brush=QColor(0, 0, 0, 0), pen=pg.mkPen("r", width=2.5))
        self.plot.addItem(self.bars)
        self.plot.addItem(self.highlight)
        self.threshold = pg.InfiniteLine(pos=20, angle=0, pen=pg.mkPen((200, 60, 60), style=Qt.PenStyle.DashLine))
        self.plot.addItem(self.threshold)
        self.hover_label = QLabel("Click a bar to select its layer in the tree.")
        self.hover_label.setStyleSheet("color: #555")
        self._layout.addWidget(self.hover_label)
        self.names: list[str] = []
        self.values: list[float] = []
        self.selected: str | None = None
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.plot.scene().sigMouseMoved.connect(self._on_move)

    def export_target(self) -> Any:
        return self.plot

    def clear(self) -> None:
        self.names, self.values = [], []
        self.bars.setOpts(x=[], height=[], brushes=[])
        self.highlight.setOpts(x=[], height=[])

    def set_layers(self, sqnr: dict[str, float], precisions: dict[str, str]) -> None:
        self.names = list(sqnr)
        finite = [v for v in sqnr.values() if math.isfinite(v)]
        cap = (max(finite) + 10) if finite else 60.0
        self.values = [min(float(v), cap) if not math.isnan(v) else 0.0 for v in sqnr.values()]
        brushes = []
        for n in self.names:
            p = precisions.get(n)
            brushes.append(style.PRECISION_COLOUR[Precision(p)] if p in ("int8", "fp16", "fp32") else QColor(150, 150, 150))
        self.bars.setOpts(x=np.arange(len(self.names)), height=self.values, brushes=brushes, width=0.8)
        self.highlight_layer(self.selected)
        self.plot.enableAutoRange()

    def show_run(self, run: Any, variants: list[Any]) -> None:
        if run.layer_sqnr:
            self.set_layers(run.layer_sqnr, run.layer_precisions)

    def highlight_layer(self, name: str | None) -> None:
        self.selected = name
        if name in self.names:
            i = self.names.index(name)
            self.highlight.setOpts(x=[i], height=[self.values[i]], width=0.95)
            self.hover_label.setText(f"{name}: {self._fmt(i)}")
        else:
            self.highlight.setOpts(x=[], height=[])

    def _fmt(self, i: int) -> str:
        v = self.values[i]
        return f"{v:.1f} dB"

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


class ConfusionPanel(PlotPanel):
    """Confusion matrix (rows: true class, columns: predicted) of a chosen variant."""

    title = "Confusion matrix"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.variant_combo = QComboBox()
        self.variant_combo.currentIndexChanged.connect(self.redraw)
        self.header.insertWidget(0, QLabel("Variant:"))
        self.header.insertWidget(1, self.variant_combo)
        self.plot_widget = _plot_widget("Confusion matrix", "true class", "predicted class")
        self.plot = self.plot_widget.getPlotItem()
        self.plot.invertY(True)
        self.plot.setAspectLocked(True)
        self.image = pg.ImageItem(np.zeros((1, 1)))
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.plot.addItem(self.image)
        self._layout.addWidget(self.plot_widget, 1)
        self.matrices: dict[str, tuple[np.ndarray, list[str]]] = {}

    def export_target(self) -> Any:
        return self.plot

    def clear(self) -> None:
        self.matrices.clear()
        self.variant_combo.clear()
        self.image.setImage(np.zeros((1, 1)))

    def show_run(self, run: Any, variants: list[Any]) -> None:
        for name, (matrix, labels) in (run.confusion or {}).items():
            self.matrices[name] = (np.asarray(matrix, dtype=float), list(labels))
            if self.variant_combo.findText(name) < 0:
                self.variant_combo.addItem(name)
        quantized = [n for n in self.matrices if n != run.reference]
        if quantized:
            self.variant_combo.setCurrentText(quantized[-1])
        if not run.confusion:
            self.set_note("No labels: a confusion matrix needs class folders." if not run.labeled else "")
        self.redraw()

    def redraw(self) -> None:
        name = self.variant_combo.currentText()
        if name not in self.matrices:
            return
        m, labels = self.matrices[name]
        # ImageItem's first axis is x: transpose so rows (true class) run down the y axis.
        self.image.setImage(m.T, autoLevels=False, levels=(0, max(float(m.max()), 1.0)))
        self.image.setRect(-0.5, -0.5, m.shape[1], m.shape[0])
        ticks = [(i, lab) for i, lab in enumerate(labels)] if len(labels) <= 30 else []
        self.plot.getAxis("bottom").setTicks([ticks])
        self.plot.getAxis("left").setTicks([ticks])
        self.plot.setTitle(f"Confusion matrix — {name}", size="10pt")


class TradeoffPanel(PlotPanel):
    """Latency vs accuracy of every variant tried (each point one run)."""

    title = "Speed vs accuracy"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = _plot_widget("Latency vs accuracy (every variant)", "top-1 / agreement (%)", "latency, batch 1 (ms)")
        self.plot = self.plot_widget.getPlotItem()
        self.scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("k"))
        self.plot.addItem(self.scatter)
        self._labels: list[pg.TextItem] = []
        self._layout.addWidget(self.plot_widget, 1)
        self.points: list[tuple[str, float, float]] = []

    def export_target(self) -> Any:
        return self.plot

    def clear(self) -> None:
        self.set_points([])

    def set_points(self, points: list[tuple[str, float, float]]) -> None:
        """(label, latency ms, accuracy %) per variant."""
        self.points = points
        spots = [
            {"pos": (lat, acc), "brush": variant_colour(i), "data": name}
            for i, (name, lat, acc) in enumerate(points)
        ]
        self.scatter.setData(spots)
        while len(self._labels) < len(points):
            t = pg.TextItem(anchor=(0, 1), color=(40, 40, 40))
            self.plot.addItem(t)
            self._labels.append(t)
        for i, t in enumerate(self._labels):
            if i < len(points):
                name, lat, acc = points[i]
                t.setText(name)
                t.setPos(lat, acc)
                t.setVisible(True)
            else:
                t.setVisible(False)

    def show_variants(self, variants: list[Any]) -> None:
        pts: list[tuple[str, float, float]] = []
        for run in variants:
            q = run.metrics.get(run.quantized) or {}
            ref = run.metrics.get(run.reference) or {}
            acc_q = q.get("top1") if run.labeled else q.get("agreement")
            acc_ref = ref.get("top1") if run.labeled else 1.0
            if not pts and acc_ref is not None:
                for base in (run.reference, "original (onnxruntime)"):
                    lat = (run.metrics.get(base) or {}).get("latency_ms")
                    if lat is not None:
                        pts.append((base, float(lat), 100.0 * float(acc_ref)))
            if q.get("latency_ms") is not None and acc_q is not None:
                pts.append((run.name, float(q["latency_ms"]), 100.0 * float(acc_q)))
        self.set_points(pts)


class ChangedSamplesPanel(QWidget):
    """Thumbnails of the samples whose top-1 prediction changed after quantization."""

    title = "Changed predictions"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        self.label = QLabel("After a run: the images the quantized model classifies differently.")
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        self.model = ThumbnailModel(self)
        self.view = QListView()
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setIconSize(QSize(56, 56))
        self.view.setGridSize(QSize(96, 84))
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setModel(self.model)
        layout.addWidget(self.view, 1)

    def clear(self) -> None:
        self.model.set_items([])

    def show_run(self, run: Any, variants: list[Any]) -> None:
        items = []
        for c in run.changed[:200]:
            label = f" (true {c['label']})" if c.get("label") is not None else ""
            caption = f"{c['reference']} → {c['prediction']}"
            tip = f"original says {c['reference']}, quantized says {c['prediction']}{label}\n{c.get('path') or ''}"
            items.append((c.get("path"), caption, None, tip))
        self.model.set_items(items)
        n = len(run.changed)
        self.label.setText(
            f"{n} of {run.n_evaluated} samples changed their top-1 class." if n else
            ("No sample changed its top-1 class." if run.n_evaluated else "No evaluation in this run.")
        )

    def shutdown(self) -> None:
        self.model.shutdown()

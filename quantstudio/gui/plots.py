"""Live result panels (pyqtgraph). Plot items are created once and updated with setData/setOpts.

Each panel takes live payloads from the running job (``feed``) and the final outcome
of a run (``show_run``); redraws are coalesced by a short timer so a stream of
hundreds of latency samples costs a handful of redraws. Every panel can save itself
as PNG or SVG (button, or pyqtgraph's own right-click ▸ Export).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.plan import Precision
from quantstudio.core.results import (BenchmarkDone, EvaluationProgress, LatencySample, MemoryMeasured, MetricsReady,
                                      SizesMeasured, ThroughputMeasured, VariantRole, as_event)
from quantstudio.gui import glossary, style
from quantstudio.gui.thumbnails import ThumbnailModel

pg.setConfigOptions(antialias=True, background="w", foreground="k")

REDRAW_MS = 120


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
    """Base: a title row with a Save button, a pyqtgraph area, coalesced redraws.

    While the panel's plots hold no data, a sentence over them (``empty_text``, set by
    each panel) says what the panel will show and how to fill it, instead of empty 0-1
    axes. Whether there is data is read from the plot items themselves whenever a scene
    changes, so the panels need not report it.
    """

    title = "Plot"
    empty_text = "Press Quantize to fill this panel."
    hover_text = ""  # what the figures mean, as the plots' tooltip

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.empty_overlay = QLabel(self.empty_text, self)
        self.empty_overlay.setObjectName("emptyPanelHint")
        self.empty_overlay.setWordWrap(True)
        self.empty_overlay.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_overlay.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.empty_overlay.setStyleSheet(
            "#emptyPanelHint { background: rgba(255, 255, 255, 235); color: #444; border: 1px solid #ccc;"
            " border-radius: 6px; padding: 10px; font-size: 10.5pt; }")
        self._watched_scenes: list[Any] = []
        # The plots are made by the subclass after this constructor: watch them once it is done.
        self._watch_timer = QTimer(self)
        self._watch_timer.setSingleShot(True)
        self._watch_timer.setInterval(0)
        self._watch_timer.timeout.connect(self._watch_scenes)
        self._watch_timer.start()
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(2, 2, 2, 2)
        self._layout.setSpacing(2)
        self.header = QHBoxLayout()
        self.note_label = QLabel()
        self.note_label.setStyleSheet("color: #a05000")
        # A long note wraps instead of widening the panel (and its dock) to its full length.
        self.note_label.setWordWrap(True)
        self.note_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
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

    def feed(self, event: Any) -> None:
        """A live event of the running job (a :mod:`quantstudio.core.results` event class)."""

    def show_run(self, run: Any, variants: list[Any]) -> None:
        pass

    def clear(self) -> None:
        pass

    def set_note(self, text: str) -> None:
        self.note_label.setText(text)

    # ------------------------------------------------------------------ empty-panel hint
    def _views(self) -> list[pg.GraphicsView]:
        return self.findChildren(pg.GraphicsView)

    @Slot()
    def _watch_scenes(self) -> None:
        for view in self._views():
            scene = view.scene()
            if scene is not None and scene not in self._watched_scenes:
                scene.changed.connect(self._on_scene_changed)
                self._watched_scenes.append(scene)
            if self.hover_text and not view.toolTip():
                view.setToolTip(self.hover_text)
        self.update_empty_hint()

    @Slot(list)
    def _on_scene_changed(self, _regions) -> None:
        self.update_empty_hint()

    def has_data(self) -> bool:
        """True when any plot item of this panel holds something to look at."""
        for view in self._views():
            scene = view.scene()
            if scene is None:
                continue
            for item in scene.items():
                if not item.isVisible():
                    continue
                if isinstance(item, pg.PlotDataItem):
                    x, _y = item.getData()
                    if x is not None and len(x):
                        return True
                elif isinstance(item, pg.ScatterPlotItem):
                    if len(item.data):
                        return True
                elif isinstance(item, pg.BarGraphItem):
                    height = item.opts.get("height")
                    if height is not None and len(height):
                        return True
                elif isinstance(item, pg.ImageItem):
                    image = item.image
                    if image is not None and image.size > 1:
                        return True
        return False

    def update_empty_hint(self) -> None:
        """Show the sentence over the plots while they are empty; hide it once they are not."""
        empty = not self.has_data()
        if empty:
            self._place_empty_hint()
        if self.empty_overlay.isHidden() == empty:
            self.empty_overlay.setVisible(empty)
        if empty:
            self.empty_overlay.raise_()

    def _place_empty_hint(self) -> None:
        views = [v for v in self._views() if not v.isHidden()]
        area = views[0].geometry() if views else self.rect()
        for v in views[1:]:
            area = area.united(v.geometry())
        width = max(120, min(area.width() - 24, 420))
        self.empty_overlay.setFixedWidth(width)
        height = self.empty_overlay.heightForWidth(width)
        self.empty_overlay.setFixedHeight(max(height, 40))
        self.empty_overlay.move(area.x() + (area.width() - width) // 2,
                                area.y() + max(8, (area.height() - self.empty_overlay.height()) // 2))

    def showEvent(self, event) -> None:
        """Overrides QWidget.showEvent: a scene whose views are all hidden (a panel in a tab
        behind another) reports no changes, so look again when the panel comes into sight."""
        super().showEvent(event)
        self.update_empty_hint()

    def resizeEvent(self, event) -> None:
        """Overrides QWidget.resizeEvent: keep the empty-panel sentence centred on the plots."""
        super().resizeEvent(event)
        if not self.empty_overlay.isHidden():
            self._place_empty_hint()


def _plot_widget(title: str, left: str, bottom: str) -> pg.PlotWidget:
    w = pg.PlotWidget()
    w.setMinimumSize(QSize(260, 180))
    p = w.getPlotItem()
    p.setTitle(title, size="10pt")
    p.setLabel("left", left)
    p.setLabel("bottom", bottom)
    p.showGrid(x=True, y=True, alpha=0.2)
    return w


# --------------------------------------------------------------------------- shared pieces

# Colours for variants that are neither an original nor "quantized": none of them is the
# grey, blue or amber those fixed names use, so a run never looks like an original.
RUN_COLOURS = [(60, 160, 70), (150, 80, 180), (200, 60, 80), (40, 160, 160), (140, 100, 60), (230, 120, 180)]


class _VariantColours:
    """Stable colour per variant name: fixed ones for the originals and "quantized", then RUN_COLOURS."""

    FIXED = {VariantRole.ORIGINAL.value: QColor(90, 90, 90), VariantRole.ORIGINAL_SAME_RUNTIME.value: QColor(210, 150, 50),
             VariantRole.QUANTIZED.value: QColor(50, 110, 200)}

    def __init__(self) -> None:
        self.names: list[str] = []

    def index(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def colour(self, name: str, alpha: int = 255) -> QColor:
        if name in self.FIXED:
            c = QColor(self.FIXED[name])
        else:
            c = QColor(*RUN_COLOURS[self.index(name) % len(RUN_COLOURS)])
        c.setAlpha(alpha)
        return c

    def clear(self) -> None:
        self.names.clear()


class _Swatch(pg.ItemSample):
    """A legend sample drawn from a colour alone (a filled square or a dot), not from a plot item.

    Overrides ItemSample.paint and mouseClickEvent: clicking does not hide anything.
    """

    def __init__(self, colour: QColor, shape: str = "square") -> None:
        super().__init__(self)  # ItemSample keeps an item; only its identity is used (LegendItem.removeItem)
        self.colour = QColor(colour)
        self.shape = shape

    def paint(self, p, *args) -> None:
        p.setRenderHint(p.RenderHint.Antialiasing)
        p.setPen(pg.mkPen(self.colour.darker(140)))
        p.setBrush(pg.mkBrush(self.colour))
        if self.shape == "dot":
            p.drawEllipse(QRectF(5, 5, 11, 11))
        else:
            p.drawRect(QRectF(3, 4, 14, 13))

    def mouseClickEvent(self, event) -> None:
        event.accept()


class _OutsideLegend(pg.LegendItem):
    """A legend that lives in its own row of a GraphicsLayout, above the plot, so it never hides data.

    Entries are (name, colour, shape); ``set_entries`` rebuilds only when they change.
    Overrides LegendItem.updateSize: the row is exactly as tall as the entries need.
    """

    ROW_HEIGHT = 21

    def __init__(self, columns: int = 3) -> None:
        super().__init__(colCount=columns, horSpacing=4, labelTextSize="9pt", frame=False)
        self.layout.setHorizontalSpacing(6)
        # As wide as its entries, not the whole row (entries would drift apart).
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
        self.entries: list[tuple[str, str, str]] = []
        self.updateSize()

    def place(self, layout: pg.GraphicsLayout, row: int, col: int = 0, colspan: int = 1) -> None:
        """Put the legend in a layout cell, centred."""
        layout.addItem(self, row=row, col=col, colspan=colspan)
        layout.layout.setAlignment(self, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter)

    def set_entries(self, entries: list[tuple[str, QColor, str]]) -> None:
        key = [(n, c.name(), shape) for n, c, shape in entries]
        if key == self.entries:
            return
        self.entries = key
        self.clear()
        for name, colour, shape in entries:
            self.addItem(_Swatch(colour, shape), name)
        self.updateSize()

    def names(self) -> list[str]:
        return [n for n, _, _ in self.entries]

    def updateSize(self) -> None:
        n = len(getattr(self, "entries", []))
        rows = math.ceil(n / max(self.columnCount, 1)) if n else 0
        height = rows * self.ROW_HEIGHT
        self.setMinimumHeight(height)
        self.setMaximumHeight(height)
        self.updateGeometry()


def _legend_order(names) -> list[str]:
    """Originals first (the PyTorch one, then others), then the quantized variants, each in given order."""
    names = list(names)
    return sorted(names, key=lambda n: (0 if n == "original" else 1 if n.startswith("original") else 2, names.index(n)))


def _titled_plot(title: str, left: str, bottom: str, legend_columns: int | None = 3):
    """A GraphicsLayoutWidget holding a title, an optional legend row under it, and one PlotItem."""
    widget = pg.GraphicsLayoutWidget()
    widget.setMinimumSize(QSize(260, 180))
    widget.title_label = widget.ci.addLabel(title, row=0, col=0, size="10pt")  # panels may retitle it
    legend = None
    if legend_columns:
        legend = _OutsideLegend(legend_columns)
        legend.place(widget.ci, row=1)
    plot = widget.ci.addPlot(row=2, col=0)
    plot.setLabel("left", left)
    if bottom:
        plot.setLabel("bottom", bottom)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setMenuEnabled(True)
    return widget, legend, plot


def _tick_text(x: float) -> str:
    """A plain tick label: 0.5, 2, 20, 500, 2000; powers of ten as 10⁴ once numbers get long."""
    if x <= 0:
        return "0"
    if x >= 1e4 or x < 1e-3:
        k = round(math.log10(x))
        if abs(x / 10**k - 1) < 1e-6:
            return "10" + str(k).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return f"{x:.0e}"
    return f"{float(f'{x:.3g}'):g}"


def _nice_step(span: float, count: int = 4) -> float:
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


class LogAxis(pg.AxisItem):
    """A log axis with plain labels: 1, 2, 5, 10, 20, 50 … as room allows, never stacked on each other.

    pyqtgraph labels every minor tick of a log axis ("2·10¹3·10¹4·10¹"); this chooses one
    labelled set from the pixels each decade gets and leaves the other ticks unlabelled.
    Overrides AxisItem.logTickValues and AxisItem.logTickStrings (values are log10).
    """

    LABEL_PX = 32  # room one label needs, in pixels

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802 - pyqtgraph's name
        lo, hi = sorted((float(minVal), float(maxVal)))
        decades = max(hi - lo, 1e-9)
        per_decade = size / decades if size else 100.0
        if per_decade >= self.LABEL_PX * 9:
            mantissas = range(1, 10)
        elif per_decade >= self.LABEL_PX * 3:
            mantissas = (1, 2, 5)
        elif per_decade >= self.LABEL_PX:
            mantissas = (1,)
        else:
            mantissas = ()
        labelled: list[float] = []
        every = max(1, math.ceil(self.LABEL_PX / max(per_decade, 1e-9)))
        for d in range(math.floor(lo), math.ceil(hi) + 1):
            for m in mantissas:
                v = d + math.log10(m)
                if lo <= v <= hi:
                    labelled.append(v)
            if not mantissas and d % every == 0 and lo <= d <= hi:
                labelled.append(float(d))
        if len(labelled) < 2:
            # A narrow range (less than a decade, between labelled values): nice linear values.
            a, b = 10**lo, 10**hi
            step = _nice_step(b - a)
            first = math.ceil(a / step) * step
            labelled = [math.log10(v) for v in np.arange(first, b + step * 1e-6, step) if v > 0]
        minor = []
        if per_decade >= 30:
            for d in range(math.floor(lo), math.ceil(hi) + 1):
                for m in range(1, 10):
                    v = d + math.log10(m)
                    if lo <= v <= hi and not any(abs(v - t) < 1e-9 for t in labelled):
                        minor.append(v)
        return [(1.0, labelled), (None, minor)]

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        if spacing is None:
            return ["" for _ in values]
        return [_tick_text(10 ** float(v) * scale) for v in values]


def _log_plot_axis(plot: pg.PlotItem, orientation: str = "bottom") -> LogAxis:
    axis = LogAxis(orientation)
    plot.setAxisItems({orientation: axis})
    return axis


# --------------------------------------------------------------------------- speed


class LatencyPanel(PlotPanel):
    """Latency distribution per variant (histogram filling in live) and throughput vs batch.

    One legend above both plots; a run shows exactly its own series (a series a previous
    run had and this one has not is removed, with its legend entry).
    """

    title = "Latency"
    empty_text = glossary.EMPTY_PANEL["latency"]
    hover_text = glossary.LATENCY_HOVER

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.batch_combo = QComboBox()
        self.batch_combo.setToolTip("Batch size whose latency distribution is shown")
        self.batch_combo.currentIndexChanged.connect(self.schedule)
        self.header.insertWidget(0, QLabel("Batch:"))
        self.header.insertWidget(1, self.batch_combo)
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setMinimumSize(QSize(300, 220))
        self.legend = _OutsideLegend(3)
        self.legend.place(self.layout_widget.ci, row=0, colspan=2)
        self.hist_plot = self.layout_widget.addPlot(row=1, col=0, title="Latency distribution")
        _log_plot_axis(self.hist_plot)
        self.hist_plot.setLabel("bottom", "ms per batch (log scale)")
        self.hist_plot.setLogMode(x=True, y=False)
        self.hist_plot.setLabel("left", "runs")
        self.hist_plot.showGrid(x=True, y=True, alpha=0.2)
        self.tp_plot = self.layout_widget.addPlot(row=1, col=1, title="Throughput vs batch size")
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
        self.shown_run: Any = None

    def export_target(self) -> Any:
        return self.layout_widget.ci

    def clear(self) -> None:
        self.set_timing_warnings([])
        self.samples.clear()
        self.throughput.clear()
        for name in list(self.hist_items):
            self._remove_items(name)
        self.batch_combo.clear()
        self._update_legend()

    def _remove_items(self, name: str) -> None:
        self.hist_plot.removeItem(self.hist_items.pop(name))
        self.tp_plot.removeItem(self.tp_items.pop(name))

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
        self._update_legend()

    def _update_legend(self) -> None:
        self.legend.set_entries([(n, self.colours.colour(n), "square") for n in _legend_order(self.hist_items)])

    def _ensure_batch(self, batch: int) -> None:
        if self.batch_combo.findData(batch) < 0:
            self.batch_combo.addItem(str(batch), batch)

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, LatencySample):
            self._ensure_items(event.variant)
            self._ensure_batch(event.batch)
            self.samples.setdefault(event.variant, {}).setdefault(event.batch, []).append(float(event.ms))
            self.schedule()
        elif isinstance(event, ThroughputMeasured):
            self._ensure_items(event.variant)
            self.throughput.setdefault(event.variant, {})[event.batch] = float(event.value)
            self.schedule()
        elif isinstance(event, BenchmarkDone):
            self.set_timing_warnings(list(event.warnings))

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        samples = {name: {int(b): list(xs) for b, xs in per.items()} for name, per in (run.latency_samples or {}).items()}
        throughput = {name: {int(b): float(v) for b, v in per.items()} for name, per in (run.throughput or {}).items()}
        names = list(dict.fromkeys([*samples, *throughput]))
        for stale in [n for n in self.hist_items if n not in names]:
            self._remove_items(stale)
        self.samples, self.throughput = samples, throughput
        batches = sorted({b for per in samples.values() for b in per} | {b for per in throughput.values() for b in per})
        current = self.batch_combo.currentData()
        self.batch_combo.blockSignals(True)
        self.batch_combo.clear()
        for b in batches:
            self.batch_combo.addItem(str(b), b)
        if current in batches:
            self.batch_combo.setCurrentIndex(batches.index(current))
        self.batch_combo.blockSignals(False)
        for name in names:
            self._ensure_items(name)
        self._update_legend()
        self.set_timing_warnings(list(getattr(run, "timing_warnings", []) or []))
        self.redraw()

    def set_timing_warnings(self, warnings: list[str]) -> None:
        """Say so, above the plots, when the timings cannot be trusted (spread, busy CPU)."""
        self.set_note("⚠ Timings unreliable — hover for why" if warnings else "")
        self.note_label.setToolTip("\n".join(warnings))

    def batches(self) -> list[int]:
        return sorted({b for per in self.throughput.values() for b in per})

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
        # The batch sizes measured are the only meaningful x values: tick exactly those.
        batches = self.batches()
        axis = self.tp_plot.getAxis("bottom")
        axis.setTicks([[(math.log10(b), str(b)) for b in batches if b > 0]] if batches else None)
        if batches:
            lo, hi = math.log10(batches[0]), math.log10(batches[-1])
            pad = max((hi - lo) * 0.08, 0.15)
            self.tp_plot.setXRange(lo - pad, hi + pad, padding=0)


# --------------------------------------------------------------------------- bars


class _BarsPanel(PlotPanel):
    """Bars per variant on named categories, one BarGraphItem per variant, a value above each bar.

    The legend sits above the plot (never over a bar); the y range leaves room for the values.
    """

    categories: tuple[str, ...] = ()
    value_format = "{:.1f}"

    def __init__(self, title: str, left: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.left_label = left
        self.plot_widget, self.legend, self.plot = _titled_plot(title, left, "")
        self._layout.addWidget(self.plot_widget, 1)
        self.colours = _VariantColours()
        self.values: dict[str, dict[str, float | None]] = {}
        self.items: dict[str, pg.BarGraphItem] = {}
        self.value_labels: dict[str, list[pg.TextItem]] = {}
        self.shown_run: Any = None
        self._set_ticks(self.categories)
        self.plot.setXRange(-0.5, len(self.categories) - 0.5, padding=0.02)
        self.plot.vb.sigResized.connect(self.schedule)  # the labels' headroom is in pixels

    def _set_ticks(self, categories) -> None:
        self.plot.getAxis("bottom").setTicks([[(i, c) for i, c in enumerate(categories)]])

    def export_target(self) -> Any:
        return self.plot_widget.ci

    def clear(self) -> None:
        self.values.clear()
        for name in list(self.items):
            self._remove_items(name)
        self._update_legend()

    def _remove_items(self, name: str) -> None:
        self.plot.removeItem(self.items.pop(name))
        for t in self.value_labels.pop(name, []):
            self.plot.removeItem(t)

    def _update_legend(self) -> None:
        self.legend.set_entries([(n, self.colours.colour(n), "square") for n in _legend_order(self.items)])

    def set_values(self, name: str, values: dict[str, float | None]) -> None:
        self.values.setdefault(name, {}).update(values)
        if name not in self.items:
            c = self.colours.colour(name)
            item = pg.BarGraphItem(x=[], height=[], width=0.2, brush=c, pen=pg.mkPen(c.darker(130)))
            self.plot.addItem(item)
            self.items[name] = item
            self._update_legend()
        self.schedule()

    def keep_only(self, names) -> None:
        """Drop the variants not in ``names`` (a run shows only its own)."""
        for name in [n for n in self.items if n not in names]:
            self.values.pop(name, None)
            self._remove_items(name)
        self._update_legend()

    def remove(self, name: str) -> None:
        self.values.pop(name, None)
        if name in self.items:
            self._remove_items(name)
        self._update_legend()
        self.schedule()

    def _label(self, name: str, k: int) -> pg.TextItem:
        pool = self.value_labels.setdefault(name, [])
        while len(pool) <= k:
            t = pg.TextItem(anchor=(0.5, 1.0), color=(40, 40, 40))
            font = t.textItem.font()
            font.setPointSizeF(8)
            t.setFont(font)
            self.plot.addItem(t, ignoreBounds=True)
            pool.append(t)
        return pool[k]

    def headroom(self) -> float:
        """The fraction of the plot's height a value label above the tallest bar needs."""
        return max(0.12, 20.0 / max(self.plot.vb.height(), 60.0))

    def y_range(self, heights: list[float]) -> tuple[float, float, str]:
        """(bottom, top, axis label) for these bar heights; the top leaves room for the value labels."""
        top = max(heights, default=0.0)
        return 0.0, (top / (1 - self.headroom()) if top > 0 else 1.0), self.left_label

    def shown_values(self) -> dict[str, dict[str, float]]:
        """What the bars show: variant → category → value (finite values only)."""
        out: dict[str, dict[str, float]] = {}
        for name in self.items:
            for cat in self.categories:
                v = self.values.get(name, {}).get(cat)
                if v is not None and math.isfinite(float(v)):
                    out.setdefault(name, {})[cat] = float(v)
        return out

    def redraw(self) -> None:
        names = [n for n in self.items if n in self.values]
        k = max(len(names), 1)
        width = 0.8 / k
        heights: list[float] = []
        for j, name in enumerate(names):
            xs, hs = [], []
            for i, cat in enumerate(self.categories):
                v = self.values[name].get(cat)
                if v is None or (isinstance(v, float) and not math.isfinite(v)):
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                hs.append(float(v))
            self.items[name].setOpts(x=xs, height=hs, width=width * 0.9)
            heights += hs
            for n, (x, h) in enumerate(zip(xs, hs)):
                t = self._label(name, n)
                t.setText(self.value_format.format(h))
                t.setPos(x, h)
                t.setVisible(True)
            for t in self.value_labels.get(name, [])[len(xs):]:
                t.setVisible(False)
        bottom, top, label = self.y_range(heights)
        self.plot.setYRange(bottom, top, padding=0)
        self.plot.setLabel("left", label)


class AccuracyPanel(_BarsPanel):
    """Top-1, top-5, F1, agreement of every variant side by side (percent).

    The y axis starts a little below the lowest bar when all are high (98.5 and 99 look
    different), and says so in its label; every bar carries its value.
    """

    title = "Accuracy"
    empty_text = glossary.EMPTY_PANEL["accuracy"]
    hover_text = glossary.ACCURACY_HOVER
    categories = ("top-1", "top-5", "F1", "agreement")
    value_format = "{:.1f}"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Accuracy (%)", "%", parent)
        self.plot.setYRange(0, 100)

    def y_range(self, heights: list[float]) -> tuple[float, float, str]:
        if not heights:
            return 0.0, 100.0, "%"
        lo, hi = min(heights), max(heights)
        room = self.headroom()
        if lo < 50:
            return 0.0, max(hi, 100.0) / (1 - room), "%"
        span = max(hi - lo, 1.0)
        bottom = max(0.0, math.floor(lo - 1.5 * span))
        top = bottom + (hi - bottom) / (1 - room)
        return bottom, top, f"% (axis starts at {bottom:g})" if bottom > 0 else "%"

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        self.keep_only((run.reference, run.quantized))
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {
                "top-1": _pct(m.get("top1")), "top-5": _pct(m.get("top5")),
                "F1": _pct(m.get("f1")), "agreement": _pct(m.get("agreement")),
            })
        self.set_note(run.data_note if run.is_random or not run.labeled else "")
        self.set_sample_count((run.metrics.get(run.quantized) or {}).get("n") or run.n_evaluated,
                              getattr(run, "evaluation_data", ""))
        self.redraw()

    def set_sample_count(self, n: int | None, where: str = "") -> None:
        """Every accuracy figure says how many samples it was measured on (and which)."""
        heading = f"Accuracy (%) on n={n} samples" if n else "Accuracy (%)"
        self.plot_widget.title_label.setText(heading, size="10pt")
        self.plot_widget.setToolTip(f"Measured on {where}" if where else (f"Measured on {n} samples" if n else ""))

    def clear(self) -> None:
        super().clear()
        self.set_sample_count(None)

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, MetricsReady):
            if event.quantized.n:
                self.set_sample_count(int(event.quantized.n))
            for role, m in ((VariantRole.ORIGINAL, event.original), (VariantRole.QUANTIZED, event.quantized)):
                self.set_values(role.value, {
                    "top-1": _pct(m.top1), "top-5": _pct(m.top5), "F1": _pct(m.f1), "agreement": _pct(m.agreement),
                })
        elif isinstance(event, EvaluationProgress):
            for name, top1 in event.top1.items():
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
    empty_text = glossary.EMPTY_PANEL["size"]
    categories = ("model size", "memory running it")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Size and memory (MB)", "MB", parent)
        self.plot_widget.setToolTip(
            "Model size: the file on disk.\nMemory running it: how much the peak memory of a fresh "
            "process grows when it loads the model and runs one batch (the runtime itself not counted)."
        )

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        self.keep_only((run.reference, run.quantized))
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {"model size": _mb(m.get("size_bytes")), "memory running it": _mb(_memory_of(m))})
        has_memory = any(_memory_of(run.metrics.get(n) or {}) for n in (run.reference, run.quantized))
        self.set_note("" if has_memory else "Memory was not measured (ticked 'Peak memory' in the Data panel? "
                                            "If it was, the log says why).")
        self.redraw()

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, SizesMeasured):
            self.set_values(VariantRole.ORIGINAL.value, {"model size": _mb(event.original_bytes)})
            self.set_values(VariantRole.QUANTIZED.value, {"model size": _mb(event.quantized_bytes)})
        elif isinstance(event, MemoryMeasured):
            self.set_values(event.variant, {"memory running it": _mb(event.model_peak_bytes)})


def _memory_of(m: dict) -> Any:
    """What running the model adds to a fresh process (the bar; never the whole process's
    peak, which is mostly the runtime libraries and would compare unlike with like)."""
    return m.get("model_peak_bytes")


def _mb(v: Any) -> float | None:
    return None if v is None else float(v) / 1e6


# --------------------------------------------------------------------------- per layer


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


class ConfusionPanel(PlotPanel):
    """Confusion matrix (rows: true class, columns: predicted) of a chosen variant of the shown run."""

    title = "Confusion matrix"
    empty_text = glossary.EMPTY_PANEL["confusion"]
    hover_text = glossary.CONFUSION_HOVER

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.variant_combo = QComboBox()
        self.variant_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.variant_combo.setMinimumContentsLength(12)
        self.variant_combo.setToolTip("Which model of the shown run: the original or the quantized one")
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
        self.run_name = ""
        self.shown_run: Any = None

    def export_target(self) -> Any:
        return self.plot

    def clear(self) -> None:
        self.matrices.clear()
        self.variant_combo.clear()
        self.image.setImage(np.zeros((1, 1)))

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        self.run_name = run.name
        self.matrices = {name: (np.asarray(matrix, dtype=float), list(labels))
                         for name, (matrix, labels) in (run.confusion or {}).items()}
        self.variant_combo.blockSignals(True)
        self.variant_combo.clear()
        for name in self.matrices:
            self.variant_combo.addItem(f"{run.name} — {name}", name)
        quantized = [n for n in self.matrices if n != run.reference]
        if quantized:
            self.variant_combo.setCurrentIndex(self.variant_combo.findData(quantized[-1]))
        self.variant_combo.blockSignals(False)
        if not run.confusion:
            self.image.setImage(np.zeros((1, 1)))
            self.set_note("No labels: a confusion matrix needs class folders." if not run.labeled else "")
        else:
            self.set_note("")
        self.redraw()

    def current_variant(self) -> str | None:
        return self.variant_combo.currentData()

    def redraw(self) -> None:
        name = self.current_variant()
        if name not in self.matrices:
            return
        m, labels = self.matrices[name]
        # ImageItem's first axis is x: transpose so rows (true class) run down the y axis.
        self.image.setImage(m.T, autoLevels=False, levels=(0, max(float(m.max()), 1.0)))
        self.image.setRect(-0.5, -0.5, m.shape[1], m.shape[0])
        ticks = [(i, lab) for i, lab in enumerate(labels)] if len(labels) <= 30 else []
        self.plot.getAxis("bottom").setTicks([ticks])
        self.plot.getAxis("left").setTicks([ticks])
        self.plot.setTitle(f"Confusion matrix — {self.run_name}, {name}" if self.run_name else
                           f"Confusion matrix — {name}", size="10pt")


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

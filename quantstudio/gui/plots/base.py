"""What every plot panel shares: the PlotPanel base (title row, Save, empty-state text,
coalesced redraws), colours per variant, legends outside the plot, log axes, PNG/SVG export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from quantstudio.core.results import VariantRole, is_same_runtime_role

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
        fixed = self.FIXED.get(name)
        if fixed is None and is_same_runtime_role(name):  # "original (tflite)": the same-runtime colour
            fixed = self.FIXED[VariantRole.ORIGINAL_SAME_RUNTIME.value]
        if fixed is not None:
            c = QColor(fixed)
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

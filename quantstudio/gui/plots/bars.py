"""Bars per variant on named categories: the base of the Accuracy and Size panels."""

from __future__ import annotations

import math
from typing import Any

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from quantstudio.gui.plots.base import PlotPanel, _VariantColours, _legend_order, _titled_plot


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

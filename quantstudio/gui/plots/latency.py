"""The Speed panel: latency distribution per variant (filling in live) and throughput vs batch size."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QComboBox, QLabel, QWidget

from quantstudio.core.results import BenchmarkDone, LatencySample, ThroughputMeasured, as_event
from quantstudio.gui import glossary
from quantstudio.gui.plots.base import PlotPanel, _VariantColours, _OutsideLegend, _legend_order, _log_plot_axis


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

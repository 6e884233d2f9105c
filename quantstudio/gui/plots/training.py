"""The Training panel: quantization-aware training live — loss per step and per epoch, and the
validation result of every epoch next to the plain INT8 (PTQ) starting point."""

from __future__ import annotations

import math
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QWidget

from quantstudio.core.results import TrainingEpoch, TrainingStep, as_event
from quantstudio.gui import glossary
from quantstudio.gui.plots.base import PlotPanel, _OutsideLegend

STEP_COLOUR = QColor(150, 185, 230)  # light: many noisy points
LOSS_COLOUR = QColor(30, 80, 170)
VAL_COLOUR = QColor(40, 140, 60)
PTQ_COLOUR = QColor(120, 120, 120)
BEST_COLOUR = QColor(230, 160, 0)


def metric_words(metric: str) -> str:
    """"top-1" / "agreement" for the run's validation metric key."""
    return glossary.METRIC_WORDS.get(metric, metric or "result")


class TrainingPanel(PlotPanel):
    """Loss (left) and validation metric per epoch (right) of a fine-tuning run.

    Fed live with :class:`TrainingStep` / :class:`TrainingEpoch`; a finished run's
    ``training`` history (``show_run``) redraws the epoch curves. Epoch 0 is the PTQ
    starting point: a dashed reference line on the validation plot. The epoch kept (the
    best so far) is starred. The per-step loss exists only live: it is kept when the run
    shown is the one just streamed.
    """

    title = "Training"
    empty_text = glossary.EMPTY_PANEL["training"]
    hover_text = glossary.TRAINING_HOVER

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setMinimumSize(QSize(300, 220))
        self.legend = _OutsideLegend(3)
        self.legend.place(self.layout_widget.ci, row=0, colspan=2)
        self.loss_plot = self.layout_widget.addPlot(row=1, col=0)
        self.loss_plot.setTitle("Training loss", size="10pt")
        self.loss_plot.setLabel("bottom", "epoch")
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.2)
        self.val_plot = self.layout_widget.addPlot(row=1, col=1)
        self.val_plot.setLabel("bottom", "epoch")
        self.val_plot.setLabel("left", "%")
        self.val_plot.showGrid(x=True, y=True, alpha=0.2)
        self._layout.addWidget(self.layout_widget, 1)

        self.step_item = pg.PlotDataItem([], [], pen=pg.mkPen(STEP_COLOUR, width=1))
        self.epoch_loss_item = pg.PlotDataItem([], [], pen=pg.mkPen(LOSS_COLOUR, width=2), symbol="o",
                                               symbolBrush=LOSS_COLOUR, symbolPen=LOSS_COLOUR, symbolSize=7)
        self.loss_plot.addItem(self.step_item)
        self.loss_plot.addItem(self.epoch_loss_item)
        self.val_item = pg.PlotDataItem([], [], pen=pg.mkPen(VAL_COLOUR, width=2), symbol="o",
                                        symbolBrush=VAL_COLOUR, symbolPen=VAL_COLOUR, symbolSize=7)
        self.best_item = pg.ScatterPlotItem([], [], symbol="star", size=18, brush=pg.mkBrush(BEST_COLOUR),
                                            pen=pg.mkPen(BEST_COLOUR.darker(150)))
        self.ptq_line = pg.InfiniteLine(angle=0, movable=False,
                                        pen=pg.mkPen(PTQ_COLOUR, width=1.5, style=Qt.PenStyle.DashLine))
        self.ptq_line.setVisible(False)
        self.ptq_text = pg.TextItem("", color=PTQ_COLOUR.darker(130), anchor=(1.0, 1.0))  # right end, above the line
        for item in (self.ptq_line, self.ptq_text, self.val_item, self.best_item):
            self.val_plot.addItem(item)
        self._update_legend(None)
        self.steps: list[tuple[float, float]] = []  # (fractional epoch, loss)
        self.epochs: dict[int, tuple[float | None, float]] = {}  # epoch -> (mean train loss, validation %)
        self.metric_key = ""
        self.best_epoch: int | None = None
        self.total_epochs = 0
        self.n_val: int | None = None
        self.shown_run: Any = None
        self._set_title()
        self._default_ranges()

    def _default_ranges(self) -> None:
        """Empty axes that look like what will come: epochs 0-2, 0-100 %."""
        for plot in (self.loss_plot, self.val_plot):
            plot.setXRange(0, 2, padding=0.06)
        self.val_plot.setYRange(0, 100, padding=0)
        self.loss_plot.setYRange(0, 1, padding=0.05)

    def export_target(self) -> Any:
        return self.layout_widget.ci

    # ------------------------------------------------------------------ data in
    def clear(self) -> None:
        self.steps.clear()
        self.epochs.clear()
        self.metric_key = ""
        self.best_epoch = None
        self.total_epochs = 0
        self.n_val = None
        self.set_note("")
        self.redraw()
        self._default_ranges()

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, TrainingStep):
            self.total_epochs = max(self.total_epochs, int(event.epochs))
            steps = max(int(event.steps), 1)
            loss = float(event.loss)
            if math.isfinite(loss):
                self.steps.append((int(event.epoch) - 1 + int(event.step) / steps, loss))
            self.schedule()
        elif isinstance(event, TrainingEpoch):
            if int(event.epoch) == 0:  # a new fine-tuning starts from its PTQ point
                self.steps.clear()
                self.epochs.clear()
                self.n_val = None
            self.total_epochs = max(self.total_epochs, int(event.epochs))
            loss = None if event.train_loss is None else float(event.train_loss)
            self.epochs[int(event.epoch)] = (loss, float(event.val_metric))
            self.metric_key = str(event.metric)
            self.best_epoch = int(event.best_epoch)
            self.schedule()

    def show_run(self, run: Any, variants: list[Any]) -> None:
        """A finished run: its training history, or an empty panel when it was not fine-tuned."""
        self.shown_run = run
        training = getattr(run, "training", None) or {}
        history = training.get("history") or []
        if not history:
            self.clear()
            return
        epochs: dict[int, tuple[float | None, float]] = {}
        for h in history:
            try:
                loss = h.get("train_loss")
                epochs[int(h["epoch"])] = (None if loss is None else float(loss), float(h["val_metric"]))
            except (KeyError, TypeError, ValueError):
                continue
        ptq = training.get("ptq_val_metric")
        if 0 not in epochs and isinstance(ptq, (int, float)):
            epochs[0] = (None, float(ptq))
        # The per-step loss is only known live: keep it for the run just streamed.
        same_run = {e: v for e, (_l, v) in self.epochs.items()} == {e: v for e, (_l, v) in epochs.items()}
        if not same_run:
            self.steps.clear()
        self.epochs = epochs
        settings = training.get("settings") or {}
        self.metric_key = str(training.get("metric") or self.metric_key)
        best = training.get("best_epoch")
        self.best_epoch = int(best) if isinstance(best, int) else self.best_epoch
        self.total_epochs = int(settings.get("epochs") or max(epochs, default=0))
        n = settings.get("val_samples")
        self.n_val = int(n) if isinstance(n, int) and n > 0 else None
        if training.get("cancelled"):
            self.set_note(f"Stopped by you; epoch {self.best_epoch} kept")
        elif training.get("stopped_early"):
            self.set_note(f"Stopped early: no better validation result; epoch {self.best_epoch} kept")
        else:
            self.set_note("")
        self.redraw()

    # ------------------------------------------------------------------ drawing
    def _update_legend(self, kept: str | None) -> None:
        self.legend.set_entries([
            ("loss, every few steps", STEP_COLOUR, "square"), ("loss, epoch mean", LOSS_COLOUR, "square"),
            ("validation", VAL_COLOUR, "dot"), ("plain INT8 (epoch 0)", PTQ_COLOUR, "square"),
            (kept or "epoch kept", BEST_COLOUR, "dot"),
        ])

    def _set_title(self) -> None:
        words = metric_words(self.metric_key) if self.metric_key else "result"
        n = f" on n={self.n_val}" if self.n_val else ""
        self.val_plot.setTitle(f"Validation {words} (%){n}", size="10pt")

    def redraw(self) -> None:
        self._set_title()
        if self.steps:
            xs, ys = zip(*self.steps)
            self.step_item.setData(list(xs), list(ys))
        else:
            self.step_item.setData([], [])
        trained = sorted(e for e, (loss, _v) in self.epochs.items() if e > 0 and loss is not None)
        self.epoch_loss_item.setData(trained, [self.epochs[e][0] for e in trained])
        shown = sorted(self.epochs)
        self.val_item.setData(shown, [self.epochs[e][1] for e in shown])
        ptq = self.epochs.get(0)
        last = max([self.total_epochs, *self.epochs], default=0)
        if ptq is not None:
            self.ptq_line.setPos(ptq[1])
            self.ptq_text.setText(f"plain INT8 {ptq[1]:.1f} %")
            self.ptq_text.setPos(last, ptq[1])
        self.ptq_line.setVisible(ptq is not None)
        self.ptq_text.setVisible(ptq is not None)
        # Whole epochs are the only meaningful ticks.
        ticks = [[(e, str(e)) for e in range(0, last + 1)]] if 0 < last <= 30 else None
        for plot in (self.loss_plot, self.val_plot):
            plot.getAxis("bottom").setTicks(ticks)
            if last:
                plot.setXRange(0, last, padding=0.06)
        if self.steps or trained:
            self.loss_plot.enableAutoRange(axis="y")
        values = [v for _l, v in self.epochs.values()]
        if values:
            lo, hi = min(values), max(values)
            span = max(hi - lo, 1.0)
            # Room for the star; never past what a percentage can be by much.
            self.val_plot.setYRange(max(lo - 0.25 * span, 0.0), min(hi + 0.2 * span, 102.0), padding=0)
        best = self.epochs.get(self.best_epoch) if self.best_epoch is not None else None
        if best is not None:
            self.best_item.setData([self.best_epoch], [best[1]])
        else:
            self.best_item.setData([], [])
        # The kept epoch's figure goes in the legend: a label beside the star is cut off at the
        # plot's edge when the best epoch is the last one or the highest point.
        self._update_legend(None if best is None else f"epoch kept: {self.best_epoch} ({best[1]:.1f} %)")

    # ------------------------------------------------------------------ for tests and the report
    def curves(self) -> dict[str, tuple[list[float], list[float]]]:
        """What is drawn: name -> (x, y) of each curve."""
        out = {}
        for name, item in (("steps", self.step_item), ("epoch_loss", self.epoch_loss_item),
                           ("validation", self.val_item)):
            x, y = item.getData()
            out[name] = ([] if x is None else [float(v) for v in x], [] if y is None else [float(v) for v in y])
        return out

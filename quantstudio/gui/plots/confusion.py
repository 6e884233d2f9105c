"""The Confusion panel: which classes the original and the quantized model mix up."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QLabel, QWidget

from quantstudio.gui import glossary
from quantstudio.gui.plots.base import PlotPanel, _plot_widget


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

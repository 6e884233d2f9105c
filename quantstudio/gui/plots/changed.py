"""The Changed panel: the images whose prediction changed after quantization."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSize
from PySide6.QtWidgets import QLabel, QListView, QVBoxLayout, QWidget

from quantstudio.gui.thumbnails import ThumbnailModel


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

"""The page shown before a model is open: open a model, the demo, or a recent file.

Signals: ``open_model()``, ``open_demo()``, ``open_project()``, ``open_path(str)``.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from quantstudio import __version__


class WelcomePage(QWidget):
    open_model = Signal()
    open_demo = Signal()
    open_project = Signal()
    open_path = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcome")
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        card = QFrame()
        card.setObjectName("welcomeCard")
        card.setMaximumWidth(640)
        card.setStyleSheet(
            "#welcomeCard { background: palette(base); border: 1px solid palette(mid); border-radius: 8px; }"
        )
        col = QVBoxLayout(card)
        col.setContentsMargins(28, 24, 28, 24)
        title = QLabel(f"<h1 style='margin:0'>QuantStudio</h1><span style='color:#777'>version {__version__}</span>")
        title.setTextFormat(Qt.TextFormat.RichText)
        col.addWidget(title)
        intro = QLabel(
            "Make a trained neural network smaller and faster without writing code.<br>"
            "<b>1.</b> Open a model &nbsp; <b>2.</b> choose INT8 / FP16 / FP32 per layer &nbsp; "
            "<b>3.</b> point at your images &nbsp; <b>4.</b> Quantize, compare, export."
        )
        intro.setTextFormat(Qt.TextFormat.RichText)
        intro.setWordWrap(True)
        col.addWidget(intro)
        col.addSpacing(10)

        buttons = QHBoxLayout()
        self.open_button = QPushButton("Open model…")
        self.open_button.setToolTip("A .pth/.pt (state_dict or whole model), TorchScript, .pt2 or .onnx file (Ctrl+O)")
        self.open_button.setMinimumHeight(36)
        self.open_button.setDefault(True)
        self.demo_button = QPushButton("Open demo")
        self.demo_button.setToolTip("Recommended for a first try: a small digit classifier with its images, "
                                    "bundled with QuantStudio. Everything is set up; just press Quantize.")
        self.demo_button.setMinimumHeight(36)
        self.project_button = QPushButton("Open project…")
        self.project_button.setMinimumHeight(36)
        self.open_button.clicked.connect(self.open_model)
        self.demo_button.clicked.connect(self.open_demo)
        self.project_button.clicked.connect(self.open_project)
        for b in (self.open_button, self.demo_button, self.project_button):
            buttons.addWidget(b)
        col.addLayout(buttons)
        hint = QLabel("You can also drop a model file onto this window. New to quantization? "
                      "Open the demo, and see Help ▸ Getting started (F1) for a five-minute tour and a glossary.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #777")
        col.addWidget(hint)
        col.addSpacing(10)

        col.addWidget(QLabel("<b>Recent files</b>"))
        self.recent_list = QListWidget()
        self.recent_list.setIconSize(QSize(16, 16))
        self.recent_list.setMinimumHeight(140)
        self.recent_list.itemActivated.connect(self._on_recent_activated)
        col.addWidget(self.recent_list)

        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(card, 3)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)

    def set_recent(self, paths: list[str]) -> None:
        self.recent_list.clear()
        for p in paths:
            item = QListWidgetItem(f"{Path(p).name}    —    {Path(p).parent}")
            item.setData(Qt.ItemDataRole.UserRole, p)
            item.setToolTip(p)
            if not Path(p).exists():
                item.setForeground(Qt.GlobalColor.gray)
                item.setToolTip(p + " (not found)")
            self.recent_list.addItem(item)
        if not paths:
            item = QListWidgetItem("No recent files yet.")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent_list.addItem(item)

    @Slot(QListWidgetItem)
    def _on_recent_activated(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole)
        if path:
            self.open_path.emit(path)

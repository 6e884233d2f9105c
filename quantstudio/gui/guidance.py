"""First-screen guidance: the prominent Quantize button and the dismissable hint bar.

Signals: ``HintBar.dismissed()`` when the user closes the hint.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QWidget

# The stages the pipeline reports ({"type": "stage", "name": …}), in the user's words.
STAGE_WORDS = {
    "quantize": "quantizing",
    "prepare": "preparing",
    "calibrate": "calibrating",
    "convert": "converting",
    "evaluate": "evaluating",
    "layer_error": "per-layer error",
    "sensitivity": "sensitivity",
    "benchmark": "timing",
    "memory": "memory",
    # the automatic mixed-precision search (issue 13)
    "auto_precision": "searching",
    "search": "searching",
}

QUANTIZE_BUTTON_STYLE = """
QToolButton#quantizeButton {
    background: #2e7d32; color: white; font-weight: bold; font-size: 11pt;
    border: 1px solid #1b5e20; border-radius: 5px; padding: 4px 16px; margin: 2px 6px;
}
QToolButton#quantizeButton:hover { background: #388e3c; }
QToolButton#quantizeButton:pressed { background: #1b5e20; }
QToolButton#quantizeButton:disabled { background: #c8d8c8; color: #f4f4f4; border-color: #b0c4b0; }
QToolButton#quantizeButton[running="true"] { background: #f1f8e9; color: #1b5e20; border-color: #2e7d32; }
"""


class QuantizeButton(QToolButton):
    """The main action: a green toolbar button that triggers ``action`` (Quantize) and,
    while a run goes on, says which stage it is at and how far it is."""

    def __init__(self, action: QAction, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.action = action
        self.setObjectName("quantizeButton")
        self.setStyleSheet(QUANTIZE_BUTTON_STYLE)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("Quantizing: per-layer error 100%") + 40)
        self.clicked.connect(action.trigger)
        action.changed.connect(self._sync)
        self.running = False
        self.stage = ""
        self.fraction = 0.0
        self._sync()

    def idle_text(self) -> str:
        return "▶  " + self.action.text().replace("&", "")

    @Slot()
    def _sync(self) -> None:
        self.setEnabled(self.action.isEnabled())
        self.setToolTip(self.action.toolTip())
        if not self.running:
            self.setText(self.idle_text())

    @Slot(bool)
    def set_busy(self, busy: bool) -> None:
        if not busy:
            self.running = False
            self.stage = ""
            self.setProperty("running", False)
            self._restyle()
            self._sync()

    def show_stage(self, name: str) -> None:
        """A quantize run reached stage ``name``: say so on the button."""
        self.stage = STAGE_WORDS.get(name, name.replace("_", " "))
        if not self.running:
            self.running = True
            self.fraction = 0.0
            self.setProperty("running", True)
            self._restyle()
        self._show()

    def show_fraction(self, fraction: float) -> None:
        if self.running:
            self.fraction = max(0.0, min(1.0, float(fraction)))
            self._show()

    def _show(self) -> None:
        self.setText(f"Quantizing: {self.stage} {int(round(100 * self.fraction))}%")

    def _restyle(self) -> None:
        self.style().unpolish(self)
        self.style().polish(self)


AUTO_BUTTON_STYLE = """
QToolButton#autoButton {
    background: white; color: #1b5e20; font-weight: bold; font-size: 11pt;
    border: 1px solid #2e7d32; border-radius: 5px; padding: 4px 12px; margin: 2px 2px;
}
QToolButton#autoButton:hover { background: #f1f8e9; }
QToolButton#autoButton:pressed { background: #dcedc8; }
QToolButton#autoButton:disabled { color: #b0c4b0; border-color: #c8d8c8; }
"""


class AutoButton(QToolButton):
    """The Auto button beside Quantize: triggers ``action`` (a run that searches for the fastest plan within
    the budget set in the Data & settings panel). Its look says it is the Quantize button's companion."""

    def __init__(self, action: QAction, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.action = action
        self.setObjectName("autoButton")
        self.setStyleSheet(AUTO_BUTTON_STYLE)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.clicked.connect(action.trigger)
        action.changed.connect(self._sync)
        self._sync()

    @Slot()
    def _sync(self) -> None:
        self.setEnabled(self.action.isEnabled())
        self.setToolTip(self.action.toolTip())
        self.setText(self.action.text().replace("&", ""))


class HintBar(QFrame):
    """A one-line hint across the top of the window, with a close button."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("hintBar")
        self.setStyleSheet(
            "#hintBar { background: #fff8d6; border-bottom: 1px solid #e6d68a; }"
            "#hintBar QLabel { color: #4a4000; }"
        )
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 4, 4, 4)
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        row.addWidget(self.label, 1)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Hide this hint (it will not come back)")
        self.close_button.clicked.connect(self._on_close)
        row.addWidget(self.close_button)
        self.hide()

    def show_text(self, html: str) -> None:
        self.label.setText(html)
        self.show()

    @Slot()
    def _on_close(self) -> None:
        self.hide()
        self.dismissed.emit()

"""Small widgets of the main window: the log bridge, the toolbar's Undo/Redo, the warnings banner."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget


class _LogBridge(QObject, logging.Handler):
    """Routes log records from any thread to the log dock (queued signal)."""

    line = Signal(str)

    def __init__(self) -> None:
        QObject.__init__(self)
        logging.Handler.__init__(self, logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:  # noqa: A003 - logging.Handler API
        try:
            self.line.emit(self.format(record))
        except RuntimeError:  # the window is gone
            pass


class UndoToolAction(QAction):
    """Toolbar Undo (or Redo) with a fixed short text; what it would undo is its tooltip
    and status tip. The undo stack's own actions put the whole command in their text
    ("Undo features.0 and its layers → FP32"), which stretched the toolbar."""

    def __init__(self, stack, redo: bool, shortcut: str, parent: QObject) -> None:
        super().__init__("Redo" if redo else "Undo", parent)
        self.shortcut_text = shortcut
        self.triggered.connect(stack.redo if redo else stack.undo)
        # Slots that only use what the signal carries: the stack emits these while it is
        # being destroyed, when it can no longer be asked anything.
        (stack.canRedoChanged if redo else stack.canUndoChanged).connect(self.setEnabled)
        (stack.redoTextChanged if redo else stack.undoTextChanged).connect(self._on_text)
        self.setEnabled(stack.canRedo() if redo else stack.canUndo())
        self._on_text(stack.redoText() if redo else stack.undoText())

    @Slot(str)
    def _on_text(self, what: str) -> None:
        verb = self.text()
        tip = f"{verb} {what}" if what else f"Nothing to {verb.lower()}"
        self.setToolTip(f"{tip} ({self.shortcut_text})")
        self.setStatusTip(tip)


class WarningBanner(QFrame):
    """A visible strip above the layer tree with what can make the shown results wrong.

    Warnings of a run (near-chance original, data that does not fit the model, unreliable
    timings) must be seen where the result is seen, not only in the Log.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("warning_banner")
        self.setStyleSheet("#warning_banner { background: #fff4d6; border: 1px solid #e0b050; border-radius: 3px; }")
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 4, 4)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        row.addWidget(self.label, 1)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Hide these warnings (they stay in the Log and the run's tooltip)")
        self.close_button.clicked.connect(self.hide)
        row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.warnings: list[str] = []
        self.hide()

    def set_warnings(self, title: str, warnings: list[str]) -> None:
        self.warnings = list(warnings)
        if not warnings:
            self.hide()
            return
        from html import escape

        items = "".join(f"<li>{escape(w)}</li>" for w in warnings[:6])
        more = f"<li>… and {len(warnings) - 6} more (see the Log)</li>" if len(warnings) > 6 else ""
        self.label.setText(f"<b>⚠ {escape(title)}</b><ul style='margin:0'>{items}{more}</ul>")
        self.show()

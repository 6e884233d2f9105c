"""Export dialog (placeholder until the core export lands)."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog


class ExportDialog(QDialog):
    pass

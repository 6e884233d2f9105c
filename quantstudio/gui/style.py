"""Colours and icons shared by the widgets; their plain-language texts live in
:mod:`quantstudio.gui.glossary` and are re-exported here for the code that reads them from style."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap

from quantstudio.core.plan import Precision
from quantstudio.gui.glossary import (  # noqa: F401 - re-exported: widgets read the words from style
    AGREEMENT_HELP,
    BACKEND_HELP,
    CALIBRATION_HELP,
    CALIBRATION_METHOD_HELP,
    ENGINE_HELP,
    HINT_DEMO,
    MEMORY_HELP,
    MODE_HELP,
    PER_CHANNEL_HELP,
    PRECISION_HELP,
    QUANTIZE_HELP,
    RANDOM_DATA_LABEL,
    SENSITIVITY_HELP,
    SQNR_HELP,
)

# Cell backgrounds of the precision column (light, so black text stays readable).
PRECISION_BACKGROUND = {
    Precision.INT8: QColor(200, 235, 200),  # green-ish
    Precision.FP16: QColor(200, 220, 245),  # blue-ish
    Precision.FP32: QColor(238, 226, 200),  # amber-grey
}
# Saturated versions for plots and the legend.
PRECISION_COLOUR = {
    Precision.INT8: QColor(60, 160, 70),
    Precision.FP16: QColor(60, 120, 200),
    Precision.FP32: QColor(190, 140, 60),
}
MIXED_BACKGROUND = QColor(235, 235, 235)
NOT_QUANTIZABLE_FOREGROUND = QColor(140, 140, 140)

PRECISION_LABEL = {Precision.INT8: "INT8", Precision.FP16: "FP16", Precision.FP32: "FP32"}


def swatch_icon(colour: QColor, size: int = 12) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setBrush(colour)
    p.setPen(QPen(colour.darker(140), 1))
    p.drawRoundedRect(1, 1, size - 2, size - 2, 2, 2)
    p.end()
    return QIcon(pix)


_FUSED_ICON: QIcon | None = None


def fused_icon() -> QIcon:
    """Two linked rings: 'this layer was fused with its neighbours'."""
    global _FUSED_ICON
    if _FUSED_ICON is None:
        pix = QPixmap(16, 16)
        pix.fill(Qt.GlobalColor.transparent)
        p = QPainter(pix)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor(90, 90, 160), 2))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(QPointF(5.5, 8), 3.5, 3.5)
        p.drawEllipse(QPointF(10.5, 8), 3.5, 3.5)
        p.end()
        _FUSED_ICON = QIcon(pix)
    return _FUSED_ICON


def human_count(n: float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.3g}P"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"

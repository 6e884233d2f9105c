"""Colours, icons and plain-language texts shared by the widgets."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap

from quantstudio.core.plan import Precision

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

PRECISION_HELP = {
    Precision.INT8: (
        "INT8: numbers stored as 8-bit integers. About 4x smaller and usually 2-4x faster "
        "on a CPU; may lose a little accuracy. Needs calibration data to choose the ranges."
    ),
    Precision.FP16: (
        "FP16: half-precision floating point. 2x smaller, nearly no accuracy loss; "
        "faster only on hardware with FP16 support (most CPUs gain little)."
    ),
    Precision.FP32: (
        "FP32: the original full-precision floating point. No change: the safest choice "
        "for layers that are sensitive to quantization."
    ),
}

CALIBRATION_HELP = (
    "Calibration: the model is run on a few hundred of your images to measure the range "
    "of values inside every layer. INT8 uses those ranges, so use images like the ones the "
    "model will see in use."
)
CALIBRATION_METHOD_HELP = {
    "minmax": "Min-max: the range covers every value seen. Simple and fast; outliers widen it.",
    "entropy": ("Histogram: builds a histogram of the values and picks the range that loses the least: "
                "ONNX Runtime minimises the information lost (entropy, KL divergence), PyTorch the squared "
                "rounding error (MSE). Slower than min-max, often more accurate."),
    "percentile": "Percentile: ignores the rarest extreme values (e.g. the top 0.01%), so outliers do not widen the range.",
}
MODE_HELP = {
    "static": "Static INT8: weights and activations in INT8, ranges measured on calibration data. The fastest on CPUs.",
    "dynamic": "Dynamic INT8: weights in INT8, activation ranges computed while running. For Linear/LSTM-heavy models; no calibration.",
    "fp16": "FP16: every layer the plan leaves at INT8 runs in half precision instead.",
}
ENGINE_HELP = {
    "onnxruntime": "ONNX Runtime: exports the model to ONNX and quantizes it there. Fast INT8 on x86 CPUs; gives an .onnx file.",
    "torch": "PyTorch: quantizes the PyTorch model itself (FX graph mode). Gives a .pth (TorchScript) file.",
}
BACKEND_HELP = {
    "auto": "Auto: chosen from this computer's CPU.",
    "x86": "x86: Intel/AMD desktop and server CPUs (fbgemm/oneDNN).",
    "qnnpack": "ARM: phones, Raspberry Pi, Apple silicon (qnnpack).",
}
PER_CHANNEL_HELP = (
    "Per-channel: each output channel of a layer gets its own INT8 scale. Usually more "
    "accurate than one scale per layer, at no speed cost."
)
SENSITIVITY_HELP = (
    "After the run, quantize one layer at a time to INT8 and measure how much the output "
    "changes. The layers that change it most are the ones to keep in FP32 (right-click the "
    "tree). PyTorch models only; on a large model this adds about a minute."
)
MEMORY_HELP = (
    "After the run, load the original and the quantized model each in a fresh process and "
    "measure how much memory running them takes. Adds a few seconds."
)
RANDOM_DATA_LABEL = "Random data — speed only (accuracy not meaningful)"


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

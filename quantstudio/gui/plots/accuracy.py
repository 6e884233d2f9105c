"""The Accuracy panel: top-1, top-5, F1 and agreement of each variant, with n in its title."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtWidgets import QWidget

from quantstudio.core.results import EvaluationProgress, MetricsReady, VariantRole, as_event
from quantstudio.gui import glossary
from quantstudio.gui.plots.bars import _BarsPanel


class AccuracyPanel(_BarsPanel):
    """Top-1, top-5, F1, agreement of every variant side by side (percent).

    The y axis starts a little below the lowest bar when all are high (98.5 and 99 look
    different), and says so in its label; every bar carries its value.
    """

    title = "Accuracy"
    empty_text = glossary.EMPTY_PANEL["accuracy"]
    hover_text = glossary.ACCURACY_HOVER
    categories = ("top-1", "top-5", "F1", "agreement")
    value_format = "{:.1f}"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Accuracy (%)", "%", parent)
        self.plot.setYRange(0, 100)

    def y_range(self, heights: list[float]) -> tuple[float, float, str]:
        if not heights:
            return 0.0, 100.0, "%"
        lo, hi = min(heights), max(heights)
        room = self.headroom()
        if lo < 50:
            return 0.0, max(hi, 100.0) / (1 - room), "%"
        span = max(hi - lo, 1.0)
        bottom = max(0.0, math.floor(lo - 1.5 * span))
        top = bottom + (hi - bottom) / (1 - room)
        return bottom, top, f"% (axis starts at {bottom:g})" if bottom > 0 else "%"

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        self.keep_only((run.reference, run.quantized))
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {
                "top-1": _pct(m.get("top1")), "top-5": _pct(m.get("top5")),
                "F1": _pct(m.get("f1")), "agreement": _pct(m.get("agreement")),
            })
        self.set_note(run.data_note if run.is_random or not run.labeled else "")
        self.set_sample_count((run.metrics.get(run.quantized) or {}).get("n") or run.n_evaluated,
                              getattr(run, "evaluation_data", ""))
        self.redraw()

    def set_sample_count(self, n: int | None, where: str = "") -> None:
        """Every accuracy figure says how many samples it was measured on (and which)."""
        heading = f"Accuracy (%) on n={n} samples" if n else "Accuracy (%)"
        self.plot_widget.title_label.setText(heading, size="10pt")
        self.plot_widget.setToolTip(f"Measured on {where}" if where else (f"Measured on {n} samples" if n else ""))

    def clear(self) -> None:
        super().clear()
        self.set_sample_count(None)

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, MetricsReady):
            if event.quantized.n:
                self.set_sample_count(int(event.quantized.n))
            for role, m in ((VariantRole.ORIGINAL, event.original), (VariantRole.QUANTIZED, event.quantized)):
                self.set_values(role.value, {
                    "top-1": _pct(m.top1), "top-5": _pct(m.top5), "F1": _pct(m.f1), "agreement": _pct(m.agreement),
                })
        elif isinstance(event, EvaluationProgress):
            for name, top1 in event.top1.items():
                if top1 is not None:
                    self.set_values(name, {"top-1": 100.0 * float(top1)})


def _pct(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return 100.0 * float(v)
    except (TypeError, ValueError):
        return None

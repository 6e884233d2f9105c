"""The Size panel: model size on disk and the memory running each model takes."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QWidget

from quantstudio.core.results import MemoryMeasured, SizesMeasured, VariantRole, as_event
from quantstudio.gui import glossary
from quantstudio.gui.plots.bars import _BarsPanel


class SizePanel(_BarsPanel):
    """Model size per variant, and the memory running it takes (MB)."""

    title = "Size and memory"
    empty_text = glossary.EMPTY_PANEL["size"]
    categories = ("model size", "memory running it")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Size and memory (MB)", "MB", parent)
        self.plot_widget.setToolTip(
            "Model size: the file on disk.\nMemory running it: how much the peak memory of a fresh "
            "process grows when it loads the model and runs one batch (the runtime itself not counted)."
        )

    def show_run(self, run: Any, variants: list[Any]) -> None:
        self.shown_run = run
        self.keep_only((run.reference, run.quantized))
        for name in (run.reference, run.quantized):
            m = run.metrics.get(name) or {}
            self.set_values(name, {"model size": _mb(m.get("size_bytes")), "memory running it": _mb(_memory_of(m))})
        has_memory = any(_memory_of(run.metrics.get(n) or {}) for n in (run.reference, run.quantized))
        self.set_note("" if has_memory else "Memory was not measured (ticked 'Peak memory' in the Data panel? "
                                            "If it was, the log says why).")
        self.redraw()

    def feed(self, event: Any) -> None:
        event = as_event(event)
        if isinstance(event, SizesMeasured):
            self.set_values(VariantRole.ORIGINAL.value, {"model size": _mb(event.original_bytes)})
            self.set_values(VariantRole.QUANTIZED.value, {"model size": _mb(event.quantized_bytes)})
        elif isinstance(event, MemoryMeasured):
            self.set_values(event.variant, {"memory running it": _mb(event.model_peak_bytes)})


def _memory_of(m: dict) -> Any:
    """What running the model adds to a fresh process (the bar; never the whole process's
    peak, which is mostly the runtime libraries and would compare unlike with like)."""
    return m.get("model_peak_bytes")


def _mb(v: Any) -> float | None:
    return None if v is None else float(v) / 1e6


# --------------------------------------------------------------------------- per layer

"""Live result panels (pyqtgraph). Plot items are created once and updated with setData/setOpts.

Each panel takes live payloads from the running job (``feed``) and the final outcome
of a run (``show_run``); redraws are coalesced by a short timer so a stream of
hundreds of latency samples costs a handful of redraws. Every panel can save itself
as PNG or SVG (button, or pyqtgraph's own right-click ▸ Export).

One module per panel; :mod:`.base` holds what they share.
"""

from __future__ import annotations

from quantstudio.gui.plots.accuracy import AccuracyPanel
from quantstudio.gui.plots.base import LogAxis, PlotPanel, _VariantColours, export_widget
from quantstudio.gui.plots.candidates import CandidatesPanel, pareto_front
from quantstudio.gui.plots.changed import ChangedSamplesPanel
from quantstudio.gui.plots.confusion import ConfusionPanel
from quantstudio.gui.plots.latency import LatencyPanel
from quantstudio.gui.plots.layer_error import LayerErrorPanel
from quantstudio.gui.plots.size import SizePanel
from quantstudio.gui.plots.tradeoff import TradeoffPanel
from quantstudio.gui.plots.training import TrainingPanel

__all__ = [
    "AccuracyPanel", "CandidatesPanel", "ChangedSamplesPanel", "ConfusionPanel", "LatencyPanel", "LayerErrorPanel", "LogAxis",
    "PlotPanel", "SizePanel", "TradeoffPanel", "TrainingPanel", "_VariantColours", "export_widget", "pareto_front",
]

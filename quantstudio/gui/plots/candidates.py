"""The Auto precision panel: every plan the automatic mixed-precision search tried.

Each candidate (a :class:`~quantstudio.core.results.CandidateTried` event while the
search runs, or an entry of ``RunSummary.auto_precision["candidates"]`` afterwards) is a
point, latency (x) against top-1 or agreement on the held-out split (y). The Pareto front
(the candidates no other one beats on both speed and accuracy) is drawn as a line, the
budget as a dashed horizontal line, and the chosen plan as a star; a table under the
chart names each candidate and its FP32 layers.

:func:`pareto_front` and :func:`best_within_budget` are plain functions (no Qt), so the
report and tests can use them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, is_dataclass
from typing import Any, Sequence

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QSplitter, QTableWidget, QTableWidgetItem, QWidget

from quantstudio.gui import glossary
from quantstudio.gui.plots.base import PlotPanel, _titled_plot

# --------------------------------------------------------------------------- Qt-free helpers


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point dominates, fastest first.

    A point is dominated when another is at least as fast and at least as accurate, and
    strictly better in one of the two. Points without a latency or an accuracy are left
    out (they cannot be placed). Equal points are all on the front.
    """
    valid = [(i, float(lat), float(acc)) for i, (lat, acc) in enumerate(points)
             if lat is not None and acc is not None and math.isfinite(float(lat)) and math.isfinite(float(acc))]
    front = []
    for i, lat, acc in valid:
        dominated = any(lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc) for j, lat2, acc2 in valid if j != i)
        if not dominated:
            front.append((lat, -acc, i))
    return [i for _, _, i in sorted(front)]


def best_within_budget(candidates: Sequence[dict[str, Any]]) -> int | None:
    """The ``index`` of the fastest candidate that meets the budget (the most accurate on a tie); None if none does.

    This is the plan a cancelled search keeps, so the chart marks it while the search runs.
    """
    ok = [c for c in candidates if c.get("meets_budget") and c.get("latency_ms") is not None]
    if not ok:
        return None
    return min(ok, key=lambda c: (float(c["latency_ms"]), -float(c["metric"])))["index"]


def budget_threshold(budget: dict[str, Any] | None, original_metric: float | None) -> float | None:
    """The accuracy (%) a candidate must reach: original - max drop, or the minimum agreement."""
    if not budget:
        return None
    if budget.get("max_drop") is not None:
        return None if original_metric is None else float(original_metric) - float(budget["max_drop"])
    if budget.get("min_agreement") is not None:
        return float(budget["min_agreement"])
    return None


def as_budget_dict(budget: Any) -> dict[str, Any]:
    """A core ``Budget`` (or its dict, or None) as {"max_drop": …, "min_agreement": …}."""
    if budget is None:
        return {}
    if is_dataclass(budget):
        return asdict(budget)
    return dict(budget)


def candidate_dict(event: Any) -> dict[str, Any]:
    """A ``CandidateTried`` event (or a summary's candidate dict) as a plain dict."""
    d = asdict(event) if is_dataclass(event) else dict(event)
    d["fp32_layers"] = list(d.get("fp32_layers") or [])
    return d


# --------------------------------------------------------------------------- the panel

WITHIN = QColor(46, 125, 50)  # the Quantize button's green
OVER = QColor(170, 170, 170)
FRONT = QColor(50, 110, 200)
BUDGET = QColor(200, 60, 60)
CHOSEN = QColor(245, 180, 0)
TABLE_COLUMNS = ("#", "Plan", "FP32", "Accuracy (%)", "Drop (pt)", "Latency (ms)", "Budget")


class _Tip:
    """A scatter's hover text from the panel, held weakly: a bound method kept by the scatter made a
    panel <-> scatter cycle whose garbage collection crashed (segfault, PySide 6.11 + pyqtgraph 0.14)."""

    def __init__(self, panel: "CandidatesPanel") -> None:
        self.panel = weakref.ref(panel)

    def __call__(self, x: float, y: float, data: Any) -> str:
        panel = self.panel()
        return panel._tip(x, y, data) if panel is not None else ""


class CandidatesPanel(PlotPanel):
    """Latency vs accuracy of every candidate plan of one search, with the front, the budget and the choice."""

    title = "Auto precision"
    empty_text = glossary.EMPTY_PANEL["candidates"]
    hover_text = glossary.CANDIDATES_HOVER

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget, self.legend, self.plot = _titled_plot(
            "Plans tried by the search", "top-1 on held-out images (%)", "latency, batch 1 (ms)", legend_columns=4)
        self.front_line = pg.PlotDataItem(pen=pg.mkPen(FRONT, width=2))
        self.plot.addItem(self.front_line)
        self.scatter = pg.ScatterPlotItem(size=11, hoverable=True, tip=_Tip(self))
        self.plot.addItem(self.scatter)
        self.chosen_item = pg.ScatterPlotItem(size=24, symbol="star", pen=pg.mkPen(QColor(120, 80, 0), width=1.2),
                                              brush=pg.mkBrush(CHOSEN), hoverable=True, tip=_Tip(self))
        self.plot.addItem(self.chosen_item)
        self.budget_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(BUDGET, width=1.5, style=Qt.PenStyle.DashLine),
                                           label="", labelOpts={"position": 0.98, "color": BUDGET, "anchors": [(1, -0.1), (1, -0.1)]})
        self.budget_line.setVisible(False)
        self.plot.addItem(self.budget_line, ignoreBounds=True)
        self._index_labels: list[pg.TextItem] = []
        # Legend samples: items that are never drawn in the plot, only in the legend row.
        samples = [
            (pg.ScatterPlotItem(size=10, brush=pg.mkBrush(WITHIN), pen=pg.mkPen(WITHIN.darker(140))), "within budget"),
            (pg.ScatterPlotItem(size=10, brush=pg.mkBrush(OVER), pen=pg.mkPen(OVER.darker(140))), "over budget"),
            (pg.PlotDataItem(pen=pg.mkPen(FRONT, width=2)), "fastest for its accuracy"),
            (pg.ScatterPlotItem(size=14, symbol="star", brush=pg.mkBrush(CHOSEN), pen=pg.mkPen(QColor(120, 80, 0))), "chosen"),
        ]
        self._legend_samples = samples  # kept alive: the legend only holds them by reference
        for item, name in samples:
            self.legend.addItem(item, name)
        self.legend.entries = [(name, "", "") for _, name in samples]  # _OutsideLegend sizes itself by its entries
        self.legend.updateSize()

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setToolTip("Every plan tried, in order. Hover the FP32 count for the layers it keeps in FP32.")
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.plot_widget)
        self.splitter.addWidget(self.table)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self._layout.addWidget(self.splitter, 1)
        self.scatter.sigClicked.connect(self._on_point_clicked)
        self.chosen_item.sigClicked.connect(self._on_point_clicked)

        self.candidates: list[dict[str, Any]] = []
        self.budget: dict[str, Any] = {}
        self.original_metric: float | None = None
        self.chosen: int | None = None  # the search's choice (after the run); None: the best so far is marked
        self.final = False  # the run ended: ``chosen`` is the search's own choice
        self.cancelled = False
        self.front: list[int] = []  # candidate indices on the front, fastest first
        self.clamped: list[int] = []  # candidate indices drawn at the bottom edge (far below the budget)

    def export_target(self) -> Any:
        return self.plot_widget.ci

    # ------------------------------------------------------------------ input
    def clear(self) -> None:
        self.candidates = []
        self.budget = {}
        self.original_metric = None
        self.chosen = None
        self.final = False
        self.cancelled = False
        self.set_note("")
        self.redraw()

    def start(self, budget: Any) -> None:
        """A search begins with ``budget`` (a core Budget or its dict): forget the last one."""
        self.clear()
        self.budget = as_budget_dict(budget)
        self.redraw()

    def feed(self, event: Any) -> None:
        """Overrides PlotPanel.feed: a ``CandidateTried`` event adds (or replaces) a point."""
        from quantstudio.core.results import CandidateTried

        if not isinstance(event, CandidateTried):
            return
        c = candidate_dict(event)
        self.candidates = [x for x in self.candidates if x["index"] != c["index"]] + [c]
        self.candidates.sort(key=lambda x: x["index"])
        if self.original_metric is None and self.budget.get("max_drop") is not None:
            self.original_metric = float(c["metric"]) + float(c["drop"])
        self.schedule()

    def set_search(self, search: dict[str, Any]) -> None:
        """A finished search: ``RunSummary.auto_precision`` (budget, candidates, chosen, cancelled…)."""
        self.candidates = sorted((candidate_dict(c) for c in search.get("candidates") or []), key=lambda x: x["index"])
        self.budget = as_budget_dict(search.get("budget"))
        om = search.get("original_metric")
        self.original_metric = float(om) if om is not None else (
            float(self.candidates[0]["metric"]) + float(self.candidates[0]["drop"]) if self.candidates else None)
        self.chosen = search.get("chosen")
        self.final = True
        self.cancelled = bool(search.get("cancelled"))
        self.redraw()

    def show_run(self, run: Any, variants: list[Any]) -> None:
        """Overrides PlotPanel.show_run: the run's search, or nothing for a run made without one."""
        search = getattr(run, "auto_precision", None) or {}
        if search.get("candidates"):
            self.set_search(search)
        else:
            self.clear()

    # ------------------------------------------------------------------ derived
    @property
    def metric(self) -> str:
        return "agreement" if self.budget.get("min_agreement") is not None else "top1"

    def threshold(self) -> float | None:
        return budget_threshold(self.budget, self.original_metric)

    def marked(self) -> int | None:
        """The candidate the star is on: the search's choice, or the best so far while it runs."""
        return self.chosen if self.final else best_within_budget(self.candidates)

    def _by_index(self, index: Any) -> dict[str, Any] | None:
        return next((c for c in self.candidates if c["index"] == index), None)

    def _tip(self, x: float, y: float, data: Any) -> str:
        c = self._by_index(data)
        if c is None:
            return ""
        return candidate_text(c, self.metric, chosen=c["index"] == self.marked())

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        cands = self.candidates
        self.plot.setLabel("left", "agreement with the original (%)" if self.metric == "agreement"
                           else "top-1 on held-out images (%)")
        self.front = [cands[i]["index"] for i in pareto_front([(c.get("latency_ms"), c.get("metric")) for c in cands])]
        t = self.threshold()
        placed = [c for c in cands if c.get("latency_ms") is not None]
        lo, hi = self._y_range([float(c["metric"]) for c in placed], t)
        bottom = lo + 0.04 * (hi - lo)
        self.clamped = [c["index"] for c in placed if float(c["metric"]) < lo]
        spots = []
        for c in placed:
            clamped = c["index"] in self.clamped
            colour = WITHIN if c.get("meets_budget") else OVER
            spots.append({"pos": (float(c["latency_ms"]), bottom if clamped else float(c["metric"])),
                          "brush": pg.mkBrush(colour), "pen": pg.mkPen(colour.darker(150)),
                          "symbol": "t" if clamped else "o", "data": c["index"]})
        self.scatter.setData(spots)
        by_index = {c["index"]: c for c in placed}
        front_pts = [by_index[i] for i in self.front if i in by_index and i not in self.clamped]
        self.front_line.setData([float(c["latency_ms"]) for c in front_pts], [float(c["metric"]) for c in front_pts])
        marked = by_index.get(self.marked())
        if marked is not None:
            y = bottom if marked["index"] in self.clamped else float(marked["metric"])
            self.chosen_item.setData([{"pos": (float(marked["latency_ms"]), y), "data": marked["index"]}])
        else:
            self.chosen_item.setData([])
        self.budget_line.setVisible(t is not None and bool(cands))
        if t is not None:
            self.budget_line.setValue(t)
            self.budget_line.label.setFormat(self._budget_text(t))
        self._place_index_labels(placed, bottom)
        if placed:
            xs = [float(c["latency_ms"]) for c in placed]
            x0, x1 = min(xs), max(xs)
            dx = (x1 - x0) or max(0.3 * x0, 0.1)
            self.plot.setRange(xRange=(x0 - 0.12 * dx, x1 + 0.18 * dx), yRange=(lo, hi), padding=0)
        self._fill_table()
        self._update_note()

    def _y_range(self, ys: list[float], t: float | None) -> tuple[float, float]:
        """The accuracy range shown: around the budget, so a collapsed candidate (e.g. 48 % when the budget
        is 94 %) does not squash the ones that matter; those far below sit on the bottom edge as ▼."""
        if not ys:
            return (0.0, 100.0) if t is None else (t - 5.0, min(100.0, t + 2.0))
        top = max(ys + ([t] if t is not None else []))
        if t is None:
            lo = min(ys)
        else:
            spread = max(top - t, 1.0)
            floor = t - 3.0 * spread  # what is further below than this is only "far below"
            near = [y for y in ys if y >= floor]
            lo = min(near + [t])
        span = max(top - lo, 0.5)
        return lo - 0.12 * span, top + 0.12 * span

    def _budget_text(self, t: float) -> str:
        if self.budget.get("max_drop") is not None:
            return f"budget: ≥ {t:.2f}% (original − {float(self.budget['max_drop']):g} pt)"
        return f"budget: ≥ {t:g}% agreement"

    def _place_index_labels(self, placed: list[dict[str, Any]], bottom: float) -> None:
        while len(self._index_labels) < len(placed):
            label = pg.TextItem(anchor=(-0.25, 1.0), color=(60, 60, 60))
            self.plot.addItem(label, ignoreBounds=True)
            self._index_labels.append(label)
        # The candidates far below the budget sit on the bottom edge, often at almost the same
        # latency (calibration methods cost nothing): one label for them all, not a pile-up.
        clamped = [c for c in placed if c["index"] in self.clamped]
        clamped_text = ""
        if clamped:
            low = min(float(c["metric"]) for c in clamped)
            high = max(float(c["metric"]) for c in clamped)
            clamped_text = (", ".join(str(c["index"]) for c in clamped) + " ▼ "
                            + (f"{low:.1f}%" if high - low < 0.05 else f"{low:.1f}–{high:.1f}%"))
        first_clamped = clamped[0]["index"] if clamped else None
        for i, label in enumerate(self._index_labels):
            label.setVisible(i < len(placed))
            if i < len(placed):
                c = placed[i]
                is_clamped = c["index"] in self.clamped
                label.setVisible(not is_clamped or c["index"] == first_clamped)
                y = bottom if is_clamped else float(c["metric"])
                label.setText(clamped_text if is_clamped else f"{c['index']}")
                label.setPos(float(c["latency_ms"]), y)

    def _fill_table(self) -> None:
        marked = self.marked()
        self.table.setHorizontalHeaderItem(3, QTableWidgetItem("Agreement (%)" if self.metric == "agreement" else "Top-1 (%)"))
        self.table.setRowCount(len(self.candidates))
        bold = QFont(self.table.font())
        bold.setBold(True)
        for row, c in enumerate(self.candidates):
            lat = c.get("latency_ms")
            on_front = c["index"] in self.front
            cells = [
                ("★ " if c["index"] == marked else "") + str(c["index"]),
                str(c.get("label") or c.get("calibration") or ""),
                str(len(c["fp32_layers"])),
                f"{float(c['metric']):.2f}",
                f"{float(c['drop']):.2f}",
                "—" if lat is None else f"{float(lat):.2f}",
                ("yes" if c.get("meets_budget") else "no") + (" · front" if on_front else ""),
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col != 1:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                if c["index"] == marked:
                    item.setFont(bold)
                if col == 2:
                    item.setToolTip("\n".join(c["fp32_layers"]) or "no layer in FP32")
                else:
                    item.setToolTip(candidate_text(c, self.metric, chosen=c["index"] == marked))
                if col == 6:
                    item.setForeground(WITHIN.darker(120) if c.get("meets_budget") else QColor(150, 60, 60))
                self.table.setItem(row, col, item)

    def _update_note(self) -> None:
        marked = self._by_index(self.marked())
        if not self.candidates:
            self.set_note("")
            return
        if marked is None:
            what = "no plan tried meets the budget" + ("" if self.final else " yet")
        else:
            what = (f"{'chosen' if self.final else 'best so far'}: #{marked['index']} {marked.get('label', '')} "
                    f"({len(marked['fp32_layers'])} FP32, {float(marked['latency_ms']):.2f} ms)")
        if self.final and self.cancelled:
            what = "search stopped early — " + what
        self.set_note(f"{len(self.candidates)} plans tried; {what}")

    # ------------------------------------------------------------------ interaction
    def _on_point_clicked(self, _item: Any, points: Any, *_args: Any) -> None:
        if len(points):
            self.select_candidate(points[0].data())

    def select_candidate(self, index: Any) -> None:
        """Select a candidate's row in the table (clicking its point does this)."""
        for row, c in enumerate(self.candidates):
            if c["index"] == index:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
                return

    # ------------------------------------------------------------------ for tests and the screenshot script
    def point_positions(self) -> dict[int, tuple[float, float]]:
        """Candidate index -> (x, y) of its drawn point."""
        return {int(p.data()): (p.pos().x(), p.pos().y()) for p in self.scatter.points()}


def candidate_text(c: dict[str, Any], metric: str, chosen: bool = False) -> str:
    """One candidate in words: its plan, FP32 layers, accuracy, drop and latency (tooltips, the report)."""
    what = "agreement" if metric == "agreement" else "top-1"
    layers = c.get("fp32_layers") or []
    shown = ", ".join(layers[:8]) + (f" … (+{len(layers) - 8})" if len(layers) > 8 else "")
    lat = c.get("latency_ms")
    lines = [f"#{c['index']} {c.get('label', '')}" + ("  ★ chosen" if chosen else ""),
             f"calibration: {c.get('calibration', '')}",
             f"{len(layers)} layer{'s' if len(layers) != 1 else ''} in FP32" + (f": {shown}" if layers else ""),
             f"{what} {float(c['metric']):.2f}% ({float(c['drop']):.2f} pt below the original)",
             "latency " + ("not measured" if lat is None else f"{float(lat):.2f} ms"),
             "within the budget" if c.get("meets_budget") else "outside the budget"]
    return "\n".join(lines)

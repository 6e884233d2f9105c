"""Automatic mixed precision in the app (issue 13): the budget field and Auto button, the live
"Auto precision" chart (points, Pareto front, budget, chosen plan), the chosen plan applied to
the tree as one undo step with each FP32 layer saying why, and the report's FP32 section."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from quantstudio.core.auto_precision import Budget
from quantstudio.core.errors import InputError
from quantstudio.core.results import CandidateTried
from quantstudio.gui.plots.candidates import CandidatesPanel, best_within_budget, pareto_front
from quantstudio.gui.tasks import QuantizeRequest, RunOutcome
from tests.gui.conftest import wait_idle

ORIGINAL = 95.0
# (label, FP32 layers, top-1 %, latency ms): a collapsed min-max, then calibrations, then FP32 layers by bisection.
SEARCH = [("minmax", (), 47.8, 1.62), ("entropy", (), 91.4, 1.66), ("percentile", (), 93.1, 1.60),
          ("percentile + 16 FP32", tuple(f"l{i}" for i in range(16)), 95.0, 4.1),
          ("percentile + 8 FP32", tuple(f"l{i}" for i in range(8)), 94.9, 2.9),
          ("percentile + 4 FP32", tuple(f"l{i}" for i in range(4)), 94.6, 2.2),
          ("percentile + 2 FP32", ("l0", "l1"), 94.2, 1.86),
          ("percentile + 1 FP32", ("l0",), 93.6, 1.71)]


def events(max_drop: float = 1.0) -> list[CandidateTried]:
    return [CandidateTried(i, label, label.split()[0], layers, top1, ORIGINAL - top1, lat, ORIGINAL - top1 <= max_drop)
            for i, (label, layers, top1, lat) in enumerate(SEARCH, 1)]


def test_pareto_front_leaves_out_dominated_and_unplaceable_points():
    points = [(1.6, 93.1), (1.62, 47.8), (1.71, 93.6), (2.0, 93.0), (None, 99.0), (1.71, 93.6), (3.0, 93.6)]
    # 1.62/47.8 and 2.0/93.0 are slower and less accurate than 1.6/93.1; 3.0/93.6 is slower than 1.71/93.6
    # at the same accuracy; no latency: cannot be placed. Equal points are both kept, fastest first.
    assert pareto_front(points) == [0, 2, 5]
    assert pareto_front([]) == []
    assert best_within_budget([{"index": 1, "latency_ms": 2.0, "metric": 95, "meets_budget": True},
                               {"index": 2, "latency_ms": 1.0, "metric": 90, "meets_budget": False},
                               {"index": 3, "latency_ms": 1.5, "metric": 94, "meets_budget": True}]) == 3


def test_panel_shows_every_candidate_the_front_the_budget_and_the_best_plan(qtbot):
    panel = CandidatesPanel()
    qtbot.addWidget(panel)
    panel.resize(800, 560)
    panel.show()
    assert not panel.has_data() and not panel.empty_overlay.isHidden()  # empty state says what to do
    panel.start(Budget(max_drop=1.0))
    for event in events():
        panel.feed(event)
    panel.redraw()
    pos = panel.point_positions()
    assert sorted(pos) == list(range(1, 9))
    for i, (_, _, top1, lat) in enumerate(SEARCH, 1):
        assert pos[i][0] == pytest.approx(lat)
        if i != 1:
            assert pos[i][1] == pytest.approx(top1)
    # The collapsed min-max (47.8 %) sits on the bottom edge instead of squashing the others.
    assert panel.clamped == [1] and pos[1][1] < 93.1
    assert panel.front == [3, 8, 7, 6, 5, 4]
    xs, ys = panel.front_line.getData()
    assert list(xs) == pytest.approx([1.60, 1.71, 1.86, 2.2, 2.9, 4.1]) and list(ys) == pytest.approx([93.1, 93.6, 94.2, 94.6, 94.9, 95.0])
    assert panel.budget_line.isVisible() and panel.budget_line.value() == pytest.approx(94.0)
    # While the search runs the star marks the best so far: the fastest within the budget (what Cancel keeps).
    assert panel.marked() == 7 and panel.chosen_item.points()[0].pos().x() == pytest.approx(1.86)
    assert "best so far: #7" in panel.note_label.text()
    assert panel.table.rowCount() == 8 and panel.table.item(6, 0).text() == "★ 7"
    assert panel.table.item(6, 2).text() == "2" and panel.table.item(6, 2).toolTip() == "l0\nl1"
    tip = panel._tip(1.86, 94.2, 7)
    assert "percentile + 2 FP32" in tip and "2 layers in FP32: l0, l1" in tip and "1.86 ms" in tip
    assert panel.has_data()

    # The finished search (the run's summary) decides: its choice is starred, a stop is said.
    panel.set_search({"budget": {"max_drop": 1.0, "min_agreement": None}, "original_metric": ORIGINAL,
                      "candidates": [dict(vars(e)) for e in events()], "chosen": 6, "cancelled": True})
    assert panel.marked() == 6 and panel.chosen_item.points()[0].pos().x() == pytest.approx(2.2)
    assert "search stopped early" in panel.note_label.text() and "chosen: #6" in panel.note_label.text()
    # Agreement budgets draw the line at the minimum agreement.
    panel.start({"max_drop": None, "min_agreement": 99.0})
    panel.feed(CandidateTried(1, "minmax", "minmax", (), 99.4, 0.6, 1.5, True))
    panel.redraw()
    assert panel.budget_line.value() == pytest.approx(99.0) and "agreement" in panel.plot.getAxis("left").labelText


def open_tiny(qtbot, window, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)


def test_budget_field_follows_the_data_and_auto_passes_the_budget_to_the_run(qtbot, window, tiny_files, monkeypatch):
    open_tiny(qtbot, window, tiny_files)
    panel = window.data_panel
    # Random data has no labels: the budget is an agreement, 99 % by default.
    assert panel.budget_metric == "agreement" and panel.budget_spin.value() == 99.0
    sent = []
    monkeypatch.setattr(window, "run_job", lambda fn, request, name: sent.append(request) or True)
    panel.budget_spin.setValue(98.5)
    window.auto_action.trigger()
    window.quantize()  # a plain Quantize has no budget
    assert [r.budget for r in sent] == [Budget(min_agreement=98.5), None]
    # A top-1 budget on data without labels is refused with what to do instead.
    panel.set_budget_metric("drop", user=True)
    assert panel.budget_spin.value() == 1.0 and panel.budget_spin.suffix() == " pt"
    window.auto_quantize()
    assert len(sent) == 2 and "labeled data" in window.shown_errors[-1]["text"]
    # The user's choice is kept when the data is scanned again, and remembered with its value.
    panel.budget_spin.setValue(0.5)
    panel.set_data("random")
    wait_idle(qtbot, window)
    assert panel.budget_metric == "drop"
    panel.save_settings()
    from quantstudio.gui.data_panel import DataPanel

    again = DataPanel()
    qtbot.addWidget(again)
    assert again.budget() == Budget(max_drop=0.5) and again.budget_state()["budget_min_agreement"] == 98.5


def test_budget_reaches_run_quantize_only_where_the_pipeline_takes_it():
    from quantstudio.gui.pipeline_adapter import _budget_kwargs

    req = QuantizeRequest(name="r", model=None, tree=None, plan={}, config={}, data_spec="random", preprocessing=None,
                          calib_samples=1, eval_samples=1, budget=Budget(max_drop=1.0))

    def old(model, data, prep, plan, config, ctx=None, *, eval_samples=1): ...

    def new(model, data, prep, plan, config, ctx=None, *, eval_samples=1, budget=None): ...

    assert _budget_kwargs(new, req) == {"budget": Budget(max_drop=1.0)}
    with pytest.raises(InputError, match="cannot search"):
        _budget_kwargs(old, req)
    req.budget = None
    assert _budget_kwargs(old, req) == {}


def fake_auto_run(ctx, request):
    """Stands in for a searching run: streams candidates, then returns the chosen plan and why."""
    leaves = [n.name for n in request.tree.leaves() if n.quantizable]
    chosen_fp32 = leaves[:2]
    for e in events():
        ctx.check_cancelled()
        ctx.partial(e)
    cands = [dict(vars(e), fp32_layers=list(e.fp32_layers), on_front=e.index in (3, 8, 7, 6, 5, 4)) for e in events()]
    precisions = {name: ("fp32" if name in chosen_fp32 else "int8") for name in leaves}
    return RunOutcome(
        name=request.name, quantized="quantized", plan=request.plan,
        config=dict(request.config, calibration="percentile"), data="fake",
        metrics={"original": {"top1": 0.95, "latency_ms": 4.0}, "quantized": {"top1": 0.942, "latency_ms": 1.86}},
        layer_precisions=precisions, labeled=True,
        fp32_reasons={chosen_fp32[0]: "auto precision: most sensitive (2.3 % output change with it INT8)",
                      chosen_fp32[1]: "auto precision: feeds a sensitive layer"},
        auto_precision={"budget": request.budget.to_dict(), "metric": "top1", "original_metric": ORIGINAL,
                        "heldout_samples": 64, "candidates": cands, "chosen": 7, "cancelled": False, "seconds": 12.0},
    )


def test_auto_run_fills_the_chart_and_applies_the_chosen_plan_as_one_undo_step(qtbot, window, tiny_files):
    from quantstudio.gui import glossary
    from quantstudio.gui.layer_model import COL_PRECISION

    open_tiny(qtbot, window, tiny_files)
    model = window.layer_model
    leaves = [n.name for n in model.tree.leaves() if n.quantizable]
    before = {n: model.precision_of(n) for n in leaves}
    assert set(before.values()) == {"int8"}
    req = QuantizeRequest(name="#1 fake", model=window.loaded, tree=model.tree, plan=window.plan.to_dict(),
                          config={"engine": "onnxruntime", "mode": "static", "calibration": "minmax"},
                          data_spec="random", preprocessing=None, calib_samples=1, eval_samples=1,
                          budget=Budget(max_drop=1.0))
    steps = model.undo_stack.count()
    with qtbot.waitSignal(window.run_finished, timeout=30000):
        assert window.run_job(fake_auto_run, req, "#1 fake")
        # While it searches, Cancel says it keeps the best plan so far.
        assert window.cancel_action.toolTip() == glossary.AUTO_CANCEL_HELP
    wait_idle(qtbot, window)
    assert window.cancel_action.toolTip() == "Stop the running job"
    panel = window.candidates_panel
    assert sorted(panel.point_positions()) == list(range(1, 9)) and panel.marked() == 7 and panel.final
    # The chosen plan is in the tree, as ONE undo step, and the calibration it used is selected.
    fp32 = leaves[:2]
    assert {n: model.precision_of(n) for n in leaves} == {n: ("fp32" if n in fp32 else "int8") for n in leaves}
    assert model.undo_stack.count() == steps + 1 and "Auto precision plan" in model.undo_stack.undoText()
    assert window.data_panel.quant_config()["calibration"] == "percentile"
    run = window.variants_panel.model.runs[-1]
    assert run.name.endswith("· auto") and "2 FP32" in run.name
    # Each FP32 layer says why, in every column of its row.
    tip = model.data(model.index_for_name(fp32[0], COL_PRECISION), Qt.ItemDataRole.ToolTipRole)
    assert "Why FP32: auto precision: most sensitive" in tip
    assert "Why FP32" not in (model.data(model.index_for_name(leaves[2], 0), Qt.ItemDataRole.ToolTipRole) or "")
    model.undo_stack.undo()
    assert {n: model.precision_of(n) for n in leaves} == before
    model.undo_stack.redo()
    assert model.precision_of(fp32[1]) == "fp32"


def test_report_lists_fp32_layers_with_reasons_and_the_search(qtbot):
    from quantstudio.gui.report import build_report, render_plots

    run = RunOutcome(name="#2 auto", quantized="quantized", data="images",
                     metrics={"original": {"top1": 0.95}, "quantized": {"top1": 0.942}},
                     layer_precisions={"layer2.0.conv1": "fp32", "layer2.0.conv2": "fp32", "fc": "int8", "head": "fp32"},
                     fp32_reasons={"layer2.0.conv2": "auto precision: most sensitive",
                                   "layer2.0.conv1": "feeds layer2.0.conv2 (its input stays float)"},
                     auto_precision={"budget": {"max_drop": 1.0, "min_agreement": None}, "original_metric": ORIGINAL,
                                     "heldout_samples": 64,
                                     "candidates": [dict(vars(e), fp32_layers=list(e.fp32_layers)) for e in events()],
                                     "chosen": 7, "cancelled": True, "seconds": 40.0})
    text = build_report(run, "resnet18.onnx", {})
    assert "Layers in FP32 and why" in text and "3 layers run in FP32" in text
    assert "feeds layer2.0.conv2 (its input stays float)" in text and "<code>head</code>" in text
    assert "Auto precision search" in text and "8 plans tried in 40 s" in text and "64 held-out images" in text
    assert "≥ 94.00%" in text and "stopped early" in text and "7 ★" in text
    plain = RunOutcome(name="#1", quantized="quantized", metrics={"original": {}, "quantized": {}})
    assert "Auto precision search" not in build_report(plain, "m", {})
    # The report's plots include the search's chart, drawn from the run alone.
    pngs = render_plots(run, [run])
    chart = next(caption for caption in pngs if caption.startswith("Auto precision"))
    assert "chosen: #7" in chart and "stopped early" in chart and pngs[chart][:4] == b"\x89PNG"


def test_keep_most_sensitive_sets_the_fix_layers_and_the_isolated_error_shows(qtbot):
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.gui.layer_model import COL_ISOLATED, LayerTreeModel
    from tests.gui.test_layer_model import make_tree

    model = LayerTreeModel()
    model.set_tree(make_tree(), PrecisionPlan(), root_label="net")
    model.set_layer_results(sensitivity={"block.conv": 5.0, "fc": 1.0, "conv1": 0.1},
                            sensitivity_fix={"block.conv": ["block.conv", "conv1"]}, sqnr_isolated={"block.conv": 12.5})
    assert model.has_results()[COL_ISOLATED]
    assert model.data(model.index_for_name("block.conv", COL_ISOLATED)) == "12.5"
    assert model.fp32_layers_for_top(2) == ["block.conv", "conv1", "fc"]
    assert model.keep_most_sensitive(1) == ["block.conv", "conv1"] and model.undo_stack.count() == 1
    assert model.precision_of("conv1") == "fp32" and "producers" in model.undo_stack.undoText()


def test_a_discarded_panel_is_collected_without_crashing(qtbot):
    # The report makes and discards one panel per report; a scatter holding the panel's bound method
    # (its hover text) made a cycle whose garbage collection crashed the app.
    import gc

    for _ in range(2):
        panel = CandidatesPanel()
        panel.show()
        panel.feed(events()[0])
        panel.redraw()
        panel.close()
        del panel
        gc.collect()
    assert CandidatesPanel().empty_text


def test_an_auto_variant_keeps_its_search_and_reasons_in_a_project(tmp_path):
    import json

    from quantstudio.core.schema import project_schema, validate

    run = RunOutcome(name="#1 auto", quantized="quantized", metrics={"original": {}, "quantized": {}},
                     layer_precisions={"conv1": "fp32"}, fp32_reasons={"conv1": "auto precision: most sensitive"},
                     layer_sqnr_isolated={"conv1": float("inf")},
                     auto_precision={"budget": Budget(max_drop=1.0).to_dict(), "original_metric": ORIGINAL,
                                     "candidates": [dict(vars(e), fp32_layers=list(e.fp32_layers)) for e in events()],
                                     "chosen": 7, "cancelled": False})
    project = {"format": "quantstudio-project", "version": 1, "variants": [run.to_dict()]}
    path = tmp_path / "p.qsproj"
    path.write_text(json.dumps(project))
    validate(json.loads(path.read_text()), project_schema(), path, "project")
    back = RunOutcome.from_dict(json.loads(path.read_text())["variants"][0])
    assert back.fp32_reasons == run.fp32_reasons and back.layer_sqnr_isolated == {"conv1": float("inf")}
    assert back.auto_precision["chosen"] == 7 and len(back.auto_precision["candidates"]) == 8


def test_a_real_auto_run_on_the_tiny_model_ends_with_a_chosen_plan_in_the_tree(qtbot, window, tiny_files, image_folder):
    """The Auto button with the real search (ONNX Runtime): candidates arrive live, the run
    finishes with the chosen plan, and the tree shows it."""
    from tests.gui.test_run import small_settings

    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    small_settings(window, image_folder)
    wait_idle(qtbot, window)
    panel = window.data_panel
    panel.set_budget_metric("agreement", user=True)
    panel.budget_spin.setValue(50.0)  # easy to meet: the first candidate does
    seen = []
    window.runner.partial.connect(lambda p: seen.append(type(p).__name__))
    with qtbot.waitSignal(window.run_finished, timeout=240000) as finished:
        window.auto_action.trigger()
    wait_idle(qtbot, window)
    assert not window.shown_errors, window.shown_errors
    run = finished.args[0]
    auto = run.auto_precision
    assert auto and auto["candidates"] and auto["chosen"] is not None and not auto["cancelled"]
    assert seen.count("CandidateTried") == len(auto["candidates"])
    chosen = auto["candidates"][auto["chosen"] - 1]
    assert chosen["meets_budget"] and chosen["metric"] >= 50.0
    assert run.name.endswith("· auto")
    # The tree shows the plan the run used.
    model = window.layer_model
    for layer, precision in run.layer_precisions.items():
        if model.precision_of(layer) is not None:
            assert model.precision_of(layer) == precision, layer
    assert sorted(window.candidates_panel.point_positions()) == [c["index"] for c in auto["candidates"]]


def test_cancel_during_a_real_search_keeps_the_best_plan(qtbot, window, tiny_files, image_folder, monkeypatch):
    from quantstudio.core.results import CandidateTried
    from tests.gui.test_run import small_settings

    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    small_settings(window, image_folder)
    wait_idle(qtbot, window)
    window.data_panel.set_budget_metric("agreement", user=True)
    window.data_panel.budget_spin.setValue(99.0)
    cancelled = []
    window.runner.cancelled.connect(lambda *a: cancelled.append(a))

    # Cancel as the first candidate is reported, in the worker thread (a queued click could
    # arrive after this tiny model's search has ended).
    from quantstudio.gui.worker import QtJobContext

    original_partial = QtJobContext.partial

    tried = []

    def partial(self, payload):
        original_partial(self, payload)
        if isinstance(payload, CandidateTried):
            tried.append(payload)
            if payload.index == 1:
                self._cancel.set()

    monkeypatch.setattr(QtJobContext, "partial", partial)
    # Every candidate disagrees with the original, so the search would go on past the first.
    import quantstudio.core.auto_precision as ap

    calls = []
    real_predict = ap._predict

    def predict(fn, x, batch_size):
        pred = real_predict(fn, x, batch_size)
        calls.append(1)
        return pred if len(calls) == 1 else pred + 1  # the first call is the original's

    monkeypatch.setattr(ap, "_predict", predict)
    finished = []
    window.run_finished.connect(finished.append)
    window.auto_action.trigger()
    wait_idle(qtbot, window, 120000)
    assert finished, (cancelled, window.shown_errors, tried)
    run = finished[0]
    assert run.auto_precision["cancelled"] and run.auto_precision["chosen"] == 1
    assert len(tried) == 1 and len(run.auto_precision["candidates"]) == 1  # no candidate after the cancel
    assert any("before the search was cancelled" in w for w in run.warnings)
    assert not cancelled and not window.shown_errors
    assert run.metrics.get(run.quantized)  # the kept plan was evaluated like any run

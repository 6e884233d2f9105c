"""The result plots stay readable: legends beside the data, sane ticks, zoomed scales, labels apart.

Each test feeds fake RunOutcomes to fresh panels (no pipeline run) and checks what a
reader would see: where the legend sits, which ticks carry text, the y range, where
the point labels land.
"""

from __future__ import annotations

import math
from itertools import combinations

import pytest

from quantstudio.gui import plots
from quantstudio.core.results import RunSummary, VariantMetrics, VariantRole
from quantstudio.gui.tasks import RunOutcome


def make_run(name: str = "#1 torch static (3 INT8)", *, top1=(0.99, 0.985), latency=(6.0, 2.0), size_mb=(9.0, 2.5),
             ort_latency: float | None = None, batches=(1,), sqnr=None, precisions=None, labeled=True) -> RunOutcome:
    """A finished run as the window gets it; ``ort_latency`` adds an ONNX Runtime original."""
    ref_top1, q_top1 = top1
    original, quantized, same_runtime = (VariantRole.ORIGINAL.value, VariantRole.QUANTIZED.value,
                                         VariantRole.ORIGINAL_SAME_RUNTIME.value)
    variants = {
        original: VariantMetrics(top1=ref_top1, top5=1.0, f1=ref_top1, latency_ms=latency[0], n=8,
                                 throughput={b: 1000.0 * b / latency[0] for b in batches},
                                 size_bytes=int(size_mb[0] * 1e6), model_peak_bytes=70_000_000),
        quantized: VariantMetrics(top1=q_top1, top5=1.0, f1=q_top1, agreement=0.995, latency_ms=latency[1], n=8,
                                  throughput={b: 1000.0 * b / latency[1] for b in batches},
                                  size_bytes=int(size_mb[1] * 1e6), model_peak_bytes=40_000_000),
    }
    samples = {original: {b: [latency[0] * b * (1 + 0.01 * i) for i in range(10)] for b in batches},
               quantized: {b: [latency[1] * b * (1 + 0.01 * i) for i in range(10)] for b in batches}}
    if ort_latency is not None:
        variants[same_runtime] = VariantMetrics(latency_ms=ort_latency,
                                                throughput={b: 1000.0 * b / ort_latency for b in batches})
        samples[same_runtime] = {b: [ort_latency * b] * 10 for b in batches}
    sqnr = sqnr if sqnr is not None else {"conv1": 30.0, "conv2": 22.0, "fc": 25.0}
    confusion = {"confusion_labels": ["a", "b"]}
    summary = RunSummary(
        engine="torch", mode="static", config={"engine": "torch", "mode": "static"}, variants=variants,
        evaluation={original: {**confusion, "confusion": [[4, 0], [0, 4]]},
                    quantized: {**confusion, "confusion": [[3, 1], [0, 4]]}},
        latency_samples=samples, layer_sqnr=sqnr, evaluation_samples=8,
        layer_precisions=precisions if precisions is not None else {k: "int8" for k in sqnr},
    )
    run = RunOutcome.from_summary(summary, name, data="fake")
    run.labeled = labeled  # an unlabeled run still has figures here, so the plots can be checked with both
    return run


@pytest.fixture
def show(qtbot):
    """Show a panel at a dock's size and let its layouts settle."""

    def _show(panel, width: int = 560, height: int = 300):
        qtbot.addWidget(panel)
        panel.resize(width, height)
        panel.show()
        qtbot.waitExposed(panel)
        qtbot.wait(30)
        return panel

    return _show


def _scene_rect(item):
    return item.mapRectToScene(item.boundingRect())


@pytest.mark.parametrize("panel_type", [plots.AccuracyPanel, plots.SizePanel])
def test_bar_legend_sits_above_the_plot_not_on_the_bars(show, panel_type):
    panel = show(panel_type())
    panel.show_run(make_run(), [])
    panel.redraw()
    legend, vb = panel.legend, panel.plot.vb
    assert legend.names() == ["original", "quantized"]
    assert not _scene_rect(legend).intersects(vb.sceneBoundingRect())
    for item in panel.items.values():  # and therefore above every bar
        assert not _scene_rect(legend).intersects(_scene_rect(item))


def test_latency_legend_is_outside_both_plots(show):
    panel = show(plots.LatencyPanel())
    panel.show_run(make_run(ort_latency=1.5), [])
    legend = _scene_rect(panel.legend)
    assert panel.legend.names() == ["original", "original (onnxruntime)", "quantized"]
    assert not legend.intersects(panel.hist_plot.vb.sceneBoundingRect())
    assert not legend.intersects(panel.tp_plot.vb.sceneBoundingRect())


def test_a_run_shows_only_its_own_series(show):
    lat, acc = show(plots.LatencyPanel()), show(plots.AccuracyPanel())
    for panel in (lat, acc):
        panel.show_run(make_run("#1 onnxruntime static (3 INT8)", ort_latency=1.5), [])
    assert "original (onnxruntime)" in lat.hist_items
    for panel in (lat, acc):
        panel.show_run(make_run("#2 torch static (3 INT8)"), [])
    assert sorted(lat.hist_items) == sorted(lat.tp_items) == ["original", "quantized"]
    assert lat.legend.names() == ["original", "quantized"]
    assert acc.legend.names() == ["original", "quantized"]
    # Cleared before a new run: nothing of the old one stays in a legend.
    lat.clear()
    acc.clear()
    assert lat.legend.names() == [] and acc.legend.names() == []


def test_one_batch_size_is_the_only_throughput_tick(show):
    panel = show(plots.LatencyPanel())
    panel.show_run(make_run(batches=(1,)), [])
    levels = panel.tp_plot.getAxis("bottom")._tickLevels
    assert levels == [[(0.0, "1")]]
    panel.show_run(make_run(batches=(1, 8, 32)), [])
    ticks = panel.tp_plot.getAxis("bottom")._tickLevels[0]
    assert [s for _, s in ticks] == ["1", "8", "32"]
    assert [v for v, _ in ticks] == pytest.approx([0.0, math.log10(8), math.log10(32)])


@pytest.mark.parametrize("lo, hi, size", [(0.5, 60.0, 190), (15.0, 45.0, 190), (1.0, 1e4, 150), (5.5, 9.0, 200)])
def test_log_axis_labels_never_crowd(lo, hi, size):
    axis = plots.LogAxis("bottom")
    axis.setLogMode(True)
    a, b = math.log10(lo), math.log10(hi)
    levels = axis.tickValues(a, b, size)
    labelled = [v for spacing, vs in levels if spacing is not None for v in vs]
    texts = [t for spacing, vs in levels for t in axis.tickStrings(vs, 1.0, spacing) if t]
    assert len(labelled) >= 2 and len(texts) == len(labelled)
    px = sorted((v - a) / (b - a) * size for v in labelled)
    assert min(q - p for p, q in zip(px, px[1:])) >= 25  # room for "0.5", "20", "10⁴" side by side
    assert all("·" not in t for t in texts)  # no "2·10¹"


def test_accuracy_zooms_to_close_values_and_labels_every_bar(show):
    panel = show(plots.AccuracyPanel())
    panel.show_run(make_run(top1=(0.99, 0.985)), [])
    bottom, top = panel.plot.vb.viewRange()[1]
    assert 90 <= bottom < 98.5 and top >= 100
    assert "starts at" in panel.plot.getAxis("left").labelText
    shown = [t.toPlainText() for ts in panel.value_labels.values() for t in ts if t.isVisible()]
    assert {"99.0", "98.5", "100.0", "99.5"} <= set(shown)
    # Low values keep the full scale from 0.
    panel.show_run(make_run(top1=(0.4, 0.3)), [])
    assert panel.plot.vb.viewRange()[1][0] == 0
    assert "starts at" not in panel.plot.getAxis("left").labelText


def test_tradeoff_labels_stay_apart_and_colours_match_the_other_panels(show):
    panel = show(plots.TradeoffPanel())
    r1 = make_run("#1 onnxruntime static (3 INT8)", top1=(0.99, 0.985), latency=(7.0, 1.00), ort_latency=1.4)
    r2 = make_run("#2 torch static (3 INT8)", top1=(0.99, 0.985), latency=(6.0, 1.02))
    panel.show_run(r2, [r1, r2])
    panel.show_variants([r1, r2])
    names = [n for n, _, _ in panel.points]
    # One point per original (each engine once, timed by the latest run that timed it).
    assert sorted(n for n in names if n.startswith("original")) == ["original", "original (onnxruntime)"]
    assert dict((n, lat) for n, lat, _ in panel.points)["original"] == 6.0
    rects = panel.label_rects()
    assert len(rects) == 4
    for a, b in combinations(rects, 2):
        assert not a.intersects(b)
    view = panel.plot.vb.sceneBoundingRect()
    assert all(view.contains(r) for r in rects)  # nothing cut off ("origi")
    colour = dict(zip(names, panel.colours))
    fixed = plots._VariantColours.FIXED
    assert colour["#2 torch static (3 INT8)"] == fixed["quantized"]  # the run the other panels show
    assert colour["original"] == fixed["original"]
    assert colour["original (onnxruntime)"] == fixed["original (onnxruntime)"]
    assert colour["#1 onnxruntime static (3 INT8)"] not in fixed.values()
    assert panel.legend.names() == names


def test_tradeoff_uses_a_log_axis_when_latencies_differ_a_lot(show):
    panel = show(plots.TradeoffPanel())
    run = make_run(latency=(1400.0, 1.0))
    panel.show_run(run, [run])
    panel.show_variants([run])
    assert panel.log_x and "log" in panel.plot.getAxis("bottom").labelText
    rects = panel.label_rects()
    assert all(panel.plot.vb.sceneBoundingRect().contains(r) for r in rects)


def test_sqnr_scale_follows_the_quantized_layers(show):
    panel = show(plots.LayerErrorPanel())
    sqnr = {"stem": 135.8, "conv1": 18.0, "conv2": 24.0, "exact": float("inf"), "fc": 22.0}
    prec = {"stem": "fp32", "conv1": "int8", "conv2": "int8", "exact": "int8", "fc": "fp16"}
    panel.show_run(make_run(sqnr=sqnr, precisions=prec), [])
    top = panel.plot.vb.viewRange()[1][1]
    assert 24 < top < 40  # not 135 dB
    assert panel.capped == [True, False, False, True, False]
    assert max(panel.values) <= top and panel.true_values[0] == 135.8
    assert len(panel.capped_marks.data) == 2
    assert "cut off" in panel.note_label.text() and "stem: 135.8 dB (FP32)" in panel.note_label.text()
    panel.click_bar(0)
    assert "135.8 dB (FP32)" in panel.hover_label.text()
    assert panel.legend.names() == ["INT8", "FP16", "FP32"]


def test_confusion_variants_are_named_after_the_run(show, qtbot):
    panel = show(plots.ConfusionPanel())
    panel.show_run(make_run("#1 onnxruntime static (3 INT8)"), [])
    panel.show_run(make_run("#2 torch static (3 INT8)"), [])
    texts = [panel.variant_combo.itemText(i) for i in range(panel.variant_combo.count())]
    assert texts == ["#2 torch static (3 INT8) — original", "#2 torch static (3 INT8) — quantized"]
    assert panel.current_variant() == "quantized"
    combo = panel.variant_combo
    # Wide enough to read (not "quantize"), once the header row has been laid out again.
    qtbot.waitUntil(lambda: combo.width() >= combo.fontMetrics().horizontalAdvance(texts[1]), timeout=2000)

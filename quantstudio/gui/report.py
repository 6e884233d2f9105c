"""The HTML report of a run: metrics, settings, warnings and the plots embedded as PNG (base64).

The plots are drawn by fresh, never-shown panels fed with the exported run only
(``render_plots``), so a report never shows what the window happens to display.
"""

from __future__ import annotations

import base64
import datetime
import html
from typing import Any

from PySide6.QtCore import QBuffer, QEvent, QIODevice, Qt
from PySide6.QtWidgets import QApplication

from quantstudio import __version__

# Size the off-screen panels are laid out at (the PNG is then scaled to PNG_WIDTH).
PANEL_SIZE = (900, 440)
PNG_WIDTH = 900


def plot_png(panel: Any) -> bytes:
    """A plot panel rendered to PNG bytes (GUI thread: it paints)."""
    import pyqtgraph.exporters as exporters

    exporter = exporters.ImageExporter(panel.export_target())
    exporter.parameters()["width"] = PNG_WIDTH
    image = exporter.export(toBytes=True)
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    return bytes(buf.data())


def report_panels(run: Any, runs: list[Any]) -> list[Any]:
    """New plot panels, laid out off screen, showing ``run`` (and ``runs`` in the trade-off plot).

    The caller owns them: call ``dispose_panels`` when done (GUI thread).
    """
    from quantstudio.gui import plots

    panels = [plots.LatencyPanel(), plots.AccuracyPanel(), plots.SizePanel(), plots.LayerErrorPanel(),
              plots.ConfusionPanel(), plots.TradeoffPanel()]
    if getattr(run, "auto_precision", None):  # the search's chart (issue 13)
        panels.append(plots.CandidatesPanel())
    if getattr(run, "training", None):
        panels.append(plots.TrainingPanel())  # fine-tuned variants: the training curve
    for panel in panels:
        panel.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
        panel.resize(*PANEL_SIZE)
        panel.show()
    # Let the layouts settle before the data arrives: label placement needs real geometry.
    # Only layout requests: other posted events (a job's queued signals) must not run in here.
    QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)
    for panel in panels:
        panel.show_run(run, runs)
        if isinstance(panel, plots.TradeoffPanel):
            panel.show_variants(runs)
    QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)
    for panel in panels:
        panel.redraw()
    return panels


def dispose_panels(panels: list[Any]) -> None:
    for panel in panels:
        panel.hide()
        panel.deleteLater()


def render_plots(run: Any, runs: list[Any]) -> dict[str, bytes]:
    """Caption → PNG of every plot of ``run``; a plot that cannot paint gets a caption saying so."""
    panels = report_panels(run, runs)
    plots: dict[str, bytes] = {}
    try:
        for panel in panels:
            note = panel.note_label.text().strip()
            caption = f"{panel.title} — {note}" if note else panel.title
            try:
                plots[caption] = plot_png(panel)
            except Exception as exc:  # noqa: BLE001 - a plot that cannot paint must not stop the report
                plots[f"{panel.title} (could not be drawn: {exc})"] = b""
    finally:
        dispose_panels(panels)
    return plots


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.2f}%"


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    return f"{float(v):.2f}{unit}"


def training_html(run: Any) -> str:
    """The fine-tuning (QAT) section: its settings and every epoch's figures ("" when not fine-tuned)."""
    t = getattr(run, "training", None) or {}
    if not t:
        return ""
    e = html.escape
    s = t.get("settings") or {}
    signal = {"labels": "labels (cross-entropy)", "distill": "distillation from the FP32 model"}.get(
        str(s.get("signal")), str(s.get("signal", "—")))
    lr = s.get("lr")
    rows = [("epochs asked", s.get("epochs")), ("learning rate", f"{lr:.3g}" if isinstance(lr, (int, float)) else lr),
            ("batch size", s.get("batch_size")), ("learned from", signal),
            ("training images", s.get("train_samples")), ("validation images", s.get("val_samples")),
            ("seed", s.get("seed")), ("epoch kept", t.get("best_epoch")),
            ("stopped", "by the user (best epoch kept)" if t.get("cancelled") else
             "early: no better validation result" if t.get("stopped_early") else "no, every epoch ran"),
            ("time (s)", f"{float(t['seconds']):.1f}" if isinstance(t.get("seconds"), (int, float)) else None),
            ("peak memory (MB)", f"{float(t['peak_memory_bytes']) / 1e6:.0f}"
             if isinstance(t.get("peak_memory_bytes"), (int, float)) else None)]
    settings = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in rows if v is not None)
    metric = {"top1": "top-1", "agreement": "agreement with the original"}.get(str(t.get("metric")),
                                                                                 str(t.get("metric", "")))
    history = list(t.get("history") or [])
    if not any(h.get("epoch") == 0 for h in history) and isinstance(t.get("ptq_val_metric"), (int, float)):
        history.insert(0, {"epoch": 0, "train_loss": None, "val_metric": t["ptq_val_metric"]})
    epochs = []
    for h in history:
        loss, val = h.get("train_loss"), h.get("val_metric")
        kept = " (kept)" if h.get("epoch") == t.get("best_epoch") else ""
        label = "0 — plain INT8 start" if h.get("epoch") == 0 else str(h.get("epoch"))
        epochs.append(f"<tr><td>{e(label + kept)}</td><td>{'—' if loss is None else f'{float(loss):.4f}'}</td>"
                      f"<td>{'—' if val is None else f'{float(val):.2f}'}</td></tr>")
    return (f"<h2>Fine-tuning (QAT)</h2><table>{settings}</table>"
            f"<table><tr><th>epoch</th><th>training loss</th><th>validation {e(metric)} (%)</th></tr>"
            f"{''.join(epochs)}</table>")


def build_report(run: Any, model_text: str, plots: dict[str, bytes], export_summary: dict | None = None) -> str:
    e = html.escape
    # Built on the worker before the export commits: memory measured by this export is
    # not in the run's metrics yet, so it is merged into a copy here.
    metrics = {n: dict(m) for n, m in run.metrics.items()}
    if export_summary and export_summary.get("model_peak_bytes"):
        metrics.setdefault(run.quantized, {}).update(
            {k: export_summary.get(k) for k in ("peak_rss_bytes", "model_peak_bytes")})
    names = [n for n in metrics]
    rows = [
        ("top-1", "top1", _pct), ("top-5", "top5", _pct), ("precision", "precision", _pct),
        ("recall", "recall", _pct), ("F1", "f1", _pct), ("agreement with original", "agreement", _pct),
        ("output SQNR (dB)", "sqnr_db", _num), ("latency, smallest batch (ms)", "latency_ms", _num),
        ("model size (MB)", "size_bytes", lambda v: "—" if v is None else f"{float(v) / 1e6:.2f}"),
        ("memory running the model (MB)", "model_peak_bytes", lambda v: "—" if v is None else f"{float(v) / 1e6:.1f}"),
        ("peak memory of the whole process (MB)", "peak_rss_bytes", lambda v: "—" if v is None else f"{float(v) / 1e6:.1f}"),
    ]
    table = ["<table><tr><th></th>" + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>"]
    for label, key, fmt in rows:
        cells = [fmt(metrics[n].get(key)) for n in names]
        if all(c == "—" for c in cells):
            continue
        table.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    ratio = run.speedup  # the core's one rule, as in the Variants table and the CLI
    if ratio is not None:
        cells = [f"{ratio:.2f}×" if n == run.quantized else "—" for n in names]
        table.append("<tr><td>speed-up against the FP32 model</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    table.append("</table>")
    cfg = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in run.config.items())
    rules = run.plan.get("rules", [])
    plan = f"<p>default: <b>{e(str(run.plan.get('default', '')).upper())}</b></p>"
    if rules:
        plan += "<ul>" + "".join(
            f"<li>{e(r['kind'])} <code>{e(r['pattern'])}</code> → {e(r['precision'].upper())}</li>" for r in rules) + "</ul>"
    warn = "".join(f"<li>{e(w)}</li>" for w in run.warnings)
    notes = "".join(f"<li>{e(n)}</li>" for n in run.notes)
    imgs = "".join(
        f"<p class='warn'>{e(title)}</p>" if not png else
        f"<figure><img alt='{e(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{e(title)}</figcaption></figure>"
        for title, png in plots.items()
    )
    export = ""
    if export_summary:
        parts = []
        for f in export_summary.get("files") or [export_summary]:
            chk = f.get("check") or {}
            parts.append(
                f"<p>{e(str(f.get('path')))} ({e(str(f.get('format')))}), "
                f"round-trip check <b>{'passed' if chk.get('passed') else 'FAILED'}</b>: reloaded with "
                f"{e(str(chk.get('reloaded_with')))}, max difference {chk.get('max_abs_diff', 0):.3g}, "
                f"top-1 agreement {_pct(chk.get('top1_agreement'))} on {chk.get('samples')} samples.</p>")
        export = "<h2>Export</h2>" + "".join(parts)
    random_banner = "<p class='warn'><b>Random data — accuracy figures are not meaningful.</b></p>" if run.is_random else ""
    measured = []  # what every figure was measured on (issue: trust)
    if getattr(run, "evaluation_data", ""):
        measured.append(f"Accuracy measured on {e(run.evaluation_data)}.")
    if getattr(run, "n_calibrated", 0):
        measured.append(f"Calibrated on {run.n_calibrated} samples of {e(run.calibration_data or run.data)}.")
    if getattr(run, "input_shape", None):
        measured.append(f"Model input {e('x'.join(str(d) for d in run.input_shape))}.")
    if getattr(run, "preprocessing_steps", None):
        measured.append(f"Preprocessing: {e(', '.join(run.preprocessing_steps))}.")
    if getattr(run, "timing_warnings", None):
        measured.append("<span class='warn'><b>Timings unreliable</b>: " + e("; ".join(run.timing_warnings)) + "</span>")
    measured_html = f"<p>{'<br>'.join(measured)}</p>" if measured else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>QuantStudio report — {e(run.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child {{ text-align: left; }} .warn {{ color: #a05000; }} figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>QuantStudio report: {e(run.name)}</h1>
<p>{e(model_text)}<br>Data: {e(run.data)}<br>Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by QuantStudio {__version__}</p>
{random_banner}
<h2>Results</h2>{measured_html}{''.join(table)}
{export}
<h2>Settings</h2><table>{cfg}</table>
{training_html(run)}
<h2>Precision plan</h2>{plan}
{fp32_and_search_html(run)}
{'<h2>Warnings</h2><ul class="warn">' + warn + '</ul>' if warn else ''}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<h2>Plots</h2>{imgs}
</body></html>
"""


# --------------------------------------------------------------------------- FP32 layers and auto precision (issue 13)


def fp32_and_search_html(run: Any) -> str:
    """Which layers run in FP32 and why, and the auto-precision search (budget, every candidate, the choice)."""
    from quantstudio.gui.plots.candidates import budget_threshold, pareto_front

    e = html.escape
    out = []
    reasons = dict(getattr(run, "fp32_reasons", None) or {})
    fp32 = [k for k, v in (run.layer_precisions or {}).items() if str(v).lower() == "fp32"]
    names = list(reasons) + [k for k in fp32 if k not in reasons]
    if names:
        rows = "".join(f"<tr><td><code>{e(n)}</code></td><td style='text-align:left'>{e(reasons.get(n, 'not said by the run'))}</td></tr>"
                       for n in names)
        out.append(f"<h2 id='fp32-layers'>Layers in FP32 and why</h2><p>{len(names)} layer{'s' if len(names) != 1 else ''} "
                   f"run in FP32.</p><table><tr><th>layer</th><th>why FP32</th></tr>{rows}</table>")
    search = dict(getattr(run, "auto_precision", None) or {})
    cands = list(search.get("candidates") or [])
    if cands:
        budget = dict(search.get("budget") or {})
        agreement = budget.get("min_agreement") is not None
        original = search.get("original_metric")
        if original is None:
            original = float(cands[0]["metric"]) + float(cands[0]["drop"])
        threshold = budget_threshold(budget, original)
        if agreement:
            said = f"at least {float(budget['min_agreement']):g}% agreement with the original"
        else:
            said = f"at most {float(budget.get('max_drop') or 0):g} points of top-1 below the original ({float(original):.2f}%)"
        chosen = search.get("chosen")
        front = set(pareto_front([(c.get("latency_ms"), c.get("metric")) for c in cands]))
        metric = "agreement (%)" if agreement else "top-1 (%)"
        rows = []
        for i, c in enumerate(cands):
            lat = c.get("latency_ms")
            mark = " ★" if c.get("index") == chosen else ""
            layers = list(c.get("fp32_layers") or [])
            on_front = c.get("on_front") if "on_front" in c else (i in front)
            rows.append(
                f"<tr{' style=font-weight:bold' if mark else ''}><td>{e(str(c.get('index')))}{mark}</td>"
                f"<td style='text-align:left'>{e(str(c.get('label', '')))}</td>"
                f"<td>{e(str(c.get('calibration', '')))}</td><td title='{e(', '.join(layers))}'>{len(layers)}</td>"
                f"<td>{float(c['metric']):.2f}</td><td>{float(c['drop']):.2f}</td>"
                f"<td>{'—' if lat is None else f'{float(lat):.2f}'}</td>"
                f"<td>{'yes' if c.get('meets_budget') else 'no'}</td><td>{'yes' if on_front else ''}</td></tr>")
        held = search.get("heldout_samples")
        ending = ("The search was stopped early: the best plan found so far was kept. " if search.get("cancelled") else "")
        picked = next((c for c in cands if c.get("index") == chosen), None)
        choice = (f"Chosen: #{picked.get('index')} {e(str(picked.get('label', '')))}, the fastest plan within the budget."
                  if picked else "No plan tried met the budget.")
        secs = search.get("seconds")
        out.append(
            "<h2 id='auto-precision'>Auto precision search</h2>"
            f"<p>Budget: {e(said)}" + (f" (≥ {threshold:.2f}%)" if threshold is not None and not agreement else "") + ". "
            f"{len(cands)} plans tried" + (f" in {float(secs):.0f} s" if secs else "") + ", each judged on "
            + (f"{int(held)} held-out images" if held else "held-out images") + " calibration never saw. "
            f"{ending}{choice}</p>"
            f"<table><tr><th>#</th><th>plan</th><th>calibration</th><th>FP32 layers</th><th>{metric}</th>"
            "<th>drop (pt)</th><th>latency (ms)</th><th>within budget</th><th>Pareto front</th></tr>"
            + "".join(rows) + "</table>")
    return "\n".join(out)

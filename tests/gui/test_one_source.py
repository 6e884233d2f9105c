"""One run, one source of figures: the CLI's --json, the Variants table and the HTML report agree.

A real quantize (tiny model, a small image folder, a short benchmark) goes through the
CLI; the very result object it printed is then reduced for the GUI and reported. Every
consumer reads the run's ``RunSummary``, so top-1, agreement, latency and speed-up must
be the same numbers everywhere, and the JSON alone must rebuild the GUI's view.
"""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt

from quantstudio.core.results import RunSummary, VariantRole
from quantstudio.gui.pipeline_adapter import reduce_result
from quantstudio.gui.report import build_report
from quantstudio.gui.tasks import RunOutcome
from quantstudio.gui.variants import COLUMNS, VariantTableModel


@pytest.mark.slow
def test_cli_json_variants_row_and_report_show_the_same_run(qtbot, tiny_files, image_folder, tmp_path, monkeypatch,
                                                            capsys):
    import quantstudio.core.pipeline as pipeline
    from quantstudio.cli import main

    produced = []
    real = pipeline.run_quantize

    def recording(*args, **kwargs):
        kwargs["benchmark_runs"] = 5  # a short benchmark: the figures need to exist, not to be precise
        produced.append(real(*args, **kwargs))
        return produced[-1]

    monkeypatch.setattr(pipeline, "run_quantize", recording)
    out = tmp_path / "q.onnx"
    # ONNX Runtime on a TorchScript model: the run times an FP32 ONNX model too, the speed-up's baseline.
    assert main(["quantize", str(tiny_files["torchscript"]), "--input-shape", "1,3,32,32", "--data", str(image_folder),
                 "--engine", "onnxruntime", "--calib-samples", "8", "--eval-samples", "12", "--out", str(out),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    (result,) = produced
    quantized = VariantRole.QUANTIZED.value

    run = reduce_result(result, "#1", result.data)
    q = run.metrics[quantized]
    assert d["quantized"]["top1"] is not None and d["speedup"] is not None
    assert d["quantized"]["top1"] == q["top1"] and d["quantized"]["agreement"] == q["agreement"]
    assert d["latency_ms"][quantized] == q["latency_ms"]
    assert d["speedup"] == pytest.approx(run.speedup, rel=0, abs=0)
    assert d["speedup_baseline"] == VariantRole.ORIGINAL_SAME_RUNTIME.value  # timed, so it is the baseline
    assert d["speedup"] == pytest.approx(d["latency_ms"][d["speedup_baseline"]] / d["latency_ms"][quantized])

    # The JSON alone rebuilds the GUI's view of the run (a project stores the same figures).
    again = RunOutcome.from_summary(RunSummary.from_dict(d), "#1")
    assert again.metrics[quantized] == q and again.speedup == run.speedup
    assert RunOutcome.from_dict(json.loads(json.dumps(run.to_dict()))).speedup == pytest.approx(run.speedup)

    table = VariantTableModel()
    table.add(run)

    def cell(column: str) -> str:
        return table.data(table.index(0, COLUMNS.index(column)), Qt.ItemDataRole.DisplayRole)

    warn = " ⚠" if run.timing_warnings else ""
    assert cell("Top-1") == f"{100 * d['quantized']['top1']:.2f}%"
    assert cell("Agreement") == f"{100 * d['quantized']['agreement']:.2f}%"
    assert cell("Latency (ms)") == f"{d['latency_ms'][quantized]:.2f}{warn}"
    assert cell("Speed-up") == f"{d['speedup']:.2f}×{warn}"

    html = build_report(run, "tiny.ts.pt", {})
    for text in (f"{100 * d['quantized']['top1']:.2f}%", f"{100 * d['quantized']['agreement']:.2f}%",
                 f"<td>{d['latency_ms'][quantized]:.2f}</td>", f"<td>{d['speedup']:.2f}×</td>"):
        assert text in html, text

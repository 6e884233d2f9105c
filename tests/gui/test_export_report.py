"""Export dialog: the report shows the exported run's own plots; every failure ends in the error box."""

from __future__ import annotations

import pytest

from quantstudio.gui import report
from quantstudio.gui.export_dialog import ExportDialog
from tests.gui.conftest import wait_idle
from tests.gui.test_plots_readable import make_run


@pytest.fixture
def two_runs(window):
    """Run #1 and run #2 with different numbers; the window shows #2 (the latest)."""
    r1 = make_run("#1 onnxruntime static (3 INT8)", top1=(0.99, 0.90), latency=(7.0, 1.0), size_mb=(9.0, 2.0),
                  ort_latency=1.4, batches=(1, 8), sqnr={"conv1": 31.0, "fc": 11.0})
    r2 = make_run("#2 torch static (3 INT8)", top1=(0.99, 0.97), latency=(6.0, 5.0), size_mb=(9.5, 3.0),
                  sqnr={"conv1": 21.0, "conv2": 19.0, "fc": 17.0})
    for run in (r1, r2):
        window.variants_panel.model.add(run)
    window._show_run(r2)
    return r1, r2


def _dialog(window, folder, variant_row, **checks) -> ExportDialog:
    dlg = ExportDialog(window)
    dlg.variant_combo.setCurrentIndex(variant_row)
    dlg.folder_edit.setText(str(folder))
    for name, on in checks.items():
        getattr(dlg, name).setChecked(on)
    return dlg


def test_report_plots_come_from_the_exported_run(window, two_runs, tmp_path, monkeypatch):
    r1, r2 = two_runs
    seen = {}
    draw = report.plot_png

    def record(panel):  # what each plot was built from, at the moment it is drawn
        seen[panel.title] = panel
        seen[panel.title + " values"] = {
            "Latency": lambda: {n: sorted(per) for n, per in panel.throughput.items()},
            "Accuracy": lambda: panel.shown_values(),
            "Size and memory": lambda: panel.shown_values(),
            "Per-layer error": lambda: list(panel.names),
            "Confusion matrix": lambda: panel.shown_run.name,
            "Speed vs accuracy": lambda: {n: lat for n, lat, _ in panel.points},
        }[panel.title]()
        return draw(panel)

    monkeypatch.setattr(report, "plot_png", record)
    dlg = _dialog(window, tmp_path, 0, recipe_check=False)
    assert dlg.run is r1 and dlg.targets().keys() == {"report"}
    assert dlg.start_export()
    assert not window.shown_errors
    assert seen["Accuracy values"]["quantized"]["top-1"] == pytest.approx(90.0)  # #1's, not #2's 97
    assert seen["Size and memory values"]["quantized"]["model size"] == pytest.approx(2.0)
    assert seen["Latency values"] == {"original": [1, 8], "quantized": [1, 8], "original (onnxruntime)": [1, 8]}
    assert seen["Per-layer error values"] == ["conv1", "fc"]
    assert seen["Confusion matrix values"] == r1.name
    assert seen["Speed vs accuracy values"][r1.name] == 1.0
    assert all(seen[t].shown_run is r1 for t in ("Latency", "Accuracy", "Size and memory", "Per-layer error"))
    # The window still shows #2: exporting #1 changed nothing on screen.
    assert window.accuracy_panel.shown_values()["quantized"]["top-1"] == pytest.approx(97.0)
    html = next(tmp_path.glob("*.report.html")).read_text()
    assert r1.name in html and html.count("data:image/png;base64,") == 6


def test_a_failed_model_export_ends_in_the_error_box(qtbot, window, two_runs, tmp_path, monkeypatch):
    r1, _ = two_runs
    r1.raw = object()  # a run that can be exported (the job itself is replaced below)
    from quantstudio.gui import pipeline_adapter

    def failing_export(ctx, raw, path, data_spec, measure_memory=False):
        raise FileNotFoundError(2, "No such file or directory", "/proc/qs_nope")

    monkeypatch.setattr(pipeline_adapter, "export_job", failing_export)
    dlg = _dialog(window, "/proc/qs_nope", 0)
    assert "model" in dlg.targets()
    assert dlg.start_export()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: bool(window.shown_errors), timeout=5000)
    [box] = window.shown_errors
    assert box["title"] == "Export failed"
    assert "/proc/qs_nope" in box["text"] and "No such file or directory" in box["text"]
    assert "folder" in box["hint"] and "Nothing was overwritten" in box["hint"]
    assert "FileNotFoundError" in box["details"]  # the traceback, folded away
    summary = dlg.result_label.text()
    assert "Export failed" in summary and "details below" not in summary
    assert dlg.export_button.isEnabled() and dlg.written == []  # no report after a failed model export


def test_an_unwritable_report_ends_in_the_error_box(window, two_runs, tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    dlg = _dialog(window, not_a_folder, 1, recipe_check=False)
    assert dlg.targets().keys() == {"report"}
    dlg.start_export()
    [box] = window.shown_errors
    assert box["title"] == "Report not written"
    assert box["text"] and box["hint"] and box["details"]
    assert "report was not written" in dlg.result_label.text()


def test_a_variant_without_its_model_in_memory_still_exports_its_recipe(qtbot, window, two_runs, tmp_path):
    """A reopened project: the variant's results only, no quantized model; its plan and settings make a recipe."""
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.recipe import Recipe

    r1, _ = two_runs
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp32")
    r1.plan = plan.to_dict()
    assert r1.raw is None
    window.data_panel.set_data("random")
    dlg = _dialog(window, tmp_path, 0, report_check=False)
    assert dlg.targets().keys() == {"recipe"} and not dlg.onnx_check.isEnabled()
    assert dlg.start_export()
    wait_idle(qtbot, window)
    recipe = Recipe.load(next(tmp_path.glob("*.recipe.json")))
    assert recipe.precision_plan().precision_for("fc").value == "fp32"
    assert recipe.engine == "torch" and recipe.data["spec"] == "random"
    assert not window.shown_errors

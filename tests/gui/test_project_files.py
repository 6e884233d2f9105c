"""Opening malformed project files (issue 17): a dialog naming the file and the field,
nothing changes in the window, it stays usable, and the data panel never stays blocked."""

from __future__ import annotations

import json

import pytest

from quantstudio.gui.project import load_project, make_project, save_project


def _project(model_path) -> dict:
    return make_project({"path": str(model_path), "arch": None, "input_shape": [1, 3, 32, 32], "kind": "torchscript",
                         "source_dir": None},
                        {"calib_samples": 8, "eval_samples": 8, "per_channel": True, "engine": "onnxruntime"},
                        {"version": 1, "default": "int8", "rules": []}, [])


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# (how the file is broken, the words the dialog must show: the field or the problem)
MALFORMED = {
    "not_utf8": (lambda d: json.dumps(d).encode().replace(b'"int8"', b'"\xffint8"'), "UTF-8"),
    "not_json": (lambda d: b"{\"format\": ", "not valid JSON"),
    "deep_nesting": (lambda d: json.dumps(d)[:-1].encode() + b', "x": ' + _deep(20000).encode() + b"}", "nests"),
    "model_is_text": (lambda d: {**d, "model": "m.pt"}, "field model"),
    "model_path_number": (lambda d: {**d, "model": {**d["model"], "path": 5}}, "field model.path"),
    "input_shape_text": (lambda d: {**d, "model": {**d["model"], "input_shape": ["1", "3"]}}, "field model.input_shape[0]"),
    "plan_is_list": (lambda d: {**d, "plan": ["int8"]}, "field plan"),
    "plan_bad_precision": (lambda d: {**d, "plan": {**d["plan"], "rules": [{"pattern": "fc", "precision": "int9"}]}},
                           "field plan.rules[0].precision"),
    "plan_bad_regex": (lambda d: {**d, "plan": {**d["plan"], "rules": [{"pattern": "(", "precision": "fp32",
                                                                         "kind": "regex"}]}}, "plan.rules[0].pattern"),
    "variants_is_object": (lambda d: {**d, "variants": {"a": 1}}, "field variants"),
    "variant_metrics_text": (lambda d: {**d, "variants": [{"name": "v1", "metrics": "good"}]}, "field variants[0].metrics"),
    "variant_latency_text": (lambda d: {**d, "variants": [{"name": "v1", "latency_samples": {"int8": {"1": "fast"}}}]},
                             "variants[0].latency_samples.int8.1"),
    "calib_samples_text": (lambda d: {**d, "data": {**d["data"], "calib_samples": "many"}}, "field data.calib_samples"),
    "per_channel_text": (lambda d: {**d, "data": {**d["data"], "per_channel": "no"}}, "field data.per_channel"),
    "data_is_list": (lambda d: {**d, "data": [1, 2]}, "field data"),
    "unknown_field": (lambda d: {**d, "colour": "blue"}, "'colour'"),
    "future_version": (lambda d: {**d, "version": 2}, "version 2"),
}


def _write(tmp_path, name, content) -> str:
    path = tmp_path / f"{name}.qsproj"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_project_is_refused_naming_file_and_field(qtbot, window, tiny_files, tmp_path, name):
    breaker, words = MALFORMED[name]
    path = _write(tmp_path, name, breaker(_project(tiny_files["torchscript"])))
    assert window.open_project(path) is False
    assert len(window.shown_errors) == 1
    shown = window.shown_errors[0]
    assert path.name in shown["text"], shown
    assert words.lower() in (shown["text"] + shown["hint"]).lower(), shown
    assert window.loaded is None and window._after_load is None
    assert not window.data_panel.signalsBlocked()


def test_after_a_bad_project_the_window_still_opens_good_ones(qtbot, window, tiny_files, tmp_path):
    bad = _write(tmp_path, "bad", {**_project(tiny_files["torchscript"]), "plan": "int8"})
    assert window.open_project(bad) is False
    good = save_project(tmp_path / "good.qsproj", _project(tiny_files["torchscript"]))
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        assert window.open_project(good) is not False
    assert window.loaded is not None
    assert window.data_panel.calib_spin.value() == 8
    assert not window.data_panel.signalsBlocked()


def test_a_project_the_window_saves_opens_again(qtbot, window, tiny_files, tmp_path):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    saved = save_project(tmp_path / "mine.qsproj", window.project_dict())
    data = load_project(saved)  # the schema accepts everything the window writes
    assert data["model"]["path"] == str(tiny_files["torchscript"])
    assert window.shown_errors == []


def test_a_project_without_version_is_read_as_the_current_one(tmp_path, tiny_files):
    old = _project(tiny_files["torchscript"])
    del old["version"]
    path = _write(tmp_path, "old", old)
    assert load_project(path)["version"] == 1


def test_restore_state_skips_wrong_types_and_never_leaves_signals_blocked(qtbot, window):
    panel = window.data_panel
    before = panel.calib_spin.value()
    panel.restore_state({"calib_samples": "many", "per_channel": "no", "engine": 3, "data_path": 7,
                         "eval_samples": 10**12})
    assert panel.calib_spin.value() == before
    assert panel.eval_spin.value() == panel.eval_spin.maximum()
    assert not panel.signalsBlocked()
    panel.restore_state(["not", "a", "dict"])
    assert not panel.signalsBlocked()


def test_a_version_1_project_saved_by_the_current_release_opens_with_its_figures(tmp_path, tiny_files):
    """The stored variant format did not change with the typed results (no version bump):
    a variant exactly as release 1 wrote it reads back, and the speed-up follows the one rule."""
    from quantstudio.gui.tasks import RunOutcome
    from quantstudio.gui.variants import speedup

    variant = {
        "name": "#1 ORT INT8", "reference": "original", "quantized": "quantized",
        "plan": {"version": 1, "default": "int8", "rules": []}, "config": {"engine": "onnxruntime", "mode": "static"},
        "data": "24 images", "metrics": {
            "original": {"top1": 0.9, "top5": None, "agreement": None, "sqnr_db": None, "n": 12, "size_bytes": 4000,
                         "latency_ms": 2.0, "param_bytes": 4000},
            "quantized": {"top1": 0.85, "agreement": 0.95, "sqnr_db": "inf", "n": 12, "size_bytes": 1000,
                          "latency_ms": 0.5, "param_bytes": 1000},
            "original (onnxruntime)": {"latency_ms": 1.0, "param_bytes": None}},
        "latency_samples": {"quantized": {"1": [0.5, 0.6]}}, "throughput": {"quantized": {"1": 2000.0}},
        "layer_sqnr": {"conv1": 30.0, "fc": None}, "layer_precisions": {"conv1": "int8"}, "sensitivity": {},
        "fused": [], "confusion": {"quantized": [[[1, 0], [0, 1]], ["a", "b"]]}, "changed": [], "n_evaluated": 12,
        "n_calibrated": 8, "timing_warnings": [], "skipped": [], "is_random": False, "labeled": True, "data_note": "",
        "warnings": [], "notes": [], "seconds": 3.0,
    }
    project = {**_project(tiny_files["torchscript"]), "variants": [variant]}
    assert project["version"] == 1
    data = load_project(_write(tmp_path, "release1", project))
    run = RunOutcome.from_dict(data["variants"][0])
    assert run.metrics["quantized"]["sqnr_db"] == float("inf") and run.layer_sqnr == {"conv1": 30.0}
    assert speedup(run) == run.speedup == pytest.approx(2.0)  # against the same-runtime original, not 4.0
    assert RunOutcome.from_dict(json.loads(json.dumps(run.to_dict()))).to_dict() == run.to_dict()

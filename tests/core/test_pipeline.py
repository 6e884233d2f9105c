"""The Quantize job end to end (tiny model): stages, live payloads, cancel, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantstudio.cli import main
from quantstudio.core.data import RANDOM_DATA_NOTE, open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.errors import Cancelled
from quantstudio.core.jobs import RecordingContext
from quantstudio.core.pipeline import export_result, run_quantize
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.results import (BenchmarkDone, LatencySample, LayerErrors, LayersFused, MetricsReady, SizesMeasured,
                                      StageStarted, as_event)
from quantstudio.core.recipe import Recipe
from tests.core.models import tiny_net
from tests.core.test_engines import batches, bn_ready, loaded


@pytest.fixture(scope="module")
def model():
    return loaded(bn_ready(tiny_net(), batches(2)))


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, model):
    """A .npz of 48 inputs labeled with the FP32 model's own predictions."""
    x = np.random.default_rng(5).standard_normal((48, 3, 32, 32), dtype=np.float32)
    y = model.forward_numpy(x).argmax(1)
    path = tmp_path_factory.mktemp("data") / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def test_torch_pipeline_on_random_data_reports_everything(model):
    data = open_data("random", input_shape=model.input_shape, random_samples=24)
    ctx = RecordingContext()
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp32")
    cfg = QuantConfig(engine="torch", calib_samples=8)
    result = run_quantize(model, data, None, plan, cfg, ctx, eval_samples=16, batch_size=8, benchmark_runs=3)
    assert result.random_data and RANDOM_DATA_NOTE in result.warnings
    assert result.calibration_samples == 8 and result.evaluation_samples == 16
    q = result.quantized_metrics
    assert q.agreement is not None and q.sqnr_db > 20 and q.top1 is None  # random: no accuracy
    assert set(result.layer_sqnr) == {"conv1", "conv2", "fc"}
    assert ["conv1", "bn1", "relu1"] in result.fused
    assert result.sizes["quantized_bytes"] < result.sizes["original_bytes"]
    assert set(result.latency_ms) == {"original", "quantized"}
    d = json.loads(json.dumps(result.to_dict()))
    assert d["random_data"] and d["layer_precisions"]["fc"] == "fp32" and d["plan"] == plan.to_dict()
    events = [as_event(p) for p in ctx.partials]  # the engines' own phases still come as dicts
    for t in (StageStarted, LayersFused, MetricsReady, LayerErrors, SizesMeasured, BenchmarkDone, LatencySample):
        assert any(isinstance(e, t) for e in events), t
    stages = [e.name for e in events if isinstance(e, StageStarted)]
    assert stages[:1] == ["quantize"] and {"prepare", "calibrate", "convert", "evaluate", "layer_error", "benchmark"} <= set(stages)
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_ort_pipeline_on_labeled_data_and_export(model, labeled, tmp_path):
    from quantstudio.core.data import Preprocessing

    prep = Preprocessing()
    data = open_data(labeled, input_shape=model.input_shape, preprocessing=prep)
    cfg = QuantConfig(calib_samples=16)
    result = run_quantize(model, data, prep, PrecisionPlan(), cfg, RecordingContext(), eval_samples=32, benchmark=False)
    o, q = result.original_metrics, result.quantized_metrics
    assert o.top1 == 1.0 and q.top1 >= 0.8 and q.agreement == q.top1 and not result.random_data
    assert result.layer_sqnr and all(v > 15 for v in result.layer_sqnr.values())
    exported = export_result(result, tmp_path / "tiny.onnx")
    assert exported.check.passed and exported.check.samples == 16
    recipe = Recipe.load(tmp_path / "tiny.recipe.json")
    assert recipe.engine == "onnxruntime" and recipe.data["calibration_samples"] == 16
    assert recipe.data["calibration_fingerprint"]["method"].startswith("tensor file")


# 1 export to ONNX, 3 calibration, 7 evaluation, 9 per-layer error, 12 benchmark,
# 16 between quantize and export, 19 just before the export is renamed into place.
@pytest.mark.parametrize("cancel_after", [1, 3, 7, 9, 12, 16, 19])
def test_cancel_at_any_point_leaves_no_files(model, tmp_path, cancel_after):
    data = open_data("random", input_shape=model.input_shape, random_samples=16)
    ctx = RecordingContext(cancel_after=cancel_after)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        result = run_quantize(model, data, None, PrecisionPlan(), QuantConfig(calib_samples=8), ctx,
                              eval_samples=8, batch_size=4, benchmark_runs=2)
        export_result(result, out / "m.onnx", ctx)
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save(model.module, path)
    return path


def test_cli_quantize_json_then_recipe(model_file, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    common = [str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random",
              "--calib-samples", "8", "--eval-samples", "8", "--no-benchmark", "--json"]
    assert main(["quantize", *common, "--precision", "fc=fp32", "--calibration", "percentile", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["export"]["check"]["passed"] and d["random_data"]
    assert d["layer_precisions"]["fc"] == "fp32" and d["quantized"]["agreement"] is not None
    assert out.exists() and (tmp_path / "q.recipe.json").exists()

    # Re-apply the recipe with one override: the plan comes from the recipe.
    out2 = tmp_path / "r.pth"
    assert main(["quantize", *common, "--recipe", str(tmp_path / "q.recipe.json"), "--engine", "torch", "--out", str(out2)]) == 0
    capsys.readouterr()
    recipe = Recipe.load(tmp_path / "r.recipe.json")
    assert recipe.engine == "torch" and recipe.config["calibration"] == "percentile"
    assert recipe.precision_plan().precision_for("fc").value == "fp32"
    assert out2.exists()
    # A per-tensor recipe, switched back to per-channel by a flag.
    out3 = tmp_path / "t.onnx"
    assert main(["quantize", *common, "--per-tensor", "--out", str(out3)]) == 0
    assert Recipe.load(tmp_path / "t.recipe.json").config["per_channel"] is False
    assert main(["quantize", *common, "--recipe", str(tmp_path / "t.recipe.json"), "--per-channel",
                 "--out", str(tmp_path / "c.onnx")]) == 0
    assert Recipe.load(tmp_path / "c.recipe.json").config["per_channel"] is True


def test_cli_quantize_human_output_and_bad_extension(model_file, tmp_path, capsys):
    out = tmp_path / "q.pth"
    code = main(["quantize", str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random",
                 "--engine", "onnxruntime", "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--engine torch" in err
    code = main(["quantize", str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random",
                 "--calib-samples", "8", "--eval-samples", "8", "--engine", "torch", "--sensitivity", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "random data" in text and "latency" in text and "wrote" in text and "SQNR" in text
    assert "most sensitive layers" in text and "conv1" in text.split("most sensitive layers")[1]
    assert Path(out).exists()


def test_an_onnx_file_with_a_fixed_batch_of_one_quantizes_and_exports(model, labeled, tmp_path):
    """What a plain torch.onnx.export writes (no dynamic axes): batch dimension fixed at 1."""
    import warnings

    from quantstudio.core.loading import load_model

    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.module, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17)
    onnx_model = load_model(path)
    assert onnx_model.fixed_batch == 1 and onnx_model.input_shape == (1, 3, 32, 32)
    assert any("fixed batch of 1" in n for n in onnx_model.notes)
    result = run_quantize(onnx_model, open_data(labeled, input_shape=onnx_model.input_shape), None, PrecisionPlan(),
                          QuantConfig(calib_samples=16), RecordingContext(), eval_samples=20, batch_size=8,
                          batch_sizes=(1, 8), benchmark_runs=2)
    assert result.quantized_metrics.n == 20 and result.quantized_metrics.top1 > 0.8
    assert list(result.benchmark.batch_sizes) == [1]
    exported = export_result(result, tmp_path / "fixed_int8.onnx")
    assert exported.check.passed and (tmp_path / "fixed_int8.onnx").is_file()


DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


@pytest.mark.skipif(not (DEMO / "model.pth").exists(), reason="demo not generated")
def test_a_recipe_alone_reproduces_the_file_from_any_folder(tmp_path, capsys, monkeypatch):
    import shutil

    import onnxruntime as ort

    images = tmp_path / "images"
    for c in ("0", "1", "2"):
        (images / c).mkdir(parents=True)
        for f in sorted((DEMO / "digits" / c).iterdir())[:8]:
            shutil.copy(f, images / c / f.name)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)  # a relative --data, as people type it
    shutil.copytree(images, work / "images")
    assert main(["quantize", str(DEMO / "model.pth"), "--arch", "mobilenet_v2", "--input-shape", "1,3,64,64",
                 "--data", "images", "--calibration", "entropy", "--batch-size", "5", "--calib-samples", "10",
                 "--eval-samples", "6", "--no-benchmark", "--out", str(tmp_path / "a.onnx")]) == 0
    recipe = Recipe.load(tmp_path / "a.recipe.json")
    assert recipe.data["batch_size"] == 5 and Path(recipe.data["spec"]).is_absolute()
    assert recipe.model["arch"] == "mobilenet_v2" and recipe.model["input_shape"] == [1, 3, 64, 64]
    # Only the recipe, from another folder: same model, data, shape and batches → the same file.
    monkeypatch.chdir(elsewhere)
    assert main(["quantize", "--recipe", str(tmp_path / "a.recipe.json"), "--no-benchmark",
                 "--out", str(tmp_path / "b.onnx")]) == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    a, b = (ort.InferenceSession(str(tmp_path / n), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for n in ("a.onnx", "b.onnx"))
    assert np.array_equal(a, b)
    assert "calibration samples differ" not in capsys.readouterr().err
    # Edited calibration images (same names) are noticed.
    from PIL import Image

    for f in (work / "images").rglob("*.png"):
        img = Image.open(f).convert("L")
        img.putpixel((0, 0), 255 - img.getpixel((0, 0)))
        img.save(f)
    main(["quantize", "--recipe", str(tmp_path / "a.recipe.json"), "--no-benchmark", "--out", str(tmp_path / "c.onnx")])
    assert "calibration samples differ from the recipe's" in capsys.readouterr().err


def test_cli_quantize_bad_output_places_fail_before_any_work(model_file, tmp_path, capsys):
    common = [str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random"]
    (tmp_path / "afile").write_text("x")
    assert main(["quantize", *common, "--out", str(tmp_path / "afile" / "q.onnx")]) == 2
    assert "a file is in the way" in capsys.readouterr().err
    (tmp_path / "folder.onnx").mkdir()
    assert main(["quantize", *common, "--out", str(tmp_path / "folder.onnx")]) == 2
    assert "folder, not a file name" in capsys.readouterr().err
    assert main(["quantize", "--data", "random", "--out", str(tmp_path / "q.onnx")]) == 2
    assert "no model given" in capsys.readouterr().err


def test_dynamic_and_fp16_hold_no_samples_back_for_calibration(model):
    data = open_data("random", input_shape=model.input_shape, random_samples=24)
    for mode in ("dynamic", "fp16"):
        result = run_quantize(model, data, None, PrecisionPlan(), QuantConfig(mode=mode, calib_samples=16),
                              RecordingContext(), eval_samples=None, batch_size=8, benchmark=False)
        assert result.calibration_samples == 0 and result.evaluation_samples == 24, mode


def test_a_precision_rule_that_matches_nothing_is_a_warning(model):
    data = open_data("random", input_shape=model.input_shape, random_samples=16)
    plan = PrecisionPlan()
    plan.parse_assignment("fcc=fp32")  # a typo of fc
    result = run_quantize(model, data, None, plan, QuantConfig(calib_samples=8), RecordingContext(),
                          eval_samples=8, batch_size=8, benchmark=False)
    assert any("'fcc=fp32' matches no layer" in w for w in result.warnings)

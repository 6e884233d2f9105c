"""Exports: reloaded and checked before they count, written atomically, with a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantstudio.core import export as export_mod
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.ort_engine import OrtEngine
from quantstudio.core.engines.torch_engine import TorchEngine
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.export import atomic_write_text, export_format, export_model
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.recipe import Recipe, data_fingerprint, make_recipe, recipe_path_for
from tests.core.models import tiny_net
from tests.core.test_engines import batches, bn_ready, loaded


@pytest.fixture(scope="module")
def quantized():
    xs = batches(2)
    model = loaded(bn_ready(tiny_net(), xs))
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp16")
    return {
        "model": model,
        "xs": xs,
        "torch": TorchEngine().quantize(model, plan, QuantConfig(engine="torch"), xs, NullContext()),
        "onnxruntime": OrtEngine().quantize(model, plan, QuantConfig(), xs, NullContext()),
    }


def folder_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_extension_must_fit_the_engine():
    assert export_format("onnxruntime", "m.onnx") == "onnx"
    assert export_format("torch", "m.PTH") == "torchscript"
    with pytest.raises(InputError, match="torch") as info:
        export_format("onnxruntime", "m.pth")
    assert "--engine torch" in info.value.hint
    with pytest.raises(InputError):
        export_format("torch", "m.onnx")


@pytest.mark.parametrize("engine, name", [("torch", "m.pth"), ("onnxruntime", "m.onnx")])
def test_export_reloads_matches_and_writes_the_recipe(quantized, tmp_path, engine, name):
    q, model, xs = quantized[engine], quantized["model"], quantized["xs"]
    recipe = make_recipe(model, PrecisionPlan(), q.config)
    ctx = RecordingContext()
    result = export_model(q, tmp_path / name, samples=xs[0], recipe=recipe, ctx=ctx)
    assert result.check.passed and result.check.top1_agreement == 1.0
    assert result.check.max_abs_diff <= result.check.tolerance and not result.check.random_input
    assert folder_files(tmp_path) == {name, "m.recipe.json"}  # no temp file left
    assert result.recipe_path == recipe_path_for(tmp_path / name)
    assert json.loads(result.recipe_path.read_text())["engine"] == engine
    if engine == "torch":
        reloaded = torch.jit.load(str(tmp_path / name))  # needs nothing but torch
        with torch.inference_mode():
            out = reloaded(torch.from_numpy(xs[1])).numpy()
    else:
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(str(tmp_path / name))
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: xs[1]})[0]
    np.testing.assert_allclose(out, q.runner(xs[1]), atol=1e-4)
    assert ctx.reports[-1][0] == 1.0
    assert export_model(q, tmp_path / "again" / name).check.random_input  # no samples: random, said so


@pytest.mark.parametrize("cancel_after", [1, 2, 3])
def test_cancelled_export_leaves_nothing_and_keeps_the_earlier_file(quantized, tmp_path, cancel_after):
    q, xs = quantized["onnxruntime"], quantized["xs"]
    target = tmp_path / "m.onnx"
    target.write_bytes(b"earlier export")
    recipe = make_recipe(quantized["model"], PrecisionPlan(), q.config)
    with pytest.raises(Cancelled):
        export_model(q, target, samples=xs[0], recipe=recipe, ctx=RecordingContext(cancel_after=cancel_after))
    assert folder_files(tmp_path) == {"m.onnx"}
    assert target.read_bytes() == b"earlier export"


def test_failed_write_or_failed_check_leaves_nothing(quantized, tmp_path, monkeypatch):
    q, xs = quantized["torch"], quantized["xs"]
    target = tmp_path / "m.pth"
    target.write_bytes(b"earlier export")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(InputError, match="could not be written") as err:  # a plain message, not a traceback
        export_model(q, target, samples=xs[0])
    assert err.value.path == target and "disk full" in err.value.details
    monkeypatch.undo()
    assert folder_files(tmp_path) == {"m.pth"} and target.read_bytes() == b"earlier export"

    # A file that does not reproduce the in-app outputs is never committed.
    monkeypatch.setattr(export_mod, "_reload_torchscript", lambda path, samples: np.zeros((len(samples), 5), np.float32))
    with pytest.raises(InputError, match="does not reproduce"):
        export_model(q, target, samples=xs[0])
    assert folder_files(tmp_path) == {"m.pth"} and target.read_bytes() == b"earlier export"


def test_atomic_write_replaces_whole_files_only(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    monkeypatch.setattr(export_mod.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        atomic_write_text(p, "three")
    assert p.read_text() == "two" and folder_files(tmp_path) == {"r.json"}


def test_recipe_round_trip_fingerprint_and_validation(tmp_path):
    from quantstudio.core.data import Preprocessing, RandomSource, open_data

    model_file = tmp_path / "model.pth"
    model_file.write_bytes(b"weights")
    model = loaded(tiny_net())
    model.path = model_file
    plan = PrecisionPlan()
    plan.parse_assignment("layer4.*=fp32")
    data = RandomSource(8, (3, 32, 32), seed=1)
    cfg = QuantConfig(engine="torch", calibration="percentile", per_channel=False, seed=3)
    recipe = make_recipe(model, plan, cfg, preprocessing=Preprocessing.imagenet(), data=data,
                         calibration_indices=np.arange(4), evaluation_samples=4)
    d = recipe.to_dict()
    assert d["model"]["sha256"] == "f" * 0 + __import__("hashlib").sha256(b"weights").hexdigest()
    assert set(d["versions"]) >= {"torch", "torchvision", "onnx", "onnxruntime", "quantstudio"}
    assert d["data"]["calibration_fingerprint"]["samples"] == 4
    path = recipe.save(tmp_path / "m.recipe.json")
    again = Recipe.load(path)
    assert again.quant_config() == cfg
    assert again.precision_plan() == plan
    assert again.preprocessing_obj() == Preprocessing.imagenet()
    # The fingerprint follows the data: other rows or other files → another hash.
    fp = data_fingerprint(data, [0, 1])
    assert fp == data_fingerprint(data, [0, 1]) and fp != data_fingerprint(data, [0, 2])
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 3, 32, 32), np.float32))
    tensor_fp = data_fingerprint(open_data(npy, input_shape=(1, 3, 32, 32)), [0, 1])
    np.save(npy, np.ones((4, 3, 32, 32), np.float32))
    assert data_fingerprint(open_data(npy, input_shape=(1, 3, 32, 32)), [0, 1]) != tensor_fp

    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({**d, "version": 7}), json.dumps({**d, "mode": "int4"}), json.dumps({"version": 1})):
        bad.write_text(text)
        with pytest.raises(InputError):
            Recipe.load(bad)

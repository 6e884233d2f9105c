"""Cross-layer equalization before static INT8 (core/equalize.py, issue 13).

The damaged ResNet-18 is built exactly as tests/benchmarks/outlier_models.py builds it
(one BN channel x300 and the next conv's input channel / 300, three blocks), on random
weights with BN statistics from random inputs: the outlier channel is what matters.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from quantstudio.cli import main
from quantstudio.core.data import open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.equalize import NEEDS_EAGER_NOTE, equalize, equalized_model, find_pairs
from quantstudio.core.loading import LoadedModel
from quantstudio.core.pipeline import run_quantize
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.recipe import Recipe
from quantstudio.core.schema import project_schema
from tests.benchmarks.outlier_models import damage, resnet_site
from tests.core.models import tiny_net
from tests.core.test_engines import batches, bn_ready, loaded

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return bn_ready(torchvision.models.resnet18(num_classes=10), batches(2, (16, 3, 32, 32))).eval()


@pytest.fixture(scope="module")
def normal() -> nn.Module:
    return _resnet18()


@pytest.fixture(scope="module")
def damaged(normal) -> nn.Module:
    # issue 13's pattern: three blocks, one outlier channel each, x300 (function-preserving)
    return damage(normal, "resnet18", "3 blocks s300", [resnet_site(1, 1), resnet_site(2, 1), resnet_site(3, 0)], 300).module


def _rel(a: nn.Module, b: nn.Module, x=X) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("which", ["normal", "damaged"])
def test_equalization_preserves_the_function_and_leaves_the_input_alone(which, request):
    module = request.getfixturevalue(which)
    before = _params(module)
    report = equalize(module, X[:1])
    assert report.module is not module
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items()), "the caller's model was modified"
    # every BasicBlock's conv1 -> bn1 -> relu -> conv2; the stem (maxpool) and the residual adds are not pairs
    assert [(p.conv1, p.bn, p.activation, p.conv2) for p in report.pairs][:2] == [
        ("layer1.0.conv1", "layer1.0.bn1", "relu", "layer1.0.conv2"),
        ("layer1.1.conv1", "layer1.1.bn1", "relu", "layer1.1.conv2")]
    assert len(report.pairs) == 8
    assert _rel(module, report.module) <= 1e-4
    assert report.max_relative_change is not None and report.max_relative_change <= 1e-4
    # graph-preserving: the BN stays a BN (torch FX still fuses conv+BN+ReLU)
    assert type(report.module.layer1[1].bn1) is nn.BatchNorm2d
    if which == "damaged":
        assert report.max_scale > 100  # the x300 channels were found and scaled down
    else:
        assert report.max_scale < 10


def test_what_is_not_exact_is_left_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
            self.b2, self.act2 = nn.BatchNorm2d(8), nn.ReLU6()  # clips: not positively homogeneous
            self.c3 = nn.Conv2d(8, 8, 1)
            self.b3 = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise second conv: handled
            self.b4 = nn.BatchNorm2d(8)
            self.c5 = nn.Conv2d(8, 4, 1)
            self.b5 = nn.BatchNorm2d(4)
            self.c6 = nn.Conv2d(4, 4, 1)  # reads b5's output, which the add reads too: two readers

        def forward(self, x):
            x = self.c2(torch.relu(self.b1(self.c1(x))))
            x = self.c3(self.act2(self.b2(x)))
            x = self.dw(nn.functional.leaky_relu(self.b3(x), 0.1))
            y = self.b5(self.c5(self.b4(x)))
            return self.c6(y) + y

    net = bn_ready(Net(), batches(2, (8, 3, 16, 16))).eval()
    with torch.no_grad():
        net.b1.weight[2] *= 50  # an outlier channel for the functional-relu pair
    assert [(c1, a, c2) for c1, _, a, c2 in find_pairs(net)] == [
        ("c1", "relu", "c2"), ("c3", "leaky_relu", "dw"), ("dw", None, "c5")]  # not c2 (ReLU6), not c5 (two readers)
    report = equalize(net, torch.randn(2, 3, 16, 16))
    assert len(report.pairs) == 3 and report.max_scale > 3
    assert _rel(net, report.module, torch.randn(2, 3, 16, 16)) <= 1e-4


def test_untraceable_models_come_back_unchanged_with_a_note():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.c2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
                x = -x
            return self.c2(self.b1(self.c1(x)))

    net = Dynamic().eval()
    report = equalize(net, torch.randn(1, 3, 8, 8))
    assert report.module is net and not report.pairs and "could not be traced" in report.notes[0]
    notes: list[str] = []
    lm = loaded(net, (1, 3, 8, 8))
    assert equalized_model(lm, QuantConfig(), notes) is lm and "could not be traced" in notes[0]
    # a model that fails on the example input is not used unchecked
    half = torchvision.models.resnet18(num_classes=10).eval().half()
    report = equalize(half, torch.randn(1, 3, 32, 32))
    assert report.module is half and "could not be checked" in report.notes[0]


def test_equalized_model_applies_to_static_int8_of_eager_models_only(damaged):
    lm = loaded(damaged)
    notes: list[str] = []
    eq = equalized_model(lm, QuantConfig(), notes)
    assert eq is not lm and eq.module is not lm.module and eq.input_shape == lm.input_shape
    assert "equalized 8 conv" in notes[0]
    for cfg in (QuantConfig(equalize=False), QuantConfig(mode="dynamic"), QuantConfig(mode="fp16")):
        notes = []
        assert equalized_model(lm, cfg, notes) is lm and notes == []
    script = LoadedModel(path=lm.path, kind="torchscript", input_shape=lm.input_shape, module=torch.jit.script(tiny_net()))
    notes = []
    assert equalized_model(script, QuantConfig(), notes) is script
    assert notes == [NEEDS_EAGER_NOTE.format(what="a compiled (TorchScript/exported) model")]
    assert "needs a PyTorch model with its layers" in notes[0]


def _quantize(model: LoadedModel, engine: str, equalize_: bool):
    data = open_data("random", input_shape=model.input_shape, random_samples=32, seed=0)
    cfg = QuantConfig(engine=engine, calib_samples=16, equalize=equalize_)
    return run_quantize(model, data, None, PrecisionPlan(), cfg, eval_samples=16, benchmark=False, batch_size=16)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_default_int8_survives_outlier_channels_on_both_engines(damaged, engine):
    lm = loaded(damaged)
    before = _params(lm.module)
    on, off = _quantize(lm, engine, True), _quantize(lm, engine, False)
    q_on, q_off = on.quantized_metrics, off.quantized_metrics
    # measured here: torch -1.4 -> 12.3 dB, ORT -2.9 -> 15.9 dB; agreement 9-22 % -> 78-91 %
    assert q_on.sqnr_db > q_off.sqnr_db + 8, (q_on.sqnr_db, q_off.sqnr_db)
    assert q_on.agreement > q_off.agreement + 0.3, (q_on.agreement, q_off.agreement)
    assert any(n.startswith("equalized 8 conv") for n in on.notes)
    assert not any("equaliz" in n for n in off.notes)
    # the user's model is the reference and is never modified
    assert all(torch.equal(v, lm.module.state_dict()[k]) for k, v in before.items())
    assert on.config.to_dict()["equalize"] is True and off.config.to_dict()["equalize"] is False
    if engine == "torch":
        assert on.quantized.fused == off.quantized.fused  # the same fusions: same INT8 graph and speed


@pytest.mark.slow
def test_a_normal_model_is_not_made_worse(normal):
    lm = loaded(normal)
    on, off = _quantize(lm, "torch", True), _quantize(lm, "torch", False)
    # measured here: 12.3 (on) vs 11.7 dB (off)
    assert on.quantized_metrics.sqnr_db >= off.quantized_metrics.sqnr_db - 1.0
    assert on.original_metrics.to_dict() == off.original_metrics.to_dict()  # the same FP32 reference


@pytest.mark.slow
def test_cli_no_equalize_reaches_the_config_and_the_recipe_round_trips(tmp_path, capsys):
    model_file = tmp_path / "tiny.pth"
    torch.save(bn_ready(tiny_net(), batches(2)).eval(), model_file)
    common = [str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random",
              "--calib-samples", "8", "--eval-samples", "8", "--no-benchmark", "--json"]
    assert main(["quantize", *common, "--no-equalize", "--out", str(tmp_path / "q.onnx")]) == 0
    capsys.readouterr()
    recipe_path = tmp_path / "q.recipe.json"
    assert Recipe.load(recipe_path).quant_config().equalize is False
    # replayed: the recipe's choice holds
    assert main(["quantize", *common, "--recipe", str(recipe_path), "--out", str(tmp_path / "r.onnx")]) == 0
    capsys.readouterr()
    assert Recipe.load(tmp_path / "r.recipe.json").config["equalize"] is False
    # a recipe written before the option existed validates, and replays what it made: no equalization
    d = json.loads(recipe_path.read_text())
    del d["config"]["equalize"]
    old = tmp_path / "old.recipe.json"
    old.write_text(json.dumps(d))
    assert Recipe.load(old).quant_config().equalize is False
    d["config"]["equalize"] = "no"
    old.write_text(json.dumps(d))
    with pytest.raises(Exception, match="config.equalize"):
        Recipe.load(old)


def test_projects_store_the_checkbox():
    schema = project_schema()
    data = schema["properties"]["data"]["properties"]
    assert data["equalize"]["type"] == "boolean"


def test_settings_label_says_when_equalization_is_off():
    pytest.importorskip("PySide6")
    from quantstudio.gui.variants import settings_label

    assert "no equalize" in settings_label({"engine": "torch", "mode": "static", "equalize": False})
    assert "equalize" not in settings_label({"engine": "torch", "mode": "static", "equalize": True})
    assert "equalize" not in settings_label({"engine": "torch", "mode": "dynamic", "equalize": False})


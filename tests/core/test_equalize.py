"""Cross-layer equalization before static INT8 (core/equalize.py, issue 13).

The damaged ResNet-18 is built exactly as tests/benchmarks/outlier_models.py builds it
(one BN channel x300 and the next conv's input channel / 300, three blocks), on random
weights with BN statistics from random inputs: the outlier channel is what matters.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from quantstudio.cli import main
from quantstudio.core.data import open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.equalize import NEEDS_EAGER_NOTE, equalize, equalized_model, find_pairs, find_streams
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



# ----------------------------------------------------------------------------- residual streams
# A MobileNetV2-style net (inverted residual blocks, ReLU6, projection BN -> add): blocks.0 starts
# the stream (no skip), blocks.1 and blocks.2 add into it, head.0 reads its end. ReLU6 everywhere,
# so pairwise CLE finds nothing; the stream is the only thing to equalize.


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 2):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 16, 2), InvertedResidual(16, 16), InvertedResidual(16, 16))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1))


RESNET_STREAM_PRODUCERS = {k: [f"layer{k}.0.bn2", f"layer{k}.0.downsample.1", f"layer{k}.1.bn2"] for k in (2, 3)}
RESNET_STREAM_READERS = {k: [f"layer{k}.1.conv1", f"layer{k + 1}.0.conv1", f"layer{k + 1}.0.downsample.0"] for k in (2, 3)}
PRODUCERS = ["blocks.0.conv.7", "blocks.1.conv.7", "blocks.2.conv.7"]
READERS = ["blocks.1.conv.0", "blocks.2.conv.0", "head.0"]
CALIB = batches(4, (8, 3, 32, 32), seed=3)


@pytest.fixture(scope="module")
def tiny_mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return bn_ready(TinyMobileNet(), batches(2, (32, 3, 32, 32))).eval()


def _planted(net: nn.Module, scale: float = 300.0) -> tuple[nn.Module, int]:
    """outlier_models.rescale on the whole stream: channel c of every producer BN x scale, every
    reader's input channel c / scale (the adds are linear: function-preserving)."""
    from tests.benchmarks.outlier_models import pick_channels, rescale

    damaged = copy.deepcopy(net)
    c = pick_channels(damaged, PRODUCERS[0], 1)[0]
    rescale(damaged, PRODUCERS, READERS, [c], scale)
    return damaged, c


def _stream_amax(net: nn.Module, xs=CALIB) -> torch.Tensor:
    """Per-channel max |x| over the stream's tensors (the blocks' outputs: BN and add outputs)."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append(out.abs().amax(dim=(0, 2, 3)))) for b in net.blocks]
    with torch.no_grad():
        for x in xs:
            net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return torch.stack(seen).amax(0)


def test_stream_groups_are_found_and_resnet_streams_are_skipped(tiny_mobilenet, normal):
    groups, skipped = find_streams(tiny_mobilenet)
    assert len(groups) == 1 and skipped == []
    assert groups[0].producers == PRODUCERS and groups[0].readers == READERS and len(groups[0].adds) == 2
    assert find_pairs(tiny_mobilenet) == []  # ReLU6 everywhere: only the stream can be equalized
    # ResNet: the ReLU after each add passes the stream on (positively homogeneous); layer1's
    # stream starts at the stem's max-pool and layer4's ends in the average pool: skipped.
    groups, skipped = find_streams(normal)
    assert [g.producers for g in groups] == [RESNET_STREAM_PRODUCERS[2], RESNET_STREAM_PRODUCERS[3]]
    assert [g.readers for g in groups] == [RESNET_STREAM_READERS[2], RESNET_STREAM_READERS[3]]
    assert len(skipped) == 2 and "maxpool" in skipped[0] and "avgpool" in skipped[1], skipped

    class Pooled(nn.Module):  # a stream read by a pooling layer (not a conv): skipped too
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.c2, self.b2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.b1(self.c1(x))
            return nn.functional.avg_pool2d(y + self.b2(self.c2(y)), 2)

    groups, skipped = find_streams(Pooled())
    assert groups == [] and "avg_pool2d" in skipped[0]


def test_stream_equalization_removes_the_outlier_and_keeps_the_function(tiny_mobilenet):
    damaged, c = _planted(tiny_mobilenet)
    before = _params(damaged)
    amax = _stream_amax(damaged)
    assert amax[c] > 50 * amax.median()  # the planted outlier
    report = equalize(damaged, X[:1], CALIB)
    assert all(torch.equal(v, damaged.state_dict()[k]) for k, v in before.items()), "the caller's model was modified"
    assert report.pairs == [] and len(report.streams) == 1
    assert report.streams[0].channels == [c] and report.streams[0].max_scale > 10
    assert _rel(damaged, report.module) <= 1e-4 and _rel(tiny_mobilenet, report.module) <= 1e-4
    after = _stream_amax(report.module)
    assert after[c] <= 4.0 * after.median() * 1.001  # brought down to the gate
    others = torch.arange(len(after)) != c
    assert torch.allclose(after[others], amax[others])  # the other channels are untouched
    notes: list[str] = []
    equalized_model(loaded(damaged), QuantConfig(), notes, iter(CALIB))
    assert notes == ["equalized 1 residual stream(s) (1 outlier channel(s) brought down to 4\u00d7 their stream's "
                     f"median range) before quantizing (largest channel scale {report.max_scale:.3g}); the FP32 function "
                     "is unchanged (turn off with --no-equalize / the Equalize checkbox)"]


def test_a_stream_without_outliers_is_left_bit_identical(tiny_mobilenet, normal):
    report = equalize(tiny_mobilenet, X[:1], CALIB)
    assert report.module is tiny_mobilenet and not report.equalized
    notes: list[str] = []
    lm = loaded(tiny_mobilenet)
    assert equalized_model(lm, QuantConfig(), notes, iter(CALIB)) is lm and notes == []
    # no stream to measure: the calibration data is not even read
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()

    def unreadable():
        raise AssertionError("calibration data read for a model without residual streams")
        yield

    assert len(equalize(plain, X[:1], unreadable()).pairs) == 1


def test_a_resnet_stream_outlier_through_the_relus_is_equalized(normal):
    """ResNet's stream: bn2 (+ downsample BN) -> add -> ReLU -> next block / identity path."""
    from tests.benchmarks.outlier_models import pick_channels, rescale

    damaged = copy.deepcopy(normal)
    c = pick_channels(damaged, RESNET_STREAM_PRODUCERS[3][0], 1)[0]
    rescale(damaged, RESNET_STREAM_PRODUCERS[3], RESNET_STREAM_READERS[3], [c], 300.0)
    assert _rel(normal, damaged) <= 1e-4  # the plant itself is exact (ReLU is positively homogeneous)
    report = equalize(damaged, X[:1], CALIB)
    layer3 = [t for t in report.streams if t.producers == RESNET_STREAM_PRODUCERS[3]]
    assert len(layer3) == 1 and c in layer3[0].channels and layer3[0].max_scale > 10
    assert _rel(damaged, report.module) <= 1e-4
    # the stream's output (layer3's) no longer carries a channel hundreds of times the others
    outs: list[torch.Tensor] = []
    h = report.module.layer3.register_forward_hook(lambda m, a, out: outs.append(out.abs().amax(dim=(0, 2, 3))))
    with torch.no_grad():
        report.module(torch.from_numpy(CALIB[0]))
    h.remove()
    assert outs[0][c] <= 4.0 * outs[0].median() * 1.05


def test_calibration_batches_are_few_silent_and_cancellable():
    from quantstudio.core.equalize import calibration_batches
    from quantstudio.core.errors import Cancelled
    from quantstudio.core.jobs import RecordingContext

    data = open_data("random", input_shape=(1, 3, 8, 8), random_samples=300, seed=0)
    stream = data.batches(np.arange(300), batch_size=50, message="calibrating")
    ctx = RecordingContext()
    got = list(calibration_batches(stream, ctx))
    assert [len(x) for x in got] == [32] and ctx.reports == []  # <= 32 samples, no progress lines
    assert stream.samples_read == 0  # the engine's calibration pass counts its own
    ctx.cancel()
    with pytest.raises(Cancelled):
        equalize(_planted(TinyMobileNet().eval())[0], None, calibration_batches(stream, ctx))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_default_int8_survives_a_residual_stream_outlier(tiny_mobilenet, engine):
    lm = loaded(_planted(tiny_mobilenet)[0])
    on, off = _quantize(lm, engine, True), _quantize(lm, engine, False)
    q_on, q_off = on.quantized_metrics, off.quantized_metrics
    # measured here: torch 1.8 -> 21.4 dB, ORT 1.9 -> 29.9 dB (undamaged net: 22.8 / 34.1 dB)
    assert q_on.sqnr_db > q_off.sqnr_db + 12, (q_on.sqnr_db, q_off.sqnr_db)
    assert any(n.startswith("equalized 1 residual stream(s)") for n in on.notes), on.notes
    if engine == "torch":
        assert on.quantized.fused == off.quantized.fused  # the same fusions: same INT8 graph and speed

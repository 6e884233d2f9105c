"""PyTorch engine: INT8 / FP16 / FP32 mixed in one model, and its TorchScript export.

The FX model calls leaf modules directly, so FP16 has to be built into its graph (casts
where float meets half); an all-FP16 static plan runs the whole model in half; the
export reproduces FP16 models exactly; a forward that branches on tensor values is
refused at export instead of being saved with one branch frozen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.pytorch.engine import TorchEngine
from quantstudio.core.engines.pytorch.runner import to_torchscript
from quantstudio.core.errors import InputError
from quantstudio.core.export import compare_outputs, export_model
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.loading import LoadedModel
from quantstudio.core.plan import PrecisionPlan
from tests.core.test_engines import batches as engine_batches
from tests.core.test_engines import Branchy, bn_ready

SHAPE = (1, 3, 16, 16)


def batches(n=2, shape=(4, 3, 16, 16), seed=0) -> list[np.ndarray]:
    return engine_batches(n, shape, seed)


def loaded(module: nn.Module, shape=SHAPE) -> LoadedModel:
    return LoadedModel(path=Path("model.pth"), kind="pickled_module", input_shape=tuple(shape), module=module.eval())


def plan_of(*assignments: str) -> PrecisionPlan:
    plan = PrecisionPlan()
    for a in assignments:
        plan.parse_assignment(a)
    return plan


def dtype_of(model: nn.Module, name: str) -> torch.dtype:
    """The dtype of a layer's weights (a fused float conv+relu keeps them in its conv)."""
    return next(model.get_submodule(name).parameters()).dtype


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


class ConvBNAct(nn.Sequential):
    """conv + bn + relu in one container, as torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(c, c)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.conv1(x)))


class Blocks(nn.Module):
    """A MobileNet-like tree: containers the FX model never calls, a residual add, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBNAct(3, 16, 2), Residual(16), Residual(16), ConvBNAct(16, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def blocks():
    torch.manual_seed(0)
    xs = batches()
    return loaded(bn_ready(Blocks(), xs)), xs


def _static(model, *assignments, ctx=None):
    return TorchEngine().quantize(model, plan_of(*assignments), QuantConfig(engine="torch", backend="x86"), model_xs(model), ctx or NullContext())


def model_xs(model) -> list[np.ndarray]:
    return batches(2, (4, *model.input_shape[1:]))


# =========================================================================== FP16 inside static INT8


def test_fp16_containers_inside_the_int8_model_run_in_half(blocks):
    model, xs = blocks
    ctx = RecordingContext()
    q = _static(model, "features.0*=fp16", "features.2.*=fp16", "type:Linear=fp16", ctx=ctx)
    gm = q.artifact
    # conv+bn(+relu) fused groups inside FP16 containers: really half, BN folded in
    assert dtype_of(gm, "features.0.0") == torch.float16
    assert dtype_of(gm, "features.2.conv1.0") == torch.float16
    assert dtype_of(gm, "features.2.conv2") == torch.float16
    assert gm.head.weight.dtype == torch.float16
    assert "quantized" in type(gm.get_submodule("features.1.conv1.0")).__module__  # INT8 stays INT8
    lp = q.layer_precisions
    assert lp["features.0.0"] == lp["features.0.1"] == lp["features.0.2"] == "fp16"
    assert lp["features.2.conv1.0"] == lp["features.2.bn2"] == "fp16" and lp["head"] == "fp16"
    assert lp["features.1.conv1.0"] == lp["features.3.0"] == "int8"
    out = q.runner(xs[0])
    assert out.dtype == np.float32 and cosine(model.forward_numpy(xs[0]), out) > 0.99
    assert any("half precision" in n for n in q.notes)


def test_fp16_block_with_an_fp32_layer_and_an_fp32_model_around_it(blocks):
    model, xs = blocks
    q = _static(model, "*=fp32", "features.1.*=fp16", "features.1.conv2=fp32")
    gm = q.artifact
    assert dtype_of(gm, "features.1.conv1.0") == torch.float16
    assert dtype_of(gm, "features.1.conv2") == torch.float32
    assert dtype_of(gm, "features.2.conv1.0") == torch.float32
    lp = q.layer_precisions
    assert lp["features.1.conv1.0"] == "fp16" and lp["features.1.conv2"] == lp["features.1.bn2"] == "fp32"
    assert lp["features.0.0"] == "fp32" and "int8" not in lp.values()
    ref, out = model.forward_numpy(xs[0]), q.runner(xs[0])
    assert np.allclose(ref, out, atol=2e-2 * np.abs(ref).max())  # FP16 round-off only


def test_fp16_layer_fused_into_an_int8_conv_follows_it(blocks):
    model, xs = blocks
    q = _static(model, "features.3.1=fp16", "features.0.0=fp16")
    lp = q.layer_precisions
    assert lp["features.3.0"] == lp["features.3.1"] == "int8"  # BN folded into an INT8 conv
    assert lp["features.0.0"] == lp["features.0.1"] == "fp16"  # BN folded into an FP16 conv
    assert any(n.startswith("features.3.1: fp16 → int8") for n in q.notes)
    assert dtype_of(q.artifact, "features.0.0") == torch.float16
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.99


def test_static_plan_all_fp16_runs_the_whole_model_in_half(blocks):
    model, xs = blocks
    q = _static(model, "*=fp16")
    params = list(q.artifact.parameters())
    assert params and all(p.dtype == torch.float16 for p in params)
    assert set(q.layer_precisions.values()) == {"fp16"}
    ref, out = model.forward_numpy(xs[0]), q.runner(xs[0])
    assert out.dtype == np.float32
    assert np.allclose(ref, out, atol=1e-2 * np.abs(ref).max()) and not np.array_equal(ref, out)


# =========================================================================== eager FP16 (fp16 mode)


class Stack(nn.Module):
    """Layers in a ModuleList: the list itself is never called, so no hook on it would run."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConvBNAct(3, 8), ConvBNAct(8, 8)])
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean((2, 3)))


def test_fp16_mode_puts_hooks_where_the_forward_calls():
    torch.manual_seed(0)
    xs = batches(1)
    model = loaded(bn_ready(Stack(), xs))
    q = TorchEngine().quantize(model, plan_of("head=fp32"), QuantConfig(engine="torch", mode="fp16"), [], NullContext())
    assert q.artifact.layers[1][0].weight.dtype == torch.float16 and q.artifact.head.weight.dtype == torch.float32
    assert q.layer_precisions["layers.0.0"] == "fp16" and q.layer_precisions["head"] == "fp32"
    ref, out = model.forward_numpy(xs[0]), q.runner(xs[0])
    assert np.allclose(ref, out, atol=1e-2 * np.abs(ref).max())


# =========================================================================== export


def _reload(path: Path, xs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.jit.load(str(path))(torch.from_numpy(xs)).float().numpy()


def test_fp16_mode_export_reproduces_the_model(blocks, tmp_path):
    model, xs = blocks
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", mode="fp16"), [], NullContext())
    # freeze's conv+bn folding recomputed the FP16 weights: outputs moved beyond the check's tolerance
    scripted = to_torchscript(q.artifact, torch.from_numpy(xs[0][:1]))
    with torch.inference_mode():
        got = scripted(torch.from_numpy(xs[0])).float().numpy()
    assert compare_outputs(q.runner(xs[0]), got, "trace").passed
    result = export_model(q, tmp_path / "fp16.pth", samples=xs[0])
    assert result.check.passed and result.check.max_abs_diff == 0.0
    assert np.array_equal(_reload(tmp_path / "fp16.pth", xs[1]), q.runner(xs[1]))


def test_mixed_int8_fp16_model_exports_and_reloads(blocks, tmp_path):
    model, xs = blocks
    q = _static(model, "features.1.*=fp16", "features.1.conv2=fp32", "type:Linear=fp16")
    result = export_model(q, tmp_path / "mixed.pth", samples=xs[0])
    assert result.check.passed
    loaded_back = torch.jit.load(str(tmp_path / "mixed.pth"))
    assert "Half" in str(loaded_back.graph) and "quantized" in str(loaded_back.graph)
    assert np.allclose(_reload(tmp_path / "mixed.pth", xs[1]), q.runner(xs[1]), atol=1e-4 * np.abs(q.runner(xs[1])).max())


class ShapeChecked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        torch._assert(x.shape[2] == 16, "16 rows")
        if x.size(0) > 1:  # batch-size dependent, not value dependent
            x = x * 1.0
        return self.conv(x).mean((2, 3))


def test_export_refuses_a_branch_on_tensor_values(tmp_path):
    torch.manual_seed(0)
    model = loaded(Branchy())
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", mode="fp16"), [], NullContext())
    x = torch.full(SHAPE, 1.0)
    with pytest.raises(InputError) as err:
        to_torchscript(q.artifact, x)
    e = err.value
    assert "if x.mean() > 0:" in e.message and "wrong results on other inputs" in e.message
    assert "torch.where" in e.hint
    assert "test_engines.py:" in e.details and "Converting a tensor to a Python boolean" in e.details
    # the export checks on samples that all take one branch, and still writes nothing
    with pytest.raises(InputError) as err:
        export_model(q, tmp_path / "branchy.pth", samples=np.ones((2, *SHAPE[1:]), np.float32))
    assert "if x.mean() > 0:" in str(err.value) + err.value.details
    assert not list(tmp_path.iterdir())


def test_export_accepts_shape_checks(tmp_path):
    torch.manual_seed(0)
    q = TorchEngine().quantize(loaded(ShapeChecked()), PrecisionPlan(), QuantConfig(engine="torch", mode="fp16"), [], NullContext())
    result = export_model(q, tmp_path / "shapes.pth", samples=batches(1)[0])
    assert result.check.passed

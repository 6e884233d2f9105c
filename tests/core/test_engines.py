"""Quantization engines: PyTorch FX / dynamic / FP16 and ONNX Runtime QDQ / dynamic / FP16.

Models are tiny and random; BatchNorm statistics are first set on the calibration
inputs ("BN-ready"), so activations have sensible ranges and quantized outputs can be
compared with the FP32 ones on the very same inputs.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.engines.base import QuantConfig, get_engine
from quantstudio.core.engines.ort.engine import OrtEngine, ort_layer_sqnr
from quantstudio.core.engines.pytorch.engine import TorchEngine, torch_layer_sqnr
from quantstudio.core.engines.pytorch.qconfig import build_qconfig
from quantstudio.core.engines.pytorch.runner import resolve_backend
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.loading import LoadedModel, load_model
from quantstudio.core.plan import PrecisionPlan
from tests.core.models import tiny_net


def loaded(module: nn.Module, shape=(1, 3, 32, 32), kind="pickled_module") -> LoadedModel:
    return LoadedModel(path=Path("model.pth"), kind=kind, input_shape=tuple(shape), module=module.eval())


def batches(n=3, shape=(4, 3, 32, 32), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def bn_ready(module: nn.Module, xs: list[np.ndarray]) -> nn.Module:
    """Set BatchNorm running statistics from the inputs, as training would have."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    module.train()
    with torch.no_grad():
        for x in xs:
            module(torch.from_numpy(x))
    return module.eval()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def plan_of(*assignments: str) -> PrecisionPlan:
    plan = PrecisionPlan()
    for a in assignments:
        plan.parse_assignment(a)
    return plan


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(3 * 8 * 8, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class Gate(nn.Module):
    def forward(self, x):
        torch._assert(x.shape[1] == 4, "4 channels")  # a shape check: right for every input of this shape
        if x.mean() > 0:  # data-dependent control flow: FX cannot trace it, a trace keeps one side only
            return x * 2
        return x - 1


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    xs = batches()
    return loaded(bn_ready(tiny_net(), xs)), xs


# =========================================================================== PyTorch


def test_get_engine_builds_both():
    assert get_engine("torch").name == "torch"
    assert get_engine("onnxruntime").name == "onnxruntime"
    with pytest.raises(InputError):
        get_engine("tensorrt")


def test_torch_static_int8_follows_the_plan_and_reports_fusion(tiny):
    model, xs = tiny
    ctx = RecordingContext()
    q = TorchEngine().quantize(model, plan_of("fc=fp32"), QuantConfig(engine="torch", backend="x86"), xs, ctx)
    gm = q.artifact
    assert torch.backends.quantized.engine == "x86"
    assert "quantized" in type(gm.conv1).__module__ and type(gm.conv1).__name__ == "ConvReLU2d"
    assert "quantized" in type(gm.conv2).__module__
    assert type(gm.fc) is nn.Linear  # FP32 layer left float
    assert q.layer_precisions["conv1"] == "int8" and q.layer_precisions["fc"] == "fp32"
    assert ["conv1", "bn1", "relu1"] in q.fused and ["conv2", "relu2"] in q.fused
    messages = [m for _, m in ctx.reports]
    assert "fused conv1 + bn1 + relu1" in messages
    assert sum("calibrating: batch" in m for m in messages) == len(xs)
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"type": "stage", "name": "calibrate"} in ctx.partials
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.99
    sqnr = torch_layer_sqnr(model.module, q, xs[:1])
    assert set(sqnr) == {"conv1", "conv2", "fc"} and all(v > 15 for v in sqnr.values())


def test_torch_fp16_layers_run_in_half_inside_the_int8_model(tiny):
    model, xs = tiny
    q = TorchEngine().quantize(model, plan_of("fc=fp16"), QuantConfig(engine="torch"), xs, NullContext())
    assert q.artifact.fc.weight.dtype == torch.float16
    assert q.layer_precisions["fc"] == "fp16"
    out = q.runner(xs[0])
    assert out.dtype == np.float32 and cosine(model.forward_numpy(xs[0]), out) > 0.99


def test_torch_fp16_mode_converts_every_int8_layer(tiny):
    model, xs = tiny
    q = TorchEngine().quantize(model, plan_of("conv1=fp32"), QuantConfig(engine="torch", mode="fp16"), [], NullContext())
    assert q.artifact.conv2.weight.dtype == torch.float16 and q.artifact.conv1.weight.dtype == torch.float32
    assert np.allclose(model.forward_numpy(xs[0]), q.runner(xs[0]), atol=1e-2)
    assert model.module.conv2.weight.dtype == torch.float32  # the original is untouched


def test_torch_dynamic_int8_quantizes_linear_layers_the_plan_leaves_int8():
    model = loaded(Mlp(), (1, 3, 8, 8))
    q = TorchEngine().quantize(model, plan_of("fc2=fp32"), QuantConfig(engine="torch", mode="dynamic"), [], NullContext())
    assert "dynamic" in type(q.artifact.fc1).__module__
    assert type(q.artifact.fc2) is nn.Linear
    assert q.layer_precisions == {"flatten": "int8", "fc1": "int8", "relu": "int8", "fc2": "fp32"} or q.layer_precisions["fc1"] == "int8"
    x = batches(1, (4, 3, 8, 8))[0]
    assert cosine(model.forward_numpy(x), q.runner(x)) > 0.99


@pytest.mark.parametrize(
    "calibration, observer", [("minmax", "MinMaxObserver"), ("entropy", "EntropyObserver"), ("percentile", "PercentileObserver")]
)
def test_torch_observers(calibration, observer):
    qc = build_qconfig(QuantConfig(calibration=calibration), "x86")
    act = qc.activation()
    assert type(act).__name__ == observer
    assert act.dtype == torch.quint8 and act.qscheme == torch.per_tensor_affine and act.reduce_range
    assert type(qc.weight()).__name__ == "PerChannelMinMaxObserver"
    qc = build_qconfig(QuantConfig(calibration=calibration, per_channel=False, symmetric_activations=True), "qnnpack")
    act = qc.activation()
    assert act.qscheme == torch.per_tensor_symmetric and not act.reduce_range
    assert type(qc.weight()).__name__ == "MinMaxObserver"


def test_percentile_observer_clips_outliers_that_minmax_keeps():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(200_000).astype(np.float32))
    x[0] = 1000.0  # one outlier
    scales = {}
    for method in ("minmax", "percentile"):
        obs = build_qconfig(QuantConfig(calibration=method), "qnnpack").activation()
        obs(x)
        scales[method] = float(obs.calculate_qparams()[0])
    assert scales["percentile"] < scales["minmax"] / 50


def test_torch_qnnpack_backend_and_auto(tiny, monkeypatch):
    model, xs = tiny
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", backend="qnnpack"), xs[:1], NullContext())
    assert torch.backends.quantized.engine == "qnnpack"
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.98
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert resolve_backend("auto") == "qnnpack"
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert resolve_backend("auto") == "x86"
    torch.backends.quantized.engine = "x86"


def test_torch_engine_refuses_torchscript_and_points_to_onnxruntime(tiny):
    model, xs = tiny
    ts = loaded(torch.jit.trace(model.module, torch.from_numpy(xs[0])), kind="torchscript")
    with pytest.raises(InputError, match="ONNX Runtime"):
        TorchEngine().quantize(ts, PrecisionPlan(), QuantConfig(engine="torch"), xs, NullContext())


def test_torch_untraceable_model_names_the_layer_and_line():
    model = loaded(Branchy(), (1, 3, 8, 8))
    with pytest.raises(InputError) as info:
        TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), batches(1, (2, 3, 8, 8)), NullContext())
    err = info.value
    assert "layer gate" in err.message and "test_engines.py:" in err.message and "x.mean() > 0" in err.message
    assert "ONNX Runtime" in err.hint and "dynamic" in err.hint


def test_torch_cancel_during_calibration(tiny):
    model, xs = tiny
    ctx = RecordingContext(cancel_after=3)
    with pytest.raises(Cancelled):
        TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs * 3, ctx)
    assert sum("calibrating" in m for _, m in ctx.reports) < len(xs) * 3


def test_torch_engine_lets_no_deprecation_warning_out(tiny):
    model, xs = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs[:1], NullContext())
    assert [str(w.message) for w in caught] == []


def test_torch_engine_keeps_no_model_and_no_hook_alive_after_quantizing(tiny):
    """Memory stays flat over quantize cycles (issue 17): torch.ao's
    ``assert_and_get_unique_device`` cache kept three GraphModules per cycle
    (+16 MB per cycle for the demo MobileNetV2; tests/benchmarks/memory_cycles.py)."""
    import gc
    import weakref

    model, xs = tiny
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, torch.fx.GraphModule)}
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(calibration="entropy"), xs[:1], NullContext())
    q.runner(xs[0])
    artifact = weakref.ref(q.artifact)
    del q
    gc.collect()
    assert artifact() is None
    assert not [o for o in gc.get_objects() if isinstance(o, torch.fx.GraphModule) and id(o) not in before]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())


@dataclass
class CancelAt(RecordingContext):
    """Cancels when a report's message starts with ``stage``; ``at`` is when."""

    stage: str = ""
    at: float | None = None

    def report(self, fraction: float, message: str = "") -> None:
        super().report(fraction, message)
        if self.at is None and message.startswith(self.stage):
            self.at = time.perf_counter()
            self.cancel()


@dataclass
class CancelOnCheck(RecordingContext):
    """Cancels at its ``n``-th check_cancelled call."""

    n: int = 1
    checks: int = 0

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.checks >= self.n:
            self.cancel()
        super().check_cancelled()


@pytest.mark.parametrize("stage", ["converting to INT8", "putting the FP16 layers in half precision"])
def test_torch_engine_honours_cancel_inside_convert_and_fp16(tiny, stage):
    # The engine used to check nothing after calibration: a cancel during convert came
    # back as a finished model.
    model, xs = tiny
    ctx = CancelAt(stage=stage)
    with pytest.raises(Cancelled):
        TorchEngine().quantize(model, plan_of("conv2=fp16"), QuantConfig(engine="torch"), xs[:1], ctx)
    assert ctx.at is not None and ctx.reports[-1][1].startswith(stage)


def test_torch_per_layer_error_honours_cancel_within_a_batch(tiny):
    model, xs = tiny
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs[:1], NullContext())
    ran = []
    handle = q.artifact.fc.register_forward_hook(lambda *a: ran.append(1))  # the quantized model's last layer
    try:
        with pytest.raises(Cancelled):  # one batch: only a check inside it can stop it
            torch_layer_sqnr(model.module, q, xs[:1], CancelOnCheck(n=2))
    finally:
        handle.remove()
    assert not ran


def test_sensitivity_honours_cancel_within_a_pass(tiny):
    from quantstudio.core.sensitivity import layer_sensitivity

    model, xs = tiny
    with pytest.raises(Cancelled):  # one layer, one batch: only a check inside the pass can stop it
        layer_sensitivity(model, xs[:1], QuantConfig(), CancelOnCheck(n=2), layers=["conv1"])


@pytest.mark.slow
def test_torch_cancel_latency_under_a_second_on_mobilenet_v2():
    """Cancel in convert (MobileNetV2, 64x64) and in per-layer error: < 1 s each."""
    import threading

    import torchvision

    torch.manual_seed(0)
    model = loaded(torchvision.models.mobilenet_v2(num_classes=10), (1, 3, 64, 64))
    xs = batches(1, (16, 3, 64, 64))
    ctx = CancelAt(stage="converting to INT8")
    with pytest.raises(Cancelled):
        TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs, ctx)
    assert time.perf_counter() - ctx.at < 1.0
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs, NullContext())
    big = batches(8, (96, 3, 64, 64))  # one batch through both models: 1-2 s on a loaded 2-core machine
    ctx = RecordingContext()
    fired: list[float] = []

    def cancel() -> None:
        fired.append(time.perf_counter())
        ctx.cancel()

    timer = threading.Timer(0.3, cancel)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            torch_layer_sqnr(model.module, q, big, ctx)
        assert time.perf_counter() - fired[0] < 1.0
    finally:
        timer.cancel()
        timer.join()


# =========================================================================== ONNX Runtime


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_ort_static_int8_u8s8_per_channel_follows_the_plan(tiny):
    import onnx

    model, xs = tiny
    ctx = RecordingContext()
    q = OrtEngine().quantize(model, plan_of("fc=fp32"), QuantConfig(backend="x86"), xs, ctx)
    g = q.artifact
    producers = {o: n for n in g.graph.node for o in n.output}
    inits = {i.name: i for i in g.graph.initializer}
    conv = _node(g, "/conv2/Conv")
    x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
    assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
    assert inits[x_dq.input[2]].data_type == onnx.TensorProto.UINT8  # uint8 activations
    assert inits[w_dq.input[0]].data_type == onnx.TensorProto.INT8  # int8 weights
    assert len(inits[w_dq.input[1]].dims) == 1 and inits[w_dq.input[1]].dims[0] == 16  # per channel
    fc = _node(g, "/fc/Gemm")
    assert fc.input[1] in inits and inits[fc.input[1]].data_type == onnx.TensorProto.FLOAT  # FP32 layer
    assert q.layer_precisions["conv2"] == "int8" and q.layer_precisions["fc"] == "fp32"
    assert any("uint8" in n and "x86" in n for n in q.notes)
    assert ["conv1", "bn1"] in q.fused
    assert sum("reading calibration data: batch" in m for _, m in ctx.reports) == len(xs)
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions)
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.99
    sqnr = ort_layer_sqnr(q, xs[:1])
    assert set(sqnr) == {"conv1", "conv2", "fc"} and all(v > 15 for v in sqnr.values())


def test_ort_calibration_progress_comes_back_from_the_child_process(tmp_path):
    from quantstudio.core.engines.ort.tools import _report_tool_progress

    ctx, path = RecordingContext(), tmp_path / "static-progress.txt"
    assert _report_tool_progress(path, 0, 4, ctx, 0.3, 0.85) == 0 and not ctx.reports  # not written yet
    path.write_text("2")
    assert _report_tool_progress(path, 0, 4, ctx, 0.3, 0.85) == 2
    assert _report_tool_progress(path, 2, 4, ctx, 0.3, 0.85) == 2  # no news, no report
    path.write_text("4")
    _report_tool_progress(path, 2, 4, ctx, 0.3, 0.85)
    assert ctx.reports == [(pytest.approx(0.575), "calibrating: batch 2/4"),
                           (pytest.approx(0.85), "computing ranges and quantizing")]


def test_ort_mixed_int8_fp16_fp32_in_one_model(tiny):
    import onnx

    model, xs = tiny
    q = OrtEngine().quantize(model, plan_of("conv2=fp16", "fc=fp32"), QuantConfig(), xs, NullContext())
    g = q.artifact
    onnx.checker.check_model(g)
    inits = {i.name: i for i in g.graph.initializer}
    conv2 = _node(g, "/conv2/Conv")
    assert inits[conv2.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert "Cast" in _ops(g) and "QuantizeLinear" in _ops(g)
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert q.layer_precisions["conv2"] == "fp16" and q.layer_precisions["conv1"] == "int8"
    out = q.runner(xs[0])
    assert out.dtype == np.float32 and cosine(model.forward_numpy(xs[0]), out) > 0.99


def test_ort_fp16_mode_and_onnx_source(tiny, tmp_path):
    model, xs = tiny
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.module, (torch.from_numpy(xs[0]),), str(path), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    onnx_model = load_model(path)
    q = OrtEngine().quantize(onnx_model, plan_of("fc=fp32"), QuantConfig(mode="fp16"), [], NullContext())
    assert q.layer_precisions["conv1"] == "fp16" and q.layer_precisions["fc"] == "fp32"
    assert np.allclose(onnx_model.forward_numpy(xs[0]), q.runner(xs[0]), atol=1e-2)
    q8 = OrtEngine().quantize(onnx_model, plan_of("conv1=fp32"), QuantConfig(), xs, NullContext())
    producers = {o: n.op_type for n in q8.artifact.graph.node for o in n.output}
    conv1 = _node(q8.artifact, "/conv1/Conv")
    assert producers.get(conv1.input[1]) != "DequantizeLinear"  # excluded from INT8
    assert cosine(onnx_model.forward_numpy(xs[0]), q8.runner(xs[0])) > 0.99


def test_ort_dynamic_int8_quantizes_linear_layers():
    model = loaded(Mlp(), (1, 3, 8, 8))
    q = OrtEngine().quantize(model, plan_of("fc2=fp32"), QuantConfig(mode="dynamic"), [], NullContext())
    ops = _ops(q.artifact)
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    fc2 = [n for n in q.artifact.graph.node if n.name.startswith("/fc2/")]
    assert fc2 and all(n.op_type in ("Gemm", "MatMul", "Add") for n in fc2)  # FP32 layer: float ops
    x = batches(1, (4, 3, 8, 8))[0]
    assert cosine(model.forward_numpy(x), q.runner(x)) > 0.98


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_ort_calibration_methods_and_options(tiny, calibration):
    model, xs = tiny
    cfg = QuantConfig(calibration=calibration, per_channel=False, symmetric_activations=True)
    q = OrtEngine().quantize(model, PrecisionPlan(), cfg, xs, NullContext())
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in q.artifact.graph.initializer}
    dq = [n for n in q.artifact.graph.node if n.op_type == "DequantizeLinear"]
    weight_scales = [inits[n.input[1]] for n in dq if inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4]
    assert weight_scales and all(s.size == 1 for s in weight_scales)  # per tensor
    act_zero_points = [inits[n.input[2]] for n in dq if n.input[0] not in inits]
    assert act_zero_points and all(int(z) == 128 for z in act_zero_points)  # symmetric uint8
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.97


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch) -> Path:
    """A TMPDIR of this test's own: /tmp is shared with other processes that create and
    leave quantstudio-ort-* folders of their own while a test runs."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp


def _ort_folders(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith(("quantstudio-ort-", "ort.quant."))]


def test_ort_cancel_during_calibration_leaves_no_temp_files(tiny, own_tmpdir):
    model, xs = tiny
    ctx = RecordingContext(cancel_after=4)
    with pytest.raises(Cancelled):
        OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), xs * 3, ctx)
    assert not _ort_folders(own_tmpdir)
    assert any("reading calibration data" in m for _, m in ctx.reports)


def test_ort_cancel_while_the_child_process_calibrates(tiny, own_tmpdir):
    model, xs = tiny
    full = RecordingContext()
    OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), xs, full)
    # Cancel right when ONNX Runtime's calibrator starts (in its child process).
    start = next(i for i, (_, m) in enumerate(full.reports) if m.startswith("calibrating on"))
    ctx = RecordingContext(cancel_after=start + 1)
    with pytest.raises(Cancelled):  # the child is killed, its files removed
        OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), xs, ctx)
    assert ctx.reports[-1][1].startswith("calibrating on")
    assert not _ort_folders(own_tmpdir)


# =========================================================================== model spread

# Random deep networks lose ~1 dB of SQNR per layer (nothing in random weights averages
# the noise out), so their end-to-end outputs are only loosely close to FP32 (a broken
# model gives ~0); the first layer's SQNR shows that quantization itself is right.
# Trained-model accuracy is a benchmark's job (DESIGN: ResNet-18 loses nothing).
MIN_COSINE = {"resnet18": 0.9}
# resnet50 takes 8 s (25 s on a busy machine) and adds least: QS_FULL_SPREAD=1 runs it.
HEAVY = ["resnet50"]
SPREAD = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "vit"] + [
    pytest.param(n, marks=pytest.mark.skipif(not os.environ.get("QS_FULL_SPREAD"), reason="QS_FULL_SPREAD=1 runs it"))
    for n in HEAVY
]


def build_spread_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    if name == "vit":
        m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
        nn.init.normal_(m.heads.head.weight, std=0.1)  # torchvision starts the head at zero
        return m.eval(), (1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(torchvision.models, name)(num_classes=10).eval(), (1, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPREAD)
def test_torch_static_int8_and_export_over_torchvision_models(name, tmp_path):
    from quantstudio.core.export import export_model

    module, shape = build_spread_model(name)
    xs = batches(2, (4, *shape[1:]), seed=1)
    model = loaded(bn_ready(module, xs), shape, kind="state_dict")
    xs = xs[:1]
    q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch"), xs, NullContext())
    quantized_modules = [n for n, m in q.artifact.named_modules() if ".quantized" in type(m).__module__]
    assert quantized_modules, "no layer was quantized"
    # Random deep networks lose ~1 dB of SQNR per layer (nothing in random weights
    # averages the noise out), so the end-to-end bound is loose; the first layer shows
    # that quantization itself is right. Trained-model accuracy is a benchmark's job.
    sqnr = torch_layer_sqnr(model.module, q, xs[:1])
    assert sqnr[quantized_modules[0]] > 25
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > MIN_COSINE.get(name, 0.3)
    result = export_model(q, tmp_path / f"{name}.pth", samples=xs[0])
    assert result.check.passed and result.check.top1_agreement == 1.0
    assert torch.jit.load(str(tmp_path / f"{name}.pth")) is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_ort_static_int8_and_export_over_torchvision_models(name, tmp_path):
    from quantstudio.core.export import export_model

    module, shape = build_spread_model(name)
    xs = batches(2, (4, *shape[1:]), seed=1)
    model = loaded(bn_ready(module, xs), shape, kind="state_dict")
    q = OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), xs, NullContext())
    assert "QuantizeLinear" in _ops(q.artifact)
    sqnr = ort_layer_sqnr(q, xs[:1])
    assert sqnr and next(iter(sqnr.values())) > 25
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > MIN_COSINE.get(name, 0.3)
    assert export_model(q, tmp_path / f"{name}.onnx", samples=xs[0]).check.passed


# =========================================================================== qnnpack ReLU6 / engine setting


class Relu6Net(nn.Module):
    """MobileNetV2's pattern: conv-BN-ReLU6, depthwise conv-BN-ReLU6, 1x1 conv, with
    ReLU6 as a module, F.relu6 / F.hardtanh as functions and ``clamp`` as a method."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.pw = nn.Conv2d(16, 16, 1)
        self.pw2 = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.dw(self.conv(x)))
        x = torch.nn.functional.hardtanh(self.pw(x), 0.0, 6.0)
        x = self.pw2(x).clamp(0.0, 6.0)
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def relu6_model():
    torch.manual_seed(0)
    xs = batches(2, (8, 3, 16, 16), seed=3)
    return loaded(bn_ready(Relu6Net(), xs), (1, 3, 16, 16)), xs


def test_qnnpack_relu6_after_conv_matches_fp32_in_app_and_in_the_export(relu6_model, tmp_path):
    # torch's qnnpack clamp scrambles channels_last input, and every quantized conv
    # returns channels_last: without the engine's guard this model gives ~0 dB SQNR.
    from quantstudio.core.export import export_model

    model, xs = relu6_model
    before = torch.backends.quantized.engine
    try:
        q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", backend="qnnpack"), xs, NullContext())
        assert any(".contiguous() added before 4 ReLU6/clamp op(s)" in n for n in q.notes), q.notes
        assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.98
        result = export_model(q, tmp_path / "relu6.pth", samples=xs[0])
        assert result.check.passed
        torch.backends.quantized.engine = "qnnpack"  # as on an ARM device
        with torch.inference_mode():
            reloaded = torch.jit.load(str(tmp_path / "relu6.pth"))(torch.from_numpy(xs[1])).numpy()
        assert cosine(model.forward_numpy(xs[1]), reloaded) > 0.98
    finally:
        torch.backends.quantized.engine = before


def test_guard_qnnpack_clamps_covers_modules_functions_and_methods(relu6_model):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from quantstudio.core.engines.pytorch.fx import guard_qnnpack_clamps
    from quantstudio.core.engines.pytorch.runner import quiet

    model, xs = relu6_model
    with quiet():
        gm = convert_fx(prepare_fx(Relu6Net().eval(), get_default_qconfig_mapping("qnnpack"), (torch.from_numpy(xs[0]),)))
    assert guard_qnnpack_clamps(gm) == 4  # nn.ReLU6, F.relu6, F.hardtanh, .clamp
    assert sum(n.op == "call_method" and n.target == "contiguous" for n in gm.graph.nodes) == 4
    assert guard_qnnpack_clamps(torch.fx.symbolic_trace(tiny_net())) == 0  # nothing to guard


def test_torch_runner_uses_the_backend_it_was_built_for(relu6_model):
    # ReLU6/add/pooling dispatch on the process-wide engine setting at run time: an x86
    # model run while it says "qnnpack" (left so by an earlier run) used qnnpack's clamp.
    model, xs = relu6_model
    before = torch.backends.quantized.engine
    try:
        q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", backend="x86"), xs, NullContext())
        assert not any("contiguous" in n for n in q.notes)  # x86 needs no guard, and pays nothing
        expected = q.runner(xs[1])
        torch.backends.quantized.engine = "qnnpack"
        np.testing.assert_array_equal(q.runner(xs[1]), expected)
        assert torch.backends.quantized.engine == "qnnpack"  # put back after the call
    finally:
        torch.backends.quantized.engine = before


def test_qnnpack_on_x86_says_the_speed_is_not_the_arm_devices(tiny, monkeypatch):
    model, xs = tiny
    before = torch.backends.quantized.engine
    try:
        monkeypatch.setattr("platform.machine", lambda: "x86_64")
        q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", backend="qnnpack"), xs[:1], NullContext())
        assert any("qnnpack on a x86_64 CPU" in n and "ARM device" in n for n in q.notes)
        monkeypatch.setattr("platform.machine", lambda: "aarch64")
        q = TorchEngine().quantize(model, PrecisionPlan(), QuantConfig(engine="torch", backend="auto"), xs[:1], NullContext())
        assert not any("ARM device" in n for n in q.notes)
    finally:
        torch.backends.quantized.engine = before

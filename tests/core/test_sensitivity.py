"""Per-layer sensitivity and per-variant peak memory, as the Quantize run reports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.benchmark import measure_memory_many
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.errors import Cancelled
from quantstudio.core.jobs import RecordingContext
from quantstudio.core.loading import load_model
from quantstudio.core.pipeline import run_quantize
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.sensitivity import UNAVAILABLE_NOTE, layer_sensitivity, most_sensitive
from tests.core.models import save_all_forms, tiny_net
from tests.core.test_engines import batches, bn_ready, loaded


class OutlierNet(nn.Module):
    """conv2's input has one channel ~1000× the others (scaled back by conv2's weights).

    The float function is ordinary, but a per-tensor UINT8 range for conv2's input is
    set by the outlier channel, which wipes out the seven small channels: conv2 is the
    layer to keep in FP32, by far.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[0] *= 1000.0
            self.conv1.bias[0] *= 1000.0
            self.conv2.weight[:, 0] /= 1000.0

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def test_the_layer_with_an_outlier_input_is_the_most_sensitive():
    model = loaded(OutlierNet().eval(), shape=(1, 3, 16, 16))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16), dtype=np.float32)
    ctx = RecordingContext()
    values = layer_sensitivity(model, [x], QuantConfig(engine="torch"), ctx)
    assert set(values) == {"conv1", "conv2", "fc"}
    (top, top_value), (_, second_value) = most_sensitive(values, 2)
    assert top == "conv2" and top_value > 5 * second_value, values
    assert all(v >= 0 for v in values.values())
    # The model is left exactly as it was: weights, and eval mode.
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.module.training
    assert ctx.reports[-1] == (1.0, "sensitivity measured")
    assert any("conv2 (2/3)" in m for _, m in ctx.reports)


def test_per_tensor_weights_are_more_sensitive_than_per_channel():
    """A layer whose output channels have very different weight ranges suffers from one
    per-tensor scale: the figure must show what the config chooses."""
    net = tiny_net()
    with torch.no_grad():
        net.conv2.weight[0] *= 50.0
    model = loaded(bn_ready(net, batches(2)))
    x = batches(1)[0]
    per_channel = layer_sensitivity(model, [x], QuantConfig(engine="torch", per_channel=True), layers=["conv2"])
    per_tensor = layer_sensitivity(model, [x], QuantConfig(engine="torch", per_channel=False), layers=["conv2"])
    assert per_tensor["conv2"] > 2 * per_channel["conv2"]


def test_cancel_restores_the_weights():
    model = loaded(OutlierNet().eval(), shape=(1, 3, 16, 16))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    x = np.zeros((4, 3, 16, 16), dtype=np.float32) + 0.5
    with pytest.raises(Cancelled):
        layer_sensitivity(model, [x], QuantConfig(engine="torch"), RecordingContext(cancel_after=2))
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_torchscript_models_have_no_sensitivity_and_the_run_says_why(tmp_path):
    paths = save_all_forms(tiny_net(), torch.zeros(1, 3, 32, 32), tmp_path, "tiny")
    model = load_model(paths["torchscript"], input_shape=(1, 3, 32, 32))
    assert layer_sensitivity(model, [np.zeros((2, 3, 32, 32), np.float32)], QuantConfig()) == {}
    result = run_quantize(model, "random", None, PrecisionPlan(), QuantConfig(calib_samples=4), RecordingContext(),
                          eval_samples=4, benchmark=False, sensitivity=True)
    assert result.sensitivity == {} and UNAVAILABLE_NOTE in result.notes


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_run_reports_sensitivity_and_memory_of_both_models(engine):
    model = loaded(bn_ready(tiny_net(), batches(2)))
    ctx = RecordingContext()
    result = run_quantize(model, "random", None, PrecisionPlan(), QuantConfig(engine=engine, calib_samples=8), ctx,
                          eval_samples=16, benchmark_runs=2, sensitivity=True, measure_memory=True)
    assert set(result.sensitivity) == {"conv1", "conv2", "fc"}
    assert all(0 < v < 100 for v in result.sensitivity.values()), result.sensitivity
    assert set(result.memory) == {"original", "quantized"}
    for m in result.memory.values():
        assert 0 < m["model_peak_bytes"] < m["peak_rss_bytes"]
    from quantstudio.core.results import LayerSensitivity, MemoryMeasured

    sens = [p for p in ctx.partials if isinstance(p, LayerSensitivity)]
    assert len(sens) == 1 and dict(sens[0].values) == pytest.approx(result.sensitivity)
    assert {p.variant for p in ctx.partials if isinstance(p, MemoryMeasured)} == {"original", "quantized"}
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d["layer_sensitivity"]) == {"conv1", "conv2", "fc"} and set(d["memory"]) == {"original", "quantized"}
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_memory_is_the_child_process_not_the_app(tmp_path):
    """A big app must not inflate the figure (Linux's ru_maxrss starts at the parent's size)."""
    paths = save_all_forms(tiny_net(), torch.zeros(1, 3, 32, 32), tmp_path, "tiny")
    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB held by this process while the child runs
    errors: dict[str, str] = {}
    got = measure_memory_many({"tiny": Path(paths["onnx"]), "missing": tmp_path / "nope.onnx"}, (1, 3, 32, 32),
                              errors=errors)
    assert set(got) == {"tiny"}  # a file that cannot run is left out, not an error…
    assert set(errors) == {"missing"} and errors["missing"]  # …with the reason its process gave
    assert got["tiny"]["peak_rss_bytes"] < ballast.nbytes
    del ballast


def test_memory_measurement_can_be_cancelled(tmp_path):
    paths = save_all_forms(tiny_net(), torch.zeros(1, 3, 32, 32), tmp_path, "tiny")
    ctx = RecordingContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        measure_memory_many({"tiny": Path(paths["onnx"])}, (1, 3, 32, 32), ctx=ctx)


# --------------------------------------------------------------------------- sensitivity that points at the fix


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_fp32_on_the_top_entry_s_fix_layers_recovers_accuracy(engine):
    """Issue 13: the top entry is conv2 (outlier input), and FP32 on conv2 alone leaves its
    input INT8 (written by conv1): the entry names conv1 too, and that recovers accuracy."""
    from quantstudio.core.engines.base import get_engine
    from quantstudio.core.sensitivity import fp32_layers_for_top, measure_with_fix, ranked_entries
    from tests.core.test_auto_precision import NO_EQ, damaged_model, samples, top1

    model = damaged_model()
    x, y = samples(200, 3)
    config = QuantConfig(engine=engine, **NO_EQ)
    values, fix, iso = measure_with_fix(model, [x[:16].numpy()], config)
    top = ranked_entries(values, fix)[0]
    assert top.layer == "conv2" and set(top.fix_layers) == {"conv2", "conv1"}
    assert iso["conv2"]["input"] < iso["conv2"]["weight"]  # the input is the problem, not the weights
    calib, xs, ys = [x[:64].numpy()], x[64:].numpy(), y[64:].numpy()
    consumer_only = PrecisionPlan()
    consumer_only.set("conv2", "fp32")
    fixed = PrecisionPlan()
    for layer in fp32_layers_for_top(values, fix, 1):
        fixed.set(layer, "fp32")
    eng = get_engine(engine)
    before = top1(eng.quantize(model, consumer_only, config, calib, RecordingContext()), xs, ys)
    after = top1(eng.quantize(model, fixed, config, calib, RecordingContext()), xs, ys)
    assert before < 0.6 and after >= 0.99, (before, after)


def test_isolated_error_singles_out_the_damaged_layer():
    """The accumulated SQNR is low for every layer after the damage; the isolated one only for conv2."""
    from quantstudio.core.sensitivity import isolated_errors
    from tests.core.test_auto_precision import NO_EQ, damaged_model, samples

    iso = isolated_errors(damaged_model(), [samples(32, 4)[0].numpy()], QuantConfig(engine="torch", **NO_EQ))
    assert set(iso) == {"conv1", "conv2", "conv3", "fc"}
    worst = min(iso, key=lambda n: iso[n]["both"])
    assert worst == "conv2" and iso["conv2"]["both"] < 10 and all(iso[n]["both"] > 20 for n in ("conv3", "fc")), iso


def test_sensitivity_is_reused_for_the_same_model_data_and_settings(monkeypatch):
    from quantstudio.core import sensitivity

    model = loaded(OutlierNet().eval(), shape=(1, 3, 16, 16))
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16), dtype=np.float32)
    first = sensitivity.measure_with_fix(model, [x], QuantConfig(engine="torch"))
    calls = []
    monkeypatch.setattr(sensitivity, "layer_sensitivity", lambda *a, **k: calls.append(1) or {})
    ctx = RecordingContext()
    assert sensitivity.measure_with_fix(model, [x], QuantConfig(engine="torch"), ctx) == first and not calls
    assert "reused" in ctx.reports[-1][1]
    # Other samples or another calibration method: measured again.
    sensitivity.measure_with_fix(model, [x + 1], QuantConfig(engine="torch"))
    sensitivity.measure_with_fix(model, [x], QuantConfig(engine="torch", calibration="percentile"))
    assert len(calls) == 2


def test_run_summary_has_fix_layers_isolated_error_and_fp32_reasons():
    model = loaded(OutlierNet().eval(), shape=(1, 3, 16, 16))
    plan = PrecisionPlan()
    plan.set("fc", "fp32")
    result = run_quantize(model, "random", None, plan, QuantConfig(engine="torch", calib_samples=8, equalize=False),
                          RecordingContext(), eval_samples=8, benchmark=False, sensitivity=True)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["sensitivity_fix"]["conv2"] == ["conv2", "conv1"]
    assert set(d["layer_sqnr_isolated"]) == {"conv1", "conv2", "fc"}
    assert min(d["layer_sqnr_isolated"], key=d["layer_sqnr_isolated"].get) == "conv2"
    assert d["fp32_reasons"]["fc"] == "set by you" and d["layer_precisions"]["fc"] == "fp32"
    assert d["auto_precision"] == {}


def test_ort_weight_free_nodes_feeding_only_float_layers_run_float():
    """FP32 on a layer means float input: an Add/ReLU between FP32 layers is not left INT8
    (ONNX Runtime's QDQ quantizer would round the tensor there), unless an INT8 layer reads it too."""
    import onnx
    from onnx import helper

    from quantstudio.core.engines.ort.mapping import float_for_float_readers
    from quantstudio.core.plan import Precision

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Add", ["a", "a"], ["b"], name="add"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    graph = helper.make_model(helper.make_graph(nodes, "g", [], []))
    plan = {"c1": (Precision.FP32, "c1"), "add": (Precision.INT8, "add"), "relu": (Precision.INT8, "relu"),
            "c2": (Precision.FP32, "c2")}
    out = float_for_float_readers(graph, plan)
    assert out["add"][0] is Precision.FP32 and out["relu"][0] is Precision.FP32  # a chain is covered
    graph.graph.node.append(helper.make_node("Conv", ["b", "w3"], ["z"], name="c3"))
    out = float_for_float_readers(graph, {**plan, "c3": (Precision.INT8, "c3")})
    assert out["add"][0] is Precision.INT8 and out["relu"][0] is Precision.FP32
    assert isinstance(graph, onnx.ModelProto)

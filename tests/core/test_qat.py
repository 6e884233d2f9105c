"""Quantization-aware training (issue 14) on a tiny learnable task: which quadrant is bright.

The FP32 net learns the task in a few steps; one BN channel scaled ×300 (its consumer's
weights ÷300: the same function) makes min-max PTQ collapse, which QAT must repair.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.cli import main
from quantstudio.core.data import open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import RecordingContext
from quantstudio.core.loading import LoadedModel, load_model
from quantstudio.core.pipeline import export_result, run_quantize
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.qat import ONNX_SOURCE_REASON, estimate_qat, qat_unsupported_reason
from quantstudio.core.recipe import Recipe
from quantstudio.core.results import TrainingEpoch, TrainingStep

SHAPE = (1, 3, 16, 16)


class QuadrantNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(self.flatten(self.pool(x)))


def quadrants(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; class c = quadrant c is brighter."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32) * 0.5
    y = rng.integers(0, 4, n)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.5
    return x, y


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """(model, labeled .npz, unlabeled .npz): trained, then one outlier channel ×300."""
    torch.manual_seed(0)
    net = QuadrantNet()
    x, y = quadrants(320, 0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    net.train()
    for epoch in range(3):
        perm = np.random.default_rng(epoch).permutation(len(x))
        for s in range(0, len(x), 32):
            b = perm[s:s + 32]
            loss = nn.functional.cross_entropy(net(torch.from_numpy(x[b])), torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        c = int(torch.argmin(net.bn1.weight.abs() + net.bn1.bias.abs()))  # a quiet channel: the others carry the task
        net.bn1.weight[c] *= 300
        net.bn1.bias[c] *= 300
        net.conv2.weight[:, c] /= 300
    folder = tmp_path_factory.mktemp("qat")
    labeled, unlabeled = folder / "labeled.npz", folder / "unlabeled.npz"
    np.savez(labeled, x=x, y=y)
    np.savez(unlabeled, x=x)
    model = LoadedModel(path=folder / "net.pth", kind="pickled_module", input_shape=SHAPE, module=net)
    torch.save(net, model.path)
    return model, labeled, unlabeled


def _run(model, data, ctx=None, **cfg):
    config = QuantConfig(**{"engine": "torch", "calib_samples": 64, "equalize": False, "qat_epochs": 2, **cfg})
    return run_quantize(model, open_data(data, input_shape=SHAPE), None, PrecisionPlan(), config, ctx or RecordingContext(),
                        eval_samples=100, benchmark=False)


def test_qat_repairs_a_broken_ptq_keeps_the_best_epoch_and_exports_pth(broken, tmp_path):
    model, labeled, _ = broken
    ptq = _run(model, labeled)
    fp32 = ptq.original_metrics.top1
    assert fp32 > 0.95 and ptq.quantized_metrics.top1 < 0.6  # the defect wrecks min-max PTQ
    ctx = RecordingContext()
    r = _run(model, labeled, ctx, qat=True)
    t = r.training
    assert r.quantized_metrics.top1 >= fp32 - 0.03  # repaired on the held-out evaluation samples
    assert t["metric"] == "top1" and t["settings"]["signal"] == "labels" and not t["cancelled"]
    assert t["settings"]["train_samples"] + t["settings"]["val_samples"] == 220  # 320 - 100 evaluated
    vals = [h["val_metric"] for h in t["history"]]
    assert [h["epoch"] for h in t["history"]] == [0, 1, 2] and vals[0] == t["ptq_val_metric"]
    assert t["best_epoch"] == int(np.argmax(vals)) and max(vals) > vals[0]
    epochs = [p for p in ctx.partials if isinstance(p, TrainingEpoch)]
    assert [e.epoch for e in epochs] == [0, 1, 2] and epochs[-1].best_epoch == t["best_epoch"]
    assert any(isinstance(p, TrainingStep) for p in ctx.partials)
    assert json.loads(json.dumps(r.to_dict()))["training"]["best_epoch"] == t["best_epoch"]
    exported = export_result(r, tmp_path / "q.pth")  # TorchScript, reloaded with torch alone and checked
    assert exported.check.passed
    recipe = Recipe.load(tmp_path / "q.recipe.json")
    assert recipe.config["qat"] is True and recipe.config["qat_epochs"] == 2


def test_cancel_during_training_keeps_the_best_epoch_and_finishes(broken, tmp_path):
    model, labeled, _ = broken

    class CancelAfterEpoch1(RecordingContext):
        def partial(self, payload):
            super().partial(payload)
            if isinstance(payload, TrainingEpoch) and payload.epoch == 1:
                self.cancel()  # the user presses Cancel while epoch 2 trains

    r = _run(model, labeled, CancelAfterEpoch1(), qat=True, qat_epochs=3)
    t = r.training
    assert t["cancelled"] and [h["epoch"] for h in t["history"]] == [0, 1]
    assert r.quantized_metrics is not None and r.quantized_metrics.n == 100  # evaluated as usual
    assert r.quantized_metrics.top1 > 0.8  # epoch 1 was kept, not the broken PTQ start
    assert export_result(r, tmp_path / "c.pth").check.passed


def test_distillation_without_labels_and_the_onnx_runtime_export(broken, tmp_path):
    import onnxruntime as ort

    model, _, unlabeled = broken
    r = _run(model, unlabeled, engine="onnxruntime", qat=True, qat_epochs=1)
    t = r.training
    assert t["settings"]["signal"] == "distill" and t["metric"] == "agreement"
    assert r.quantized_metrics.agreement >= 0.9
    exported = export_result(r, tmp_path / "q.onnx")
    assert exported.check.passed
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: ONNX Runtime runs it in INT8
    x = quadrants(8, 3)[0]
    assert np.allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], r.quantized.runner(x), atol=1e-5)


def _calibrated_and_frozen(net, x: np.ndarray):
    """``net`` prepared for QAT by the torch engine (8-bit ranges), calibrated on ``x`` and frozen
    for export, without training: (frozen model, example input, the FP32 module it came from)."""
    from quantstudio.core.engines.pytorch.engine import TorchEngine
    from quantstudio.core.engines.pytorch.qat import _calibrate, freeze_for_export, qat_qconfig
    from quantstudio.core.jobs import NullContext

    from tests.core.test_engines import bn_ready

    model = LoadedModel(path=Path("net.pth"), kind="pickled_module", input_shape=SHAPE, module=bn_ready(net, [x]))
    engine, config = TorchEngine(), QuantConfig(engine="torch")
    tree, requested, backend, notes = engine._begin(model, PrecisionPlan(), config, NullContext())
    _, prepared, _, example = engine._prepare_fx(model, tree, requested, config, backend, NullContext(), notes,
                                                 qconfig=qat_qconfig(config, reduce_range=False))
    _calibrate(prepared, [x[:32], x[32:]], NullContext())
    return freeze_for_export(prepared), example, model.module


def test_onnx_export_agrees_with_the_fake_quantized_and_the_int8_torch_model():
    """The same trained quantizers: fake-quant torch model, its QDQ ONNX, its convert_fx INT8 model."""
    import onnxruntime as ort
    from torch.ao.quantization.quantize_fx import convert_fx

    from quantstudio.core.engines.pytorch.qdq_onnx import qdq_onnx

    torch.manual_seed(1)
    x = quadrants(64, 4)[0]
    frozen, example, _ = _calibrated_and_frozen(QuadrantNet(), x)
    with torch.no_grad():
        fake = frozen(torch.from_numpy(x)).numpy()
        int8 = convert_fx(__import__("copy").deepcopy(frozen))(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(qdq_onnx(frozen, example).SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    step = float(frozen.activation_post_process_5.scale)  # one step of the output's INT8 grid
    assert np.abs(onnx_out - fake).max() <= 2.01 * step  # integer kernels round once or twice differently
    assert np.abs(int8 - fake).max() <= 2.01 * step


def test_qat_refuses_onnx_sources_other_modes_and_labels_without_classes(broken, tmp_path):
    model, labeled, unlabeled = broken
    path = tmp_path / "net.onnx"
    torch.onnx.export(model.module, (torch.zeros(SHAPE),), str(path), dynamo=False, opset_version=17)
    onnx_model = load_model(path)
    assert qat_unsupported_reason(onnx_model) == ONNX_SOURCE_REASON and qat_unsupported_reason(model) is None
    with pytest.raises(InputError, match="open the .pth, not the .onnx"):
        _run(onnx_model, labeled, engine="onnxruntime", qat=True)
    with pytest.raises(InputError, match="static INT8"):
        _run(model, labeled, qat=True, mode="dynamic")
    with pytest.raises(InputError, match="labeled data"):
        _run(model, unlabeled, qat=True, qat_signal="labels")
    seconds, nbytes = estimate_qat(model, SHAPE, 1000, 2, 32)
    assert seconds > 0 and nbytes > sum(p.numel() * 4 for p in model.module.parameters())


def test_cli_qat_json_and_the_recipe_reproduces_it(broken, tmp_path, capsys):
    model, labeled, _ = broken
    common = [str(model.path), "--trust", "--input-shape", "1,3,16,16", "--calib-samples", "64", "--eval-samples", "100",
              "--no-equalize", "--no-benchmark", "--json"]
    out = tmp_path / "q.onnx"
    assert main(["quantize", *common, "--data", str(labeled), "--engine", "onnxruntime", "--qat", "--epochs", "1",
                 "--lr", "0.002", "--qat-batch-size", "16", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    t = d["training"]
    assert t["settings"]["epochs"] == 1 and t["settings"]["lr"] == 0.002 and t["settings"]["batch_size"] == 16
    assert len(t["history"]) == 2 and d["export"]["check"]["passed"]
    assert main(["quantize", *common, "--recipe", str(tmp_path / "q.recipe.json"), "--out", str(tmp_path / "r.onnx")]) == 0
    again = json.loads(capsys.readouterr().out)["training"]
    assert again["settings"] == t["settings"]  # same seed, same split, same settings
    assert abs(again["history"][1]["val_metric"] - t["history"][1]["val_metric"]) <= 100 / t["settings"]["val_samples"] + 1e-6


class ReLU6Net(nn.Module):
    """MobileNetV2's pattern: conv-BN-ReLU6, depthwise conv-BN-ReLU6, projection conv-BN."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.project(self.dw(self.expand(x)))), 1))


def test_relu6_folds_into_the_conv_quantizer_so_onnx_runtime_fuses_it(tmp_path):
    """torch shares ReLU6's qparams with the conv output: Q→DQ→Clip→Q→DQ, which ONNX Runtime
    cannot fuse into QLinearConv. The export gives the conv output the clipped range instead."""
    import copy

    import onnxruntime as ort
    from collections import Counter

    from quantstudio.core.engines.pytorch.qdq_onnx import clipped_qparams, qdq_onnx

    torch.manual_seed(2)
    x = quadrants(64, 5)[0] * 3  # conv outputs beyond 6 and below 0: the Clip cuts on both sides
    frozen, example, fp32_net = _calibrated_and_frozen(ReLU6Net(), x)
    before, after = qdq_onnx(frozen, example, fold_clips=False), qdq_onnx(frozen, example)
    ops_before, ops_after = Counter(n.op_type for n in before.graph.node), Counter(n.op_type for n in after.graph.node)
    assert ops_before["Clip"] == 2 and ops_after["Clip"] == 0
    assert ops_after["QuantizeLinear"] == ops_before["QuantizeLinear"] - 2

    def session(m, name):  # also writes the graph ONNX Runtime actually runs
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / name)
        return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    out_before = session(before, "before.onnx").run(None, {"input": x})[0]
    out_after = session(after, "after.onnx").run(None, {"input": x})[0]
    run_before = Counter(n.op_type for n in __import__("onnx").load(str(tmp_path / "before.onnx")).graph.node)
    run_after = Counter(n.op_type for n in __import__("onnx").load(str(tmp_path / "after.onnx")).graph.node)
    assert run_before["Clip"] == 2 and run_after["Clip"] == 0  # ONNX Runtime kept them before, nothing to keep now
    assert run_after["QLinearConv"] == 3 and run_after["QuantizeLinear"] < run_before["QuantizeLinear"]

    # Exactness: the folded graph is the fake-quantized model whose ReLU6 quantizers hold the clipped range
    # (conv → Q(s', z') lands in [0, 6], so ReLU6 and its re-quantization change nothing).
    clipped = copy.deepcopy(frozen)
    relu6_inputs = {n.args[0].target for n in clipped.graph.nodes
                    if n.op == "call_module" and isinstance(clipped.get_submodule(n.target), nn.ReLU6)}
    assert len(relu6_inputs) == 2
    for name in relu6_inputs:
        fq = clipped.get_submodule(name)
        s, z = clipped_qparams(float(fq.scale), int(fq.zero_point), 0.0, 6.0, 0, 255)
        assert z == 0 and s < float(fq.scale)  # the range spanned negatives and beyond 6: a finer grid now
        fq.scale.fill_(float(s))
        fq.zero_point.fill_(z)
    with torch.no_grad():
        fake = frozen(torch.from_numpy(x)).numpy()
        fake_clipped = clipped(torch.from_numpy(x)).numpy()
    step = float(frozen.get_submodule(list(clipped.graph.nodes)[-2].target).scale)  # the output's INT8 grid
    # ONNX Runtime's integer kernels round differently from the fake-quantized float model, and a rounding flip
    # before the pool moves a pooled value by a whole step of that coarse grid (5 output steps here, before the
    # fold as after): the fold may add at most one output step to the deviation the export already has.
    err_before, err_after = np.abs(out_before - fake).max(), np.abs(out_after - fake_clipped).max()
    assert err_after <= err_before + 1.01 * step and err_before <= 8 * step
    # Against the model as trained only the grid of the two ReLU6 outputs differs (finer now): the classes stay
    # (this untrained net has near-tied logits: the plain export agrees with its own fake model on 61/64 too).
    with torch.no_grad():
        fp32 = fp32_net(torch.from_numpy(x)).numpy()
    agree = lambda a, b: float((a.argmax(1) == b.argmax(1)).mean())  # noqa: E731
    assert agree(out_after, fake) >= max(agree(out_before, fake) - 1 / 64, 0.9)
    assert agree(out_after, fp32) >= agree(out_before, fp32) - 1 / 64


def _qdq_clip_graph(chain, *, second_reader: bool = False):
    """X → Q(s, z) → DQ, then per (op, lo, hi) in ``chain``: op → Q(s, z) → DQ, as torch exports shared qparams."""
    from onnx import TensorProto, helper

    s, z = np.float32(12 / 255), np.uint8(85)  # the grid spans about [-4, 8]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [s]), helper.make_tensor("z", TensorProto.UINT8, [], [z])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"]), helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"])]
    last = "d0"
    for i, (op, lo, hi) in enumerate(chain, 1):
        ins = [last]
        if op == "Clip":
            inits += [helper.make_tensor(f"lo{i}", TensorProto.FLOAT, [], [lo]), helper.make_tensor(f"hi{i}", TensorProto.FLOAT, [], [hi])]
            ins += [f"lo{i}", f"hi{i}"]
        nodes += [helper.make_node(op, ins, [f"a{i}"]), helper.make_node("QuantizeLinear", [f"a{i}", "s", "z"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"])]
        last = f"d{i}"
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [64])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("d0", TensorProto.FLOAT, [64]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("chain, lo, hi", [([("Clip", 0.0, 6.0)], 0.0, 6.0), ([("Relu", 0, 0)], 0.0, 8.0),
                                           ([("Clip", -1.0, 1.0)], -1.0, 1.0),
                                           ([("Clip", 0.0, 6.0), ("Clip", 0.0, 4.0)], 0.0, 4.0)])
def test_fold_clipped_activations_is_the_clip_on_a_finer_grid(chain, lo, hi):
    import onnxruntime as ort

    from quantstudio.core.engines.pytorch.qdq_onnx import fold_clipped_activations

    x = np.linspace(-6, 10, 64, dtype=np.float32)
    plain, folded = _qdq_clip_graph(chain), fold_clipped_activations(_qdq_clip_graph(chain))
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    before, after = run(plain), run(folded)
    grid = (hi - lo) / 255
    assert after.min() >= lo and after.max() <= hi  # quantizing is the clip: nothing escapes [lo, hi]
    # One rounding on the finer grid; where 0 is inside (lo, hi) the integer zero point puts one end of the
    # grid up to one step inside its bound (Clip(-1, 1): 127/128).
    assert np.abs(after - np.clip(x, lo, hi)).max() <= (grid if lo < 0 else grid / 2) + 1e-6
    assert np.abs(after - before).max() <= (12 / 255 + grid) / 2 + 1e-6  # the shared grid's rounding, and the new one


def test_fold_clipped_activations_leaves_a_quantizer_with_other_readers():
    from quantstudio.core.engines.pytorch.qdq_onnx import fold_clipped_activations

    folded = fold_clipped_activations(_qdq_clip_graph([("Clip", 0.0, 6.0)], second_reader=True))
    assert [n.op_type for n in folded.graph.node].count("Clip") == 1  # d0 is read unclipped too: its range must stay

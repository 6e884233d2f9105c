"""ONNX Runtime engine: plan rules reach the ONNX nodes their PyTorch layers became, the
reported precisions are the graph's, and a graph ONNX Runtime crashes on is an error.

What a user relies on is read from the built graph: a Gemm/MatMul whose weight comes
through DequantizeLinear is INT8, a float16 weight initializer FP16, a float32 one FP32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.ort.engine import OrtEngine, ort_layer_sqnr
from quantstudio.core.engines.ort.fp16 import convert_nodes_to_fp16
from quantstudio.core.jobs import NullContext
from quantstudio.core.loading import LoadedModel
from quantstudio.core.plan import PrecisionPlan

ROOT = Path(__file__).resolve().parents[2]


def loaded(module: nn.Module, shape) -> LoadedModel:
    return LoadedModel(path=Path("model.pth"), kind="state_dict", input_shape=tuple(shape), module=module.eval())


def batches(n, shape, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def plan_of(*assignments: str) -> PrecisionPlan:
    plan = PrecisionPlan()
    for a in assignments:
        plan.parse_assignment(a)
    return plan


def weight_kind(model, node_name: str) -> str:
    """int8 / fp16 / fp32: how the weight (input 1) of a Gemm/MatMul/Conv is stored."""
    node = next(n for n in model.graph.node if n.name == node_name)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    w = node.input[1]
    if w in producers and producers[w].op_type == "DequantizeLinear":
        return "int8"
    return {1: "fp32", 10: "fp16"}[inits[w]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


class Classifier(nn.Module):
    """mobilenet_v2's head (Dropout + Linear in an nn.Sequential), a Linear used as a
    function of its weights, and a training-only head the export never reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(8, 8)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 5))
        self.aux = nn.Linear(8, 5)  # used in training only

    def forward(self, x):
        x = torch.flatten(self.pool(self.features(x)), 1)
        x = torch.nn.functional.linear(x, self.proj.weight, self.proj.bias)
        return self.classifier(x)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return loaded(Classifier(), (1, 3, 16, 16)), batches(2, (4, 3, 16, 16))


@pytest.fixture(scope="module")
def vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(m.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    return loaded(m, (1, 3, 32, 32)), batches(1, (4, 3, 32, 32), seed=1)


HEAD = "/classifier/classifier.1/Gemm"  # the exporter's name: the layer is "classifier.1"


@pytest.mark.parametrize(
    ("rules", "head", "proj"),
    [
        (("classifier.1=fp32", "aux=fp16"), "fp32", "int8"),
        (("type:Linear=fp16",), "fp16", "fp16"),
    ],
)
def test_ort_rules_on_sequential_and_functional_linear_layers_reach_their_gemm(classifier, rules, head, proj):
    model, xs = classifier
    q = OrtEngine().quantize(model, plan_of(*rules), QuantConfig(), xs, NullContext())
    g = q.artifact
    proj_gemm = next(n.name for n in g.graph.node if n.op_type == "Gemm" and n.name != HEAD)
    assert weight_kind(g, HEAD) == head and weight_kind(g, proj_gemm) == proj
    assert weight_kind(g, "/features/features.0/Conv") == "int8"
    assert q.extras["node_layers"][HEAD] == "classifier.1" and q.extras["node_layers"][proj_gemm] == "proj"
    assert q.layer_precisions["classifier.1"] == head and q.layer_precisions["proj"] == proj
    assert q.layer_precisions["features.0"] == "int8"
    unmapped = [n for n in q.notes if "no node of the exported ONNX model" in n]
    if "aux=fp16" in rules:  # aux never runs: the rule must say it changed nothing
        assert len(unmapped) == 1 and "aux (Linear) → fp16" in unmapped[0]
    else:  # type:Linear also sets aux
        assert len(unmapped) == 1 and "aux (Linear)" in unmapped[0] and "proj" not in unmapped[0]
    assert cosine(model.forward_numpy(xs[0]), q.runner(xs[0])) > 0.98


def test_ort_reported_precisions_are_what_dynamic_int8_built(classifier):
    # Dynamic INT8 leaves Conv FP32 whatever the plan says: the report must say so.
    model, xs = classifier
    q = OrtEngine().quantize(model, plan_of("proj=fp32"), QuantConfig(mode="dynamic"), [], NullContext())
    ops = {n.name: n.op_type for n in q.artifact.graph.node}
    assert ops["/features/features.0/Conv"] == "Conv"
    assert q.layer_precisions["features.0"] == "fp32"
    assert ops[HEAD + "_quant"] == "MatMulInteger" and q.layer_precisions["classifier.1"] == "int8"
    assert q.layer_precisions["proj"] == "fp32"
    sqnr = ort_layer_sqnr(q, xs[:1])  # dynamic nodes write the FP32 node's output tensor
    assert "classifier.1" in sqnr and sqnr["classifier.1"] > 15


def test_ort_vit_linear_rules_reach_mlp_head_and_attention(vit):
    model, xs = vit
    block0, block1 = "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"
    plan = plan_of("type:Linear=fp32", f"{block1}.self_attention=fp16")
    q = OrtEngine().quantize(model, plan, QuantConfig(), xs, NullContext())
    g = q.artifact
    for block in ("encoder_layer_0", "encoder_layer_1"):
        scope = f"/encoder/layers/{block}"
        assert weight_kind(g, f"{scope}/mlp/mlp.0/MatMul") == "fp32"  # Linear on 3-D input: MatMul + Add
        assert weight_kind(g, f"{scope}/mlp/mlp.3/MatMul") == "fp32"
    assert weight_kind(g, "/heads/head/Gemm") == "fp32"
    # MultiheadAttention: in-projection MatMul (its own in_proj_weight) and out_proj Gemm.
    attn0, attn1 = "/encoder/layers/encoder_layer_0/self_attention", "/encoder/layers/encoder_layer_1/self_attention"
    assert weight_kind(g, f"{attn0}/MatMul") == "int8" and weight_kind(g, f"{attn0}/Gemm") == "int8"
    assert weight_kind(g, f"{attn1}/MatMul") == "fp16" and weight_kind(g, f"{attn1}/Gemm") == "fp16"
    assert q.extras["node_layers"][f"{attn0}/MatMul"] == f"{block0}.self_attention"
    assert q.extras["node_layers"][f"{attn0}/Gemm"] == f"{block0}.self_attention.out_proj"
    p = q.layer_precisions
    assert p["heads.head"] == p[f"{block0}.mlp.0"] == p[f"{block1}.mlp.3"] == "fp32"
    assert p[f"{block0}.self_attention"] == p[f"{block0}.self_attention.out_proj"] == "int8"
    assert p[f"{block1}.self_attention"] == p[f"{block1}.self_attention.out_proj"] == "fp16"
    assert not any("no node of the exported ONNX model" in n for n in q.notes)
    sqnr = ort_layer_sqnr(q, xs)  # keyed by the PyTorch layers of the tree
    for layer in ("conv_proj", "heads.head", f"{block0}.mlp.0", f"{block0}.self_attention", f"{block0}.self_attention.out_proj"):
        assert layer in sqnr, sorted(sqnr)
    assert sqnr["conv_proj"] > 25  # later layers carry the noise of every INT8 layer before them


def test_ort_fp16_vit_runs(vit):
    # It segfaulted in make_session: an FP16 Transpose feeding an FP16 MatMul (attention).
    model, xs = vit
    q = OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(mode="fp16"), [], NullContext())
    g = q.artifact
    attn = "/encoder/layers/encoder_layer_0/self_attention"
    assert weight_kind(g, f"{attn}/MatMul") == "fp16" and weight_kind(g, "/heads/head/Gemm") == "fp16"
    assert q.layer_precisions["encoder.layers.encoder_layer_0.self_attention"] == "fp16"
    assert any("Transpose" in n and "stays FP32" in n for n in q.notes)
    out = q.runner(xs[0])
    assert out.dtype == np.float32 and cosine(model.forward_numpy(xs[0]), out) > 0.999


CRASH_GRAPH = """
import numpy as np
from onnx import TensorProto as T, helper as h, numpy_helper as nh
def crash_graph(half):
    # x (float32) -> [Cast] -> Transpose(1, 0, 2) -> MatMul(W) -> [Cast]: attention's
    # in-projection. All in FP16, ONNX Runtime 1.32 segfaults creating a session.
    dt = T.FLOAT16 if half else T.FLOAT
    w = nh.from_array(np.random.default_rng(0).standard_normal((32, 96)).astype(np.float16 if half else np.float32), "w")
    nodes = [h.make_node("Transpose", ["xh"], ["t"], name="transpose", perm=[1, 0, 2]),
             h.make_node("MatMul", ["t", "w"], ["yh"], name="matmul")]
    if half:
        nodes = [h.make_node("Cast", ["x"], ["xh"], name="cast_in", to=T.FLOAT16)] + nodes
        nodes.append(h.make_node("Cast", ["yh"], ["y"], name="cast_out", to=T.FLOAT))
    else:
        nodes[0].input[0], nodes[1].output[0] = "x", "y"
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 1, 32])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
"""
_namespace: dict = {}
exec(CRASH_GRAPH, _namespace)  # the same builder here and in the child processes below
crash_graph = _namespace["crash_graph"]


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CRASH_GRAPH + code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_ort_fp16_conversion_keeps_a_transpose_into_matmul_fp32(tmp_path):
    model, skipped = convert_nodes_to_fp16(crash_graph(False), {"transpose", "matmul"})
    ops = {n.name: n for n in model.graph.node}
    assert "transpose" in skipped and "matmul" not in skipped
    assert not ops["transpose"].output[0].endswith("__fp16")  # FP32 Transpose, FP16 MatMul behind a Cast
    assert {i.name: i.data_type for i in model.graph.initializer}[ops["matmul"].input[1]] == 10
    path = tmp_path / "converted.onnx"
    path.write_bytes(model.SerializeToString())
    out = run_child(
        "import onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        "print(s.run(None, {'x': np.ones((5, 1, 32), np.float32)})[0].shape)\n"
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "(1, 5, 96)"


def test_ort_native_crash_is_an_input_error_not_a_dead_app():
    # A graph ONNX Runtime segfaults on (given as an ONNX file, so no conversion avoids
    # it): the engine checks it in a child process and raises; this process lives on.
    out = run_child(
        "import json\n"
        "from pathlib import Path\n"
        "from quantstudio.core.engines.base import QuantConfig\n"
        "from quantstudio.core.engines.ort.engine import OrtEngine\n"
        "from quantstudio.core.errors import InputError\n"
        "from quantstudio.core.jobs import NullContext\n"
        "from quantstudio.core.loading import LoadedModel\n"
        "from quantstudio.core.plan import PrecisionPlan\n"
        "model = LoadedModel(path=Path('attention.onnx'), kind='onnx', input_shape=(5, 1, 32), onnx_model=crash_graph(True))\n"
        "try:\n"
        "    OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(mode='fp16'), [], NullContext())\n"
        "    print(json.dumps({'raised': None}))\n"
        "except InputError as exc:\n"
        "    print(json.dumps({'raised': str(exc), 'hint': exc.hint}))\n"
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["raised"] is not None and "ONNX Runtime crashed (SIGSEGV)" in result["raised"]
    assert "FP32" in result["hint"]


def test_onnx_export_refuses_a_branch_on_tensor_values():
    from quantstudio.core.errors import InputError
    from tests.core.test_engines import Branchy
    from tests.core.test_torch_mixed import SHAPE

    torch.manual_seed(0)
    model = loaded(Branchy(), SHAPE)
    with pytest.raises(InputError) as err:
        OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), [], NullContext())
    assert "if x.mean() > 0:" in err.value.message and "torch.where" in err.value.hint


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_a_smaller_last_batch(method):
    """12 calibration samples in batches of 5: 5, 5, 2 (ORT's histogram calibrators stack batches)."""
    from quantstudio.core.jobs import RecordingContext
    from tests.core.models import tiny_net

    torch.manual_seed(0)
    model = loaded(tiny_net().eval(), (1, 3, 32, 32))
    x = np.random.default_rng(0).standard_normal((12, 3, 32, 32), dtype=np.float32)
    ctx = RecordingContext()
    q = OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(calibration=method), [x[:5], x[5:10], x[10:]], ctx)
    assert q.runner(x).shape == (12, 5)
    assert any(m == "calibrating on 12 batches" for _, m in ctx.reports)  # every sample kept, as batches of 1

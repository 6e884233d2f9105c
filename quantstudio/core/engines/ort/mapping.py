"""ONNX nodes ↔ the layers the plan names: node origins, plan → node precisions, and the
precisions the built graph really runs in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from quantstudio.core.engines.ort.fp16 import FP16_SUFFIX
from quantstudio.core.plan import Precision, PrecisionPlan

# PyTorch layer types that export to no ONNX node by design (eval mode): a plan rule
# on them has nothing to change, and saying so would be noise.
_NO_ONNX_FORM = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Identity"}


@dataclass(frozen=True)
class NodeOrigin:
    """The layer an ONNX node belongs to, as the plan and the reports name it."""

    layer: str  # a PyTorch module's name, or (no module produced it) the ONNX tree's leaf name
    candidates: tuple[tuple[str, str], ...]  # (name, type) pairs the plan's rules are matched against
    quantizable: bool = True  # the ONNX operator has an INT8 form


def onnx_node_origins(onnx_tree: Any, torch_tree: Any = None, graph: Any = None) -> dict[str, NodeOrigin]:
    """ONNX node name → the layer it comes from.

    Without a PyTorch tree (an ONNX source) a node belongs to its leaf of the ONNX tree.
    For a model exported from PyTorch, the exporter names every node after the module
    scope that produced it ("/classifier/classifier.1/Gemm", "/relu_1/Relu" for a second
    call of ``relu``), so a node belongs to the deepest module of its scope when that is
    a leaf of the PyTorch tree. Under a module with children, a node that reads a
    child's parameter belongs to that child (MultiheadAttention's out_proj Gemm: the
    module calls it as a function, so the exporter leaves no "out_proj" scope); one in a
    module that owns parameters itself belongs to that module (MultiheadAttention's
    in-projection and attention MatMuls). What is left (residual adds, reshapes between
    modules) keeps its ONNX name, which glob rules on the enclosing scope cover.
    """
    from quantstudio.core.inventory import _scope_of

    protos = {n.name: n for n in graph.graph.node} if graph is not None else {}
    modules = {n.name: n for n, _ in torch_tree.walk()} if torch_tree is not None else {}
    owners = _parameter_owners(graph, modules) if graph is not None and modules else {}
    out: dict[str, NodeOrigin] = {}
    for leaf in onnx_tree.leaves():
        own = ((leaf.name, leaf.type),)
        for node_name in leaf.onnx_nodes:
            origin = NodeOrigin(leaf.name, own, leaf.quantizable)
            if modules:
                proto = protos.get(node_name) or _NamedNode(node_name)
                module = _deepest_module(_scope_of(proto), modules)
                inputs = list(getattr(proto, "input", []))
                if module is not None and not modules[module].children:
                    origin = _module_origin(modules[module], leaf)
                elif (owner := _child_owner(inputs, owners, module)) is not None:
                    origin = _module_origin(modules[owner], leaf)
                elif module and _owns_parameters(modules[module]):
                    node = modules[module]
                    origin = NodeOrigin(node.name, ((node.name, node.type),) + own, leaf.quantizable)
            out[node_name] = origin
    return out


class _NamedNode:
    """A node known by name only (no graph given): its scope comes from the name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metadata_props: list[Any] = []


def _module_origin(module, leaf) -> NodeOrigin:
    return NodeOrigin(module.name, ((module.name, module.type),), leaf.quantizable)


def _deepest_module(scope: list[str], modules: dict[str, Any]) -> str | None:
    """The deepest PyTorch module along an exporter scope ("relu_1", a second call of
    ``relu``, is ``relu``); None when even the outermost scope is no module."""
    found = None
    resolved = ""
    previous = ""
    for qualified in scope:
        segment = qualified[len(previous) + 1:] if previous and qualified.startswith(previous + ".") else qualified
        previous = qualified
        for candidate_segment in dict.fromkeys((segment, re.sub(r"_\d+$", "", segment))):
            candidate = f"{resolved}.{candidate_segment}" if resolved else candidate_segment
            if candidate in modules:
                resolved = found = candidate
                break
        else:
            break
    return found


def _parameter_owners(graph, modules: dict[str, Any]) -> dict[str, str]:
    """Tensor name → the leaf module whose parameter it is ("a.out_proj.weight" → "a.out_proj").

    The exporter names initializers after the parameters and feeds a deduplicated copy
    through an Identity whose output carries the copy's parameter name."""
    names = {i.name for i in graph.graph.initializer}
    names |= {n.output[0] for n in graph.graph.node if n.op_type == "Identity" and n.input and n.input[0] in names}
    owners = {}
    for name in names:
        owner = name.rpartition(".")[0]
        if owner in modules and not modules[owner].children:
            owners[name] = owner
    return owners


def _child_owner(inputs: list[str], owners: dict[str, str], module: str | None) -> str | None:
    """The leaf module inside ``module`` whose parameter a node reads, if any."""
    for name in inputs:
        owner = owners.get(name)
        if owner is not None and (not module or owner.startswith(module + ".")):
            return owner
    return None


def _owns_parameters(node) -> bool:
    """A module with parameters of its own, beside its children's (MultiheadAttention's in_proj_weight)."""
    return bool(node.name) and node.params > sum(c.params for c in node.children)


def plan_node_precisions(plan: PrecisionPlan, onnx_tree: Any, torch_tree: Any = None, graph: Any = None,
                         origins: dict[str, NodeOrigin] | None = None) -> dict[str, tuple[Precision, str]]:
    """ONNX node name → (effective precision, layer name) from the plan.

    For a model exported from PyTorch the plan speaks PyTorch layer names and types;
    :func:`onnx_node_origins` says which layer each node comes from (``graph``, the
    exported model, lets parameters name their module where the scope cannot).
    """
    if origins is None:
        origins = onnx_node_origins(onnx_tree, torch_tree, graph)
    out: dict[str, tuple[Precision, str]] = {}
    for node, origin in origins.items():
        precision, _ = plan.precision_for_any(origin.candidates)
        if precision is Precision.INT8 and not origin.quantizable:
            precision = Precision.FP32
        out[node] = (precision, origin.layer)
    if graph is not None:
        out = float_for_float_readers(graph, out)
    return out


def float_for_float_readers(graph: Any, node_plan: dict[str, tuple[Precision, str]]) -> dict[str, tuple[Precision, str]]:
    """Weight-free nodes (ReLU, BN, pooling, add, reshape…) whose every reader runs in float
    run in float too, so "FP32 on a layer" means float *input* as well (issue 13).

    Why: ONNX Runtime's QDQ quantizer puts a Q/DQ pair on the inputs and outputs of every
    node it is not told to exclude; a BN, an add or a pooling node left INT8 between an FP32
    producer and an FP32 consumer writes its output through INT8, and the consumer reads the
    rounded tensor (the outlier-channel damage stays). Repeated until nothing changes, so a
    chain of such nodes is covered. Nodes with weights keep the plan's precision.
    """
    readers: dict[str, list[str]] = {}
    for n in graph.graph.node:
        for i in n.input:
            if i:
                readers.setdefault(i, []).append(n.name)
    outputs = {n.name: list(n.output) for n in graph.graph.node}
    ops = {n.name: n.op_type for n in graph.graph.node}
    out = dict(node_plan)
    changed = True
    while changed:
        changed = False
        for name, (precision, layer) in out.items():
            if precision is not Precision.INT8 or ops.get(name) in _WEIGHT_OPS or name not in outputs:
                continue
            rs = [r for o in outputs[name] for r in readers.get(o, [])]
            if rs and all(r in out and out[r][0] is not Precision.INT8 for r in rs):
                out[name] = (Precision.FP32, layer)
                changed = True
    return out


def plan_coverage_notes(plan: PrecisionPlan, origins: dict[str, NodeOrigin], torch_tree: Any = None) -> list[str]:
    """A note naming the PyTorch layers a plan rule sets that no ONNX node comes from, so
    the rule cannot silently change nothing. (Rules that match no layer at all are the
    pipeline's warning.)"""
    if torch_tree is None or not plan.rules:
        return []
    mapped = {o.layer for o in origins.values()}
    lost = []
    for leaf in torch_tree.leaves():
        if leaf.name in mapped or leaf.type in _NO_ONNX_FORM:
            continue
        precision, rule = plan.precision_for_any(((leaf.name, leaf.type),))
        if rule is not None:
            lost.append(f"{leaf.name} ({leaf.type}) → {precision.value}")
    if not lost:
        return []
    return [
        f"the plan sets {len(lost)} layer{'s' if len(lost) != 1 else ''} that no node of the exported ONNX "
        f"model comes from, so {'those rules change' if len(lost) != 1 else 'that rule changes'} nothing there: "
        + "; ".join(lost[:6]) + ("…" if len(lost) > 6 else "")
    ]


# The precision a built node really runs in, read from the graph.
_INT8_OPS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QGemm", "QAttention", "DynamicQuantizeLSTM",
}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LSTM", "GRU", "Attention"}
_WIDTH = {Precision.INT8: 0, Precision.FP16: 1, Precision.FP32: 2}


def built_layer_precisions(model: Any, node_plan: dict[str, tuple[Precision, str]]) -> dict[str, str]:
    """Layer → the precision its nodes run in, read from the built graph.

    A node with weights is INT8 when they come through DequantizeLinear (QDQ) or it is
    an integer operator (dynamic INT8), FP16 when they are float16, FP32 otherwise; a
    layer is reported INT8 only if all its weighted nodes are. Weightless nodes count
    only in layers without weights: FP16 when they write an FP16 tensor, INT8 when the
    plan asks it and they read dequantized input. Layers whose nodes all left the graph
    (a BatchNormalization folded into its Conv, a Relu the QDQ quantizer fused) keep
    the plan's precision.
    """
    from onnx import TensorProto

    kinds = {TensorProto.FLOAT16: Precision.FP16, TensorProto.FLOAT: Precision.FP32,
             TensorProto.INT8: Precision.INT8, TensorProto.UINT8: Precision.INT8}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def weight(name: str) -> Precision | None:
        if name in inits:
            return kinds.get(inits[name])
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
            return Precision.INT8
        return None

    weighted: dict[str, list[Precision]] = {}
    other: dict[str, list[Precision]] = {}
    for node in model.graph.node:
        origin = node.name if node.name in node_plan else node.name.removesuffix("_quant")
        if origin not in node_plan:
            continue  # a Q/DQ or Cast node the tools added
        planned, layer = node_plan[origin]
        found = []
        if node.op_type in _INT8_OPS:
            found = [Precision.INT8]
        elif node.op_type in _WEIGHT_OPS:
            bias = 2 if node.op_type in ("Conv", "ConvTranspose", "Gemm") else -1
            found = [k for j, i in enumerate(node.input) if i and j != bias and (k := weight(i)) is not None]
        if found:
            weighted.setdefault(layer, []).append(max(found, key=_WIDTH.__getitem__))
            continue
        if any(o.endswith(FP16_SUFFIX) for o in node.output):
            p = Precision.FP16
        elif planned is Precision.INT8 and any(
                producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input):
            p = Precision.INT8
        else:
            p = Precision.FP32
        other.setdefault(layer, []).append(p)
    out: dict[str, str] = {}
    for node, (planned, layer) in node_plan.items():
        if layer in out:
            continue
        seen = weighted.get(layer) or other.get(layer)
        out[layer] = (max(seen, key=_WIDTH.__getitem__) if seen else planned).value
    return out

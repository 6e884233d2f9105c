"""Layer inventory: the tree of layers the user sees and sets precisions on.

Each :class:`LayerNode` has a qualified name, a type, its output shape, parameter
count, MACs, whether it can be quantized (and why not) and its children. PyTorch
models are walked module by module (one forward pass with hooks for output shapes,
``torch.utils.flop_counter.FlopCounterMode`` for MACs, so functional matmuls such as
attention count too); ONNX graphs get shapes from ONNX shape inference and are grouped
into the same kind of tree from the module scopes the exporter left in node names.

MACs count convolutions and matrix products only (what FlopCounterMode counts,
halved), so totals agree between a PyTorch model and its ONNX export.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from quantstudio.core.loading import KIND_EXPORTED, KIND_ONNX, KIND_TORCHSCRIPT, LoadedModel

# PyTorch module types with INT8 kernels (or folded into one: BatchNorm into Conv).
TORCH_QUANTIZABLE = {
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Linear",
    "Embedding", "EmbeddingBag", "LSTM", "GRU",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "ReLU", "ReLU6", "Hardtanh",
    "Hardswish", "Hardsigmoid", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "Softmax",
    "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "Flatten", "Identity", "Dropout", "LayerNorm", "GroupNorm",
    "InstanceNorm2d", "Upsample", "PixelShuffle",
}
# Types whose INT8 form exists only as dynamic quantization (weights INT8, activations float).
TORCH_DYNAMIC_ONLY = {"LSTM", "GRU", "MultiheadAttention", "NonDynamicallyQuantizableLinear"}

# ONNX operators ONNX Runtime runs in INT8 in QDQ form (others stay float between Q/DQ).
ONNX_QUANTIZABLE = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "LeakyRelu",
    "Sigmoid", "HardSigmoid", "HardSwish", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Resize",
    "Gather", "Softmax", "Where", "Pad", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "ArgMax", "Identity", "Dropout", "Slice",
    "QuantizeLinear", "DequantizeLinear",
}
# ONNX inputs that are not learned parameters (BN running statistics, Q/DQ scales).
_NOT_PARAMS = {
    "BatchNormalization": {3, 4},
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
}


@dataclass
class LayerNode:
    name: str  # qualified name ("" for the whole model)
    type: str
    output_shape: tuple[int, ...] | None = None
    params: int = 0  # this layer and everything inside it
    macs: int | None = 0  # None: unknown for this layer (TorchScript sub-modules)
    quantizable: bool = True
    reason: str = ""  # why it cannot be quantized, or a caveat
    children: list["LayerNode"] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)  # ONNX node names this layer maps to

    def walk(self, depth: int = 0) -> Iterator[tuple["LayerNode", int]]:
        yield self, depth
        for c in self.children:
            yield from c.walk(depth + 1)

    def find(self, name: str) -> "LayerNode | None":
        for node, _ in self.walk():
            if node.name == name:
                return node
        return None

    def leaves(self) -> list["LayerNode"]:
        return [n for n, _ in self.walk() if not n.children]

    def count_layers(self) -> int:
        return len(self.leaves())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "params": self.params,
            "macs": self.macs,
            "quantizable": self.quantizable,
            "reason": self.reason,
            "onnx_nodes": self.onnx_nodes,
            "children": [c.to_dict() for c in self.children],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerNode":
        return cls(
            name=d["name"],
            type=d["type"],
            output_shape=tuple(d["output_shape"]) if d.get("output_shape") else None,
            params=d["params"],
            macs=d["macs"],
            quantizable=d["quantizable"],
            reason=d.get("reason", ""),
            onnx_nodes=list(d.get("onnx_nodes", [])),
            children=[cls.from_dict(c) for c in d.get("children", [])],
        )


def build_inventory(model: LoadedModel) -> LayerNode:
    """The layer tree of a loaded model (one forward pass for PyTorch kinds)."""
    if model.kind == KIND_ONNX:
        return onnx_inventory(model.onnx_model, model.input_shape)
    return torch_inventory(model)


# --------------------------------------------------------------------------- PyTorch


def _torch_type_names(model: LoadedModel) -> dict[str, str]:
    """Original class names per module path (TorchScript and torch.export hide them)."""
    names: dict[str, str] = {}
    if model.kind == KIND_TORCHSCRIPT:
        for name, m in model.module.named_modules():
            names[name] = getattr(m, "original_name", type(m).__name__)
    elif model.kind == KIND_EXPORTED:
        ep = getattr(model, "exported_program", None)
        names[""] = "ExportedProgram"
        for node in ep.graph.nodes if ep is not None else []:
            for path, typ in (node.meta.get("nn_module_stack") or {}).values():
                # paths look like "L['self'].layer1[0]" in some releases, "layer1.0" in others
                clean = path.replace("L['self'].", "").replace("L['self']", "")
                clean = clean.replace("[", ".").replace("]", "").replace("'", "").strip(".")
                tname = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
                names.setdefault(clean, tname.rsplit(".", 1)[-1])
    else:
        for name, m in model.module.named_modules():
            names[name] = type(m).__name__
    return names


def torch_inventory(model: LoadedModel) -> LayerNode:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = model.module
    types = _torch_type_names(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    if model.kind != KIND_TORCHSCRIPT:  # loaded TorchScript modules refuse hooks

        def hook(name):
            def record(mod, inputs, output):
                out = output[0] if isinstance(output, (tuple, list)) and output else output
                if isinstance(out, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(int(d) for d in out.shape)

            return record

        for name, m in module.named_modules():
            handles.append(m.register_forward_hook(hook(name)))
    counter = FlopCounterMode(display=False)
    root_out = None
    try:
        if model.input_shape is not None:
            with torch.inference_mode(), warnings.catch_warnings(), counter:
                warnings.simplefilter("ignore")
                root_out = module(model.example_input())
    finally:
        for h in handles:
            h.remove()
    if isinstance(root_out, (tuple, list)):
        root_out = root_out[0]
    if isinstance(root_out, torch.Tensor):
        shapes[""] = tuple(int(d) for d in root_out.shape)

    flops: dict[str, int] = {}
    root_key = None
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            flops[""] = sum(per_op.values())
            continue
        head, _, rest = key.partition(".")
        root_key = root_key or head
        if rest:
            flops[rest] = sum(per_op.values())
    per_module_known = model.kind != KIND_TORCHSCRIPT

    def make(name: str, m) -> LayerNode:
        children = [make(f"{name}.{c}" if name else c, cm) for c, cm in m.named_children()]
        tname = types.get(name, type(m).__name__)
        if name == "" or per_module_known:
            macs = flops.get(name, 0) // 2
        else:
            macs = None
        node = LayerNode(
            name=name,
            type=tname,
            output_shape=shapes.get(name),
            params=sum(p.numel() for p in m.parameters()),
            macs=macs,
            children=children,
        )
        _torch_quantizable(node, m)
        return node

    return make("", module)


def _torch_quantizable(node: LayerNode, m) -> None:
    if node.children:
        node.quantizable = any(c.quantizable for c in node.children)
        if not node.quantizable:
            node.reason = "nothing inside it can be quantized"
        return
    t = node.type
    if t in TORCH_DYNAMIC_ONLY:
        node.quantizable = True
        node.reason = "dynamic INT8 only (weights INT8, activations stay float)"
    elif t in TORCH_QUANTIZABLE:
        node.quantizable = True
    elif node.params == 0:
        node.quantizable = False
        node.reason = f"PyTorch has no INT8 kernel for {t}; it runs in FP32 between quantize/dequantize steps"
    else:
        node.quantizable = False
        node.reason = f"{t} is not a layer type PyTorch can quantize; it stays FP32"


# --------------------------------------------------------------------------- ONNX


def _scope_of(node) -> list[str]:
    """Module path (qualified names, outermost first) of an ONNX node, if the exporter left one."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = [p for p in ast.literal_eval(prop.value) if p]
            except (ValueError, SyntaxError):
                parts = []
            return _qualify(parts)
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        return _qualify(name.strip("/").split("/")[:-1])
    return []


def _qualify(parts: list[str]) -> list[str]:
    """Scope segments to qualified names.

    The exporter names a Sequential's child "<attr>.<index>" relative to the previous
    segment ("/layer2/layer2.0/downsample/downsample.0/Conv"), so a segment that starts
    with the previous *segment* plus a dot is that module's child, not a new attribute.
    """
    out: list[str] = []
    prev = ""
    for p in parts:
        if out and prev and p.startswith(prev + "."):
            q = f"{out[-1]}.{p[len(prev) + 1:]}"
        elif out:
            q = f"{out[-1]}.{p}"
        else:
            q = p
        out.append(q)
        prev = p
    return out


def onnx_inventory(proto, input_shape=None) -> LayerNode:
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if input_shape is not None and graph_inputs:
        dims = graph_inputs[0].type.tensor_type.shape.dim
        for d, v in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(v)
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - a model shape inference cannot handle still has a tree
        pass
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and len(dims) > 0:
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        else:
            shapes.setdefault(vi.name, None)
    for name, init in inits.items():
        shapes[name] = tuple(init.dims)

    # The exporter stores equal tensors once and feeds the copies through Identity
    # nodes; each copy is still a parameter of its own layer, so resolve the aliases.
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    seen_params: set[str] = set()
    root = LayerNode(name="", type="ONNX graph", output_shape=None, params=0, macs=0)
    by_name: dict[str, LayerNode] = {"": root}
    counts: dict[str, int] = {}

    def scope_node(path: list[str]) -> LayerNode:
        parent = root
        for q in path:
            node = by_name.get(q)
            if node is None:
                node = LayerNode(name=q, type="", params=0, macs=0)
                by_name[q] = node
                parent.children.append(node)
            parent = node
        return parent

    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.output[0] in inits):
            continue
        params = 0
        skip = _NOT_PARAMS.get(node.op_type, set())
        for j, inp in enumerate(node.input):
            if inp in inits and j not in skip and inp not in seen_params:
                init = inits[inp]
                if init.data_type in (
                    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
                ):
                    seen_params.add(inp)
                    params += int(np.prod(init.dims)) if len(init.dims) else 1
        out_shape = shapes.get(node.output[0]) if node.output else None
        macs = _onnx_macs(node, shapes, numpy_helper)
        path = _scope_of(node)
        parent = scope_node(path)
        base = node.name.rsplit("/", 1)[-1] if node.name else f"{node.op_type}_{i}"
        leaf_name = f"{parent.name}.{base}" if parent.name else base
        counts[leaf_name] = counts.get(leaf_name, 0) + 1
        if counts[leaf_name] > 1:
            leaf_name = f"{leaf_name}_{counts[leaf_name] - 1}"
        leaf = LayerNode(
            name=leaf_name,
            type=node.op_type,
            output_shape=out_shape,
            params=params,
            macs=macs,
            onnx_nodes=[node.name or leaf_name],
        )
        if node.op_type in ONNX_QUANTIZABLE:
            leaf.quantizable = True
        else:
            leaf.quantizable = False
            leaf.reason = f"ONNX Runtime has no INT8 kernel for {node.op_type}; it stays float"
        parent.children.append(leaf)

    def finish(n: LayerNode) -> None:
        for c in n.children:
            finish(c)
        if not n.children:
            return
        # A scope holding exactly one operator is that layer: merge them (conv1 → Conv).
        if n is not root and len(n.children) == 1 and not n.children[0].children:
            only = n.children[0]
            n.type, n.output_shape, n.params, n.macs = only.type, only.output_shape, only.params, only.macs
            n.quantizable, n.reason, n.onnx_nodes = only.quantizable, only.reason, only.onnx_nodes
            n.children = []
            return
        n.params = sum(c.params for c in n.children)
        n.macs = sum(c.macs or 0 for c in n.children)
        n.onnx_nodes = [o for c in n.children for o in c.onnx_nodes]
        n.quantizable = any(c.quantizable for c in n.children)
        n.reason = "" if n.quantizable else "nothing inside it can be quantized"
        if not n.type:
            n.type = "scope"
        if n.output_shape is None:
            n.output_shape = n.children[-1].output_shape

    finish(root)
    root.type = "ONNX graph"
    outs = [o.name for o in model.graph.output]
    root.output_shape = shapes.get(outs[0]) if outs else None
    return root


def _onnx_macs(node, shapes, numpy_helper) -> int:
    import numpy as np

    def shp(name):
        return shapes.get(name)

    out = shp(node.output[0]) if node.output else None
    if out is None:
        return 0
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = shp(node.input[1])
        if not w:
            return 0
        if op == "Conv":
            # out elements x (Cin/groups x kernel): w is (Cout, Cin/g, k...)
            return int(np.prod(out)) * int(np.prod(w[1:]))
        x = shp(node.input[0])
        return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
    if op == "Gemm":
        a = shp(node.input[0])
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        if not a:
            return 0
        k = a[0] if trans_a else a[-1]
        return int(np.prod(out)) * int(k)
    if op == "MatMul":
        a = shp(node.input[0])
        return int(np.prod(out)) * int(a[-1]) if a else 0
    return 0

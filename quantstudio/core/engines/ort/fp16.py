"""The FP16 rewrite of an ONNX graph: chosen nodes run in float16 behind casts."""

from __future__ import annotations

from typing import Any

import numpy as np

# Ops converted when the plan asks FP16 (others stay FP32). Their weights and outputs are
# float16 in the file; ONNX Runtime 1.32's x86 CPU provider has FP16 kernels only for
# LayerNormalization, Transpose, Concat, Flatten and Clip and runs the rest in float32
# behind casts it inserts when the session is created.
FP16_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Add", "Sub", "Mul", "Div",
    "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "Sigmoid",
    "HardSigmoid", "HardSwish", "LeakyRelu", "Softmax", "LayerNormalization", "Tanh",
    "Erf", "Flatten", "Concat", "Transpose", "Gelu", "Clip",
}
FP16_SUFFIX = "__fp16"  # what convert_nodes_to_fp16 appends to a tensor's name for its FP16 twin
# Inputs that must stay float32 (or keep their integer type) whatever the node's type.
_KEEP_FLOAT32_INPUTS = {"Resize": {1, 2}, "Clip": set(), "LayerNormalization": set()}


# Why a node the plan puts in FP16 stays FP32.
NO_FP16_KERNEL = "ONNX Runtime has no FP16 form for them here"
TRANSPOSE_INTO_MATMUL = (
    "an FP16 Transpose feeding an FP16 MatMul/Gemm crashes ONNX Runtime's CPU optimizer, "
    "so it stays FP32 and the MatMul reads a cast"
)


def convert_nodes_to_fp16(model, nodes: set[str]) -> tuple[Any, dict[str, str]]:
    """Run ``nodes`` in FP16; the graph's inputs and outputs stay float32.

    Returns the model and the nodes of ``nodes`` left FP32, with the reason.

    Written here rather than with ``onnxruntime.transformers.float16`` because, in ORT
    1.31, that converter with a ``node_block_list`` produced graphs ONNX's checker rejects
    (casts appended out of topological order, one tensor produced twice); and
    ``onnxconverter_common`` is not a dependency. Casts go in front of each FP16 node's
    float32 inputs and behind its outputs only where an FP32 consumer or a graph output
    needs them, so a run of FP16 layers stays in FP16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    try:
        typed = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001
        typed = m
    elem: dict[str, int] = {}
    for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
        elem[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in m.graph.initializer}
    for name, init in inits.items():
        elem[name] = init.data_type
    graph_outputs = {o.name for o in m.graph.output}
    consumers: dict[str, list[Any]] = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    skipped = {n.name: NO_FP16_KERNEL for n in m.graph.node if n.name in nodes and n.op_type not in FP16_OPS}
    # ONNX Runtime 1.32 (CPU) fuses an FP16 Transpose that moves the batch axis into the
    # FP16 MatMul it feeds (FusedMatMul, transBatchA: MultiheadAttention's (L, N, E) →
    # (N, L, E) before its in-projection), has no FP16 kernel for the result, inserts
    # casts to float32, folds the FP16 weight into a float32 copy, and its layout pass
    # (NchwcTransformer) then segfaults while creating the session. Reproduced with a
    # two-node graph; disabling any one of those passes avoids it. A Transpose feeding
    # an FP16 MatMul/Gemm stays FP32 whatever its permutation: ORT runs that MatMul in
    # float32 anyway, so nothing is lost.
    for node in m.graph.node:
        if node.op_type == "Transpose" and node.name in nodes and any(
            c.op_type in ("MatMul", "Gemm") and c.name in nodes for c in consumers.get(node.output[0], [])
        ):
            skipped[node.name] = TRANSPOSE_INTO_MATMUL

    def is_fp16(node) -> bool:
        return node.name in nodes and node.op_type in FP16_OPS and node.name not in skipped

    half_of: dict[str, str] = {}  # float32 tensor → its FP16 twin
    new_inits = []
    new_nodes = []
    counter = 0
    for node in m.graph.node:
        if not is_fp16(node):
            new_nodes.append(node)
            continue
        keep = _KEEP_FLOAT32_INPUTS.get(node.op_type, set())
        for j, inp in enumerate(node.input):
            if not inp or j in keep or elem.get(inp) != TensorProto.FLOAT:
                continue
            if inp not in half_of:
                twin = f"{inp}{FP16_SUFFIX}"
                if inp in inits:
                    arr = numpy_helper.to_array(inits[inp]).astype(np.float16)
                    new_inits.append(numpy_helper.from_array(arr, twin))
                else:
                    counter += 1
                    new_nodes.append(helper.make_node("Cast", [inp], [twin], name=f"{node.name}_cast_in_{counter}", to=TensorProto.FLOAT16))
                half_of[inp] = twin
            node.input[j] = half_of[inp]
        outs = list(node.output)
        new_nodes.append(node)
        for k, out in enumerate(outs):
            if elem.get(out, TensorProto.FLOAT) != TensorProto.FLOAT:
                continue
            twin = f"{out}{FP16_SUFFIX}"
            node.output[k] = twin
            half_of[out] = twin
            if out in graph_outputs or any(not is_fp16(c) for c in consumers.get(out, [])):
                counter += 1
                new_nodes.append(helper.make_node("Cast", [twin], [out], name=f"{node.name}_cast_out_{counter}", to=TensorProto.FLOAT))
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    m.graph.initializer.extend(new_inits)
    # Drop initializers only FP16 nodes used (their FP16 twins replace them).
    used = {i for n in m.graph.node for i in n.input}
    keep_inits = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep_inits)
    # Stale shape/type annotations of renamed tensors would contradict the new types.
    del m.graph.value_info[:]
    return m, skipped

"""The QDQ ONNX graph of a fine-tuned (fake-quantized) PyTorch model, for ONNX Runtime.

Split from qat.py (training) because it is graph surgery on ONNX, not training: the frozen
model is exported by torch's legacy exporter, its weight quantizers are folded into int8
initializers, and each quantized ReLU6/ReLU is folded into the quantizer before it.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from quantstudio.core.engines.pytorch.runner import quiet


def qdq_onnx(frozen, example: tuple, *, fold_clips: bool = True):
    """The frozen fake-quantized model as a QDQ ONNX graph (legacy exporter, opset 17).

    Weight QuantizeLinear nodes are folded into int8 initializers (what ONNX Runtime's own
    QDQ quantizer writes, so its QLinearConv fusion applies and the file is INT8-sized).
    With ``fold_clips`` (asymmetric activations only) every quantized ReLU6/ReLU is folded
    into the quantizer before it: :func:`fold_clipped_activations`."""
    import onnx
    import torch

    from quantstudio.core.engines.ort.export import INPUT_NAME, OPSET, OUTPUT_NAME

    buf = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(frozen.eval(), example, buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = fold_weight_quantizers(onnx.load_from_string(buf.getvalue()))
    return fold_clipped_activations(model) if fold_clips else model


def fold_weight_quantizers(model):
    """Replace QuantizeLinear(float initializer) by the quantized initializer itself."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {}
    for node in graph.node:  # Constant nodes feed scales/zero points in the legacy exporter
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)

    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def value(name):
        name = alias.get(name, name)
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    # Per-tensor scales and zero points as scalars (the exporter writes shape [1]; ONNX
    # Runtime's QLinear* kernels refuse anything but a scalar there).
    scalars: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i in range(1, len(node.input)):
            v = value(node.input[i])
            if v is not None and v.ndim == 1 and v.size == 1:
                if node.input[i] not in scalars:  # a copy, so no other reader of the [1] tensor changes
                    name = node.input[i] + "_scalar"
                    graph.initializer.append(numpy_helper.from_array(v.reshape(()), name))
                    inits[name] = graph.initializer[-1]
                    scalars[node.input[i]] = name
                node.input[i] = scalars[node.input[i]]
    keep, replaced = [], {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:
            w, scale, zp = value(node.input[0]), value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None
            if w is not None and scale is not None and zp is not None:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * w.ndim
                if np.ndim(scale) == 1 and w.ndim > 0 and scale.size > 1:
                    shape[axis] = -1
                s = np.reshape(scale, shape) if np.ndim(scale) else scale
                z = np.reshape(zp, shape).astype(np.int32) if np.ndim(zp) else np.int32(zp)
                info = np.iinfo(zp.dtype)
                # x * (1/scale) in float32, as torch's fake-quant kernel rounds (w / s differs at ties)
                inv = np.float32(1.0) / np.asarray(s, np.float32)
                q = np.clip(np.rint(np.asarray(w, np.float32) * inv) + z, info.min, info.max).astype(zp.dtype)
                name = node.output[0] + "_int8"
                graph.initializer.append(numpy_helper.from_array(q, name))
                replaced[node.output[0]] = name
                continue
        keep.append(node)
    for node in keep:
        for i, inp in enumerate(node.input):
            if inp in replaced:
                node.input[i] = replaced[inp]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    alive = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)
    return model


def clipped_qparams(scale: float, zero_point: int, lo: float, hi: float, qmin: int, qmax: int) -> tuple[np.float32, int]:
    """Asymmetric qparams for the range a Clip(lo, hi) leaves of the grid (scale, zero_point).

    The clipped range [max(lo, grid min), min(hi, grid max)], widened to hold 0 (the zero
    point must be exact), spread over qmin..qmax; the scale is rounded down (float32) so
    that the grid's saturation points lie inside [lo, hi]: quantizing then *is* the clip."""
    lo_c = min(max(lo, scale * (qmin - zero_point)), 0.0)
    hi_c = max(min(hi, scale * (qmax - zero_point)), 0.0)
    if hi_c <= lo_c:
        raise ValueError("empty clipped range")
    z = int(np.clip(np.rint(qmin - lo_c * (qmax - qmin) / (hi_c - lo_c)), qmin, qmax))
    s = min(hi_c / (qmax - z) if qmax > z else math.inf, -lo_c / (z - qmin) if z > qmin else math.inf)
    s32 = np.float32(s)
    while s32 > 0 and (np.float32(s32 * np.float32(qmax - z)) > hi or np.float32(s32 * np.float32(qmin - z)) < lo):
        s32 = np.nextafter(s32, np.float32(0))
    return s32, z


def fold_clipped_activations(model: Any) -> Any:
    """Fold ``X → Q(s,z) → DQ → Clip(lo,hi) → Q → DQ`` into ``X → Q(s',z') → DQ`` (Relu: lo = 0).

    torch's x86 FX config makes ReLU6 share its input's quantizer, so the conv output is
    quantized on the grid of its whole range (negatives included), clipped, and quantized
    again: ONNX Runtime fuses neither the Clip nor the second pair into QLinearConv. This
    does what ONNX Runtime's own QDQ quantizer does for Conv→Relu/Clip (``QDQRemovableActivation``,
    asymmetric activations only): the conv output takes the clipped range, the Clip goes.
    Written here, not with onnxruntime.quantization, because that works on float graphs
    with calibration ranges, not on a QDQ graph with trained qparams.

    Values: DQ(Q'(x)) lies in [lo, hi] (Q saturates at the clipped range's ends), so it is
    x clipped and rounded to a grid at least as fine as before: the graph equals the fake
    quantized model with (s', z') in that shared quantizer (:func:`clipped_qparams`)."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def value(name: str):
        name = alias.get(name, name)
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def only_reader(name: str, op: str):
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and name not in outputs else None

    def qparams(node):
        if len(node.input) < 3 or any(a.name == "axis" for a in node.attribute):
            return None
        s, z = value(node.input[1]), value(node.input[2])
        if s is None or z is None or np.size(s) != 1 or np.size(z) != 1 or z.dtype not in (np.uint8, np.int8):
            return None
        return float(np.reshape(s, ())), int(np.reshape(z, ())), z.dtype

    drop: set[int] = set()
    for act in list(graph.node):
        if act.op_type == "Relu":
            lo, hi = 0.0, math.inf
        elif act.op_type == "Clip":
            names = (list(act.input[1:3]) + ["", ""])[:2]  # min, max: optional ("" or absent = unbounded)
            bounds = [value(n) if n else np.float32(inf) for n, inf in zip(names, (-math.inf, math.inf))]
            if any(b is None or np.size(b) != 1 for b in bounds):
                continue  # bounds computed at run time
            lo, hi = (float(np.reshape(b, ())) for b in bounds)
        else:
            continue
        dq1 = producer.get(act.input[0])
        if dq1 is None or dq1.op_type != "DequantizeLinear" or only_reader(dq1.output[0], act.op_type) is not act:
            continue
        q1 = producer.get(dq1.input[0])
        if q1 is None or q1.op_type != "QuantizeLinear" or only_reader(q1.output[0], "DequantizeLinear") is not dq1:
            continue
        q2 = only_reader(act.output[0], "QuantizeLinear")
        dq2 = only_reader(q2.output[0], "DequantizeLinear") if q2 is not None else None
        if dq2 is None:
            continue
        p1, pd1 = qparams(q1), qparams(dq1)
        if p1 is None or p1 != pd1 or lo > 0 or hi < 0:
            continue  # per-channel, mismatched, or a Clip that excludes 0 (the zero point must stay exact)
        scale, zp, dtype = p1
        info = np.iinfo(dtype)
        try:
            new_s, new_z = clipped_qparams(scale, zp, lo, hi, int(info.min), int(info.max))
        except ValueError:  # the grid and [lo, hi] meet only at 0 (e.g. ReLU6 of an all-negative range): leave it
            continue
        s_name, z_name = f"{act.output[0]}_folded_scale", f"{act.output[0]}_folded_zero_point"
        for name, v in ((s_name, np.array(new_s, np.float32)), (z_name, np.array(new_z, dtype))):
            graph.initializer.append(numpy_helper.from_array(v, name))
            inits[name] = graph.initializer[-1]
        for node in (q1, dq1):
            node.input[1], node.input[2] = s_name, z_name
        dq1.output[0] = dq2.output[0]  # DQ2's readers (or the graph output) now read DQ1
        producer[dq1.output[0]] = dq1  # a second Clip after this one folds into the same quantizer
        drop.update(id(n) for n in (act, q2, dq2))
    if not drop:
        return model
    keep = [n for n in graph.node if id(n) not in drop]
    while True:  # constants and aliases nobody reads any more (the Clip bounds, Q2/DQ2's qparams)
        used = {i for n in keep for i in n.input} | outputs
        alive = [n for n in keep if n.op_type not in ("Constant", "Identity") or n.output[0] in used]
        if len(alive) == len(keep):
            break
        keep = alive
    del graph.node[:]
    graph.node.extend(keep)
    alive_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive_inits)
    onnx.checker.check_model(model)
    return model

"""Running a ``.tflite`` with LiteRT's interpreter, reading what a file holds, per-layer error.

LiteRT's Python interpreter (``ai_edge_litert.interpreter``) applies the XNNPACK delegate
by default: float and int8 ops run in XNNPACK's CPU kernels, ops it cannot take in
TFLite's builtin kernels. The converted file keeps PyTorch's NCHW input (litert_torch
puts the transposes inside), at the batch size it was converted with; the runner resizes
the input for other batch sizes (measured on ResNet-18 64×64: resizing one interpreter
gives the same logits as batch 1 up to 3e-6 and is what the benchmark's batch sizes need),
and falls back to one sample at a time where a file cannot be resized.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantstudio.core.jobs import JobContext
from quantstudio.core.metrics import ErrorAccumulator

# Ops that do the multiply-adds: what "a layer" is in the counts and per-layer figures.
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D")


def make_interpreter(data: bytes, threads: int | None = None, *, inspect: bool = False) -> Any:
    """An interpreter over ``data`` (bytes of a .tflite). ``inspect``: no delegate and every
    intermediate tensor kept, for reading layer outputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if inspect:
        return Interpreter(model_content=data, num_threads=1,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                           experimental_preserve_all_tensors=True)
    return Interpreter(model_content=data, num_threads=threads or os.cpu_count() or 1)


class TfliteRunner:
    """numpy float32 NCHW batch → numpy logits through a LiteRT interpreter."""

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        self.data = data
        self.threads = threads
        self._interp = make_interpreter(data, threads)
        self._interp.allocate_tensors()
        detail = self._interp.get_input_details()[0]
        self._in = detail["index"]
        self._in_dtype = detail["dtype"]
        self._in_q = detail.get("quantization", (0.0, 0))
        self.converted_shape = tuple(int(d) for d in detail["shape"])
        self._shape = self.converted_shape
        self._per_sample = False

    def _resize(self, shape: tuple[int, ...]) -> bool:
        try:
            self._interp.resize_tensor_input(self._in, list(shape), strict=False)
            self._interp.allocate_tensors()
            self._shape = shape
            return True
        except Exception:  # noqa: BLE001 - a file whose shapes are baked in
            self._interp.resize_tensor_input(self._in, list(self.converted_shape))
            self._interp.allocate_tensors()
            self._shape = self.converted_shape
            return False

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if self._in_dtype != np.float32:  # an int8-input file: quantize as the file says
            scale, zero = self._in_q
            info = np.iinfo(self._in_dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self._in_dtype)
        self._interp.set_tensor(self._in, x)
        self._interp.invoke()
        out = self._interp.get_output_details()[0]
        y = self._interp.get_tensor(out["index"])
        if y.dtype != np.float32:
            scale, zero = out.get("quantization", (0.0, 0))
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, dtype=np.float32, copy=True)

    def __call__(self, x: Any) -> np.ndarray:
        x = np.ascontiguousarray(getattr(x, "x", x), dtype=np.float32)
        shape = tuple(x.shape)
        if self._per_sample:
            if shape == self.converted_shape:
                return self._invoke(x)
            one = self.converted_shape[0]
            return np.concatenate([self._invoke(x[i:i + one]) for i in range(0, len(x), one)])
        if shape != self._shape and not self._resize(shape):
            self._per_sample = True
            return self(x)
        y = self._invoke(x)
        if len(y) != len(x):  # resized, but the file's reshapes kept the old batch
            self._resize(self.converted_shape)
            self._per_sample = True
            return self(x)
        return y


# --------------------------------------------------------------------------- reading files


@dataclass
class TensorInfo:
    name: str
    dtype: str  # numpy name: float32, int8, float16, int32
    shape: tuple[int, ...]
    quantization: tuple[float, int]
    scales: Any = None


@dataclass
class OpInfo:
    index: int
    op: str  # TFLite builtin name: CONV_2D, ADD, ...
    inputs: list[int]
    outputs: list[int]


@dataclass
class FileFacts:
    """What a .tflite holds: its tensors and ops in execution order."""

    tensors: dict[int, TensorInfo] = field(default_factory=dict)
    ops: list[OpInfo] = field(default_factory=list)
    delegate_partitions: int = 0  # XNNPACK partitions (1: the whole graph runs in XNNPACK)
    input_dtype: str = "float32"
    output_dtype: str = "float32"

    def producer(self) -> dict[int, OpInfo]:
        return {o: op for op in self.ops for o in op.outputs}

    def compute_precision(self, op: OpInfo) -> str:
        """int8 | fp16 | fp32 | int8 weights (dynamic) for a compute op."""
        prod = self.producer()
        act = self.tensors[op.inputs[0]].dtype if op.inputs and op.inputs[0] >= 0 else "float32"
        weight = None
        if len(op.inputs) > 1 and op.inputs[1] >= 0:
            w = self.tensors[op.inputs[1]]
            weight = w.dtype
            src = prod.get(op.inputs[1])
            if src is not None and src.op == "DEQUANTIZE" and src.inputs:
                weight = self.tensors[src.inputs[0]].dtype  # fp16 / int8 weights dequantized for float compute
        if act in ("int8", "uint8", "int16"):
            return "int8"
        if weight == "float16":
            return "fp16"
        if weight in ("int8", "uint8", "int4"):
            return "int8"  # dynamic range (or weight-only): int8 weights, float activations
        return "fp32"

    def counts(self) -> dict[str, int]:
        """Tensors by type (int8/int16/uint8 count as int8) and compute ops by precision."""
        out = {"tensors": 0, "int8_tensors": 0, "float_tensors": 0,
               "compute_int8": 0, "compute_fp16": 0, "compute_fp32": 0, "ops": len(self.ops), "float_ops": 0}
        for t in self.tensors.values():
            if t.dtype == "int32" and not t.name.startswith(("serving", )) and len(t.shape) <= 1:
                continue  # shapes, axes and int32 biases: bookkeeping, not data
            out["tensors"] += 1
            out["int8_tensors" if t.dtype in ("int8", "uint8", "int16") else "float_tensors"] += 1
        for op in self.ops:
            if op.op in COMPUTE_OPS:
                out["compute_" + self.compute_precision(op)] += 1
            elif op.op not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE") and op.outputs and \
                    self.tensors.get(op.outputs[0], TensorInfo("", "float32", (), (0.0, 0))).dtype == "float32":
                out["float_ops"] += 1
        return out


def _dtype_name(d: Any) -> str:
    return np.dtype(d).name


def read_facts(data: bytes) -> FileFacts:
    """Tensors and ops of a .tflite (read through the interpreter: no flatbuffer parser needed)."""
    interp = make_interpreter(data, inspect=True)
    facts = FileFacts()
    for t in interp.get_tensor_details():
        qp = t.get("quantization_parameters") or {}
        facts.tensors[t["index"]] = TensorInfo(t["name"], _dtype_name(t["dtype"]), tuple(int(d) for d in t["shape"]),
                                               tuple(t.get("quantization", (0.0, 0))), qp.get("scales"))
    for op in interp._get_ops_details():  # noqa: SLF001 - the only way to list ops from Python
        facts.ops.append(OpInfo(op["index"], op["op_name"], [int(i) for i in op["inputs"]], [int(o) for o in op["outputs"]]))
    facts.input_dtype = _dtype_name(interp.get_input_details()[0]["dtype"])
    facts.output_dtype = _dtype_name(interp.get_output_details()[0]["dtype"])
    try:
        live = make_interpreter(data, 1)
        live.allocate_tensors()
        facts.delegate_partitions = sum(1 for op in live._get_ops_details() if op["op_name"] == "DELEGATE")  # noqa: SLF001
    except Exception:  # noqa: BLE001 - informative only
        pass
    return facts


# --------------------------------------------------------------------------- layers ↔ tensors


def layer_regex(name: str) -> str:
    """A regex over TFLite tensor names that matches the tensors layer ``name`` produced.

    litert_torch names a tensor after the module stack that made it, one segment per module:
    ``pkg.Net/torch.nn.modules.container.Sequential_layer1/…BasicBlock_0/…Conv2d_conv1``;
    a fused op lists every location, separated by ``;;``, and repeats get ``;N``. So the
    layer ``layer1.0.conv1`` is the chain of segments ending ``_layer1``, ``_0``, ``_conv1``.
    """
    parts = name.split(".")
    body = "".join(f"/[^/;]*_{re.escape(p)}" for p in parts)
    return f"(?:^|;)[^/;]+{body}(?=;|$)"


def layer_ops(facts: FileFacts, layers: list[str]) -> dict[str, list[OpInfo]]:
    """Ops (in execution order) that belong to each layer: by their output tensor's name, and
    for compute ops also by their weight's (the op writing the model's output has the
    output's name, ``serving_default_output_0``, not its layer's)."""
    pats = {n: re.compile(layer_regex(n)) for n in layers}
    prod = facts.producer()
    out: dict[str, list[OpInfo]] = {n: [] for n in layers}
    for op in facts.ops:
        if not op.outputs or op.op in ("QUANTIZE", "DEQUANTIZE"):
            continue
        names = [facts.tensors[op.outputs[0]].name]
        if op.op in COMPUTE_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            names.append(facts.tensors[op.inputs[1]].name)
            src = prod.get(op.inputs[1])
            if src is not None and src.op == "DEQUANTIZE" and src.inputs:
                names.append(facts.tensors[src.inputs[0]].name)
        for n, p in pats.items():
            if any(p.search(t) for t in names):
                out[n].append(op)
    return out


def recipe_regex(name: str, ops: list[OpInfo], facts: FileFacts) -> str:
    """The ai-edge-quantizer regex for layer ``name``: its module path, plus the exact scope
    (output tensor names + ";", as the quantizer builds it) of ops found by weight only."""
    base = layer_regex(name)
    extra = []
    for op in ops:
        scope = ";".join(facts.tensors[o].name for o in op.outputs if o >= 0) + ";"
        if not re.search(base, scope):
            extra.append("^" + re.escape(scope) + "$")
    return "|".join([base, *dict.fromkeys(extra)])


def layer_sqnr(fp32: bytes, quantized: bytes, layers: list[str], batches: list[np.ndarray],
               ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB): each layer's last output tensor in the quantized file vs the FP32 file.

    The quantizer keeps tensor names, so the same name is the same value in both; an int8
    tensor is dequantized with its own scale. Both files run without a delegate and keep
    every intermediate tensor, one sample at a time (the size they were converted with).
    """
    if not batches or not layers:
        return {}
    ref_facts, q_facts = read_facts(fp32), read_facts(quantized)
    ref_ops = layer_ops(ref_facts, layers)
    q_names = {t.name: i for i, t in q_facts.tensors.items()}
    pairs: dict[str, tuple[int, int]] = {}
    for layer, ops in ref_ops.items():
        compute = [op for op in ops if op.op in COMPUTE_OPS]
        if not compute:
            continue
        last = ops[-1]  # the layer's output: after a fused activation or a pad it owns
        name = ref_facts.tensors[last.outputs[0]].name
        if name in q_names:
            pairs[layer] = (last.outputs[0], q_names[name])
    if not pairs:
        return {}
    ri, qi = make_interpreter(fp32, inspect=True), make_interpreter(quantized, inspect=True)
    errors = {n: ErrorAccumulator() for n in pairs}
    for interp in (ri, qi):
        interp.allocate_tensors()
    batch1 = int(ri.get_input_details()[0]["shape"][0])

    def run(interp: Any, x: np.ndarray) -> None:
        d = interp.get_input_details()[0]
        if d["dtype"] != np.float32:
            scale, zero = d["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
        interp.invoke()

    def value(interp: Any, facts: FileFacts, index: int) -> np.ndarray:
        v = interp.get_tensor(index)
        t = facts.tensors[index]
        if v.dtype != np.float32:
            scale, zero = t.quantization
            v = (v.astype(np.float64) - zero) * (scale or 1.0)
        return np.asarray(v, dtype=np.float64)

    for batch in batches:
        x = np.ascontiguousarray(getattr(batch, "x", batch), dtype=np.float32)
        for i in range(0, len(x), batch1):
            if ctx is not None:
                ctx.check_cancelled()
            sample = x[i:i + batch1]
            if len(sample) != batch1:
                continue
            run(ri, sample)
            run(qi, sample)
            for layer, (r_idx, q_idx) in pairs.items():
                a, b = value(ri, ref_facts, r_idx), value(qi, q_facts, q_idx)
                if a.shape == b.shape:
                    errors[layer].add(a, b)
    return {n: e.sqnr_db() for n, e in errors.items() if e.signal > 0}

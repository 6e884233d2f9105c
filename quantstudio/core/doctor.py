"""The doctor: why is my INT8 model not faster?

It reads three things — the CPU's instruction sets, what the quantized model really
contains (activation/weight types, how many compute layers run integer kernels after
the engine's graph optimisation, quantize/dequantize pairs left, FP32/FP16 layers),
and the measured timings — and applies plain rules to them. The rules are pure
functions of :class:`DoctorInput`, so they are tested with made-up facts.

The classic case on x86 (DESIGN facts): ONNX Runtime's ``quantize_static`` defaults use
int8 activations ("S8S8"); the x86 integer kernels want uint8 activations with int8
weights ("U8S8"), so the S8S8 model runs its convolutions as float between
dequantize/quantize steps and is no faster, often slower, than FP32.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

INT_ELEMENTWISE = {
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
}
INT_KERNELS = INT_ELEMENTWISE | {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention",
    "FusedConvInteger",
}
FLOAT_COMPUTE = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "NchwcConv", "FusedGemm",
                 "ConvTranspose"}
# Below this many MACs per output element a layer does too little work for INT8 to pay
# for its quantize/dequantize (depthwise 3x3 convs have 9).
LOW_INTENSITY = 16


@dataclass
class CpuFeatures:
    machine: str
    flags: set[str] = field(default_factory=set)

    @property
    def is_x86(self) -> bool:
        return self.machine in ("x86_64", "AMD64", "i386", "i686")

    @property
    def is_arm(self) -> bool:
        return self.machine.startswith(("arm", "aarch64"))

    def has(self, *names: str) -> bool:
        return any(n in self.flags for n in names)

    @property
    def avx2(self) -> bool:
        return self.has("avx2")

    @property
    def avx512(self) -> bool:
        return self.has("avx512f")

    @property
    def vnni(self) -> bool:
        return self.has("avx512_vnni", "avx_vnni", "avx512vnni")

    @property
    def amx(self) -> bool:
        return self.has("amx_int8", "amx_tile")

    @property
    def neon(self) -> bool:
        return self.has("asimd", "neon")

    @property
    def dotprod(self) -> bool:
        return self.has("asimddp", "dotprod")

    def summary(self) -> str:
        if self.is_x86:
            parts = [n for n, ok in (("AVX2", self.avx2), ("AVX-512", self.avx512),
                                      ("VNNI", self.vnni), ("AMX", self.amx)) if ok]
        elif self.is_arm:
            parts = [n for n, ok in (("NEON", self.neon), ("dot-product", self.dotprod)) if ok]
        else:
            parts = []
        return f"{self.machine}: " + (", ".join(parts) if parts else "no SIMD integer extensions found")

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "summary": self.summary(), "avx2": self.avx2, "avx512": self.avx512,
                "vnni": self.vnni, "amx": self.amx, "neon": self.neon, "dotprod": self.dotprod}


def cpu_features() -> CpuFeatures:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return CpuFeatures(machine=platform.machine(), flags=flags)


@dataclass
class ModelFacts:
    """What a quantized model really contains (as the engine will run it)."""

    runtime: str  # what the file runs in: "onnx" (ONNX Runtime) | "pytorch" | "litert" (a .tflite) — a file's format, not an engine
    activation_type: str | None = None  # "uint8" | "int8" | None (no static activations)
    weight_type: str | None = None
    per_channel: bool | None = None
    int8_compute: int = 0  # compute layers running integer kernels
    float_compute: int = 0  # compute layers (conv/matmul) still running in float
    fp16_compute: int = 0
    quantize_nodes: int = 0  # QuantizeLinear / quantize_per_tensor left in the graph
    dequantize_nodes: int = 0
    low_intensity_int8: list[str] = field(default_factory=list)  # tiny INT8 layers
    total_macs: int | None = None
    float_ops: int = 0  # other ops (add, pool, ...) still computing in float (LiteRT files)
    delegate_partitions: int | None = None  # LiteRT: graph parts XNNPACK took (1: all of it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finding:
    severity: str  # "problem" | "warning" | "info"
    title: str
    detail: str
    suggestion: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def text(self) -> str:
        s = f"[{self.severity}] {self.title}: {self.detail}"
        return s + (f" Suggestion: {self.suggestion}" if self.suggestion else "")


@dataclass
class DoctorInput:
    cpu: CpuFeatures
    facts: ModelFacts
    baseline_ms: float | None = None  # FP32 p50 at ``batch``
    quantized_ms: float | None = None
    batch: int = 1
    baseline_name: str = "FP32"
    quantized_name: str = "INT8"


def diagnose(d: DoctorInput) -> list[Finding]:
    """Apply the rules; the first finding is the verdict on speed when timings are given."""
    f = d.facts
    out: list[Finding] = []
    slow = None
    if d.baseline_ms and d.quantized_ms:
        ratio = d.baseline_ms / d.quantized_ms
        slow = ratio < 1.1
        if slow:
            out.append(Finding(
                "problem",
                f"{d.quantized_name} is not faster than {d.baseline_name}",
                f"{d.quantized_ms:.2f} ms vs {d.baseline_ms:.2f} ms at batch {d.batch} "
                f"({ratio:.2f}x). The likely causes follow.",
            ))
        else:
            out.append(Finding(
                "info", f"{d.quantized_name} is {ratio:.1f}x faster than {d.baseline_name}",
                f"{d.quantized_ms:.2f} ms vs {d.baseline_ms:.2f} ms at batch {d.batch}.",
            ))

    if f.runtime == "onnx" and d.cpu.is_x86 and f.activation_type == "int8":
        out.append(Finding(
            "problem" if slow in (True, None) else "warning",
            "int8 activations on an x86 CPU",
            "The model quantizes activations to signed int8 (S8S8, ONNX Runtime's quantize_static "
            "default). ONNX Runtime's fast x86 integer kernels take uint8 activations with int8 "
            f"weights (U8S8); here {f.float_compute} compute layers still run in float between "
            f"dequantize/quantize steps and only {f.int8_compute} use integer kernels.",
            "Quantize again with uint8 activations and int8 per-channel weights (QuantStudio's "
            "default for x86), or use the PyTorch engine.",
        ))
    elif f.float_compute and f.int8_compute == 0 and (f.activation_type or f.runtime == "pytorch"):
        out.append(Finding(
            "problem",
            "no layer runs an integer kernel",
            f"All {f.float_compute} compute layers still run in float after the engine's graph "
            "optimisation, so quantization only added conversion work.",
            "Check the precision plan (are the heavy layers INT8?), or try the other engine.",
        ))

    total = f.int8_compute + f.float_compute + f.fp16_compute
    if total and f.float_compute / total >= 0.25 and f.int8_compute:
        out.append(Finding(
            "warning",
            f"{f.float_compute} of {total} compute layers run in float",
            "Every boundary between an INT8 and a float layer adds a quantize or dequantize step.",
            "Quantize more of the heavy layers, or group FP32 layers together so fewer boundaries remain.",
        ))
    if f.fp16_compute and d.cpu.is_x86 and not d.cpu.has("avx512_fp16", "amx_fp16"):
        out.append(Finding(
            "warning",
            f"{f.fp16_compute} layers run in FP16 on a CPU without native FP16 arithmetic",
            "Without AVX512-FP16/AMX-FP16 the CPU converts FP16 to FP32 for each layer; FP16 "
            "halves the file size but is usually slower than FP32 here.",
            "Use INT8 or FP32 for speed on this CPU; keep FP16 for GPUs or size.",
        ))
    if f.low_intensity_int8:
        names = ", ".join(f.low_intensity_int8[:6]) + (" …" if len(f.low_intensity_int8) > 6 else "")
        out.append(Finding(
            "info",
            f"{len(f.low_intensity_int8)} INT8 layers do very little work",
            f"Layers such as {names} do under {LOW_INTENSITY} multiply-adds per output value; "
            "the quantize/dequantize around them can cost more than INT8 saves.",
            "Try keeping these layers FP32 and compare the latency.",
        ))
    if d.cpu.is_x86 and not d.cpu.vnni and not d.cpu.amx:
        out.append(Finding(
            "warning" if slow else "info",
            "this CPU has no VNNI",
            f"{d.cpu.summary()}. Without VNNI (AVX512-VNNI or AVX-VNNI) an INT8 dot product takes "
            "three instructions instead of one, so INT8 speed-ups are smaller.",
            "Expect larger gains on a CPU with VNNI or AMX (Intel Cascade Lake or later, AMD Zen 4).",
        ))
    if d.cpu.is_arm and not d.cpu.dotprod:
        out.append(Finding(
            "warning" if slow else "info",
            "this ARM CPU has no dot-product instructions",
            f"{d.cpu.summary()}. INT8 kernels fall back to slower NEON sequences.",
            "Use the qnnpack backend and expect modest gains.",
        ))
    if slow and d.batch == 1 and f.total_macs is not None and f.total_macs < 50_000_000:
        out.append(Finding(
            "warning",
            "the model is small for batch 1",
            f"It does {f.total_macs / 1e6:.1f} M multiply-adds per image, so per-call overhead "
            "dominates and INT8 has little to speed up.",
            "Compare at a larger batch size (e.g. 8 or 32), where INT8 kernels pay off.",
        ))
    if f.runtime == "litert":
        out.extend(_tflite_findings(f))
    if slow and f.runtime == "pytorch" and f.float_compute == 0 and f.int8_compute:
        out.append(Finding(
            "info", "try the other engine",
            "Every compute layer already runs an INT8 kernel in PyTorch.",
            "ONNX Runtime's QDQ INT8 (uint8 activations, int8 per-channel weights) is often faster on x86.",
        ))
    return out


def _tflite_findings(f: ModelFacts) -> list[Finding]:
    """LiteRT's CPU path, and what stayed float in a .tflite."""
    parts = ("in one XNNPACK partition" if f.delegate_partitions == 1 else
             f"in {f.delegate_partitions} XNNPACK partitions (ops between them run in TFLite's builtin kernels)"
             if f.delegate_partitions else "")
    out = [Finding(
        "info", "LiteRT's CPU path is XNNPACK",
        "LiteRT's interpreter hands float and int8 ops to the XNNPACK delegate (AVX2/AVX-512 on x86, NEON on ARM)"
        + (f"; this file runs {parts}" if parts else "") + f". {f.int8_compute} compute ops run int8, "
        f"{f.float_compute} float, {f.fp16_compute} with FP16 weights (dequantized to float at load time).",
    )]
    if f.int8_compute and f.activation_type and (f.float_compute or f.float_ops):  # full-integer files
        out.append(Finding(
            "warning" if f.float_compute else "info",
            "LiteRT: part of the model stayed float",
            f"{f.float_compute} compute ops and {f.float_ops} other ops compute in float; each boundary adds a "
            f"quantize/dequantize ({f.quantize_nodes} quantize, {f.dequantize_nodes} dequantize ops in the file).",
            "Keep FP32 only the layers that need it (the per-layer error shows which).",
        ))
    return out


def tflite_facts(file_facts) -> ModelFacts:
    """Facts about a .tflite from :func:`quantstudio.core.engines.tflite.runtime.read_facts`."""
    counts = file_facts.counts()
    facts = ModelFacts(runtime="litert", int8_compute=counts["compute_int8"], float_compute=counts["compute_fp32"],
                       fp16_compute=counts["compute_fp16"], float_ops=counts["float_ops"],
                       delegate_partitions=file_facts.delegate_partitions or None)
    for op in file_facts.ops:
        if op.op == "QUANTIZE":
            facts.quantize_nodes += 1
        elif op.op == "DEQUANTIZE":
            facts.dequantize_nodes += 1
    for op in file_facts.ops:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 1:
            act, weight = (file_facts.tensors[i].dtype if i >= 0 else None for i in op.inputs[:2])
            facts.activation_type = facts.activation_type or (act if act in ("int8", "int16") else None)
            facts.weight_type = facts.weight_type or (weight if weight in ("int8", "float16") else None)
    return facts


# --------------------------------------------------------------------------- reading models


def onnx_facts(model, threads: int | None = None) -> ModelFacts:
    """Facts about a (quantized) ONNX model, counted on ONNX Runtime's optimised graph.

    ONNX Runtime fuses DequantizeLinear → Conv → QuantizeLinear into QLinearConv only
    when it has an integer kernel for the types; what is left as float Conv is exactly
    the work that did not become integer, so counting the optimised graph tells which
    kernels really run.
    """
    import onnx
    import onnxruntime as ort

    facts = ModelFacts(runtime="onnx")
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3 and node.input[2] in inits:
            zp = inits[node.input[2]]
            t = "uint8" if zp.data_type == onnx.TensorProto.UINT8 else (
                "int8" if zp.data_type == onnx.TensorProto.INT8 else onnx.TensorProto.DataType.Name(zp.data_type).lower())
            facts.activation_type = facts.activation_type or t
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            w = inits[node.input[0]]
            if w.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) or len(w.dims) < 2:
                continue  # int32 biases and scalars say nothing about weight types
            facts.weight_type = facts.weight_type or ("int8" if w.data_type == onnx.TensorProto.INT8 else "uint8")
            scale = inits.get(node.input[1])
            if scale is not None:
                facts.per_channel = bool(facts.per_channel) or (len(scale.dims) > 0 and scale.dims[0] > 1)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = out_path
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or 1
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(out_path)
    fp16_inits = {i.name for i in optimized.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    for node in optimized.graph.node:
        op = node.op_type
        if op in INT_KERNELS:
            # Integer element-wise ops (QLinearAdd…) are not compute layers: don't count them.
            facts.int8_compute += op not in INT_ELEMENTWISE
        elif op in FLOAT_COMPUTE:
            if any(i in fp16_inits for i in node.input):
                facts.fp16_compute += 1
            else:
                facts.float_compute += 1
        elif op in ("QuantizeLinear", "DynamicQuantizeLinear"):
            facts.quantize_nodes += 1
        elif op == "DequantizeLinear":
            facts.dequantize_nodes += 1
    return facts


def torch_facts(module) -> ModelFacts:
    """Facts about a converted PyTorch model (FX GraphModule or eager-quantized module)."""
    import torch

    facts = ModelFacts(runtime="pytorch")
    for _, m in module.named_modules():
        mod = type(m).__module__
        name = type(m).__name__
        if mod.startswith("torch.ao.nn.quantized") and any(k in name for k in ("Conv", "Linear")):
            facts.int8_compute += 1
            facts.activation_type = facts.activation_type or (
                "int8" if "dynamic" in mod else "uint8")
            facts.weight_type = "int8"
        elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dtype == torch.float16:
                facts.fp16_compute += 1
            else:
                facts.float_compute += 1
    if isinstance(module, torch.jit.ScriptModule):
        # A frozen TorchScript export has its modules inlined: count the operators.
        for node in module.inlined_graph.nodes():
            kind = node.kind()
            if kind.startswith("quantized::") and ("conv" in kind or "linear" in kind):
                facts.int8_compute += 1
                facts.activation_type = facts.activation_type or (
                    "int8" if "dynamic" in kind else "uint8")
                facts.weight_type = "int8"
            elif kind in ("aten::conv2d", "aten::conv1d", "aten::conv3d", "aten::_convolution", "aten::linear"):
                facts.float_compute += 1
            elif kind in ("aten::quantize_per_tensor", "aten::quantize_per_channel"):
                facts.quantize_nodes += 1
            elif kind == "aten::dequantize":
                facts.dequantize_nodes += 1
        return facts
    graph = getattr(module, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):
        for node in graph.nodes:
            target = str(getattr(node, "target", ""))
            if "quantize_per_tensor" in target or "quantize_per_channel" in target:
                facts.quantize_nodes += 1
            elif target == "dequantize" or target.endswith(".dequantize"):
                facts.dequantize_nodes += 1
    return facts


def low_intensity_layers(tree, int8_names: set[str] | None = None) -> list[str]:
    """INT8 leaf layers doing fewer than LOW_INTENSITY MACs per output element."""
    import math

    out = []
    for node, _ in tree.walk():
        if node.children or not node.macs or not node.output_shape:
            continue
        if int8_names is not None and node.name not in int8_names:
            continue
        per_output = node.macs / max(1, math.prod(node.output_shape))
        if per_output < LOW_INTENSITY:
            out.append(node.name)
    return out


def model_facts(model) -> ModelFacts:
    """Facts for a loaded model of any kind (ONNX or PyTorch), with MACs and tiny INT8 layers."""
    from quantstudio.core.loading import KIND_ONNX

    facts = onnx_facts(model.onnx_model) if model.kind == KIND_ONNX else torch_facts(model.module)
    if model.kind == KIND_ONNX:
        try:
            from quantstudio.core.inventory import build_inventory

            tree = build_inventory(model)
            facts.total_macs = tree.macs
            if facts.int8_compute:
                quantized = {n.name for n, _ in tree.walk() if not n.children and n.type == "Conv"
                             and _has_dq_weight(model.onnx_model, n.onnx_nodes)}
                facts.low_intensity_int8 = low_intensity_layers(tree, quantized)
        except Exception:  # noqa: BLE001 - the doctor still speaks without the tree
            pass
    return facts


def _has_dq_weight(proto, node_names: list[str]) -> bool:
    producers = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.name in node_names and len(n.input) > 1:
            p = producers.get(n.input[1])
            return p is not None and p.op_type == "DequantizeLinear"
    return False


def check_variants(result, models: list, batch: int = 1) -> dict[str, list[Finding]]:
    """Diagnose every variant after the first (the baseline) from a benchmark result."""
    cpu = cpu_features()
    base = result.variants[0]
    out: dict[str, list[Finding]] = {}
    for v, m in zip(result.variants[1:], models[1:]):
        facts = model_facts(m)
        d = DoctorInput(
            cpu=cpu,
            facts=facts,
            baseline_ms=base.latency[batch].p50_ms if batch in base.latency else None,
            quantized_ms=v.latency[batch].p50_ms if batch in v.latency else None,
            batch=batch,
            baseline_name=base.name,
            quantized_name=v.name,
        )
        out[v.name] = diagnose(d)
    return out

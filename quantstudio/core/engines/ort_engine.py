"""The ONNX Runtime engine: QDQ INT8, dynamic INT8, FP16 and mixed plans for any model.

PyTorch models are first exported to ONNX (TorchScript-based exporter, opset 17, with
``TrainingMode.PRESERVE`` so BatchNormalization nodes keep their names and every ONNX
node maps back to a layer of the tree). The model then goes through ONNX Runtime's
pre-processing (symbolic shape inference + basic graph optimisation), static QDQ
quantization with the data types that are fast on this CPU, and FP16 conversion of the
layers the plan puts in FP16. Everything intermediate lives in a temporary folder that
is removed whatever happens, cancellation included.

Types (DESIGN "Facts measured here"): on x86, ``quantize_static``'s default int8
activations ("S8S8") run no faster than FP32; uint8 activations with int8 per-channel
weights ("U8S8") run 2.5-6x faster, so x86 gets U8S8. ARM gets S8S8 (what ORT
recommends there).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.plan import Precision, PrecisionPlan

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
PERCENTILE = 99.99
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
# Dynamic INT8: only ops ONNX Runtime runs faster that way. ConvInteger is slower than
# FP32 Conv on CPUs, so Conv is left to static INT8.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "Gather"]


@contextlib.contextmanager
def quiet():
    """ORT's quantizer logs advice and torch.onnx warns; neither is for the user."""
    loggers = [logging.getLogger(n) for n in ("root", "onnxruntime", "onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def cpu_target(backend: str) -> str:
    """'x86' or 'arm' for the activation/weight types."""
    if backend == "qnnpack":
        return "arm"
    if backend == "x86":
        return "x86"
    machine = platform.machine().lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def cpu_has_vnni() -> bool:
    from quantstudio.core.doctor import cpu_features

    cpu = cpu_features()
    if not cpu.flags:
        return True  # unknown: assume a recent CPU
    return cpu.vnni or cpu.amx


def make_session(model: Any, threads: int | None = None):
    """An InferenceSession on the CPU with ``threads`` intra-op threads (default: cores)."""
    from quantstudio.core.benchmark import make_ort_session

    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return make_ort_session(data, threads)


class OrtRunner:
    """numpy batch → numpy logits through an ONNX Runtime session."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x):
        x = np.ascontiguousarray(getattr(x, "x", x), dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


# --------------------------------------------------------------------------- export


def torch_to_onnx(model: Any, path: Path | None = None):
    """Export a loaded PyTorch model to ONNX (dynamic batch); returns the ModelProto."""
    import onnx
    import torch

    from quantstudio.core.engines.torch_engine import refuse_value_dependent_trace

    example = model.example_input()
    module = model.module
    buf = io.BytesIO()
    # nn.MultiheadAttention takes a fused "fast path" (aten::_native_multi_head_attention,
    # which has no ONNX form) in eval mode without grad; export the plain path.
    fastpath = getattr(torch.backends, "mha", None)
    was_fast = fastpath.get_fastpath_enabled() if fastpath is not None else None
    try:
        if fastpath is not None:
            fastpath.set_fastpath_enabled(False)
        with quiet(), refuse_value_dependent_trace(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                buf if path is None else str(path),
                dynamo=False,
                opset_version=OPSET,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except InputError:
        raise  # a forward that branches on tensor values (refuse_value_dependent_trace)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the model could not be exported to ONNX: {first[:300]}",
            path=model.path,
            hint="Export it to ONNX yourself (torch.onnx.export) and open the .onnx file.",
            details=str(exc)[-4000:],
        ) from exc
    finally:
        if fastpath is not None:
            fastpath.set_fastpath_enabled(was_fast)
    return onnx.load_from_string(buf.getvalue()) if path is None else onnx.load(str(path))


def float_onnx(model: Any):
    """The FP32 ONNX form of any loaded model."""
    if model.kind == "onnx":
        return model.onnx_model
    return torch_to_onnx(model)


# --------------------------------------------------------------------------- plan → nodes

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


def _rule_precision(plan: PrecisionPlan, candidates) -> tuple[Precision, Any]:
    """The plan's precision for a node known by several (name, type) pairs, and the rule
    that set it (None: the default); later rules win, as in :meth:`PrecisionPlan.precision_for`."""
    precision, source = plan.default, None
    for rule in plan.rules:
        if any(rule.matches(name, type_name) for name, type_name in candidates):
            precision, source = rule.precision, rule
    return precision, source


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
        precision, _ = _rule_precision(plan, origin.candidates)
        if precision is Precision.INT8 and not origin.quantizable:
            precision = Precision.FP32
        out[node] = (precision, origin.layer)
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
        precision, rule = _rule_precision(plan, ((leaf.name, leaf.type),))
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
            weighted.setdefault(layer, []).append(max(found, key=_WIDTH.get))
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
        out[layer] = (max(seen, key=_WIDTH.get) if seen else planned).value
    return out


# --------------------------------------------------------------------------- calibration


class _Reader:
    """ONNX Runtime's CalibrationDataReader interface over ``get_next`` (also iterable)."""

    def get_next(self):  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def rewind(self):  # part of ORT's reader interface; calibration reads once
        pass

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


class ProgressReader(_Reader):
    """A CalibrationDataReader that reports progress and honours cancellation."""

    def __init__(self, batches: Iterable[Any], input_name: str, ctx: JobContext, lo: float, hi: float,
                 label: str = "calibrating") -> None:
        self._it: Iterator[Any] = iter(batches)
        self.label = label
        self.total = len(batches) if hasattr(batches, "__len__") else None
        self.input_name = input_name
        self.ctx = ctx
        self.lo, self.hi = lo, hi
        self.count = 0

    def get_next(self):
        self.ctx.check_cancelled()
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += 1
        frac = self.count / self.total if self.total else 1 - 1 / (self.count + 1)
        self.ctx.report(self.lo + (self.hi - self.lo) * min(frac, 1.0),
                        f"{self.label}: batch {self.count}" + (f"/{self.total}" if self.total else ""))
        x = np.ascontiguousarray(getattr(batch, "x", batch), dtype=np.float32)
        return {self.input_name: x}



# --------------------------------------------------------------------------- ORT's tools, out of process

# ONNX Runtime's pre-processing and quantizers are Python loops over small numpy and
# protobuf calls, many of which release the GIL for a few microseconds and take it
# straight back. CPython wakes a waiting thread at each release, the releasing thread
# wins the GIL back before the woken one runs, and the woken thread starts its wait
# over without ever asking for a switch: in the app the GUI thread got no turn for
# 100-700 ms at a time, whatever sys.setswitchinterval says. The tools read and write
# files only, so they run in a helper process started through the app's own entry
# point (quantstudio.core.child; about 0.4 s to start), a bundled app included. Only
# where no process can be started at all do they run in this one.


class ToolFailed(Exception):
    """ONNX Runtime's tool raised: ``str()`` is its message, ``details`` its traceback."""

    def __init__(self, message: str, kind: str = "Exception", details: str = "", signal: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details
        self.signal = signal  # the signal that killed the child ("Crash"), else 0


def run_ort_tool(job: dict[str, Any], ctx: JobContext, message: str | None = None, fraction: float = 0.0,
                 until: float | None = None) -> None:
    """Run one of ONNX Runtime's tools (see :func:`_run_tool`) in a helper process
    (:mod:`quantstudio.core.child`; in this process only where none can be started).

    Reports ``message`` at ``fraction`` first (when given) and honours cancel (the child
    is killed). A static job with ``until`` also reports calibration progress from the
    child (batches read, of ``job["batches"]``) between ``fraction`` and ``until``.
    Raises :class:`ToolFailed` when the tool fails.
    """
    if message:
        ctx.report(fraction, message)
    workdir = Path(job["dst"]).parent
    job_path = workdir / f"{job['tool']}-job.json"
    result_path = workdir / f"{job['tool']}-result.json"
    job = {**job, "result": str(result_path)}
    progress_path = workdir / f"{job['tool']}-progress.txt"
    if until is not None and job.get("batches"):
        job["progress"] = str(progress_path)
    seen = 0
    job_path.write_text(json.dumps(job))
    from quantstudio.core.child import child_command, child_env

    proc = None
    try:
        with open(workdir / f"{job['tool']}-stderr.txt", "wb") as err:
            proc = subprocess.Popen(child_command("ort-tool", str(job_path)), env=child_env(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    except OSError:  # no process can be started here at all: run the tool in this one
        proc = None
    if proc is not None:
        try:
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                ctx.check_cancelled()
                if "progress" in job:
                    seen = _report_tool_progress(progress_path, seen, job["batches"], ctx, fraction, until)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if result_path.exists():
            result = json.loads(result_path.read_text())
            if result["ok"]:
                return
            raise ToolFailed(result["error"], result["kind"], result["details"])
        stderr = (workdir / f"{job['tool']}-stderr.txt").read_text(errors="replace")[-4000:]
        if proc.returncode < 0:  # killed by a signal (a crash): running it here would crash the app
            raise ToolFailed(f"ONNX Runtime's {job['tool']} tool crashed (signal {-proc.returncode})", "Crash", stderr,
                             signal=-proc.returncode)
        # It exited without a result: the helper could not start its work (an app
        # whose entry point does not know --child, a broken install).
        raise ToolFailed(f"the helper process for ONNX Runtime's {job['tool']} tool did not start its work "
                         f"(exit code {proc.returncode})", "HelperFailed", stderr)
    if job.get("child_only"):  # a check that only means something out of process
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _run_tool(job)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - reported like the child's failures
        raise ToolFailed(str(exc), type(exc).__name__, traceback.format_exc()) from exc


def _report_tool_progress(path: Path, seen: int, total: int, ctx: JobContext, lo: float, hi: float) -> int:
    """Report the child's calibration progress when it moved; returns the batches seen."""
    try:
        done = int(path.read_text() or 0)
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return seen
    if done > seen:
        ctx.report(lo + (hi - lo) * min(done / total, 1.0),
                   f"calibrating: batch {done}/{total}" if done < total else "computing ranges and quantizing")
    return max(done, seen)


def _tool_main(job_path: str) -> int:
    """The child process: run the job, write {"ok": ...} to the job's result file."""
    # onnxruntime.tools imports torch when it can find it (2 s here) and the tools never
    # use it: a None entry makes it unfindable.
    sys.modules.setdefault("torch", None)
    job = json.loads(Path(job_path).read_text())
    # ONNX Runtime's quantizers write their own temporary files (the calibrator's
    # augmented model, 43 MB for a ResNet-18) under tempfile's folder; a cancel kills
    # this process before they are removed. Inside the job's work folder they go
    # with it.
    tempfile.tempdir = str(Path(job_path).resolve().parent)
    try:
        # Calibrators print their progress to stdout; ORT's quantizer logs advice.
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            _run_tool(job)
        result: dict[str, Any] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - everything goes back to the parent
        result = {"ok": False, "error": str(exc), "kind": type(exc).__name__, "details": traceback.format_exc()[-8000:]}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def _equal_batches(path: Path, sizes: list[int]) -> int:
    """Rewrite the calibration file at ``path`` so every batch has the same size.

    ONNX Runtime's histogram calibrators (Entropy, Percentile) stack the outputs of all
    batches into one array and fail on a last batch that is smaller ("inhomogeneous
    shape"), which happens whenever the calibration count is not a multiple of the batch
    size. Splitting every batch into chunks of the sizes' greatest common divisor keeps
    every sample and changes no statistic. Returns the number of batches in the file.
    """
    import math

    chunk = math.gcd(*sizes)
    if len(set(sizes)) <= 1:
        return len(sizes)
    fixed = path.with_name(path.stem + "-equal.npy")
    with open(path, "rb") as src, open(fixed, "wb") as dst:
        for _ in sizes:
            x = np.load(src, allow_pickle=False)
            for start in range(0, len(x), chunk):
                np.save(dst, x[start:start + chunk], allow_pickle=False)
    os.replace(fixed, path)
    return sum(size // chunk for size in sizes)


class _FileReader(_Reader):
    """Calibration batches from the file :meth:`OrtEngine._static` wrote (one np.save each)."""

    def __init__(self, path: str, input_name: str, progress: str | None = None) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed at the end of the data
        self.input_name = input_name
        self._progress = Path(progress) if progress else None  # the parent polls it (see run_ort_tool)
        self.count = 0

    def get_next(self):
        if self._f.closed:
            return None
        try:
            x = np.load(self._f, allow_pickle=False)
        except (EOFError, ValueError):
            self._f.close()
            return None
        self.count += 1
        if self._progress is not None:
            self._progress.write_text(str(self.count))
        return {self.input_name: x}



def _run_tool(job: dict[str, Any]) -> None:
    """Run one tool: "pre_process", "static" or "dynamic" (file in, file out)."""
    if job["tool"] == "pre_process":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(job["src"], job["dst"])
    elif job["tool"] == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        reader = _FileReader(job["calibration"], job["input_name"], job.get("progress"))
        cache = None
        if job["method"] == "Entropy":
            cache = Path(job["dst"]).with_name("entropy-ranges.json")
            _entropy_ranges(job["src"], reader, cache, bool(job["extra"].get("CalibTensorRangeSymmetric", False)))
            reader = None  # quantize_static reads the ranges from the cache
        quantize_static(
            job["src"],
            job["dst"],
            reader,
            calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ,
            per_channel=job["per_channel"],
            reduce_range=job["reduce_range"],
            activation_type=QuantType[job["activation_type"]],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=job["exclude"],
            calibrate_method=CalibrationMethod[job["method"]],
            extra_options=job["extra"],
        )
    elif job["tool"] == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            job["src"],
            job["dst"],
            op_types_to_quantize=DYNAMIC_OPS,
            per_channel=job["per_channel"],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=job["exclude"],
        )
    elif job["tool"] == "check":
        session = make_session(job["src"])
        if job.get("input"):
            x = np.load(job["input"], allow_pickle=False)
            session.run(None, {session.get_inputs()[0].name: x})
    else:
        raise ValueError(f"unknown tool {job['tool']!r}")


# --------------------------------------------------------------------------- entropy calibration

# Why ONNX Runtime's Entropy calibration gave min-max's model (byte-identical, same
# sha256): quantize_static builds its EntropyCalibrater with 128 histogram bins and 128
# quantized bins and passes no other counts through (its extra_options know only
# CalibTensorRangeSymmetric, CalibMovingAverage(Constant), CalibMaxIntermediateOutputs
# and CalibPercentile). The KL search tries thresholds from num_quantized_bins/2 to
# num_bins/2 bins either side of zero: with 128 and 128 that is one candidate, the whole
# [-max|x|, max|x|] histogram, which clipped to [min, max] is min-max's range. The child
# therefore builds the calibrator itself with a 2048-bin histogram (TensorRT's count and
# ORT's own Percentile default) and 128 quantized bins, and hands quantize_static the
# ranges through its calibration cache.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, lo: Any, hi: Any, num_quantized_bins: int) -> tuple[Any, Any]:
    """ONNX Runtime 1.32's ``HistogramCollector.get_entropy_threshold``, vectorised.

    The same candidates, the same integer truncation of the expanded distribution and
    the same float rounding of each KL divergence, so it picks the same threshold
    (tests compare the two). ORT's version merges bins in Python loops: 0.4 s per tensor
    at 2048 bins here, ~1 min for a MobileNetV2; this one takes a few milliseconds.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    dtype = edges.dtype
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    total = cumulative[-1]
    best, best_div = None, np.inf
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.astype(np.int64, copy=True)
        p[0] += cumulative[start]
        p[-1] += total - cumulative[end]
        nonzero = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        norm = nonzero[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        level = np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(level, merged)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        div = np.inf if ps is None or qs is None else float(np.array(entropy(ps, qs), dtype=dtype))
        if best is None or div < best_div:  # the first of equal minima, as np.argmin
            best, best_div = (edges[start], edges[end]), div
    low, high = best
    if low < lo:
        low = lo
    if high > hi:
        high = hi
    return low, high


def _entropy_collector(symmetric: bool):
    """ORT's histogram collector with :func:`entropy_threshold` for its KL search."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class EntropyCollector(HistogramCollector):
        def get_entropy_threshold(self, histogram, num_quantized_bins):
            return entropy_threshold(histogram[0], histogram[1], histogram[2], histogram[3], num_quantized_bins)

    return EntropyCollector(method="entropy", symmetric=symmetric, num_bins=ENTROPY_BINS,
                            num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=PERCENTILE, scenario="same")


def _entropy_ranges(src: str, reader: Any, cache: Path, symmetric: bool) -> None:
    """Calibrate ``src`` with ORT's EntropyCalibrater (2048 bins) and write the ranges to
    ``cache``, the calibration cache quantize_static reads (same tensors it would calibrate)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        Path(src),
        list(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates
        augmented_model_path=str(cache.with_name("augmented_model.onnx")),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"symmetric": symmetric, "num_bins": ENTROPY_BINS,
                       "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collector = _entropy_collector(symmetric)
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator


def sample_input(model: Any, input_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """A float32 batch for ``model``'s only input: its fixed dimensions, ``input_shape``'s
    (else 1) for symbolic ones. None when the model takes several inputs, a non-float
    one or one of unknown rank (a check then only creates the session)."""
    from onnx import TensorProto

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    dims = list(inputs[0].type.tensor_type.shape.dim)
    if not dims:
        return None
    shape = list(input_shape) if input_shape and len(input_shape) == len(dims) else [1] * len(dims)
    sizes = [int(d.dim_value) if d.HasField("dim_value") else int(v) for d, v in zip(dims, shape)]
    return np.random.default_rng(0).standard_normal(sizes, dtype=np.float32)


def check_in_child(model: Any, workdir: Path, ctx: JobContext, sample: np.ndarray | None = None,
                   hint: str = "Keep more layers in FP32, or try another mode.", path: Any = None) -> None:
    """Create an ONNX Runtime session for ``model`` and run ``sample`` in a child process.

    ONNX Runtime can die natively on a graph it accepts (a segfault in a graph
    optimizer); in this process that would end the app with it. A crash becomes an
    :class:`InputError` naming the signal; a Python-level failure one with ONNX Runtime's
    message. Costs one child start (~0.4 s) and one batch; where no process can be
    started at all it checks nothing.
    """
    import signal

    import onnx

    src = workdir / "check.onnx"
    onnx.save(model, str(src))
    job: dict[str, Any] = {"tool": "check", "src": str(src), "dst": str(workdir / "check.done"), "child_only": True}
    if sample is not None:
        np.save(workdir / "check-input.npy", sample, allow_pickle=False)
        job["input"] = str(workdir / "check-input.npy")
    try:
        run_ort_tool(job, ctx)
    except ToolFailed as exc:
        if exc.kind == "Crash":
            try:
                name = signal.Signals(exc.signal).name
            except ValueError:
                name = f"signal {exc.signal}"
            raise InputError(
                f"ONNX Runtime crashed ({name}) creating a session for the quantized model "
                "(in a separate process: nothing else was affected)",
                path=path,
                hint=hint,
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind
        raise InputError(
            f"ONNX Runtime cannot run the quantized model: {first}",
            path=path,
            hint=hint,
            details=(str(exc) + "\n\n" + exc.details)[-4000:],
        ) from exc
    finally:
        src.unlink(missing_ok=True)


def _crash_hint(mode: str, fp16_nodes: set[str]) -> str:
    if fp16_nodes:
        other = "static or dynamic INT8" if mode == "fp16" else "fewer FP16 layers"
        return ("Keep the layers ONNX Runtime cannot run in FP16 in FP32 (--precision 'NAME=fp32' sets a layer "
                f"or a whole block, e.g. an attention module), or use {other}.")
    return "Keep the failing layers in FP32 (--precision 'PATTERN=fp32'), or try another mode."


# --------------------------------------------------------------------------- FP16


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


def _gemm_to_matmul(model, keep: set[str] = frozenset()) -> Any:
    """Gemm (Linear layers) → MatMul + Add, so dynamic INT8 (MatMulInteger) covers them.

    Nodes in ``keep`` (the plan's float layers) stay Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.name not in keep
            and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and node.input[1] in inits
        ):
            w = numpy_helper.to_array(inits[node.input[1]])
            if attrs.get("transB", 0):
                w = w.T
            wname = f"{node.input[1]}__matmul"
            m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
            if len(node.input) > 2 and node.input[2]:
                mid = f"{node.output[0]}__matmul"
                nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mid], name=node.name))
                nodes.append(helper.make_node("Add", [mid, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
            else:
                nodes.append(helper.make_node("MatMul", [node.input[0], wname], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m


# --------------------------------------------------------------------------- engine


class OrtEngine:
    """Static (QDQ) / dynamic INT8, FP16 and mixed plans with ONNX Runtime."""

    name = "onnxruntime"

    def quantize(
        self,
        model: Any,
        plan: PrecisionPlan,
        config: QuantConfig,
        calib_batches: Iterable[Any],
        ctx: JobContext,
    ) -> QuantizedModel:
        import onnx

        from quantstudio.core.inventory import build_inventory, onnx_inventory

        ctx.partial({"type": "stage", "name": "prepare"})
        ctx.check_cancelled()
        notes: list[str] = []
        if model.kind != "onnx":
            ctx.report(0.0, "exporting to ONNX")
            fp32 = torch_to_onnx(model)
            torch_tree = build_inventory(model)
            notes.append(f"exported to ONNX (opset {OPSET}) from the {model.kind_label}")
        else:
            fp32 = model.onnx_model
            torch_tree = None
        ctx.check_cancelled()
        onnx_tree = onnx_inventory(fp32, model.input_shape)
        origins = onnx_node_origins(onnx_tree, torch_tree, fp32)
        node_plan = plan_node_precisions(plan, onnx_tree, torch_tree, fp32, origins=origins)
        notes.extend(plan_coverage_notes(plan, origins, torch_tree))
        if config.mode == "fp16":
            # fp16 mode: everything the plan leaves INT8 runs FP16.
            node_plan = {k: (Precision.FP16 if p is Precision.INT8 else p, n) for k, (p, n) in node_plan.items()}
        int8_nodes = {k for k, (p, _) in node_plan.items() if p is Precision.INT8}
        fp16_nodes = {k for k, (p, _) in node_plan.items() if p is Precision.FP16}
        excluded = sorted(k for k, (p, _) in node_plan.items() if p is not Precision.INT8)
        inits = {i.name for i in fp32.graph.initializer}
        input_name = next(i.name for i in fp32.graph.input if i.name not in inits)

        target = cpu_target(config.backend)
        with tempfile.TemporaryDirectory(prefix="quantstudio-ort-") as tmp, quiet():
            tmpdir = Path(tmp)
            src = tmpdir / "fp32.onnx"
            onnx.save(fp32, str(src))
            pre = tmpdir / "pre.onnx"
            ctx.report(0.03, "ONNX Runtime pre-processing (shape inference, optimisation)")
            try:
                run_ort_tool({"tool": "pre_process", "src": str(src), "dst": str(pre)}, ctx)
            except ToolFailed as exc:  # some graphs defeat symbolic shape inference
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.kind
                notes.append(f"ONNX Runtime pre-processing skipped ({first})")
                pre = src
            ctx.check_cancelled()
            out = tmpdir / "quantized.onnx"
            if config.mode == "static" and int8_nodes:
                self._static(pre, out, config, target, excluded, calib_batches, input_name, ctx, notes)
            elif config.mode == "dynamic" and int8_nodes:
                self._dynamic(pre, out, config, target, excluded, ctx, notes)
            else:
                out = pre
                if config.mode != "fp16":
                    notes.append("the plan leaves no layer INT8")
            ctx.check_cancelled()
            ctx.partial({"type": "stage", "name": "convert"})
            quantized = onnx.load(str(out))
            reference = onnx.load(str(pre))
            if fp16_nodes:
                ctx.report(0.93, f"converting {len(fp16_nodes)} nodes to FP16")
                quantized, skipped = convert_nodes_to_fp16(quantized, fp16_nodes)
                for reason in dict.fromkeys(skipped.values()):
                    names = [n for n, r in skipped.items() if r == reason]
                    notes.append(f"{len(names)} {'nodes stay' if len(names) != 1 else 'node stays'} FP32: {reason} "
                                 f"({', '.join(names[:3])}{'…' if len(names) > 3 else ''})")
            ctx.check_cancelled()
            # A graph ONNX Runtime crashes on (a segfault in its optimizer or a kernel)
            # would take the whole app down: create the session in a child first.
            ctx.report(0.95, "checking the model in a separate process")
            check_in_child(quantized, tmpdir, ctx, sample_input(quantized, model.input_shape),
                           hint=_crash_hint(config.mode, fp16_nodes), path=model.path)
        ctx.report(0.97, "creating the ONNX Runtime session")
        try:
            session = make_session(quantized)
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                "ONNX Runtime cannot run the quantized model",
                path=model.path,
                hint="Keep the layers named in the details in FP32, or try another mode.",
                details=str(exc)[-4000:],
            ) from exc
        built = built_layer_precisions(quantized, node_plan)
        present = {n.name: n.op_type for n in quantized.graph.node}
        ctx.report(1.0, "quantized")
        result = QuantizedModel(
            engine=self.name,
            config=config,
            runner=OrtRunner(session),
            layer_precisions=built,
            fused=_ort_fusions(onnx_tree, present, reference),
            notes=notes,
            artifact=quantized,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
            reference_artifact=reference,
            node_layers={k: n for k, (_, n) in node_plan.items()},
        )
        return result

    # ------------------------------------------------------------------ static
    def _static(self, pre, out, config, target, excluded, calib_batches, input_name, ctx, notes) -> None:
        ctx.partial({"type": "stage", "name": "calibrate"})
        if target == "x86":
            act, act_name = "QUInt8", "uint8"
            why = "x86: uint8 activations + int8 weights (U8S8) are ONNX Runtime's fast integer path on x86; int8 activations (S8S8) run no faster than FP32 on x86"
        else:
            act, act_name = "QInt8", "int8"
            why = "ARM: int8 activations + int8 weights (S8S8), what ONNX Runtime recommends there"
        reduce_range = target == "x86" and not cpu_has_vnni()
        if reduce_range:
            why += "; 7-bit weights (reduce_range) because this CPU has no VNNI and 8-bit U8S8 could saturate"
        method = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[config.calibration]
        extra = {"ActivationSymmetric": bool(config.symmetric_activations), "WeightSymmetric": True}
        if config.calibration == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        notes.append(
            f"QDQ INT8, activations {act_name}, weights int8 "
            f"{'per-channel' if config.per_channel else 'per-tensor'}, {config.calibration} calibration ({why})"
        )
        # The batches are read here (progress, cancel) into one file the tool reads back.
        reader = ProgressReader(calib_batches, input_name, ctx, 0.05, 0.3, label="reading calibration data")
        calibration = Path(out).with_name("calibration.npy")
        sizes: list[int] = []
        with open(calibration, "wb") as f:
            for item in reader:
                np.save(f, item[input_name], allow_pickle=False)
                sizes.append(len(item[input_name]))
        if reader.count == 0:
            raise InputError("there is no calibration data", hint="Choose data with at least one sample.")
        batches = _equal_batches(calibration, sizes)
        job = {
            "tool": "static", "src": str(pre), "dst": str(out), "calibration": str(calibration),
            "input_name": input_name, "per_channel": bool(config.per_channel), "reduce_range": reduce_range,
            "activation_type": act, "exclude": list(excluded), "method": method, "extra": extra,
            "batches": batches,
        }
        try:
            run_ort_tool(job, ctx, f"calibrating on {batches} batch{'es' if batches != 1 else ''}", 0.3, until=0.85)
        except ToolFailed as exc:
            raise InputError(
                f"ONNX Runtime could not quantize this model: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind}",
                hint="Keep the failing layers in FP32 or use dynamic INT8.",
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc

    # ------------------------------------------------------------------ dynamic
    def _dynamic(self, pre, out, config, target, excluded, ctx, notes) -> None:
        import onnx

        ctx.report(0.3, "quantizing weights (dynamic INT8)")
        prepared = _gemm_to_matmul(onnx.load(str(pre)), set(excluded))
        mm = Path(out).with_name("matmul.onnx")
        onnx.save(prepared, str(mm))
        ops = [n.op_type for n in prepared.graph.node if n.name not in set(excluded)]
        if not any(op in DYNAMIC_OPS for op in ops):
            notes.append("dynamic INT8 quantizes MatMul/Gemm/LSTM/Attention only and the plan leaves none INT8; use static INT8 for conv layers")
        job = {
            "tool": "dynamic", "src": str(mm), "dst": str(out), "per_channel": bool(config.per_channel),
            # ORT's dynamic quantizer turns a Gemm it meets into "<name>_MatMul" +
            # "<name>_Add" before it checks exclusions: exclude those names too.
            "exclude": list(excluded) + [f"{n}_MatMul" for n in excluded],
        }
        try:
            run_ort_tool(job, ctx)
        except ToolFailed as exc:
            raise InputError(
                f"ONNX Runtime could not quantize this model dynamically: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind}",
                hint="Use static INT8 or keep the failing layers in FP32.",
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc
        notes.append("dynamic INT8: MatMul/Gemm/LSTM weights int8, activations quantized at run time; Conv layers stay FP32 (ConvInteger is slower than FP32 on CPUs)")

    # ------------------------------------------------------------------ export
    def export(self, result: QuantizedModel, path: Path, ctx: JobContext, samples: np.ndarray | None = None):
        from quantstudio.core.export import export_model

        return export_model(result, path, samples=samples, ctx=ctx)


def _ort_fusions(onnx_tree, present: dict[str, str], pre_model) -> list[list[str]]:
    """Layers ORT's pre-processing folded away (BatchNormalization into the Conv before it)."""
    pre_nodes = {n.name for n in pre_model.graph.node}
    groups: list[list[str]] = []

    def visit(node) -> None:
        kids = [c for c in node.children if not c.children]
        for a, b in zip(kids, kids[1:]):
            if b.type == "BatchNormalization" and a.type in ("Conv", "ConvTranspose", "Gemm"):
                if all(n not in pre_nodes for n in b.onnx_nodes) and any(n in pre_nodes for n in a.onnx_nodes):
                    groups.append([a.name, b.name])
        for c in node.children:
            if c.children:
                visit(c)

    visit(onnx_tree)
    return groups


def ort_layer_sqnr(result: QuantizedModel, batches: list[np.ndarray], ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB) of an ORT result: each Conv/Gemm/MatMul output, quantized vs FP32.

    Both models get the node outputs as extra graph outputs (on copies); the quantized
    node keeps its name and output tensor in the QDQ graph, so the two line up.
    """
    import onnx

    ref = result.reference_artifact
    layers = result.node_layers
    if ref is None or not batches:
        return {}
    quant = result.artifact
    compute = ("Conv", "Gemm", "MatMul", "ConvTranspose")
    q_out = {n.name: n.output[0] for n in quant.graph.node if n.output and n.op_type in compute}
    q_tensors = {o for n in quant.graph.node for o in n.output}
    # (node, FP32 tensor, quantized tensor): the output of the same-named node in each
    # graph. Names may differ (the QDQ quantizer drops a Relu after a Conv and renames
    # the Conv's output; FP16 nodes write a "__fp16" twin); values are the same thing.
    # Dynamic INT8 replaces the node (MatMulInteger and rescaling) but writes the same
    # output tensor.
    pairs = []
    for node in ref.graph.node:
        if node.op_type not in compute or not node.output:
            continue
        tensor = node.output[0]
        if node.name in q_out:
            pairs.append((node.name, tensor, q_out[node.name]))
        elif tensor in q_tensors:
            pairs.append((node.name, tensor, tensor))
        elif tensor + FP16_SUFFIX in q_tensors:
            pairs.append((node.name, tensor, tensor + FP16_SUFFIX))
    if not pairs:
        return {}

    def with_outputs(model, names):
        from onnx import helper

        m = onnx.ModelProto()
        m.CopyFrom(model)
        existing = {o.name for o in m.graph.output}
        for name in names:
            if name not in existing:
                m.graph.output.append(helper.make_empty_tensor_value_info(name))
        return m

    try:
        s_ref = make_session(with_outputs(ref, [p[1] for p in pairs]))
        s_q = make_session(with_outputs(quant, [p[2] for p in pairs]))
    except Exception:  # noqa: BLE001 - an odd graph: no per-layer view, not a failure
        return {}
    ref_names = [o.name for o in s_ref.get_outputs()]
    q_names = [o.name for o in s_q.get_outputs()]
    signal = {p[0]: 0.0 for p in pairs}
    noise = {p[0]: 0.0 for p in pairs}
    for x in batches:
        if ctx is not None:
            ctx.check_cancelled()
        x = np.ascontiguousarray(getattr(x, "x", x), dtype=np.float32)
        r = dict(zip(ref_names, s_ref.run(None, {s_ref.get_inputs()[0].name: x})))
        q = dict(zip(q_names, s_q.run(None, {s_q.get_inputs()[0].name: x})))
        for node, tensor, q_tensor in pairs:
            if tensor in r and q_tensor in q and r[tensor].shape == q[q_tensor].shape:
                a = r[tensor].astype(np.float64)
                b = q[q_tensor].astype(np.float64)
                signal[node] += float(np.sum(a * a))
                noise[node] += float(np.sum((a - b) ** 2))
    out: dict[str, float] = {}
    # Pairs are in graph order: a layer of several products (MultiheadAttention: its
    # in-projection, then the two attention MatMuls) reports its last, its output.
    for node, _, _ in pairs:
        if signal[node] == 0:
            continue
        db = float("inf") if noise[node] == 0 else 10 * np.log10(signal[node] / noise[node])
        out[layers.get(node, node)] = db
    return out

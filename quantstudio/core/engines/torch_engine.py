"""The PyTorch engine: ``torch.ao.quantization`` FX graph mode for eager models.

* **static** INT8: ``prepare_fx`` (which also fuses conv+bn(+relu), linear+relu, ...)
  with a per-layer ``QConfigMapping`` built from the precision plan, a calibration loop,
  ``convert_fx``. FP32 layers get qconfig ``None``; FP16 layers stay float in the FX
  model and then run in half precision, with casts in its graph (see
  :func:`run_fp16_in_graph`).
* **dynamic** INT8: ``quantize_dynamic`` of the Linear/LSTM/GRU layers the plan leaves
  INT8 (activations are quantized at run time, so no calibration).
* **fp16**: every layer the plan leaves INT8 runs in half precision instead (module
  hooks cast at the boundaries, see :func:`run_in_half`).

Only eager modules (state_dicts, trusted pickles) can be traced by FX; TorchScript and
``torch.export`` programs go to the ONNX Runtime engine. ``torch.ao.quantization`` warns
that it is deprecated in torch 2.14; the user cannot act on that, so the engine silences
it. The export is a traced and frozen TorchScript archive (DESIGN: ``torch.save`` of a
converted FX model does not load back in torch 2.14).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.plan import Precision, PrecisionPlan

# Layer types quantize_dynamic turns into INT8 (weights INT8, activations at run time).
DYNAMIC_TYPES = ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell")
# Module types that prepare_fx folds into the conv/linear before them.
_FOLDED_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
_RELU_TYPES = ("ReLU", "ReLU6")
PERCENTILE = 99.99
FP16_NOTE = "FP16 layers run in half precision; on x86 CPUs PyTorch has no fast half kernels, so they are slower than FP32"
# Module types and tensor methods that reach ATen's quantized clamp (see guard_qnnpack_clamps).
_CLAMP_MODULES = ("ReLU6", "Hardtanh")
_CLAMP_METHODS = ("clamp", "clamp_", "clip", "clip_", "hardtanh", "hardtanh_")
QNNPACK_CLAMP_NOTE = (
    "qnnpack: .contiguous() added before {n} ReLU6/clamp op(s); torch's qnnpack clamp returns "
    "scrambled values for channels_last input (every quantized conv's output), on ARM as on x86"
)
QNNPACK_ON_X86_NOTE = (
    "qnnpack on a {machine} CPU: the accuracy shown comes from QNNPACK's arithmetic, as on an ARM device running "
    "this file, but the speed comes from QNNPACK's portable x86 kernels and says nothing about the ARM device's "
    "speed (choose backend x86 to measure this computer's fast INT8 path)"
)


@contextlib.contextmanager
def quiet():
    """torch.ao prints deprecation warnings in torch 2.14 a user cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def resolve_backend(backend: str) -> str:
    """'auto' → 'qnnpack' on ARM CPUs, 'x86' elsewhere."""
    if backend == "auto":
        return "qnnpack" if is_arm_machine() else "x86"
    return backend


@contextlib.contextmanager
def quantized_engine(backend: str | None):
    """Run with ``torch.backends.quantized.engine = backend``, then restore the previous one.

    Why: only conv/linear carry their engine in their packed weights; quantized add,
    ReLU6/clamp, pooling, ... dispatch on this process-wide setting *at run time*. A
    model converted for x86 and run while the setting says qnnpack (left so by an
    earlier qnnpack run) hits qnnpack's clamp bug (see :func:`guard_qnnpack_clamps`):
    the demo MobileNetV2's x86 INT8 model fell from 98.2% to 8.5% top-1 that way.
    """
    import torch

    previous = torch.backends.quantized.engine
    switch = bool(backend) and backend != previous
    if switch:
        torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        if switch:
            torch.backends.quantized.engine = previous


def release_torch_ao_caches() -> None:
    """Forget the modules torch.ao's FX quantization cached.

    Why: ``torch.ao.quantization.fx.utils.assert_and_get_unique_device`` is an unbounded
    ``functools.cache`` keyed by module, called by ``prepare_fx`` and ``convert_fx`` on the
    model and on every float module they swap: it kept each cycle's traced, prepared and
    converted models (three GraphModules and their observers) alive for the life of the
    process, 16-17 MB per quantization of the demo MobileNetV2. Nothing else in this
    process relies on that cache between quantizations.
    """
    import sys

    utils = sys.modules.get("torch.ao.quantization.fx.utils")
    cached = getattr(utils, "assert_and_get_unique_device", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def is_arm_machine() -> bool:
    return platform.machine().lower().startswith(("arm", "aarch64"))


def _clamp_functions() -> set:
    import torch
    import torch.nn.functional as F

    return {F.relu6, F.hardtanh, F.hardtanh_, torch.clamp, torch.clip, torch.clamp_, torch.clip_}


def guard_qnnpack_clamps(gm) -> int:
    """Insert ``.contiguous()`` before every ReLU6/Hardtanh/clamp of a converted FX model.

    Why: with the qnnpack engine, torch's quantized clamp (what ``F.relu6``,
    ``F.hardtanh`` and ``torch.clamp`` run on a quantized tensor; ATen
    ``qclamp.cpp: qnnpack_clamp``) keeps a channels_last input in channels_last order
    but allocates its output as NCHW-contiguous, so the values land in the wrong
    places. Every quantized conv returns a channels_last tensor, so each ReLU6 after a
    conv scrambles its tensor: an FX INT8 MobileNetV2 on qnnpack predicts one class for
    every input (the digits demo: 10-11% top-1, chance level, instead of 98.5%). The bug is in
    ATen's wrapper, not in an x86 kernel, so an ARM device running the exported file is
    hit alike. On an NCHW-contiguous input the clamp is exact, and ``contiguous()`` is a
    no-op on tensors that already are; the inserted calls are traced into the exported
    TorchScript, so the fix travels with the file. Returns how many were inserted.
    """
    import torch

    modules = dict(gm.named_modules())
    functions = _clamp_functions()
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_module":
            hit = type(modules.get(node.target)).__name__ in _CLAMP_MODULES
        elif node.op == "call_function":
            hit = node.target in functions
        elif node.op == "call_method":
            hit = node.target in _CLAMP_METHODS
        else:
            hit = False
        if not hit:
            continue
        key, src = (0, node.args[0]) if node.args else ("input", node.kwargs.get("input"))
        if not isinstance(src, torch.fx.Node):
            continue
        with graph.inserting_before(node):
            fixed = graph.call_method("contiguous", (src,))
        if key == 0:
            node.args = (fixed, *node.args[1:])
        else:
            node.kwargs = {**node.kwargs, "input": fixed}
        count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def _as_array(batch: Any) -> np.ndarray:
    x = getattr(batch, "x", batch)  # data.Batch or a plain array
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------- observers


# The job's check_cancelled while this thread runs torch.ao's prepare/calibrate/convert
# (see cancel_points); None elsewhere.
_CANCEL = threading.local()


@contextlib.contextmanager
def cancel_points(ctx: JobContext | None):
    """Let the observers this engine builds honour ``ctx``'s cancel from inside torch.ao.

    Why: ``prepare_fx``, a calibration forward and ``convert_fx`` are single calls that
    took several seconds each on the demo MobileNetV2 under load (a cancel waited up to
    2.3 s). torch.ao calls our observers at every observed tensor: it builds them in
    prepare (after tracing), runs them in calibration, and asks their ranges in convert,
    so a check there is a cancel point every few milliseconds. Raising there only ever
    abandons the engine's private copies of the model.
    """
    previous = getattr(_CANCEL, "check", None)
    _CANCEL.check = ctx.check_cancelled if ctx is not None else None
    try:
        yield
    finally:
        _CANCEL.check = previous


def _check_cancel() -> None:
    check = getattr(_CANCEL, "check", None)
    if check is not None:
        check()


# Python calls between two cancel checks inside convert_fx (~1 ms of its work here).
_CALLS_PER_CHECK = 512


@contextlib.contextmanager
def cancel_inside_calls():
    """Check for cancel every :data:`_CALLS_PER_CHECK` Python calls made in the block.

    Why: ``convert_fx`` spends most of its time where no observer of ours is called:
    ``lower_to_fbgemm`` packs every weight and the new GraphModule is compiled (1.5 s
    and 0.65 s of 3.9 s for the demo MobileNetV2 under load). A profile function sees
    every call there; raising from it ends convert_fx like any exception, and the
    half-converted model is the engine's private copy. Only around convert_fx: tracing
    (prepare_fx, the inventory) patches torch globally and restores it in ``finally``
    blocks that an exception raised at an arbitrary call could skip. Does nothing when
    a profiler or debugger already uses the hook.
    """
    import sys

    if sys.getprofile() is not None or getattr(_CANCEL, "check", None) is None:
        yield
        return
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1
            if calls % _CALLS_PER_CHECK == 0:
                _check_cancel()

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


@functools.cache
def _cancellable(base: type) -> type:
    """``base`` (an observer class) with a cancel point in construction, forward and
    calculate_qparams; same name, so messages and tests still say "MinMaxObserver"."""

    class Cancellable(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            _check_cancel()
            super().__init__(*args, **kwargs)

        def forward(self, x_orig):
            _check_cancel()
            return super().forward(x_orig)

        def calculate_qparams(self):  # type: ignore[override]
            _check_cancel()
            return super().calculate_qparams()

    Cancellable.__name__ = base.__name__
    Cancellable.__qualname__ = base.__qualname__
    return Cancellable


@functools.cache
def _percentile_observer_class():
    """A HistogramObserver that clips at the 0.01st / 99.99th percentile.

    Why a histogram: percentiles of the *whole* calibration set at constant memory (the
    histogram is what HistogramObserver already keeps across batches), instead of an
    average of per-batch percentiles or keeping every activation.
    """
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        percentile: float = PERCENTILE

        @torch.jit.export
        def calculate_qparams(self):  # type: ignore[override]
            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            hist = self.histogram.double()
            total = hist.sum()
            if total <= 0:
                return self._calculate_qparams(self.min_val, self.max_val)
            cdf = torch.cumsum(hist, 0) / total
            tail = (100.0 - self.percentile) / 100.0
            lo_bin = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
            hi_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
            width = (self.max_val - self.min_val) / self.bins
            new_min = self.min_val + width * lo_bin
            new_max = self.min_val + width * (hi_bin + 1)
            return self._calculate_qparams(torch.minimum(new_min, self.max_val), torch.minimum(new_max, self.max_val))

    return PercentileObserver


@functools.cache
def _entropy_observer_class():
    """A HistogramObserver whose range is the KL-divergence (entropy) threshold.

    Why: torch's HistogramObserver picks the range with the least L2 rounding error,
    which is another method; the recipe says "entropy", so both engines run the same
    search (:func:`quantstudio.core.engines.ort_engine.entropy_threshold`, ONNX
    Runtime's algorithm with 128 quantized bins) on a 2048-bin histogram symmetric about
    zero, re-binned from the observer's own [min, max] histogram (an error of at most
    one bin, ~0.1% of the range).
    """
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    class EntropyObserver(HistogramObserver):
        @torch.jit.export
        def calculate_qparams(self):  # type: ignore[override]
            from quantstudio.core.engines.ort_engine import ENTROPY_BINS, ENTROPY_QUANTIZED_BINS, entropy_threshold

            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            lo, hi = float(self.min_val), float(self.max_val)
            counts = self.histogram.double().numpy()
            if counts.sum() <= 0 or hi <= lo:
                return self._calculate_qparams(self.min_val, self.max_val)
            centres = lo + (np.arange(counts.size) + 0.5) * (hi - lo) / counts.size
            t = max(abs(lo), abs(hi))
            hist, edges = np.histogram(centres, bins=ENTROPY_BINS, range=(-t, t), weights=counts)
            low, high = entropy_threshold(np.rint(hist).astype(np.int64), edges.astype(np.float32),
                                          np.float32(lo), np.float32(hi), ENTROPY_QUANTIZED_BINS)
            return self._calculate_qparams(torch.tensor(float(low)), torch.tensor(float(high)))

    return EntropyObserver


def build_qconfig(config: QuantConfig, backend: str):
    """The QConfig for INT8 layers from the calibration method and options."""
    import torch
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import (
        MinMaxObserver,
        PerChannelMinMaxObserver,
    )

    # x86 (fbgemm/onednn) kernels may overflow their 16-bit accumulation with full
    # 8-bit activation ranges on CPUs without VNNI, so torch's x86 default reduces the
    # range to 7 bits; qnnpack does not need it.
    reduce_range = backend == "x86"
    if config.symmetric_activations and reduce_range:
        # torch.ao refuses reduce_range with symmetric quint8 ("Cannot reduce range for
        # symmetric quantization for quint8"; this engine failed with that, reported as
        # a trace error): the same 7-bit range given explicitly, centred on 64.
        act_kwargs = dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric, quant_min=0, quant_max=127)
    else:
        qscheme = torch.per_tensor_symmetric if config.symmetric_activations else torch.per_tensor_affine
        act_kwargs = dict(dtype=torch.quint8, qscheme=qscheme, reduce_range=reduce_range)
    if config.calibration == "minmax":
        activation = _cancellable(MinMaxObserver).with_args(**act_kwargs)
    elif config.calibration == "entropy":
        activation = _cancellable(_entropy_observer_class()).with_args(**act_kwargs)
    else:
        activation = _cancellable(_percentile_observer_class()).with_args(**act_kwargs)
    if config.per_channel:
        weight = _cancellable(PerChannelMinMaxObserver).with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = _cancellable(MinMaxObserver).with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfig(activation=activation, weight=weight)


def build_qconfig_mapping(config: QuantConfig, backend: str, decisions: dict[str, Precision], tree, groups):
    """A QConfigMapping: the backend's defaults with our observers, then the plan per layer."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.qconfig import default_reuse_input_qconfig
    from torch.ao.quantization.qconfig_mapping import _FIXED_QPARAMS_OP_TO_OBSERVER

    qconfig = build_qconfig(config, backend)
    mapping = get_default_qconfig_mapping(backend)
    # Keep the backend's special cases (fixed-range sigmoid/softmax, per-tensor weights
    # for transposed convs, float LayerNorm weights) but use our activation observer.
    for pattern, old in list(mapping.object_type_qconfigs.items()):
        if pattern in _FIXED_QPARAMS_OP_TO_OBSERVER or old is default_reuse_input_qconfig or old is None:
            continue
        mapping.set_object_type(pattern, QConfig(activation=qconfig.activation, weight=old.weight))
    # Modules fused together must share a qconfig (torch.ao requires it): BN and ReLU
    # follow the conv/linear they are fused into.
    effective = dict(decisions)
    for group in groups:
        head = effective.get(group[0])
        for member in group[1:]:
            if head is not None and member in effective:
                effective[member] = head
    mapping.set_global(qconfig if _default_is_int8(effective) else None)
    # Scopes whose every layer is float: the functional ops inside them (residual adds)
    # stay float too.
    for node, _ in tree.walk():
        if not node.name:
            continue
        leaves = [effective.get(n.name) for n in node.leaves()]
        leaves = [p for p in leaves if p is not None]
        if not leaves:
            continue
        if node.children:
            if all(p is not Precision.INT8 for p in leaves):
                mapping.set_module_name(node.name, None)
            elif all(p is Precision.INT8 for p in leaves):
                mapping.set_module_name(node.name, qconfig)
        else:
            mapping.set_module_name(node.name, qconfig if leaves[0] is Precision.INT8 else None)
    return mapping, effective


def _default_is_int8(effective: dict[str, Precision]) -> bool:
    values = list(effective.values())
    return bool(values) and sum(p is Precision.INT8 for p in values) * 2 >= len(values)


# --------------------------------------------------------------------------- fp16


def run_in_half(module) -> None:
    """Make an eager ``module`` compute in FP16 while taking and returning float32 tensors.

    For eager models (fp16 and dynamic modes); FX models get casts in their graph
    instead (see :func:`run_fp16_in_graph`). Why hooks on the module rather than a
    wrapper module: the qualified names stay the same, so the layer tree, per-layer
    error hooks and the plan keep matching, and torch.jit.trace runs module hooks. Only
    modules the forward really calls may carry them (see :func:`_half_targets`). On x86
    CPUs PyTorch has no fast half kernels: FP16 layers run slower than FP32 here
    (measured ~3x for conv).
    """
    import torch

    module.half()

    def to_half(mod, args):
        return tuple(a.half() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def to_float(mod, args, out):
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, tuple):
            return tuple(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out

    module.register_forward_pre_hook(to_half)
    module.register_forward_hook(to_float)


def _get_submodule(root, name: str):
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def _fp16_scopes(tree, effective: dict[str, Precision]) -> set[str]:
    """Names of the tree nodes (containers and leaves, "" = the whole model) whose every layer is FP16."""
    out: set[str] = set()

    def visit(node) -> bool:
        if node.children:
            ok = all([visit(c) for c in node.children])  # a list: visit every child
        else:
            ok = effective.get(node.name) is Precision.FP16
        if ok:
            out.add(node.name)
        return ok

    visit(tree)
    return out


def _self_contained_modules(module, example) -> set[str] | None:
    """Modules of an eager model whose whole subtree runs inside their own call.

    Why: hooks on a container only cast what enters and leaves the container's own
    call; a ModuleList is never called, and a parent may call a grandchild directly
    (FX graph modules always do). One forward pass records, for every module call,
    which modules were running around it. None when there is no example input.
    """
    if example is None:
        return None
    stack: list[str] = []
    inside: dict[str, set[str]] = {}  # module -> modules running around every one of its calls
    handles = []

    def enter(name):
        def hook(mod, args):
            active = set(stack)
            inside[name] = inside[name] & active if name in inside else active
            stack.append(name)

        return hook

    def leave(name):
        def hook(mod, args, out):
            if stack and stack[-1] == name:
                stack.pop()

        return hook

    try:
        for name, m in module.named_modules():
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave(name)))
        module(example)
    except Exception:  # noqa: BLE001 - the model fails on its own example: keep every container
        return None
    finally:
        for h in handles:
            h.remove()
    names = [n for n, _ in module.named_modules()]
    out = set()
    for name in inside:
        prefix = name + "." if name else ""
        if all(name in inside[d] for d in names if d != name and d.startswith(prefix) and d in inside):
            out.add(name)
    return out


def _half_targets(tree, effective: dict[str, Precision], called: set[str] | None = None) -> list[str]:
    """The largest subtrees whose every layer is FP16 (fewer casts than per leaf).

    ``called``: the containers that run their whole subtree inside their own call (see
    :func:`_self_contained_modules`); other all-FP16 containers are split into their
    children. None: every container qualifies.
    """
    out: list[str] = []

    def visit(node) -> None:
        leaves = [effective.get(n.name) for n in node.leaves()]
        usable = not node.children or called is None or node.name in called
        if usable and leaves and all(p is Precision.FP16 for p in leaves):
            out.append(node.name)
            return
        for c in node.children:
            visit(c)

    visit(tree)
    return out


def _eager_half(module, tree, effective: dict[str, Precision], example) -> set[str]:
    """Put the FP16 layers of an eager model in half precision; return the hooked module names."""
    targets = _half_targets(tree, effective, _self_contained_modules(module, example))
    done = set()
    for name in targets:
        sub = module if name == "" else _get_submodule(module, name)
        if sub is not None:
            run_in_half(sub)
            done.add(name)
    return done


def _eager_built(module, tree, effective: dict[str, Precision], hooked: set[str], dynamic: set[str]) -> dict[str, Precision]:
    """What each leaf of an eager model became: dynamic INT8, half weights / inside a half scope → FP16, else FP32."""
    import torch

    out: dict[str, Precision] = {}
    for leaf in tree.leaves():
        name = leaf.name
        if name in dynamic:
            out[name] = Precision.INT8
            continue
        sub = _get_submodule(module, name) if name else module
        params = [p for p in sub.parameters() if p.is_floating_point()] if sub is not None else []
        in_half = any(h == "" or name == h or name.startswith(h + ".") for h in hooked)
        if params:
            out[name] = Precision.FP16 if all(p.dtype == torch.float16 for p in params) else Precision.FP32
        else:
            out[name] = Precision.FP16 if in_half else Precision.FP32
    return out


def _value_kind(value) -> str:
    """'f32', 'f16', ... for a plain tensor, 'q' for a quantized one, '' for anything else."""
    import torch

    if not isinstance(value, torch.Tensor):
        return ""
    if value.is_quantized:
        return "q"
    return {torch.float32: "f32", torch.float16: "f16"}.get(value.dtype, str(value.dtype))


def _node_kinds(gm, example: tuple) -> tuple[dict[str, str], str | None, BaseException | None]:
    """Run ``gm`` node by node on the inputs ``example``: each node's output kind, and where it failed.

    A cancel (see :func:`cancel_points`) is checked before every node and raised, not
    reported as the node's failure."""
    import torch

    class Recorder(torch.fx.Interpreter):
        def __init__(self, module) -> None:
            super().__init__(module)
            self.kinds: dict[str, str] = {}
            self.current: str | None = None

        def run_node(self, n):
            _check_cancel()
            self.current = n.name
            out = super().run_node(n)
            self.kinds[n.name] = _value_kind(out)
            return out

    rec = Recorder(gm)
    try:
        rec.run(*example)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - reported back to the caller
        return rec.kinds, rec.current, exc
    return rec.kinds, None, None


def _innermost_scope(node) -> str:
    """The qualified name of the module whose forward made this FX node ("" = the model's own)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    key, value = list(stack.items())[-1]
    return value[0] if isinstance(value, tuple) and isinstance(value[0], str) else str(key)


# Tensor methods whose result dtype is chosen by the call, not by the input's dtype.
_DTYPE_METHODS = ("to", "type", "float", "double", "half", "bfloat16", "int", "long", "short", "bool", "byte", "type_as")


def _half_candidates(gm, kinds: dict[str, str], scopes: set[str]) -> set[str]:
    """FX nodes that should compute in half: float32 in, float32 out, inside an FP16 layer or scope.

    A module call is FP16 when its module is (a fused conv+bn+relu carries the name of
    its conv); a functional op (residual add, flatten, the body of a parameterless
    custom layer) when the module whose forward made it is FP16 throughout.
    """
    modules = dict(gm.named_modules())
    out: set[str] = set()
    for node in gm.graph.nodes:
        if kinds.get(node.name) != "f32":
            continue
        inputs = [a for a in node.all_input_nodes if kinds.get(a.name)]
        if any(kinds[a.name] == "q" for a in inputs):
            continue
        if node.op == "call_module":
            mod = modules.get(node.target)
            if mod is None or ".quantized" in type(mod).__module__ or node.target not in scopes:
                continue
        elif node.op in ("call_function", "call_method"):
            if not any(kinds[a.name] == "f32" for a in inputs) or _innermost_scope(node) not in scopes:
                continue
            if node.op == "call_method" and node.target in _DTYPE_METHODS:
                continue
            if "dtype" in node.kwargs:
                continue
        else:
            continue
        out.add(node.name)
    return _one_precision_per_module(gm, out)


def _one_precision_per_module(gm, half: set[str]) -> set[str]:
    """Drop the calls of a module that is also called from a float node: its weights have one dtype."""
    float_calls = {n.target for n in gm.graph.nodes if n.op == "call_module" and n.name not in half}
    return {n.name for n in gm.graph.nodes if n.name in half and not (n.op == "call_module" and n.target in float_calls)}


def _cast_graph(gm, half: set[str], kinds: dict[str, str]) -> None:
    """Run the ``half`` nodes of ``gm`` in FP16: their modules to half, casts where float meets half."""
    import torch
    from torch.fx.node import Node, map_arg

    graph = gm.graph
    for node in graph.nodes:
        if node.name in half and node.op == "call_module":
            gm.get_submodule(node.target).half()
    to_half: dict[Node, Node] = {}
    to_float: dict[Node, Node] = {}

    def cast(src: Node, dtype, cache: dict) -> Node:
        if src not in cache:
            with graph.inserting_after(src):
                cache[src] = graph.call_method("to", (src, dtype))
        return cache[src]

    def into_half(a):  # an input of a half node
        if isinstance(a, Node) and a.name not in half and kinds.get(a.name) == "f32":
            return cast(a, torch.float16, to_half)
        return a

    def into_float(a):  # an input of a float node (the graph's output included)
        if isinstance(a, Node) and a.name in half:
            return cast(a, torch.float32, to_float)
        return a

    for node in list(graph.nodes):
        fix = into_half if node.name in half else into_float
        node.args = map_arg(node.args, fix)
        node.kwargs = map_arg(node.kwargs, fix)
    graph.lint()
    gm.recompile()


def run_fp16_in_graph(gm, scopes: set[str], example):
    """Return a copy of the converted FX model ``gm`` whose FP16 layers compute in half precision.

    ``scopes``: the names of the layers and containers whose every layer is FP16 (see
    :func:`_fp16_scopes`). Why in the graph and not with module hooks: the FX model calls
    its leaf modules directly (``features.0.0``, never ``features.0``), so hooks on a
    container never run and its half layers meet float32 input. Half nodes get
    ``.to(torch.float16)`` on float32 inputs and their float users ``.to(torch.float32)``;
    between two half nodes no cast is needed, so an FP16 block runs in half throughout,
    residual adds included. The result is run once on ``example``: a node that does
    not give a half tensor (an op choosing its own dtype, a kernel missing in half)
    stays float32 and the rewrite is redone. Returns (model, names of the half nodes);
    the model is ``gm`` itself, untouched, when nothing is FP16.
    """
    kinds, failed_at, exc = _node_kinds(gm, example)
    if exc is not None:
        raise exc
    half = _half_candidates(gm, kinds, scopes)
    while half:
        _check_cancel()
        trial = copy.deepcopy(gm)
        _cast_graph(trial, half, kinds)
        got, failed_at, exc = _node_kinds(trial, example)
        wrong = {n for n in half if n in got and got[n] != "f16"}
        if exc is not None and not wrong:
            # A kernel without half support, or a node after it: give up on what did not run.
            wrong = ({failed_at} & half) or {n for n in half if n not in got}
        if not wrong:
            if exc is not None:
                raise exc
            return trial, half
        half = _one_precision_per_module(gm, half - wrong)
    return gm, set()


# --------------------------------------------------------------------------- FX analysis


def _trace_error(exc: BaseException, module, model_path) -> InputError:
    """Name the layer / source line the FX tracer stopped at."""
    where = ""
    layer = ""
    names = {id(m): n for n, m in module.named_modules()}
    frames = traceback.extract_tb(exc.__traceback__)
    tb = exc.__traceback__
    user_frames = []
    while tb is not None:
        frame = tb.tb_frame
        fname = frame.f_code.co_filename
        if "/torch/" not in fname.replace("\\", "/"):
            user_frames.append((frame, tb.tb_lineno))
        tb = tb.tb_next
    for frame, line in reversed(user_frames):
        self = frame.f_locals.get("self")
        if self is not None and id(self) in names:
            layer = names[id(self)] or "(the model's own forward)"
            code = ""
            for fs in frames:
                if fs.filename == frame.f_code.co_filename and fs.lineno == line:
                    code = (fs.line or "").strip()
            where = f"{Path(frame.f_code.co_filename).name}:{line}" + (f" `{code}`" if code else "")
            break
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    place = f" in layer {layer} ({where})" if layer else (f" at {where}" if where else "")
    return InputError(
        f"PyTorch FX cannot trace this model{place}: {first}",
        path=model_path,
        hint="Use the ONNX Runtime engine (--engine onnxruntime), or dynamic INT8 (--mode dynamic), which need no tracing.",
        details="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
    )


def _module_types(module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in module.named_modules()}


def fusion_groups(traced, converted) -> list[list[str]]:
    """Groups of original layer names that prepare_fx merged into one module.

    ``traced`` is the original model symbolically traced; ``converted`` the FX result.
    A fused module keeps the name of the group's first layer (conv1 for conv1+bn1+relu):
    follow the original graph from that layer through the BN it folded (BN modules are
    gone from the converted model) and the ReLU its type names (``ConvReLU2d``).
    """
    orig_types = {n: type(m).__name__ for n, m in traced.named_modules()}
    conv_types = _module_types(converted)
    first_call: dict[str, Any] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            first_call.setdefault(node.target, node)
    groups: list[list[str]] = []
    seen: set[str] = set()
    for node in converted.graph.nodes:
        if node.op != "call_module" or node.target in seen or node.target not in first_call:
            continue
        seen.add(node.target)
        fused_type = conv_types.get(node.target, "")
        chain = [first_call[node.target]]
        while True:
            users = list(chain[-1].users)
            if len(users) != 1:
                break
            nxt = users[0]
            if nxt.op == "call_module":
                t = orig_types.get(nxt.target, "")
                if t in _FOLDED_TYPES and nxt.target not in conv_types:
                    chain.append(nxt)
                    continue
                if t in _RELU_TYPES and "ReLU" in fused_type:
                    chain.append(nxt)
                    continue
            elif nxt.op in ("call_function", "call_method") and "ReLU" in fused_type:
                if "relu" in getattr(nxt.target, "__name__", str(nxt.target)):
                    chain.append(nxt)
                    continue
            break
        if len(chain) > 1:
            groups.append([n.target if n.op == "call_module" else n.name for n in chain])
    return groups


def _chain_groups_before(traced) -> list[list[str]]:
    """conv/linear → BN → ReLU chains in the original graph (prepare_fx fuses these)."""
    types = {n: type(m).__name__ for n, m in traced.named_modules()}
    heads = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
    groups = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or types.get(node.target) not in heads:
            continue
        chain = [node.target]
        cur = node
        for allowed in (_FOLDED_TYPES, _RELU_TYPES):
            users = list(cur.users)
            if len(users) == 1 and users[0].op == "call_module" and types.get(users[0].target) in allowed:
                cur = users[0]
                chain.append(cur.target)
        if len(chain) > 1:
            groups.append(chain)
    return groups


# --------------------------------------------------------------------------- engine


class TorchEngine:
    """Static / dynamic INT8 and FP16 of eager PyTorch models with ``torch.ao``."""

    name = "torch"

    def quantize(
        self,
        model: Any,
        plan: PrecisionPlan,
        config: QuantConfig,
        calib_batches: Iterable[Any],
        ctx: JobContext,
    ) -> QuantizedModel:
        import torch

        if not getattr(model, "is_eager", False):
            raise InputError(
                f"the PyTorch engine quantizes eager models only, not a {model.kind_label}",
                path=model.path,
                hint="Use the ONNX Runtime engine (--engine onnxruntime) for TorchScript, .pt2 and ONNX models.",
            )
        from quantstudio.core.inventory import build_inventory

        backend = resolve_backend(config.backend)
        if backend not in torch.backends.quantized.supported_engines:
            raise InputError(
                f"this PyTorch build has no '{backend}' quantized backend",
                hint=f"Use one of: {', '.join(e for e in torch.backends.quantized.supported_engines if e in ('x86', 'qnnpack'))}.",
            )
        torch.backends.quantized.engine = backend
        ctx.check_cancelled()
        ctx.report(0.0, "reading the layer tree")
        tree = build_inventory(model)
        ctx.check_cancelled()
        decisions = plan.resolve(tree)
        requested = {name: d.effective for name, d in decisions.items()}
        notes = [f"backend {backend} (torch.backends.quantized.engine)"]
        if backend == "qnnpack" and not is_arm_machine():
            notes.append(QNNPACK_ON_X86_NOTE.format(machine=platform.machine() or "non-ARM"))
        for name, d in decisions.items():
            if d.effective != d.requested and d.reason:
                notes.append(f"{name}: {d.requested.value} → {d.effective.value} ({d.reason})")
        try:
            with quiet(), torch.inference_mode(False), torch.no_grad(), cancel_points(ctx):
                if config.mode == "static":
                    result = self._static(model, tree, requested, config, backend, calib_batches, ctx, notes)
                elif config.mode == "dynamic":
                    result = self._dynamic(model, tree, requested, config, backend, ctx, notes)
                else:
                    result = self._fp16_only(model, tree, requested, config, ctx, notes)
        finally:
            release_torch_ao_caches()
        return result

    # ------------------------------------------------------------------ static
    def _static(self, model, tree, requested, config, backend, calib_batches, ctx, notes) -> QuantizedModel:
        import torch
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        ctx.partial({"type": "stage", "name": "prepare"})
        ctx.report(0.02, "fusing layers and inserting observers")
        float_model = copy.deepcopy(model.module).eval()
        ctx.check_cancelled()
        try:
            traced = torch.fx.symbolic_trace(float_model)
        except Exception as exc:  # noqa: BLE001 - tracing user code fails in many ways
            raise _trace_error(exc, float_model, model.path) from exc
        ctx.check_cancelled()
        groups_before = _chain_groups_before(traced)
        mapping, effective = build_qconfig_mapping(config, backend, requested, tree, groups_before)
        for group in groups_before:
            for member in group[1:]:
                if member in requested and requested[member] != effective.get(member):
                    notes.append(
                        f"{member}: {requested[member].value} → {effective[member].value} "
                        f"(fused into {group[0]}, which is {effective[member].value})"
                    )
        example = (model.example_input(),)
        try:
            prepared = prepare_fx(float_model, mapping, example)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _trace_error(exc, float_model, model.path) from exc
        ctx.check_cancelled()

        ctx.partial({"type": "stage", "name": "calibrate"})
        total = len(calib_batches) if hasattr(calib_batches, "__len__") else None
        n = 0
        for batch in calib_batches:
            ctx.check_cancelled()
            prepared(torch.from_numpy(_as_array(batch)))
            n += 1
            frac = n / total if total else 1 - 1 / (n + 1)
            ctx.report(0.05 + 0.85 * frac, f"calibrating: batch {n}" + (f"/{total}" if total else ""))
        if n == 0:
            raise InputError("there is no calibration data", hint="Choose data with at least one sample.")
        ctx.check_cancelled()

        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.92, "converting to INT8")
        with cancel_inside_calls():
            converted = convert_fx(prepared)
        converted.eval()
        if backend == "qnnpack":
            guarded = guard_qnnpack_clamps(converted)
            if guarded:
                notes.append(QNNPACK_CLAMP_NOTE.format(n=guarded))
        scopes = _fp16_scopes(tree, effective)
        half_nodes: set[str] = set()
        if scopes:
            ctx.report(0.94, "putting the FP16 layers in half precision")
            with quantized_engine(backend):
                converted, half_nodes = run_fp16_in_graph(converted, scopes, example)
        ctx.check_cancelled()
        groups = fusion_groups(traced, converted)
        for g in groups:
            ctx.report(0.95, f"fused {' + '.join(g)}")
        with quantized_engine(backend):
            kinds, _, _ = _node_kinds(converted, example)
        built = self._built_precisions(converted, tree, effective, groups, kinds, half_nodes)
        for name, p in built.items():
            if effective.get(name) is Precision.FP16 and p is not Precision.FP16:
                notes.append(f"{name}: fp16 → {p.value} (it does not run in half precision in PyTorch here)")
        if any(p is Precision.FP16 for p in built.values()):
            notes.append(FP16_NOTE)
        for name, t in ((n.name, n.type) for n in tree.leaves()):
            if t in ("LSTM", "GRU", "MultiheadAttention") and effective.get(name) is Precision.INT8:
                notes.append(f"{name}: static INT8 has no {t} kernel; it stays FP32 (use dynamic INT8)")
        ctx.report(1.0, "converted")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=_TorchRunner(converted, backend),
            layer_precisions={k: v.value for k, v in built.items()},
            fused=groups,
            notes=notes,
            artifact=converted,
            input_shape=tuple(model.input_shape),
        )

    @staticmethod
    def _built_precisions(converted, tree, effective, groups, kinds, half_nodes) -> dict[str, Precision]:
        """What each leaf actually became, read off the converted model.

        A quantized module → INT8; float weights → FP16 or FP32 by their dtype; a layer
        without weights by what its calls compute on (quantized tensors → INT8, a half
        node → FP16); a layer folded or fused away (BN, ReLU) → what its group's first
        layer became. ``kinds``: each graph node's output kind (see :func:`_node_kinds`).
        """
        import torch

        modules = dict(converted.named_modules())
        head_of = {member: g[0] for g in groups for member in g[1:]}
        calls: dict[str, list] = {}  # module name -> its call_module nodes
        scoped: dict[str, list] = {}  # module name -> functional nodes its forward made
        for node in converted.graph.nodes:
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(node)
            elif node.op in ("call_function", "call_method"):
                scoped.setdefault(_innermost_scope(node), []).append(node)

        def of_nodes(nodes) -> Precision:
            if any(n.name in half_nodes for n in nodes):
                return Precision.FP16
            if any(kinds.get(n.name) == "q" for n in nodes):
                return Precision.INT8
            return Precision.FP32

        def built(name: str) -> Precision | None:
            mod = modules.get(name) if name else None
            if mod is not None:
                if ".quantized" in type(mod).__module__:
                    return Precision.INT8
                params = [p for p in mod.parameters() if p.is_floating_point()]
                if params:
                    return Precision.FP16 if all(p.dtype == torch.float16 for p in params) else Precision.FP32
                return of_nodes(calls[name]) if name in calls else None
            return of_nodes(scoped[name]) if name in scoped else None

        out: dict[str, Precision] = {}
        for leaf in tree.leaves():
            got = built(leaf.name)
            if got is None and leaf.name in head_of:
                got = built(head_of[leaf.name])
            out[leaf.name] = got if got is not None else effective.get(leaf.name, Precision.FP32)
        return out

    # ------------------------------------------------------------------ dynamic
    def _dynamic(self, model, tree, requested, config, backend, ctx, notes) -> QuantizedModel:
        import torch
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.1, "quantizing weights (dynamic INT8)")
        spec = {}
        for leaf in tree.leaves():
            if leaf.type in DYNAMIC_TYPES and requested.get(leaf.name) is Precision.INT8:
                per_channel_ok = config.per_channel and leaf.type == "Linear"
                spec[leaf.name] = per_channel_dynamic_qconfig if per_channel_ok else default_dynamic_qconfig
        if not spec:
            notes.append("dynamic INT8 quantizes only Linear/LSTM/GRU layers and the plan leaves none of them INT8; use static INT8 for conv layers")
        module = copy.deepcopy(model.module).eval()
        ctx.check_cancelled()
        quantized = quantize_dynamic(module, qconfig_spec=spec, dtype=torch.qint8, inplace=False) if spec else module
        effective = dict(requested)
        example = model.example_input() if model.input_shape else None
        hooked = _eager_half(quantized, tree, effective, example)
        built = _eager_built(quantized, tree, effective, hooked, set(spec))
        others = sum(1 for leaf in tree.leaves() if requested.get(leaf.name) is Precision.INT8 and leaf.name not in spec and leaf.params > 0)
        if spec and others:
            notes.append(f"{others} INT8 layers are not Linear/LSTM/GRU and stay FP32 in dynamic mode")
        ctx.report(1.0, f"dynamic INT8: {len(spec)} layers")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=_TorchRunner(quantized, backend),
            layer_precisions={k: v.value for k, v in built.items()},
            notes=notes,
            artifact=quantized,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
        )

    # ------------------------------------------------------------------ fp16
    def _fp16_only(self, model, tree, requested, config, ctx, notes) -> QuantizedModel:
        ctx.partial({"type": "stage", "name": "convert"})
        ctx.report(0.1, "converting layers to FP16")
        # In fp16 mode every layer the plan leaves INT8 runs FP16.
        effective = {k: (Precision.FP16 if v is Precision.INT8 else v) for k, v in requested.items()}
        module = copy.deepcopy(model.module).eval()
        example = model.example_input() if model.input_shape else None
        hooked = _eager_half(module, tree, effective, example)
        built = _eager_built(module, tree, effective, hooked, set())
        ctx.check_cancelled()
        notes.append(FP16_NOTE)
        ctx.report(1.0, "converted to FP16")
        return QuantizedModel(
            engine=self.name,
            config=config,
            runner=_TorchRunner(module),
            layer_precisions={k: v.value for k, v in built.items()},
            notes=notes,
            artifact=module,
            input_shape=tuple(model.input_shape) if model.input_shape else None,
        )

    # ------------------------------------------------------------------ export
    def export(self, result: QuantizedModel, path: Path, ctx: JobContext, samples: np.ndarray | None = None):
        from quantstudio.core.export import export_model

        return export_model(result, path, samples=samples, ctx=ctx)


class _TorchRunner:
    """numpy batch → numpy logits through a (quantized) torch module, on its own backend."""

    def __init__(self, module, backend: str | None = None) -> None:
        self.module = module
        self.backend = backend  # the quantized engine it was converted for (None: float only)

    def __call__(self, x):
        import torch

        with quiet(), quantized_engine(self.backend), torch.inference_mode():
            out = self.module(torch.from_numpy(_as_array(x)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if getattr(out, "is_quantized", False):
            out = out.dequantize()
        return out.detach().float().numpy()


# Tensor → Python conversions: during tracing their result is recorded as a constant.
_CONVERSIONS = ("__bool__", "__int__", "__float__", "__index__", "__complex__", "item", "tolist")
# Trace graph ops that read only a tensor's shape / dtype / device, never its values.
_SHAPE_OPS = (
    "aten::size", "aten::sizes", "aten::sym_size", "aten::dim", "aten::numel", "aten::len",
    "prim::shape", "prim::device", "prim::dtype", "prim::layout",
)


def _reads_input_values(value) -> bool:
    """Whether a traced value depends on the *values* of the traced function's inputs.

    Walks the trace graph back from ``value``; shapes, constants and module attributes
    (weights) are fixed for a given input shape, so they do not count.
    """
    import torch

    seen: set[int] = set()
    todo = [value]
    while todo:
        v = todo.pop()
        if v.unique() in seen:
            continue
        seen.add(v.unique())
        node = v.node()
        kind = node.kind()
        if kind == "prim::Param":
            if not isinstance(v.type(), torch.ClassType):  # the module itself is the first input
                return True
            continue
        if kind in _SHAPE_OPS or kind in ("prim::Constant", "prim::TracedAttr", "prim::GetAttr"):
            continue
        todo.extend(node.inputs())
    return False


def _user_frame() -> tuple[str, int, str]:
    """(file, line, source) of the innermost frame outside torch and this module."""
    import torch

    torch_dir = str(Path(torch.__file__).parent)
    for fs in reversed(traceback.extract_stack()):
        if fs.filename.startswith(torch_dir) or fs.filename == __file__ or "/warnings.py" in fs.filename:
            continue
        return fs.filename, fs.lineno or 0, (fs.line or "").strip()
    return "", 0, ""


def _watch_input_dependent_conversions():
    """A TorchFunctionMode that notes every tensor → Python conversion reading input values.

    Why not the TracerWarnings alone: torch warns alike for ``if x.mean() > 0`` (a
    branch the trace freezes: wrong results on other inputs) and for shape checks such
    as torchvision's ``torch._assert(h == self.image_size)`` (right for every input of
    that shape). The mode sees the converted tensor, and its trace tells the two apart.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[str, int, str, str]] = []  # file, line, source, conversion

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in _CONVERSIONS and args and isinstance(args[0], torch.Tensor) and torch._C._is_tracing():
                try:
                    dependent = _reads_input_values(torch._C._get_value_trace(args[0]))
                except Exception:  # noqa: BLE001 - a tensor the tracer does not know: a constant
                    dependent = False
                if dependent:
                    self.found.append((*_user_frame(), name))
            return func(*args, **(kwargs or {}))

    return Watch()


@contextlib.contextmanager
def refuse_value_dependent_trace():
    """Around a trace (``torch.jit.trace``, ``torch.onnx.export``): InputError afterwards
    when the forward turned input-dependent tensor values into Python values."""
    import torch

    watch = _watch_input_dependent_conversions()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)  # quiet() hides them; the error quotes them
        with watch:
            yield
    if watch.found:
        raise _input_dependent_error(watch.found, caught)


def _input_dependent_error(found, caught) -> InputError:
    """The error for a trace that froze decisions taken on the example input's values."""
    import torch

    texts = {}
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning) and str(w.message).startswith("Converting a tensor"):
            texts.setdefault((w.filename, w.lineno), str(w.message))
            texts.setdefault(("", 0), str(w.message))  # torch._assert warns from inside torch
    lines = []
    for filename, line, source, conversion in dict.fromkeys(found):
        text = texts.get((filename, line)) or texts.get(("", 0)) or f"Tensor.{conversion} while tracing"
        where = f"{filename}:{line}" + (f" `{source}`" if source else "")
        lines.append(f"{where}: {text}")
    filename, line, source, _ = found[0]
    where = f"{Path(filename).name}:{line}" + (f" `{source}`" if source else "")
    return InputError(
        f"the model turns a tensor's values into a Python value while it runs ({where}), so the saved file "
        "would always take the path the example input took and give wrong results on other inputs",
        hint="Nothing was written. Replace that Python `if` / int() / .item() on tensor values with tensor "
        "operations (for example torch.where), then quantize again.",
        details="\n".join(lines)[-4000:],
    )


def _has_half_tensors(module) -> bool:
    import torch

    return any(t.dtype == torch.float16 for t in (*module.parameters(), *module.buffers()))


def to_torchscript(module, example):
    """Trace and freeze a converted model: the form that loads back with only torch.

    Raises InputError when the forward turned input-dependent tensor values into Python
    values (a branch on ``x.mean() > 0``, ``int(x.max())``): the trace would hold one
    branch only, and the export check, run on samples that took that branch, would pass.
    Models with half tensors are frozen without ``optimize_numerics``: its conv+bn and
    conv+add/mul folding recomputes FP16 weights and moved the demo MobileNetV2's FP16
    outputs by 0.015-0.02, beyond the export check's tolerance.
    """
    import torch

    with quiet(), torch.inference_mode(False), torch.no_grad():
        with refuse_value_dependent_trace():
            traced = torch.jit.trace(module.eval(), example, check_trace=False)
        return torch.jit.freeze(traced.eval(), optimize_numerics=not _has_half_tensors(module))


def torch_layer_sqnr(original, result: QuantizedModel, batches: list, ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB) of a PyTorch result: each Conv/Linear output, quantized vs FP32.

    Forward hooks by qualified name in the original and the quantized model (FX keeps
    the names of fused and quantized modules). A fused module (conv1 = conv1+bn1+relu)
    is compared with the output of the last original layer of its group. Errors
    accumulate along the network: a layer's figure includes what reached its input.
    """
    import torch

    quantized = result.artifact
    if quantized is None or not batches:
        return {}
    last_of = {g[0]: g[-1] for g in result.fused}
    orig_mods = dict(original.named_modules())
    q_mods = dict(quantized.named_modules())
    weighted = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d", "LSTM", "GRU")
    layers = {}
    for name, m in orig_mods.items():
        if name and type(m).__name__ in weighted and name in q_mods:
            ref_name = last_of.get(name, name)
            if ref_name in orig_mods:
                layers[name] = ref_name
    if not layers:
        return {}
    captured_ref: dict[str, Any] = {}
    captured_q: dict[str, Any] = {}

    def grab(store, key):
        def hook(mod, args, out):
            if ctx is not None:
                # A cancel point per layer, not per batch: one batch through both models
                # took 1-2 s on a loaded machine (a cancel waited that long).
                ctx.check_cancelled()
            if key in store:
                return None  # a module called twice: keep its first call
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor):
                store[key] = (t.dequantize() if t.is_quantized else t).detach().double()
            return None

        return hook

    signal = {n: 0.0 for n in layers}
    noise = {n: 0.0 for n in layers}
    handles = []
    try:
        for name, ref_name in layers.items():
            handles.append(orig_mods[ref_name].register_forward_hook(grab(captured_ref, name)))
            handles.append(q_mods[name].register_forward_hook(grab(captured_q, name)))
        for batch in batches:
            if ctx is not None:
                ctx.check_cancelled()
            x = torch.from_numpy(_as_array(batch))
            captured_ref.clear()
            captured_q.clear()
            with quiet(), torch.inference_mode():
                original(x)
                with quantized_engine(getattr(result.runner, "backend", None)):
                    quantized(x)
            for name in layers:
                a, b = captured_ref.get(name), captured_q.get(name)
                if a is not None and b is not None and a.shape == b.shape:
                    signal[name] += float((a * a).sum())
                    noise[name] += float(((a - b) ** 2).sum())
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    for name in layers:
        if signal[name] > 0:
            out[name] = float("inf") if noise[name] == 0 else float(10 * np.log10(signal[name] / noise[name]))
    return out

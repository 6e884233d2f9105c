"""Per-layer sensitivity: how much the model's output moves when *only* one layer is INT8.

For every Conv/Linear layer, the layer's weights are fake-quantized (INT8, per channel or
per tensor as the run's config says) and its input activation is fake-quantized (UINT8,
range from the run's calibration observer), everything else stays FP32; the figure is
the relative error of the model's final output against the FP32 output, in percent
(``100·‖y_q − y‖ / ‖y‖``). Sorting by it gives the layers to keep in FP32 first.

Why not ``prepare_fx`` once per layer: a full prepare/calibrate/convert per layer costs
seconds each (minutes for a ResNet), and FX's observer modules are hard to map back to a
layer once fusion renamed them. Here the observers and fake-quant ops are torch.ao's own
(:func:`~quantstudio.core.engines.pytorch.qconfig.build_qconfig` builds the same observers
the engine calibrates with); only the "one layer at a time" loop is ours. BatchNorm is
not folded first: per-channel weight quantization is unaffected by the per-channel
scale folding applies, so the figure is close to the fused layer's.

Works on PyTorch modules that accept forward hooks (state_dicts, trusted pickles,
``.pt2`` programs), whichever engine the run uses; TorchScript archives and ONNX files
get ``{}`` and a note.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.jobs import JobContext, NullContext

WEIGHTED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
DEFAULT_SAMPLES = 16
UNAVAILABLE_NOTE = "per-layer sensitivity is measured on PyTorch models with a layer tree (not TorchScript or ONNX files)"


def sensitivity_layers(module: Any) -> list[str]:
    """Names of the layers sensitivity is measured for, in model order."""
    return [n for n, m in module.named_modules() if n and type(m).__name__ in WEIGHTED_TYPES]


def can_measure(model: Any) -> bool:
    import torch

    module = getattr(model, "module", None)
    return (
        getattr(model, "framework", "torch") == "torch"
        and module is not None
        and not isinstance(module, torch.jit.ScriptModule)
    )


def layer_sensitivity(
    model: Any,
    batches: Sequence[np.ndarray],
    config: QuantConfig,
    ctx: JobContext | None = None,
    *,
    layers: Sequence[str] | None = None,
) -> dict[str, float]:
    """layer name → relative output error (%) with only that layer in INT8.

    ``batches`` are float32 NCHW arrays (a few dozen samples are enough: the figure is a
    continuous error, not an accuracy). Reports progress per layer, honours cancel.
    """
    import torch

    from quantstudio.core.engines.pytorch.qconfig import build_qconfig
    from quantstudio.core.engines.pytorch.runner import quiet, resolve_backend

    ctx = ctx or NullContext()
    if not can_measure(model) or not batches:
        return {}
    module = model.module
    mods = dict(module.named_modules())
    names = [n for n in (layers if layers is not None else sensitivity_layers(module)) if n in mods]
    if not names:
        return {}
    xs = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in batches]
    was_training = module.training
    module.eval()
    try:
        with quiet():  # torch.ao's observers warn about reduce_range in torch 2.14
            qconfig = build_qconfig(config, resolve_backend(config.backend))
            return _measure(module, mods, names, xs, qconfig, ctx)
    finally:
        module.train(was_training)


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out.detach().double()


def _input_observers(mods: dict[str, Any], qconfig: Any) -> tuple[dict[str, Any], list[Any]]:
    """One activation observer per layer, fed that layer's input by a pre-hook: (observers,
    hook handles to remove). One pass over the samples observes every layer at once."""
    import torch

    observers = {n: qconfig.activation() for n in mods}

    def observe(name):
        def pre_hook(mod, args):
            if args and isinstance(args[0], torch.Tensor):
                observers[name](args[0].detach().float())

        return pre_hook

    return observers, [m.register_forward_pre_hook(observe(n)) for n, m in mods.items()]


def _remove(handles: list[Any]) -> None:
    for h in handles:
        h.remove()


def _run_samples(module: Any, xs: list[Any], ctx: Any) -> None:
    """Every batch through ``module`` (its hooks do the work), with a cancel point between batches."""
    import torch

    with torch.inference_mode():
        for x in xs:
            ctx.check_cancelled()
            module(x)


def _measure(module, mods, names, xs, qconfig, ctx) -> dict[str, float]:
    import torch

    def cancel_point(mod, args):
        ctx.check_cancelled()

    def run_all():
        # A cancel point before every measured layer, not only between layers: one pass
        # over the samples took 1-2 s on a loaded machine (a cancel waited that long).
        points = [mods[n].register_forward_pre_hook(cancel_point) for n in names]
        try:
            with torch.inference_mode():
                return [_first_tensor(module(x)) for x in xs]
        finally:
            for h in points:
                h.remove()

    # One calibration pass over the batches: every layer's input observer at once.
    observers, handles = _input_observers({n: mods[n] for n in names}, qconfig)
    ctx.report(0.0, "sensitivity: reference outputs and input ranges")
    try:
        reference = run_all()
    finally:
        _remove(handles)
    signal = sum(float((r * r).sum()) for r in reference)
    if signal == 0:
        return {}

    out: dict[str, float] = {}
    for i, name in enumerate(names):
        ctx.check_cancelled()
        ctx.report(i / len(names), f"sensitivity: {name} ({i + 1}/{len(names)})")
        layer, obs = mods[name], observers[name]
        if not torch.isfinite(obs.min_val).all() or not torch.isfinite(obs.max_val).all():
            continue  # the layer never ran on these inputs
        scale, zero_point = obs.calculate_qparams()
        act = (float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), obs.quant_min, obs.quant_max)

        def quantize_input(mod, args, _a=act):
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            return (torch.fake_quantize_per_tensor_affine(args[0].float(), *_a), *args[1:])

        original_weight = layer.weight.detach().clone()
        handle = layer.register_forward_pre_hook(quantize_input)
        try:
            with torch.no_grad():
                layer.weight.copy_(_fake_quantize_weight(original_weight.float(), qconfig).to(original_weight.dtype))
            perturbed = run_all()
        finally:
            handle.remove()
            with torch.no_grad():
                layer.weight.copy_(original_weight)
        noise = sum(float(((p - r) ** 2).sum()) for p, r in zip(perturbed, reference))
        out[name] = float(100.0 * np.sqrt(noise / signal))
    ctx.report(1.0, "sensitivity measured")
    return out


def _fake_quantize_weight(w, qconfig):
    """The weight as the INT8 engine stores it (same observer), back in float."""
    import torch

    obs = qconfig.weight()
    obs(w)
    scale, zero_point = obs.calculate_qparams()
    if scale.numel() > 1:  # per-channel
        return torch.fake_quantize_per_channel_affine(
            w, scale.float(), zero_point.to(torch.int32), obs.ch_axis, obs.quant_min, obs.quant_max)
    return torch.fake_quantize_per_tensor_affine(
        w, float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), obs.quant_min, obs.quant_max)


def most_sensitive(values: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` layers whose INT8 version moves the output most, largest first."""
    return sorted(values.items(), key=lambda kv: -kv[1])[:n]


# --------------------------------------------------------------------------- the fix each entry points at


def input_producers(module: Any) -> dict[str, list[str]]:
    """layer → the weighted layers whose outputs reach its input through weight-free ops.

    Why it matters (issue 13, OUTLIERS.md): what hurts a layer with an outlier input is
    the quantization of the tensor *entering* it, and both engines write that tensor as
    INT8 as long as its producer is INT8 — FP32 on the consumer alone changed nothing
    (ResNet-18 "3 blocks s300": 9.6 % torch / 14.4 % ORT), consumer *and* producer FP32
    recovered it (98.9 % / 99.1 %). Walks the ``torch.fx`` graph backwards through
    ReLU/BN/pooling/add/cat… to the nearest Conv/Linear layers; a module that cannot be
    traced gets ``{}`` (each entry then names its own layer only).
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow: no producer map, not an error
        return {}
    mods = dict(module.named_modules())

    def weighted(node: Any) -> bool:
        return node.op == "call_module" and type(mods.get(node.target)).__name__ in WEIGHTED_TYPES

    out: dict[str, list[str]] = {}
    for node in graph.nodes:
        if not weighted(node):
            continue
        found: list[str] = []
        stack, seen = list(node.all_input_nodes), set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            if weighted(p):
                found.append(str(p.target))
            elif p.op != "placeholder":
                stack.extend(p.all_input_nodes)
        out[str(node.target)] = sorted(set(found) - {str(node.target)})
    return out


def fix_layers(values: dict[str, float], producers: dict[str, list[str]],
               isolated: dict[str, dict[str, float]] | None = None) -> dict[str, list[str]]:
    """layer → the layers to set FP32 so that its error goes away, as the engines build it.

    The layer itself, plus its input's producers when the *input* quantization dominates
    its isolated error (input-only SQNR below weight-only SQNR), or when that split is not
    known: an engine writes a tensor as INT8 while any producer of it is INT8.
    """
    out: dict[str, list[str]] = {}
    for name in values:
        iso = (isolated or {}).get(name)
        input_dominates = iso is None or iso.get("input", 0.0) < iso.get("weight", 0.0)
        extra = producers.get(name, []) if input_dominates else []
        out[name] = [name] + [p for p in extra if p != name]
    return out


@dataclass(frozen=True)
class SensitivityEntry:
    """One ranked sensitivity entry: the layer, its figure, and what to set FP32 to fix it."""

    layer: str
    error: float  # % output error with only this layer INT8
    fix_layers: tuple[str, ...]  # the layer and, when its input is the problem, its input's producers


def ranked_entries(values: dict[str, float], fix: dict[str, Sequence[str]] | None = None) -> list[SensitivityEntry]:
    """Sensitivity entries, largest error first (``fix`` from ``RunSummary.sensitivity_fix``)."""
    fix = fix or {}
    return [SensitivityEntry(name, err, tuple(fix.get(name) or (name,))) for name, err in most_sensitive(values, len(values))]


def fp32_layers_for_top(values: dict[str, float] | Sequence[SensitivityEntry], fix: dict[str, Sequence[str]] | None = None,
                        k: int = 3) -> list[str]:
    """The layers "Keep most sensitive layers in FP32 ▸ k" sets to FP32: the union of the
    top-``k`` entries' fix layers, in rank order. Takes ``summary.sensitivity`` and
    ``summary.sensitivity_fix`` (or a list of :class:`SensitivityEntry`)."""
    entries = ranked_entries(values, fix) if isinstance(values, dict) else list(values)
    out: list[str] = []
    for e in entries[: max(int(k), 0)]:
        out += [n for n in e.fix_layers if n not in out]
    return out


def isolated_errors(model: Any, batches: Sequence[np.ndarray], config: QuantConfig,
                    ctx: JobContext | None = None) -> dict[str, dict[str, float]]:
    """layer → SQNR (dB) of its own output with {"both", "input", "weight"} quantized, every
    layer fed its FP32 input (so nothing accumulates from the layers before it).

    The accumulated per-layer SQNR goes red for every layer after the first damaged one;
    this figure singles out the culprit, and ``input`` vs ``weight`` says whether FP32 on the
    layer alone can fix it. Ranges: the run's activation and weight observers
    (:func:`~quantstudio.core.engines.pytorch.qconfig.build_qconfig`), observed on
    ``batches``. Two forward passes whatever the number of layers. {} where it cannot be
    measured (TorchScript, ONNX files).
    """
    import torch

    from quantstudio.core.engines.pytorch.qconfig import build_qconfig
    from quantstudio.core.engines.pytorch.runner import quiet, resolve_backend

    ctx = ctx or NullContext()
    if not can_measure(model) or not batches:
        return {}
    module = model.module
    mods = {n: m for n, m in module.named_modules() if n and type(m).__name__ in WEIGHTED_TYPES}
    if not mods:
        return {}
    xs = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in batches]
    was_training = module.training
    module.eval()
    try:
        with quiet():
            qconfig = build_qconfig(config, resolve_backend(config.backend))
            observers, handles = _input_observers(mods, qconfig)
            try:
                _run_samples(module, xs, ctx)
            finally:
                _remove(handles)
            weights = {n: _fake_quantize_weight(m.weight.detach().float(), qconfig).to(m.weight.dtype)
                       for n, m in mods.items()}
            acc = {n: {"signal": 0.0, "both": 0.0, "input": 0.0, "weight": 0.0} for n in mods}

            def measure(name):
                obs = observers[name]
                if not torch.isfinite(obs.min_val).all():
                    return None
                scale, zp = obs.calculate_qparams()
                act = (float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), obs.quant_min, obs.quant_max)

                def hook(mod, args, out):
                    if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
                        return
                    x = args[0]
                    xq = torch.fake_quantize_per_tensor_affine(x.float(), *act).to(x.dtype)
                    a = acc[name]
                    y = out.double()
                    a["signal"] += float((y * y).sum())
                    for key, xi, w in (("both", xq, weights[name]), ("input", xq, mod.weight), ("weight", x, weights[name])):
                        a[key] += float(((_run_layer(mod, xi, w).double() - y) ** 2).sum())
                return hook

            handles = [h for n, m in mods.items() if (hk := measure(n)) is not None
                       for h in (m.register_forward_hook(hk),)]
            try:
                _run_samples(module, xs, ctx)
            finally:
                _remove(handles)
    finally:
        module.train(was_training)
    out: dict[str, dict[str, float]] = {}
    for n, a in acc.items():
        if a["signal"] <= 0:
            continue
        out[n] = {k: (float("inf") if a[k] == 0 else float(10.0 * np.log10(a["signal"] / a[k])))
                  for k in ("both", "input", "weight")}
    return out


def _run_layer(mod: Any, x: Any, w: Any) -> Any:
    """The layer's own computation with weight ``w`` (Conv: its _conv_forward; Linear: F.linear)."""
    import torch.nn.functional as F

    if hasattr(mod, "_conv_forward"):
        return mod._conv_forward(x, w, mod.bias)
    return F.linear(x, w, mod.bias)


# --------------------------------------------------------------------------- reuse across runs

# (model weights, samples, settings) → (sensitivity, fix layers). Same model + data + config
# measured again (a second Quantize run, the auto search after a run) costs nothing.
_CACHE: "OrderedDict[str, tuple[dict[str, float], dict[str, list[str]], dict[str, dict[str, float]]]]" = OrderedDict()
_CACHE_SIZE = 8


def cache_key(module: Any, batches: Sequence[np.ndarray], config: QuantConfig) -> str:
    """A digest of the module's weights and buffers, the samples and the settings the figure depends on."""
    import hashlib

    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if hasattr(t, "numpy") else repr(t).encode())
    for b in batches:
        h.update(np.ascontiguousarray(b, dtype=np.float32).tobytes())
    h.update(repr((config.calibration, config.per_channel, config.symmetric_activations, config.backend)).encode())
    return h.hexdigest()


def measure_with_fix(model: Any, batches: Sequence[np.ndarray], config: QuantConfig, ctx: JobContext | None = None,
                     ) -> tuple[dict[str, float], dict[str, list[str]], dict[str, dict[str, float]]]:
    """(sensitivity, fix layers, isolated errors) for ``model``, reused when measured before."""
    if not can_measure(model) or not batches:
        return {}, {}, {}
    key = cache_key(model.module, batches, config)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        (ctx or NullContext()).report(1.0, "sensitivity reused from an earlier run of the same model and data")
        values, fix, iso = _CACHE[key]
        return dict(values), {k: list(v) for k, v in fix.items()}, dict(iso)
    iso = isolated_errors(model, batches, config, ctx)
    values = layer_sensitivity(model, batches, config, ctx)
    fix = fix_layers(values, input_producers(model.module), iso)
    _CACHE[key] = (values, fix, iso)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return dict(values), {k: list(v) for k, v in fix.items()}, dict(iso)

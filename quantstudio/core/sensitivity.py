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
    observers = {n: qconfig.activation() for n in names}

    def observe(name):
        def pre_hook(mod, args):
            if args and isinstance(args[0], torch.Tensor):
                observers[name](args[0].detach().float())

        return pre_hook

    handles = [mods[n].register_forward_pre_hook(observe(n)) for n in names]
    ctx.report(0.0, "sensitivity: reference outputs and input ranges")
    try:
        reference = run_all()
    finally:
        for h in handles:
            h.remove()
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

"""Cross-layer equalization (CLE) of a PyTorch model before INT8 quantization (issue 13).

Why: a model can have *outlier channels* -- one channel of an activation tensor ~100-300x
larger than its neighbours (common after training; also made function-preservingly by
rescaling a BN channel and the next conv's input weights). A per-tensor INT8 activation
range then spends almost all of its 256 steps on that one channel and the others collapse
to a few levels. Measured (tests/benchmarks/OUTLIERS.md, AMD EPYC AVX-512-VNNI, 540 digits):
ResNet-18 with three such channels (x300) fell from 98.89 % to 9.6 % (torch FX) / 14.4 %
(ONNX Runtime) with today's min-max INT8, and no calibration method (percentile, entropy,
moving average) fixed it -- one channel is far more than the tail a percentile clips.
Equalizing first recovered it to 99.07 % / 98.89 %, and left the normal ResNet-18 unchanged.

What: for every chain ``Conv2d -> BatchNorm2d -> [ReLU | LeakyReLU | nothing] -> Conv2d``
(each edge with one reader), output channel ``c`` of the first conv's BN is divided by
``s_c`` and input channel ``c`` of the second conv's weights multiplied by ``s_c``.
ReLU is positively homogeneous (``relu(x / s) = relu(x) / s`` for ``s > 0``), so the FP32
function is unchanged; ``s_c = sqrt(r1_c / r2_c)`` with ``r1_c`` the range of the first
conv's BN-folded weights of output channel ``c`` and ``r2_c`` the range of the second
conv's weights on input channel ``c`` -- exactly torch.ao's ``cross_layer_equalization``
rule -- so both ranges become ``sqrt(r1_c * r2_c)`` and the activation between them loses
its outlier channel.

The scale goes into the BN's gamma/beta, not into folded conv weights: folding BN into the
conv first (torch.ao's ``fuse_modules`` + ``cross_layer_equalization``) leaves an Identity
where the BN was, which stops torch FX fusing conv+BN+ReLU -- measured 1.3-1.4x slower
torch INT8 (OUTLIERS.md finding 5). Scaling gamma/beta keeps the graph, every fusion and
therefore the INT8 speed unchanged.

Not equalized (the scaling would not be exact): chains through a clipping or non-homogeneous
activation (ReLU6, Hardtanh, SiLU, GELU, ...), tensors with several readers (residual
streams: one scale per channel over every producer and reader is needed; not done here),
modules called more than once, BNs without running statistics. Grouped and depthwise second
convs are handled (input channel ``c`` is one weight column of its group).

Everything works on a deep copy; the caller's module is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Iterations over all pairs: a chain conv_a -> conv_b -> conv_c shares conv_b, so equalizing
# (b, c) changes nothing in (a, b)'s input-channel range but (a, b) changes conv_b's weights,
# i.e. (b, c)'s output-channel range; a few rounds converge (torch.ao's equalize() iterates too).
MAX_ROUNDS = 20
CONVERGED = 1e-3  # stop when every channel's scale in a round is within 0.1 % of 1
# A channel whose weight range is ~0 on either side (dead channel, gamma = 0) keeps s = 1:
# sqrt(0 / r) would blow its beta up to a huge constant and create the outlier we remove.
TINY = 1e-12
# The equalized copy must compute what the original does; checked once on the example input.
# Float32 rounding of a rescaled network stays around 1e-6 relative; 1e-3 flags a real change.
MAX_RELATIVE_CHANGE = 1e-3

NEEDS_EAGER_NOTE = (
    "outlier-channel equalization was skipped: equalization needs a PyTorch model with its layers "
    "(a state_dict or a pickled module), not {what}"
)


@dataclass
class EqualizedPair:
    """One equalized chain: ``conv1 -> bn -> activation -> conv2`` (module names)."""

    conv1: str
    bn: str
    activation: str | None  # "relu", "leaky_relu" or None (BN output read directly)
    conv2: str
    max_scale: float  # the largest factor a BN channel was divided by (outlier channels: large)
    min_scale: float


@dataclass
class EqualizeReport:
    """What :func:`equalize` did. ``module`` is the equalized copy (or the input, unchanged)."""

    module: Any
    pairs: list[EqualizedPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_relative_change: float | None = None  # measured on the example input

    @property
    def equalized(self) -> bool:
        return bool(self.pairs)

    @property
    def max_scale(self) -> float:
        """The largest per-channel factor over all pairs (1.0 when nothing was equalized)."""
        return max((max(p.max_scale, 1.0 / p.min_scale) for p in self.pairs), default=1.0)


# ----------------------------------------------------------------------------- chain search


def _activation_kind(node: Any, modules: dict[str, Any]) -> str | None:
    """'relu' / 'leaky_relu' for a positively homogeneous activation node, else None."""
    import torch
    import torch.nn.functional as F

    if node.op == "call_module":
        m = modules.get(node.target)
        # Exactly ReLU / LeakyReLU: ReLU6, Hardtanh, ... clip, so x/s through them is not (f(x))/s.
        if type(m) is torch.nn.ReLU:
            return "relu"
        if type(m) is torch.nn.LeakyReLU:
            return "leaky_relu"
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return "relu"
        if node.target is F.leaky_relu:
            return "leaky_relu"
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _sole_user(node: Any) -> Any | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_pairs(module: Any) -> list[tuple[str, str, str | None, str]]:
    """(conv1, bn, activation, conv2) chains of ``module`` that can be equalized exactly.

    Raises whatever ``torch.fx.symbolic_trace`` raises on a model it cannot trace.
    """
    import torch
    from torch import fx

    graph = fx.symbolic_trace(module).graph
    modules = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def called_once(name: str) -> bool:
        # A module called twice shares its weights between two places: scaling it for one
        # chain would change the other.
        return calls.get(name, 0) == 1

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not torch.nn.Conv2d:
            continue
        bn_node = _sole_user(node)
        if (bn_node is None or bn_node.op != "call_module"
                or type(modules.get(bn_node.target)) is not torch.nn.BatchNorm2d
                or not bn_node.args or bn_node.args[0] is not node):
            continue
        bn = modules[bn_node.target]
        if not bn.affine or bn.running_var is None:
            continue  # no gamma/beta to scale, or batch statistics (not a fixed affine map)
        nxt = _sole_user(bn_node)
        if nxt is None:
            continue
        act = None
        if not (nxt.op == "call_module" and type(modules.get(nxt.target)) is torch.nn.Conv2d):
            act = _activation_kind(nxt, modules)
            if act is None or not nxt.args or nxt.args[0] is not bn_node:
                continue
            nxt = _sole_user(nxt)
        if (nxt is None or nxt.op != "call_module"
                or type(modules.get(nxt.target)) is not torch.nn.Conv2d
                or not nxt.args or len(nxt.args) != 1 or nxt.kwargs):
            continue
        conv1, conv2 = modules[node.target], modules[nxt.target]
        if not (conv1.out_channels == bn.num_features == conv2.in_channels):
            continue
        if not all(called_once(n) for n in (node.target, bn_node.target, nxt.target)):
            continue
        pairs.append((node.target, bn_node.target, act, nxt.target))
    return pairs


# ----------------------------------------------------------------------------- scaling


def _input_channel_view(conv: Any):
    """conv2's weight as (groups, out/groups, in/groups, kh, kw): input channel c is
    [c // (in/groups), :, c % (in/groups)] -- for dense convs groups = 1."""
    w = conv.weight
    g = conv.groups
    return w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])


def _scales(conv1: Any, bn: Any, conv2: Any):
    """Per-channel s = sqrt(r1 / r2), torch.ao's cross_layer_equalization rule, on the
    BN-folded conv1 (what the INT8 kernel will really see) and conv2's input channels."""
    import torch

    fold = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w1 = conv1.weight * fold.view(-1, *([1] * (conv1.weight.dim() - 1)))
    r1 = w1.abs().flatten(1).amax(dim=1)
    w2 = _input_channel_view(conv2)
    r2 = w2.abs().amax(dim=(1, 3, 4)).reshape(-1)
    s = torch.sqrt(r1 / r2.clamp(min=TINY))
    return torch.where((r1 > TINY) & (r2 > TINY), s, torch.ones_like(s))


def _apply(bn: Any, conv2: Any, s: Any) -> None:
    import torch

    with torch.no_grad():
        bn.weight.div_(s)
        bn.bias.div_(s)
        w2 = _input_channel_view(conv2)
        w2.mul_(s.view(conv2.groups, 1, -1, 1, 1))


def _first_tensor(out: Any):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        return next((v for v in out.values() if isinstance(v, torch.Tensor)), None)
    return None


def equalize(module: Any, example_input: Any = None) -> EqualizeReport:
    """Cross-layer equalization of a deep copy of the eager ``module``.

    Returns an :class:`EqualizeReport` whose ``module`` is the equalized copy, or ``module``
    itself (unchanged, with a note) when FX cannot trace it, nothing can be equalized, or the
    copy's output on ``example_input`` differs from the original's.
    """
    import torch

    try:
        pairs = find_pairs(module)
    except Exception as exc:  # noqa: BLE001 - FX fails in many ways on dynamic Python code
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return EqualizeReport(module, notes=[
            f"outlier-channel equalization was skipped: the model could not be traced ({first})"])
    if not pairs:
        return EqualizeReport(module, notes=["no conv \u2192 BN \u2192 ReLU \u2192 conv chains to equalize"])

    eq = copy.deepcopy(module)
    was_training = eq.training
    eq.eval()
    mods = dict(eq.named_modules())
    total: dict[tuple[str, str, str | None, str], Any] = {p: None for p in pairs}  # per-channel product of scales
    for _ in range(MAX_ROUNDS):
        worst = 0.0
        for p in pairs:
            conv1, bn, conv2 = mods[p[0]], mods[p[1]], mods[p[3]]
            with torch.no_grad():
                s = _scales(conv1, bn, conv2)
                _apply(bn, conv2, s)
            total[p] = s if total[p] is None else total[p] * s
            worst = max(worst, float((s.log().abs()).max()))
        if worst < CONVERGED:
            break

    report = EqualizeReport(eq, pairs=[
        EqualizedPair(c1, bn, act, c2, float(total[(c1, bn, act, c2)].max()), float(total[(c1, bn, act, c2)].min()))
        for c1, bn, act, c2 in pairs
    ])
    if example_input is not None:
        ref_mode = module.training
        try:
            module.eval()
            with torch.no_grad():
                a, b = _first_tensor(module(example_input)), _first_tensor(eq(example_input))
        except Exception as exc:  # noqa: BLE001 - e.g. a half-precision model given a float32 input
            # Unchecked is not used: an equalized copy must be known to compute the same.
            return EqualizeReport(module, notes=[
                f"outlier-channel equalization was skipped: the model could not be checked on an example "
                f"input ({type(exc).__name__})"])
        finally:
            module.train(ref_mode)
        if a is not None and b is not None:
            change = float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=TINY))
            report.max_relative_change = change
            if not change <= MAX_RELATIVE_CHANGE:  # also catches NaN
                return EqualizeReport(module, notes=[
                    f"outlier-channel equalization was skipped: the equalized model's output differed "
                    f"from the original's by {change:.2g} (relative), so it was not used"])
    if was_training:
        eq.train()
    return report


# ----------------------------------------------------------------------------- pipeline hook


def equalized_model(model: Any, config: Any, notes: list[str]) -> Any:
    """The LoadedModel the engine should quantize: ``model`` with an equalized copy of its
    ``module`` (everything else shared), or ``model`` itself when equalization is off or does
    not apply. Appends what happened to ``notes``. The caller keeps ``model`` as the FP32
    reference (evaluation, timing): only the engine sees the copy.

    Applies to static INT8 only (dynamic INT8 measures each batch's range at run time and
    FP16 has no ranges) and to eager PyTorch models (state_dicts, pickled modules): ONNX and
    TorchScript files have no modules whose BN and conv weights can be rescaled here.
    """
    if not getattr(config, "equalize", True) or getattr(config, "mode", "static") != "static":
        return model
    if getattr(model, "module", None) is None or not getattr(model, "is_eager", False):
        what = "an ONNX file" if getattr(model, "framework", None) == "onnx" else "a compiled (TorchScript/exported) model"
        notes.append(NEEDS_EAGER_NOTE.format(what=what))
        return model
    try:
        example = model.example_input(batch=1)
    except Exception:  # noqa: BLE001 - unknown input shape: the engine reports that itself
        example = None
    report = equalize(model.module, example)
    notes.extend(n for n in report.notes if n.startswith("outlier-channel"))
    if not report.equalized:
        return model
    notes.append(
        f"equalized {len(report.pairs)} conv \u2192 BN \u2192 conv pair(s) before quantizing "
        f"(largest channel scale {report.max_scale:.3g}); the FP32 function is unchanged "
        "(turn off with --no-equalize / the Equalize checkbox)"
    )
    return dataclasses.replace(model, module=report.module)

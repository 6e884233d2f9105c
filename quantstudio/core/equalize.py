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

Not equalized pairwise (the scaling would not be exact): chains through a clipping or
non-homogeneous activation (ReLU6, Hardtanh, SiLU, GELU, ...), tensors with several readers,
modules called more than once, BNs without running statistics. Grouped and depthwise second
convs are handled (input channel ``c`` is one weight column of its group).

Residual streams (gated stream equalization): a tensor with several readers that flows
through ``add`` nodes -- MobileNetV2's inverted-residual stages -- has several producers
(every block's projection BN adds into it) and several readers (every next expansion conv),
so no pair owns it. One scale per stream channel works: divide channel ``c`` of *every*
producer BN's gamma/beta by ``s_c`` and multiply input channel ``c`` of *every* reader conv
by ``s_c``; the adds are linear, so every tensor of the stream is divided by ``s_c`` and the
FP32 function is unchanged. The scale comes from the activations (the weights say nothing
about where a stream's range comes from): ``a_c`` = max |x| of channel ``c`` over the
stream's tensors on a few calibration batches, and only channels above ``STREAM_GATE`` x
the stream's median are touched, brought down to that bound (``s_c = a_c / (4 median)``);
every other channel keeps ``s_c = 1``, so a model without outliers is quantized exactly as
before. Measured (OUTLIERS.md, tests/benchmarks/outlier_study.py's prototype): MobileNetV2
with outliers in a stream went from 9.6 % (both engines) to 98.0 % torch / 98.5 % ORT, FP32
98.5 %; the ungated SmoothQuant-style rule (every channel, alpha 0.5) also recovered it but
cost 2-4 test images on the normal MobileNetV2, hence the gate. A stream is only rewritten
when the whole group qualifies: every input of its adds is another add of the group or a
Conv2d -> BatchNorm2d output, and every reader of its tensors is an add of the group or a
Conv2d taking it as its only input; a ReLU right after an add passes the stream on (ResNet's
add -> ReLU -> next block and identity path: ReLU is positively homogeneous, so the scaling
stays exact). Anything else -- pooling (ResNet's stem max-pool feeding layer1, the average
pool after layer4), the model output -- leaves that stream alone (a debug note in the
report says why).

Everything works on a deep copy; the caller's module is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from quantstudio.core.errors import Cancelled

log = logging.getLogger(__name__)

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
# Residual streams: channels above STREAM_GATE x the stream's median range are brought down to
# that bound. 4 is what was measured (OUTLIERS.md): it recovers x30..x300 outliers and leaves
# the normal MobileNetV2 and ResNet-18 as they were.
STREAM_GATE = 4.0
# The stream ranges come from the first calibration samples: a channel 30x larger than its
# neighbours shows in any batch, and this pass (an FX interpreter, every tensor of every
# stream) comes on top of the engine's own calibration: 128 samples cost a 224x224
# ResNet-50 17.6 s here (2-core EPYC), so 32 (~4.5 s).
STREAM_MAX_BATCHES = 4
STREAM_MAX_SAMPLES = 32

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
class StreamGroup:
    """A residual stream found in the graph: its producer BNs, reader convs and adds."""

    producers: list[str]  # BatchNorm2d module names whose outputs enter the stream
    readers: list[str]  # Conv2d module names that read a tensor of the stream
    adds: list[str]  # FX node names of the stream's adds
    tensors: list[str] = field(default_factory=list)  # FX node names measured (producers' outputs and the adds)


@dataclass
class EqualizedStream:
    """One stream whose outlier channels were scaled down."""

    producers: list[str]
    readers: list[str]
    channels: list[int]  # the channels scaled down
    max_scale: float  # the largest factor a channel was divided by


@dataclass
class EqualizeReport:
    """What :func:`equalize` did. ``module`` is the equalized copy (or the input, unchanged)."""

    module: Any
    pairs: list[EqualizedPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_relative_change: float | None = None  # measured on the example input
    streams: list[EqualizedStream] = field(default_factory=list)

    @property
    def equalized(self) -> bool:
        return bool(self.pairs or self.streams)

    @property
    def max_scale(self) -> float:
        """The largest per-channel factor over all pairs and streams (1.0 when nothing was equalized)."""
        return max([max(p.max_scale, 1.0 / p.min_scale) for p in self.pairs] + [t.max_scale for t in self.streams],
                   default=1.0)


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
    from torch import fx

    return _find_pairs(fx.symbolic_trace(module).graph, dict(module.named_modules()))


def _call_counts(graph: Any) -> dict[str, int]:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def _find_pairs(graph: Any, modules: dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    import torch

    calls = _call_counts(graph)

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


def _is_add(node: Any) -> bool:
    """``a + b`` of two tensors (operator.add / iadd, torch.add, Tensor.add / add_ / __add__)."""
    import torch

    if node.op == "call_function":
        ok = node.target in (operator.add, operator.iadd, torch.add)
    elif node.op == "call_method":
        ok = node.target in ("add", "add_", "__add__", "__iadd__")
    else:
        return False
    # No kwargs (alpha=, out=) and two graph tensors: ``x + 1`` is not homogeneous in x.
    return ok and not node.kwargs and len(node.args) == 2 and all(hasattr(a, "users") for a in node.args)


def _is_relu_of_add(node: Any, modules: dict[str, Any]) -> bool:
    """``relu(a)`` (ReLU module, F.relu / torch.relu, Tensor.relu) of an add node ``a``."""
    if not node.args or not hasattr(node.args[0], "users") or not _is_add(node.args[0]):
        return False
    if any(k != "inplace" for k in node.kwargs) or len(node.args) != 1:
        return False
    return _activation_kind(node, modules) == "relu"


def find_streams(module: Any) -> tuple[list[StreamGroup], list[str]]:
    """The residual streams of ``module`` that can be equalized exactly, and a debug note per
    stream that cannot (which node stops it). Raises what ``torch.fx.symbolic_trace`` raises."""
    from torch import fx

    return _find_streams(fx.symbolic_trace(module).graph, dict(module.named_modules()))


def _find_streams(graph: Any, modules: dict[str, Any]) -> tuple[list[StreamGroup], list[str]]:
    import torch

    calls = _call_counts(graph)
    parent: dict[Any, Any] = {}

    def find(n: Any) -> Any:
        while parent.setdefault(n, n) is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    # Union every add with its inputs: a stream is the set of tensors joined by adds.
    adds = [n for n in graph.nodes if _is_add(n)]
    for a in adds:
        for arg in a.args:
            parent[find(arg)] = find(a)
    # A ReLU right after an add passes the stream on (ResNet: add -> ReLU -> next block and
    # its identity path): relu(x / s) = relu(x) / s for s > 0, so the scaling stays exact.
    for n in graph.nodes:
        if _is_relu_of_add(n, modules):
            parent[find(n)] = find(n.args[0])
    members: dict[Any, list[Any]] = {}
    for n in graph.nodes:  # graph order: producers and adds listed as they run
        if n in parent:
            members.setdefault(find(n), []).append(n)

    def producer(n: Any) -> Any | None:
        """The BatchNorm2d of ``n = bn(conv(...))``, or None."""
        m = modules.get(n.target) if n.op == "call_module" else None
        if (type(m) is not torch.nn.BatchNorm2d or not m.affine or m.running_var is None
                or calls.get(n.target) != 1 or len(n.args) != 1 or n.kwargs):
            return None
        src = n.args[0]
        if not (hasattr(src, "op") and src.op == "call_module" and type(modules.get(src.target)) is torch.nn.Conv2d):
            return None
        return m

    def reader(u: Any, n: Any) -> Any | None:
        """The Conv2d that ``u`` calls on ``n`` alone, or None."""
        m = modules.get(u.target) if u.op == "call_module" else None
        if type(m) is not torch.nn.Conv2d or calls.get(u.target) != 1 or tuple(u.args) != (n,) or u.kwargs:
            return None
        return m

    groups, skipped = [], []
    for nodes in members.values():
        group_adds = [n for n in nodes if _is_add(n)]
        if not group_adds:
            continue
        in_group = set(nodes)
        producers: list[str] = []
        readers: list[str] = []
        channels: set[int] = set()
        why = ""
        for n in nodes:
            if not _is_add(n) and not _is_relu_of_add(n, modules):
                bn = producer(n)
                if bn is None:
                    why = f"{n.name} adds into it and is not a Conv2d → BatchNorm2d output"
                    break
                producers.append(n.target)
                channels.add(bn.num_features)
            for u in n.users:
                if u in in_group and (_is_add(u) or _is_relu_of_add(u, modules)):
                    continue
                conv = reader(u, n)
                if conv is None:
                    why = f"{u.name} reads {n.name}"
                    break
                readers.append(u.target)
                channels.add(conv.in_channels)
            if why:
                break
        if not why and len(channels) != 1:
            why = f"its producers and readers disagree on the channel count ({sorted(channels)})"
        if not why and not producers:
            why = "it has no BatchNorm2d producer to scale"
        if why:
            skipped.append(f"residual stream at {group_adds[0].name} not equalized: {why}")
            continue
        groups.append(StreamGroup(producers, readers, [a.name for a in group_adds],
                                  [n.name for n in nodes]))
    return groups, skipped


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


def _stream_ranges(eq: Any, groups: list[StreamGroup], batches: Iterable[Any]) -> list[Any]:
    """Per group, max |x| per channel over the group's tensors on ``batches`` (the copy ``eq``).

    An FX Interpreter sees every node's value, the adds included (they are not modules, so
    forward hooks cannot reach them)."""
    import torch
    from torch import fx

    wanted = {name: k for k, g in enumerate(groups) for name in g.tensors}
    amax: list[Any] = [None] * len(groups)

    class Recorder(fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            k = wanted.get(n.name)
            if k is not None:
                a = out.detach().abs().float().transpose(0, 1).flatten(1).amax(dim=1)
                amax[k] = a if amax[k] is None else torch.maximum(amax[k], a)
            return out

    recorder = Recorder(fx.symbolic_trace(eq))
    seen = 0
    with torch.no_grad():
        for x in itertools.islice(batches, STREAM_MAX_BATCHES):  # islice: no batch read past the last
            x = torch.as_tensor(np.asarray(x, dtype=np.float32)[: STREAM_MAX_SAMPLES - seen])
            recorder.run(x)
            seen += len(x)
            if seen >= STREAM_MAX_SAMPLES:
                break
    return amax


def _stream_scales(amax: Any, gate: float) -> Any | None:
    """s_c = a_c / (gate * median) where a_c exceeds that bound, else 1; None when no channel does."""
    import torch

    bound = gate * float(amax.median())
    if not bound > TINY:  # a dead stream (or NaN): nothing to measure against
        return None
    s = (amax / bound).clamp(min=1.0)
    if not bool((s > 1.0).any()):
        return None
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def _equalize_streams(eq: Any, groups: list[StreamGroup], batches: Iterable[Any], gate: float
                      ) -> tuple[list[EqualizedStream], dict[str, Any]]:
    """Scale the outlier channels of every stream of ``eq`` in place; returns what was done and
    the original values of every tensor changed (to undo it if the check fails)."""
    import torch

    mods = dict(eq.named_modules())
    done: list[EqualizedStream] = []
    saved: dict[str, Any] = {}
    for g, amax in zip(groups, _stream_ranges(eq, groups, batches)):
        s = None if amax is None else _stream_scales(amax, gate)
        if s is None:
            continue
        with torch.no_grad():
            for name in g.producers:
                bn = mods[name]
                saved.setdefault(f"{name}.weight", bn.weight.detach().clone())
                saved.setdefault(f"{name}.bias", bn.bias.detach().clone())
                bn.weight.div_(s)
                bn.bias.div_(s)
            for name in g.readers:
                conv = mods[name]
                saved.setdefault(f"{name}.weight", conv.weight.detach().clone())
                _input_channel_view(conv).mul_(s.view(conv.groups, 1, -1, 1, 1))
        done.append(EqualizedStream(g.producers, g.readers, [int(c) for c in torch.nonzero(s > 1.0).flatten()],
                                    float(s.max())))
    return done, saved


def _restore(eq: Any, saved: dict[str, Any]) -> None:
    import torch

    params = dict(eq.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _relative_change(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=TINY))


def equalize(module: Any, example_input: Any = None, calib_batches: Iterable[Any] | None = None,
             gate: float = STREAM_GATE) -> EqualizeReport:
    """Cross-layer equalization of a deep copy of the eager ``module``, then (given
    ``calib_batches``, N×C×H×W arrays) gated equalization of its residual streams.

    Returns an :class:`EqualizeReport` whose ``module`` is the equalized copy, or ``module``
    itself (unchanged, with a note) when FX cannot trace it, nothing can be equalized, or the
    copy's output on ``example_input`` differs from the original's. ``calib_batches`` is read
    only when the model has a residual stream to measure (at most STREAM_MAX_BATCHES batches /
    STREAM_MAX_SAMPLES samples); a :class:`~quantstudio.core.errors.Cancelled` raised while
    reading it propagates.
    """
    import torch
    from torch import fx

    try:
        graph = fx.symbolic_trace(module).graph
        modules = dict(module.named_modules())
        pairs = _find_pairs(graph, modules)
        groups, debug = _find_streams(graph, modules)
    except Exception as exc:  # noqa: BLE001 - FX fails in many ways on dynamic Python code
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return EqualizeReport(module, notes=[
            f"outlier-channel equalization was skipped: the model could not be traced ({first})"])
    for note in debug:
        log.debug(note)
    if calib_batches is None:
        groups = []
    if not pairs and not groups:
        return EqualizeReport(module, notes=["no conv \u2192 BN \u2192 ReLU \u2192 conv chains or residual streams to equalize",
                                             *debug])

    eq = copy.deepcopy(module)
    was_training = eq.training
    eq.eval()
    mods = dict(eq.named_modules())
    total: dict[tuple[str, str, str | None, str], Any] = {p: None for p in pairs}  # per-channel product of scales
    for _ in range(MAX_ROUNDS if pairs else 0):
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
    ], notes=list(debug))
    reference = None
    if example_input is not None:
        ref_mode = module.training
        try:
            module.eval()
            with torch.no_grad():
                reference = _first_tensor(module(example_input))
                b = _first_tensor(eq(example_input)) if pairs else None
        except Exception as exc:  # noqa: BLE001 - e.g. a half-precision model given a float32 input
            # Unchecked is not used: an equalized copy must be known to compute the same.
            return EqualizeReport(module, notes=[
                f"outlier-channel equalization was skipped: the model could not be checked on an example "
                f"input ({type(exc).__name__})"])
        finally:
            module.train(ref_mode)
        if reference is not None and b is not None:
            change = _relative_change(reference, b)
            report.max_relative_change = change
            if not change <= MAX_RELATIVE_CHANGE:  # also catches NaN
                return EqualizeReport(module, notes=[
                    f"outlier-channel equalization was skipped: the equalized model's output differed "
                    f"from the original's by {change:.2g} (relative), so it was not used"])

    if groups and calib_batches is not None:
        report.streams, saved = _stream_equalization(eq, groups, calib_batches, gate, report.notes)
        if report.streams and reference is not None:
            with torch.no_grad():
                b = _first_tensor(eq(example_input))
            change = _relative_change(reference, b) if b is not None else 0.0
            if not change <= MAX_RELATIVE_CHANGE:
                _restore(eq, saved)
                report.streams = []
                report.notes.append(
                    f"outlier-channel equalization of residual streams was skipped: the equalized model's output "
                    f"differed from the original's by {change:.2g} (relative), so it was not used")
            else:
                report.max_relative_change = max(change, report.max_relative_change or 0.0)
    if not report.equalized:
        # Nothing changed (no pairs, no stream over the gate): the caller's module, bit for bit.
        return EqualizeReport(module, notes=report.notes)
    if was_training:
        eq.train()
    return report


def _stream_equalization(eq: Any, groups: list[StreamGroup], batches: Iterable[Any], gate: float,
                         notes: list[str]) -> tuple[list[EqualizedStream], dict[str, Any]]:
    try:
        return _equalize_streams(eq, groups, batches, gate)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - a batch the model cannot run: the engine will say so itself
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        notes.append(f"outlier-channel equalization of residual streams was skipped: measuring the streams "
                     f"on calibration data failed ({first})")
        return [], {}


# ----------------------------------------------------------------------------- pipeline hook


def calibration_batches(stream: Any, ctx: Any) -> Iterator[np.ndarray]:
    """The first few batches of the calibration ``stream`` (a BatchStream), for measuring
    residual streams: at most STREAM_MAX_BATCHES batches / STREAM_MAX_SAMPLES samples.

    Read from the stream's source, not by iterating the stream: iterating would report
    "calibrating" progress and count skipped files that the engine's own calibration pass
    reports again. Checks ``ctx`` for cancellation before each batch. Lazy: nothing is read
    unless the model has a residual stream to measure.
    """
    indices = np.asarray(stream.indices)[: min(STREAM_MAX_SAMPLES, STREAM_MAX_BATCHES * stream.batch_size)]
    for start in range(0, len(indices), stream.batch_size):
        ctx.check_cancelled()
        x, kept, _ = stream.source.read(indices[start : start + stream.batch_size])
        if len(kept):
            yield x


def equalized_model(model: Any, config: Any, notes: list[str], calib_batches: Iterable[Any] | None = None) -> Any:
    """The LoadedModel the engine should quantize: ``model`` with an equalized copy of its
    ``module`` (everything else shared), or ``model`` itself when equalization is off or does
    not apply. Appends what happened to ``notes``. The caller keeps ``model`` as the FP32
    reference (evaluation, timing): only the engine sees the copy. ``calib_batches``
    (N×C×H×W float32 arrays, e.g. :func:`calibration_batches`) enables residual-stream
    equalization; without it only conv -> BN -> conv pairs are equalized.

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
    report = equalize(model.module, example, calib_batches)
    notes.extend(n for n in report.notes if n.startswith("outlier-channel"))
    if not report.equalized:
        return model
    done = []
    if report.pairs:
        done.append(f"{len(report.pairs)} conv \u2192 BN \u2192 conv pair(s)")
    if report.streams:
        channels = sum(len(t.channels) for t in report.streams)
        done.append(f"{len(report.streams)} residual stream(s) ({channels} outlier channel(s) brought down to "
                    f"{STREAM_GATE:g}\u00d7 their stream's median range)")
    notes.append(
        f"equalized {' and '.join(done)} before quantizing "
        f"(largest channel scale {report.max_scale:.3g}); the FP32 function is unchanged "
        "(turn off with --no-equalize / the Equalize checkbox)"
    )
    return dataclasses.replace(model, module=report.module)

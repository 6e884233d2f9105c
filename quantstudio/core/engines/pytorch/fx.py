"""FX analysis: fusion groups, each node's output kind, trace errors, the qnnpack clamp
guard and the precisions a converted model really runs in."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from quantstudio.core.engines.pytorch.cancel import _check_cancel
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.plan import Precision

# Module types that prepare_fx folds into the conv/linear before them.
_FOLDED_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
_RELU_TYPES = ("ReLU", "ReLU6")


# Module types and tensor methods that reach ATen's quantized clamp (see guard_qnnpack_clamps).
_CLAMP_MODULES = ("ReLU6", "Hardtanh")
_CLAMP_METHODS = ("clamp", "clamp_", "clip", "clip_", "hardtanh", "hardtanh_")
QNNPACK_CLAMP_NOTE = (
    "qnnpack: .contiguous() added before {n} ReLU6/clamp op(s); torch's qnnpack clamp returns "
    "scrambled values for channels_last input (every quantized conv's output), on ARM as on x86"
)


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


def built_precisions(converted, tree, effective, groups, kinds, half_nodes) -> dict[str, Precision]:
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

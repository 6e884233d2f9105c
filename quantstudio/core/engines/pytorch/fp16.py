"""FP16 layers in PyTorch: module hooks on eager models, casts in the graph of FX models."""

from __future__ import annotations

import copy

from quantstudio.core.engines.pytorch.cancel import _check_cancel
from quantstudio.core.engines.pytorch.fx import _innermost_scope, _node_kinds
from quantstudio.core.plan import Precision


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
            wrong = ({failed_at} & half if failed_at is not None else set()) or {n for n in half if n not in got}
        if not wrong:
            if exc is not None:
                raise exc
            return trial, half
        half = _one_precision_per_module(gm, half - wrong)
    return gm, set()

"""Refusing a trace that froze decisions taken on the example input's values.

Shared by every exporter that traces a PyTorch forward (``torch.jit.trace`` in the
PyTorch engine's TorchScript export, ``torch.onnx.export`` in the ONNX Runtime engine):
a Python ``if`` on tensor values is recorded as one fixed branch, and the saved file
would give wrong results on inputs that take the other one.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from pathlib import Path

from quantstudio.core.errors import InputError

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

    texts: dict[tuple[str, int], str] = {}
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

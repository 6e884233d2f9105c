"""PyTorch → FP32 ``.tflite`` with ``litert_torch``, and what the extra needs to be there.

Measured (issue 15, torch 2.14.1, litert-torch 0.10): litert_torch's own PT2E INT8 left
residual ADDs in float, while converting to FP32 first and quantizing the ``.tflite`` with
ai-edge-quantizer made every op int8. So conversion here is always FP32; quantization is
recipe.py's job.

Conversion runs in this process. Measured on a 2-core EPYC (AVX-512 VNNI, load ~1):
a 32×32 conv net converts in ~1.5 s, ResNet-18 at 64×64 in ~7 s, and the process grows
by about the converter's libraries once (JAX, MLIR) - no crash or growth per conversion
was seen, so the child-process mechanism (core/child.py, used by ONNX Runtime's tools) is
not needed; cancel is honoured before and after the conversion, which cannot be
interrupted inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import weakref
from typing import Any, Iterator

from quantstudio.core.errors import InputError
from quantstudio.core.quiet import quiet_loggers

# What the extra brings, by import name (the tests and the doctor read it too).
REQUIRED_MODULES = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
INSTALL_HINT = "install the tflite extra: pip install 'quantstudio[tflite]'"
# litert-converter has wheels only for these (DESIGN "Facts measured here").
PLATFORMS = "Linux x86_64 and macOS arm64"


def missing_modules() -> list[str]:
    """The modules of the tflite extra that cannot be imported here (find_spec only: fast)."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def extra_missing_reason() -> str | None:
    """Why the engine cannot run at all here (the extra is not installed), or None."""
    missing = missing_modules()
    if not missing:
        return None
    return f"{INSTALL_HINT} ({', '.join(missing)} not found; wheels exist for {PLATFORMS})"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """litert_torch prints a progress tree, the quantizer progress bars, torch.export warns: none is for the user."""
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = ("root", "absl", "torch", "torch._export", "torch.export", "litert_torch", "ai_edge_quantizer")
    # tqdm bars (ai-edge-quantizer's calibration) go to sys.stderr: caught too.
    with quiet_loggers(names), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# One FP32 conversion per module and shape: every variant of a session (modes, plans,
# the automatic search) quantizes the same FP32 file, and converting is the slow part.
# Keyed weakly by the module, checked by a fingerprint of its weights (QAT and
# equalization change weights of copies, but a caller could edit them in place).
_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], str, bytes]]" = weakref.WeakKeyDictionary()


def _fingerprint(module: Any) -> str:
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if isinstance(t, torch.Tensor) and t.numel():
                t = t.detach()
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                # Sums, not the bytes: ~10 ms for ResNet-18 instead of ~150 ms.
                h.update(repr(float(t.double().sum())).encode())
                h.update(repr(float(t.double().abs().sum())).encode())
    return h.hexdigest()


def convert_fp32(model: Any) -> bytes:
    """The loaded PyTorch ``model`` (a LoadedModel) as an FP32 ``.tflite`` flatbuffer.

    The input keeps the PyTorch layout (N, C, H, W, batch as in ``model.input_shape``);
    litert_torch inserts the transposes to NHWC inside the file. Raises InputError,
    naming the file, when the model cannot be exported or converted.
    """
    module = model.module
    shape = tuple(int(d) for d in model.input_shape)
    key = _fingerprint(module)
    try:
        cached = _CACHE.get(module)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None and cached[0] == shape and cached[1] == key:
        return cached[2]
    example = model.example_input()
    try:
        with quiet():
            import litert_torch

            edge = litert_torch.convert(module.eval(), (example,))
            data = _serialize(edge)
    except Exception as exc:  # noqa: BLE001 - torch.export and MLIR lowering fail in many ways
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InputError(
            f"LiteRT could not convert this model to .tflite: {first}",
            path=model.path,
            hint="litert_torch converts what torch.export can capture; models with data-dependent control flow "
                 "or unsupported operators fail. Use the ONNX Runtime or PyTorch engine for this model.",
            details=f"{type(exc).__name__}: {exc}"[-4000:],
        ) from exc
    try:
        _CACHE[module] = (shape, key, data)
    except TypeError:
        pass
    return data


def _serialize(edge: Any) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="quantstudio-tflite-") as tmp:
        path = os.path.join(tmp, "fp32.tflite")
        edge.export(path)
        with open(path, "rb") as f:
            return f.read()

"""Running a (quantized) torch module: its quantized backend, quiet torch.ao, the numpy
runner, and the traced + frozen TorchScript form that exports and memory probes use."""

from __future__ import annotations

import contextlib
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from quantstudio.core.errors import InputError
from quantstudio.core.tracing import refuse_value_dependent_trace


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
    switch = backend is not None and backend != previous
    if backend is not None and switch:
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


def _as_array(batch: Any) -> np.ndarray:
    x = getattr(batch, "x", batch)  # data.Batch or a plain array
    return np.ascontiguousarray(x, dtype=np.float32)


class TorchRunner:
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


def write_torchscript(module: Any, example: np.ndarray, path: Path, *, backend: str | None = None) -> None:
    """Trace + freeze ``module`` to ``path``; ``backend``: the quantized engine it was converted for."""
    import torch

    try:
        with quantized_engine(backend):
            scripted = to_torchscript(module, torch.from_numpy(example))
    except InputError:
        raise  # already says what is wrong and what to do (e.g. a branch on tensor values)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            "the quantized model could not be saved as TorchScript",
            hint="Use the ONNX Runtime engine and export .onnx instead.",
            details=str(exc)[-4000:],
        ) from exc
    with quiet():
        torch.jit.save(scripted, str(path))


def reload_torchscript(path: Path, samples: np.ndarray) -> np.ndarray:
    """Outputs of the TorchScript archive at ``path``, loaded afresh, on ``samples``."""
    import torch

    with quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            out = loaded(torch.from_numpy(samples))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if getattr(out, "is_quantized", False):
        out = out.dequantize()
    return out.float().numpy()

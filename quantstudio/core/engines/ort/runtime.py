"""ONNX Runtime sessions and runners on this CPU, and the quiet/CPU-target helpers."""

from __future__ import annotations

import contextlib
import platform
from typing import Any

import numpy as np

from quantstudio.core.quiet import quiet_loggers

@contextlib.contextmanager
def quiet():
    """ORT's quantizer logs advice and torch.onnx warns; neither is for the user."""
    with quiet_loggers(("root", "onnxruntime", "onnxruntime.quantization")):
        yield


def cpu_target(backend: str) -> str:
    """'x86' or 'arm' for the activation/weight types."""
    if backend == "qnnpack":
        return "arm"
    if backend == "x86":
        return "x86"
    machine = platform.machine().lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def cpu_has_vnni() -> bool:
    from quantstudio.core.doctor import cpu_features

    cpu = cpu_features()
    if not cpu.flags:
        return True  # unknown: assume a recent CPU
    return cpu.vnni or cpu.amx


def make_session(model: Any, threads: int | None = None):
    """An InferenceSession on the CPU with ``threads`` intra-op threads (default: cores)."""
    from quantstudio.core.benchmark import make_ort_session

    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return make_ort_session(data, threads)


class OrtRunner:
    """numpy batch → numpy logits through an ONNX Runtime session."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x):
        x = np.ascontiguousarray(getattr(x, "x", x), dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

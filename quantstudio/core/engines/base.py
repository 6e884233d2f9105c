"""The interface every quantization engine implements, and the registry of engines.

An engine turns a :class:`~quantstudio.core.loading.LoadedModel`, a
:class:`~quantstudio.core.plan.PrecisionPlan` and a :class:`QuantConfig` into a
:class:`QuantizedModel` in phases: ``prepare`` (fusion, observers), ``calibrate`` (feed
batches), ``convert``. Everything else the app does with a result that depends on the
runtime (per-layer error, sizes, the same-runtime FP32 baseline, files for memory
probes, writing and reloading exports) is a member of :class:`Engine` too, so no code
outside ``core/engines/`` needs to know which engine made a result. Adding an engine is
adding one package and one line in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext

MODES = ("static", "dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
BACKENDS = ("auto", "x86", "qnnpack")
QAT_SIGNALS = ("auto", "labels", "distill")


@dataclass
class QuantConfig:
    engine: str = "onnxruntime"  # a key of ENGINES
    mode: str = "static"  # static | dynamic | fp16 (fp16 = everything the plan leaves INT8 runs FP16)
    backend: str = "auto"  # auto (chosen from the CPU) | x86 | qnnpack
    calibration: str = "minmax"
    per_channel: bool = True
    symmetric_activations: bool = False
    calib_samples: int = 256
    seed: int = 0
    # Cross-layer equalization of eager PyTorch models before static INT8 (core/equalize.py):
    # outlier channels collapsed min-max INT8 to ~10 % top-1 on both engines; equalizing first
    # recovered within 1 point at unchanged speed (tests/benchmarks/OUTLIERS.md).
    equalize: bool = True
    # Quantization-aware training (issue 14): fine-tune with fake quantization after calibration.
    qat: bool = False
    qat_epochs: int = 2
    qat_lr: float = 0.0  # 0 = chosen for fine-tuning from the model (see the QAT code)
    qat_batch_size: int = 32
    qat_signal: str = "auto"  # auto (labels when the folder has classes) | labels | distill

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for value, allowed, what in (
            (self.engine, tuple(ENGINES), "engine"),
            (self.mode, MODES, "mode"),
            (self.calibration, CALIBRATIONS, "calibration"),
            (self.backend, BACKENDS, "backend"),
            (self.qat_signal, QAT_SIGNALS, "QAT training signal"),
        ):
            if value not in allowed:
                raise InputError(f"unknown {what} '{value}'", hint=f"Use one of {', '.join(allowed)}.")


@dataclass
class QuantizedModel:
    """What an engine produced. ``runner`` maps a float32 NCHW numpy batch to logits."""

    engine: str  # the name of the engine that made it (see get_engine)
    config: QuantConfig
    runner: Any
    layer_precisions: dict[str, str] = field(default_factory=dict)  # layer -> int8/fp16/fp32 as built
    fused: list[list[str]] = field(default_factory=list)  # groups of layer names merged by fusion
    notes: list[str] = field(default_factory=list)
    artifact: Any = None  # engine-specific: GraphModule, onnx.ModelProto, ...
    input_shape: tuple[int, ...] | None = None  # the model's (1, C, H, W): export checks, tracing
    # What only the engine that made this result reads (ONNX Runtime: the FP32 reference
    # graph and node → layer names); nothing outside that engine looks inside.
    extras: dict[str, Any] = field(default_factory=dict)

    def forward_numpy(self, x):
        return self.runner(x)


class Engine(Protocol):
    """A quantization engine. ``formats``: file suffix → export format it writes.

    Optional: ``search_reuse()`` returns an object with ``close()`` that the auto-precision
    search passes to every candidate's ``quantize(..., reuse=obj)`` (same model, same
    calibration data) and closes when it ends; the engine keeps work there that candidates
    share (ORT: export, pre-processing, calibration ranges). Results must not depend on it.
    """

    name: str  # the registry key, stored in configs and recipes: "onnxruntime", "torch"
    label: str  # for people: "ONNX Runtime"
    short_label: str  # for tight places (variant tables): "ORT"
    formats: dict[str, str]  # {".onnx": "onnx"}

    def unsupported_reason(self, model: Any) -> str | None:
        """Why this engine cannot quantize ``model`` (a LoadedModel), or None when it can."""
        ...

    def quantize(
        self,
        model: Any,  # LoadedModel
        plan: Any,  # PrecisionPlan
        config: QuantConfig,
        calib_batches: Iterable[Any],  # iterable of float32 NCHW numpy batches
        ctx: JobContext,
    ) -> QuantizedModel: ...

    def reference_runner(self, model: Any, qm: QuantizedModel) -> Callable[[np.ndarray], np.ndarray] | None:
        """The original model in the quantized model's runtime (a fair speed baseline), or
        None when the original already runs in that runtime."""
        ...

    def layer_error(self, model: Any, qm: QuantizedModel, batches: list[np.ndarray],
                    ctx: JobContext | None) -> dict[str, float]:
        """Per-layer SQNR (dB), quantized vs original; {} where it cannot be measured."""
        ...

    def sizes(self, model: Any, qm: QuantizedModel) -> dict[str, int | None]:
        """Serialized bytes: {"original_bytes": ..., "quantized_bytes": ...} (None: unknown)."""
        ...

    def memory_files(self, model: Any, qm: QuantizedModel, folder: Path,
                     ctx: JobContext) -> tuple[dict[str, Path], dict[str, str]]:
        """Files ("original", "quantized") a fresh process can load to measure peak memory,
        written under ``folder``; and, per model that could not be written, why."""
        ...

    def write(self, qm: QuantizedModel, path: Path, example: np.ndarray) -> None:
        """Write ``qm`` to ``path`` in the format of its suffix (one of ``formats``)."""
        ...

    def reload(self, qm: QuantizedModel, path: Path, samples: np.ndarray) -> tuple[np.ndarray, str]:
        """Load ``path`` afresh and run ``samples``: (outputs, how it was loaded, in words)."""
        ...


# Every member an engine has (the conformance test checks each registered engine).
ENGINE_MEMBERS = ("name", "label", "short_label", "formats", "unsupported_reason", "quantize", "reference_runner",
                  "layer_error", "sizes", "memory_files", "write", "reload")

# One line per engine: name → "module:class". The order is the order engines are offered in.
ENGINES = {
    "onnxruntime": "quantstudio.core.engines.ort.engine:OrtEngine",
    "torch": "quantstudio.core.engines.pytorch.engine:TorchEngine",
    "tflite": "quantstudio.core.engines.tflite.engine:TfliteEngine",
}


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise InputError(f"unknown engine '{name}'", hint=f"Use one of {', '.join(ENGINES)}.")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def available_engines() -> list[Engine]:
    """One instance of every registered engine, in registry order (the default first)."""
    return [get_engine(name) for name in ENGINES]


def engine_writing(suffix: str) -> Engine | None:
    """The first registered engine that writes files ending in ``suffix``, if any."""
    return next((e for e in available_engines() if suffix.lower() in e.formats), None)

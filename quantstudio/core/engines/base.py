"""The interface every quantization engine implements.

An engine turns a :class:`~quantstudio.core.loading.LoadedModel`, a
:class:`~quantstudio.core.plan.PrecisionPlan` and a :class:`QuantConfig` into a
:class:`QuantizedModel` in phases: ``prepare`` (fusion, observers), ``calibrate`` (feed
batches), ``convert``; the result can ``forward_numpy`` and ``export``. Adding an engine
is adding one module and one line in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext

MODES = ("static", "dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
BACKENDS = ("auto", "x86", "qnnpack")


@dataclass
class QuantConfig:
    engine: str = "onnxruntime"  # "torch" | "onnxruntime"
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
        ):
            if value not in allowed:
                raise InputError(f"unknown {what} '{value}'", hint=f"Use one of {', '.join(allowed)}.")


@dataclass
class QuantizedModel:
    """What an engine produced. ``runner`` maps a float32 NCHW numpy batch to logits."""

    engine: str
    config: QuantConfig
    runner: Any
    layer_precisions: dict[str, str] = field(default_factory=dict)  # layer -> int8/fp16/fp32 as built
    fused: list[list[str]] = field(default_factory=list)  # groups of layer names merged by fusion
    notes: list[str] = field(default_factory=list)
    artifact: Any = None  # engine-specific: GraphModule, onnx.ModelProto, ...
    # The FP32 model in the same runtime (ORT: the pre-processed FP32 ONNX), for fair
    # speed comparisons and per-layer error; None where the original model is that.
    reference_artifact: Any = None
    node_layers: dict[str, str] = field(default_factory=dict)  # ONNX node -> layer name (ORT)
    input_shape: tuple[int, ...] | None = None  # the model's (1, C, H, W): export checks, tracing

    def forward_numpy(self, x):
        return self.runner(x)


class Engine(Protocol):
    name: str

    def quantize(
        self,
        model: Any,  # LoadedModel
        plan: Any,  # PrecisionPlan
        config: QuantConfig,
        calib_batches: Iterable[Any],  # iterable of float32 NCHW numpy batches
        ctx: JobContext,
    ) -> QuantizedModel: ...

    def export(self, result: QuantizedModel, path: Path, ctx: JobContext) -> Path: ...


ENGINES = {
    "torch": "quantstudio.core.engines.torch_engine:TorchEngine",
    "onnxruntime": "quantstudio.core.engines.ort_engine:OrtEngine",
}


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise InputError(f"unknown engine '{name}'", hint=f"Use one of {', '.join(ENGINES)}.")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()

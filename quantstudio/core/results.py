"""The one result and event model of a Quantize run, read by every consumer.

A run produces a :class:`RunSummary` (plain, JSON-safe numbers keyed by
:class:`VariantRole`); the CLI's ``--json`` and text output, the GUI's ``RunOutcome``,
the HTML report and a project's variants all read it, so "p50 at the smallest batch" and
"speed-up" are computed here and nowhere else. While a run is going, the pipeline,
``run_benchmark`` and ``evaluate`` send the frozen event classes below through
``ctx.partial``; consumers switch on the class (``isinstance``), never on a string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping, Union


class VariantRole(str, Enum):
    """What a timed/evaluated model is. The values are the names users see (and script against)."""

    ORIGINAL = "original"
    # The FP32 model in the quantized model's runtime: the fair baseline for a speed-up. This is
    # its name for ONNX Runtime; another engine's is same_runtime_role(engine) ("original (tflite)").
    ORIGINAL_SAME_RUNTIME = "original (onnxruntime)"
    QUANTIZED = "quantized"

    def __str__(self) -> str:  # f-strings and str() give the user-facing name, not "VariantRole.X"
        return self.value


def same_runtime_role(engine: str) -> str:
    """The name of the FP32 model run in ``engine``'s runtime ("original (onnxruntime)", "original (tflite)")."""
    return f"original ({engine})"


def is_same_runtime_role(name: str) -> bool:
    """``name`` is an original timed in the quantized model's runtime (any engine's)."""
    return name.startswith("original (") and name.endswith(")")


def json_float(v: Any) -> float | str | None:
    """JSON has no infinity: +/-inf become "inf"/"-inf"; NaN (not measured) becomes None."""
    if v is None:
        return None
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return None
    return v


def read_float(v: Any) -> float | None:
    """The inverse of :func:`json_float` (also takes plain numbers)."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class VariantMetrics:
    """One variant's figures. Fractions in 0..1, bytes, ms; None where not measured."""

    top1: float | None = None
    top5: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    agreement: float | None = None  # share of samples with the original's top-1
    sqnr_db: float | None = None  # inf when the outputs are identical
    cosine: float | None = None
    n: int | None = None  # samples evaluated
    latency_ms: float | None = None  # p50 at the smallest timed batch
    throughput: dict[int, float] = field(default_factory=dict)  # batch -> samples/s
    size_bytes: int | None = None  # serialized model
    param_bytes: int | None = None
    peak_rss_bytes: int | None = None  # the whole fresh process running the model
    model_peak_bytes: int | None = None  # what the model adds to it

    @classmethod
    def from_evaluation(cls, ev: Any) -> "VariantMetrics":
        """From an ``evaluation.EvaluationResult`` (or None: nothing measured)."""
        if ev is None:
            return cls()
        return cls(top1=read_float(ev.top1), top5=read_float(ev.top5), precision=read_float(ev.precision),
                   recall=read_float(ev.recall), f1=read_float(ev.f1), agreement=read_float(ev.agreement),
                   sqnr_db=read_float(ev.sqnr_db), cosine=read_float(ev.cosine), n=int(ev.n))

    def to_dict(self, *, drop_none: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "throughput":
                if v or not drop_none:
                    out["throughput"] = {str(b): json_float(x) for b, x in v.items()}
                continue
            if v is None and drop_none:
                continue
            out[f.name] = json_float(v) if isinstance(v, float) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "VariantMetrics":
        d = d or {}
        known = {f.name for f in fields(cls)}
        out = cls()
        for k, v in d.items():
            if k not in known:
                continue
            if k == "throughput":
                out.throughput = {int(b): float(x) for b, x in (v or {}).items() if read_float(x) is not None}
            elif k in ("n", "size_bytes", "param_bytes", "peak_rss_bytes", "model_peak_bytes"):
                setattr(out, k, None if v is None else int(v))
            else:
                setattr(out, k, read_float(v))
        return out


def speedup_baseline(latency: Mapping[str, Any]) -> str | None:
    """The variant a speed-up is measured against: the same-runtime FP32 model when timed."""
    for name in [n for n in latency if is_same_runtime_role(n)] + [VariantRole.ORIGINAL.value]:
        if read_float(latency.get(name)):
            return name
    return None


def speedup(latency: Mapping[str, Any]) -> float | None:
    """Baseline latency / quantized latency (variant name -> ms); None when either is missing.

    The one rule of the app: against :attr:`VariantRole.ORIGINAL_SAME_RUNTIME` when it was
    timed (same runtime, so the ratio is the quantization's), else against the original.
    """
    base = speedup_baseline(latency)
    q = read_float(latency.get(VariantRole.QUANTIZED.value))
    if base is None or not q:
        return None
    return float(latency[base]) / q


def smallest_batch_latency(bench: Any) -> dict[str, float]:
    """p50 latency (ms) at the smallest timed batch, per variant of a ``BenchmarkResult``."""
    if bench is None:
        return {}
    return {v.name: float(v.latency[min(v.latency)].p50_ms) for v in bench.variants if v.latency}


# Keys of ``RunSummary.to_dict()`` that the CLI's ``--json`` has always had (users script against them).
_PLAIN_KEYS = ("engine", "mode", "config", "plan", "random_data", "calibration_samples", "evaluation_samples",
               "calibration_data", "evaluation_data", "preprocessing", "input_shape", "memory",
               "layer_precisions", "benchmark", "sizes", "notes", "warnings", "fp32_reasons", "training",
               "auto_precision", "sensitivity_fix")


@dataclass
class RunSummary:
    """Everything a Quantize run measured, JSON-safe. ``variants`` is keyed by role value."""

    engine: str = ""
    mode: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, VariantMetrics] = field(default_factory=dict)
    # The full evaluation (per-class accuracy, confusion, changed predictions) per role.
    evaluation: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    latency_samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> % output error, only it INT8
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    layer_precisions: dict[str, str] = field(default_factory=dict)
    fused: list[list[str]] = field(default_factory=list)
    benchmark: dict[str, Any] | None = None
    sizes: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    random_data: bool = False
    calibration_samples: int = 0
    evaluation_samples: int = 0
    calibration_data: str = ""
    evaluation_data: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None
    # layer -> why it was left FP32 (user's plan, sensitivity, the auto-precision search, engine limits)
    fp32_reasons: dict[str, str] = field(default_factory=dict)
    # Quantization-aware training (issue 14): settings and per-epoch history; {} when not fine-tuned.
    training: dict[str, Any] = field(default_factory=dict)
    # Automatic mixed precision (issue 13): budget, every candidate tried, the chosen one; {} when not searched.
    auto_precision: dict[str, Any] = field(default_factory=dict)
    # Sensitivity that points at the fix (issue 13): layer -> the layers to set FP32 so its error goes
    # away as the engines build the model (the layer, plus its input's producers when the input is the problem).
    sensitivity_fix: dict[str, list[str]] = field(default_factory=dict)
    # layer -> SQNR (dB) of the layer's own output with its input and weights INT8, fed FP32 input
    # (layer_sqnr accumulates the error of every layer before; this one singles out the culprit).
    layer_sqnr_isolated: dict[str, float] = field(default_factory=dict)

    @property
    def latency_ms(self) -> dict[str, float]:
        return {name: m.latency_ms for name, m in self.variants.items() if m.latency_ms is not None}

    @property
    def speedup(self) -> float | None:
        return speedup(self.latency_ms)

    @property
    def speedup_baseline(self) -> str | None:
        return speedup_baseline(self.latency_ms)

    @property
    def timing_warnings(self) -> list[str]:
        return list((self.benchmark or {}).get("warnings") or [])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _PLAIN_KEYS}
        out.update({
            "original": self.evaluation.get(VariantRole.ORIGINAL.value),
            "quantized": self.evaluation.get(VariantRole.QUANTIZED.value),
            "layer_sqnr": {k: json_float(v) for k, v in self.layer_sqnr.items()},
            "layer_sqnr_isolated": {k: json_float(v) for k, v in self.layer_sqnr_isolated.items()},
            "layer_sensitivity": {k: json_float(v) for k, v in self.sensitivity.items()},
            "fused": [list(g) for g in self.fused],
            "latency_ms": {k: json_float(v) for k, v in self.latency_ms.items()},
            "speedup": json_float(self.speedup),
            "speedup_baseline": self.speedup_baseline,
            "variants": {k: m.to_dict() for k, m in self.variants.items()},
            "latency_samples": {v: {str(b): list(xs) for b, xs in per.items()} for v, per in self.latency_samples.items()},
        })
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSummary":
        s = cls(**{k: d[k] for k in _PLAIN_KEYS if k in d and d[k] is not None})
        s.benchmark = d.get("benchmark")
        s.evaluation = {r: d.get(r) for r in (VariantRole.ORIGINAL.value, VariantRole.QUANTIZED.value)}
        s.variants = {k: VariantMetrics.from_dict(m) for k, m in (d.get("variants") or {}).items()}
        s.latency_samples = {v: {int(b): [float(x) for x in xs] for b, xs in per.items()}
                             for v, per in (d.get("latency_samples") or {}).items()}
        s.layer_sqnr = {k: float(v) for k, v in (d.get("layer_sqnr") or {}).items() if v is not None}
        s.layer_sqnr_isolated = {k: float(v) for k, v in (d.get("layer_sqnr_isolated") or {}).items() if v is not None}
        s.sensitivity = {k: float(v) for k, v in (d.get("layer_sensitivity") or {}).items() if v is not None}
        s.fused = [list(g) for g in d.get("fused") or []]
        return s


# --------------------------------------------------------------------------- live events


@dataclass(frozen=True)
class StageStarted:
    name: str  # quantize, evaluate, layer_error, sensitivity, benchmark, memory (engines: calibrate, …)


@dataclass(frozen=True)
class LayersFused:
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class MetricsReady:
    original: VariantMetrics
    quantized: VariantMetrics


@dataclass(frozen=True)
class LayerErrors:
    values: Mapping[str, float]  # layer -> SQNR dB (inf: identical)


@dataclass(frozen=True)
class LayerSensitivity:
    values: Mapping[str, float]  # layer -> % output error with only that layer INT8


@dataclass(frozen=True)
class SizesMeasured:
    original_bytes: int | None
    quantized_bytes: int | None


@dataclass(frozen=True)
class LatencySample:
    variant: str
    batch: int
    ms: float


@dataclass(frozen=True)
class ThroughputMeasured:
    variant: str
    batch: int
    value: float  # samples/s


@dataclass(frozen=True)
class BenchmarkDone:
    warnings: tuple[str, ...]  # why the timings are unreliable, if they are
    result: Mapping[str, Any] = field(default_factory=dict)  # BenchmarkResult.to_dict()


@dataclass(frozen=True)
class MemoryMeasured:
    variant: str
    peak_rss_bytes: int | None
    model_peak_bytes: int | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class EvaluationProgress:
    done: int
    total: int
    top1: Mapping[str, float | None]  # running top-1 per variant


@dataclass(frozen=True)
class TrainingStep:
    """Quantization-aware training: one optimizer step done (sent at most a few times a second)."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float


@dataclass(frozen=True)
class TrainingEpoch:
    """Quantization-aware training: one epoch done and validated."""

    epoch: int  # 1-based; 0 = the PTQ starting point, validated before any training
    epochs: int
    train_loss: float | None  # mean over the epoch; None for epoch 0
    val_metric: float  # % top-1 (labeled) or % agreement with the FP32 model (unlabeled)
    metric: str  # "top1" | "agreement"
    best_epoch: int  # the epoch kept so far


@dataclass(frozen=True)
class CandidateTried:
    """Automatic mixed precision: one candidate plan built and judged on the held-out split."""

    index: int  # 1-based, in the order tried
    label: str  # e.g. "percentile", "minmax + 4 FP32"
    calibration: str
    fp32_layers: tuple[str, ...]
    metric: float  # % top-1 (labeled) or % agreement (unlabeled) on the held-out split
    drop: float  # points below the original on the same split (agreement: 100 - metric)
    latency_ms: float | None
    meets_budget: bool


Event = Union[StageStarted, LayersFused, MetricsReady, LayerErrors, LayerSensitivity, SizesMeasured, LatencySample,
              ThroughputMeasured, BenchmarkDone, MemoryMeasured, EvaluationProgress, TrainingStep, TrainingEpoch,
              CandidateTried]
EVENT_TYPES = (StageStarted, LayersFused, MetricsReady, LayerErrors, LayerSensitivity, SizesMeasured, LatencySample,
               ThroughputMeasured, BenchmarkDone, MemoryMeasured, EvaluationProgress, TrainingStep, TrainingEpoch,
               CandidateTried)


def finite_values(values: Mapping[str, Any]) -> dict[str, float]:
    """Layer -> float, without the layers not measured (None/NaN); inf is kept (identical)."""
    out = {}
    for k, v in values.items():
        f = read_float(v)
        if f is not None and not math.isnan(f):
            out[k] = f
    return out


def as_event(payload: Any) -> Event | None:
    """A typed event from what ``ctx.partial`` received; None for anything else.

    The engines (core/engines/, owned elsewhere) still send ``{"type": "stage", ...}``
    dicts for their own phases; this is the one place that reads such a dict, so no
    consumer matches on a type string.
    """
    if isinstance(payload, EVENT_TYPES):
        return payload
    if not isinstance(payload, dict):
        return None
    kind, p = payload.get("type"), payload
    try:
        if kind == "stage":
            return StageStarted(str(p.get("name", "")))
        if kind == "fused":
            return LayersFused(tuple(tuple(g) for g in p.get("groups") or ()))
        if kind == "metrics":
            return MetricsReady(VariantMetrics.from_dict(p.get("original")), VariantMetrics.from_dict(p.get("quantized")))
        if kind == "layer_sqnr":
            return LayerErrors(finite_values(p.get("values") or {}))
        if kind == "layer_sensitivity":
            return LayerSensitivity(finite_values(p.get("values") or {}))
        if kind == "size":
            return SizesMeasured(p.get("original_bytes"), p.get("quantized_bytes"))
        if kind == "latency":
            return LatencySample(str(p["variant"]), int(p["batch"]), float(p["ms"]))
        if kind == "throughput":
            return ThroughputMeasured(str(p["variant"]), int(p["batch"]), float(p["value"]))
        if kind == "benchmark":
            result = p.get("result") or {}
            return BenchmarkDone(tuple(result.get("warnings") or ()), result)
        if kind == "memory":
            return MemoryMeasured(str(p["variant"]), p.get("peak_rss_bytes"), p.get("model_peak_bytes"), p.get("size_bytes"))
        if kind == "evaluation":
            return EvaluationProgress(int(p.get("done", 0)), int(p.get("total", 0)), dict(p.get("top1") or {}))
    except (KeyError, TypeError, ValueError):
        return None
    return None

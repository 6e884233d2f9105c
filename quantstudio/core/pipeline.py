"""The Quantize job: quantize → evaluate → per-layer error → benchmark, in weighted stages.

:func:`run_quantize` is one plain function taking a job context, so the GUI runs it on a
worker thread and the CLI in the foreground. The quantize stage covers the engine's own
phases (fuse/prepare, calibrate, convert). Original and quantized model are evaluated on
exactly the same decoded tensors (:func:`quantstudio.core.evaluation.evaluate`), and
timed interleaved (:func:`quantstudio.core.benchmark.run_benchmark`).

Live plot data goes out through ``ctx.partial`` as dicts with a ``"type"`` key:
``stage`` (name), ``fused`` (groups), ``metrics`` (original, quantized), ``layer_sqnr``
(values: layer → dB), ``layer_sensitivity`` (values: layer → % output error with only
that layer INT8), ``size`` (bytes), ``benchmark`` (the result dict), ``memory`` (variant,
peak_rss_bytes, model_peak_bytes — one per variant, from a fresh process); the benchmark
itself streams ``latency``/``throughput`` payloads.
"""

from __future__ import annotations

import dataclasses

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from quantstudio.core.data import Split
from quantstudio.core.evaluation import _json_float
from quantstudio.core.engines.base import QuantConfig, QuantizedModel, get_engine
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext, Stages
from quantstudio.core.plan import PrecisionPlan

DEFAULT_EVAL_SAMPLES = 1000
SQNR_BATCHES = 2
CHECK_SAMPLES = 16  # samples kept to check exports against
DEFAULT_SENSITIVITY_SAMPLES = 16  # a continuous error, so a few samples rank layers well
RANDOM_NOTE = "random data — accuracy not meaningful"


@dataclass
class QuantizeResult:
    """Everything one Quantize run produced. ``to_dict()`` is JSON-safe (no model)."""

    quantized: QuantizedModel
    config: QuantConfig
    plan: PrecisionPlan
    original_metrics: Any = None  # evaluation.EvaluationResult
    quantized_metrics: Any = None
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> % output error, only it INT8
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # variant -> peak_rss_bytes, model_peak_bytes
    fused: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    benchmark: Any = None  # benchmark.BenchmarkResult
    sizes: dict[str, int | None] = field(default_factory=dict)
    random_data: bool = False
    calibration_samples: int = 0
    evaluation_samples: int = 0
    calibration_data: str = ""  # where the calibration samples came from (description)
    evaluation_data: str = ""  # where the evaluation samples came from, and how they were chosen
    preprocessing_steps: list[str] = field(default_factory=list)  # what every image went through
    # Not serialized: what an export needs to check itself and write its recipe.
    check_samples: np.ndarray | None = None
    model: Any = None
    data: Any = None
    eval_data: Any = None  # the separate evaluation DataSource, when there was one
    preprocessing: Any = None
    calibration_indices: np.ndarray | None = None
    batch_size: int | None = None  # samples per calibration/evaluation batch

    @property
    def latency_ms(self) -> dict[str, float]:
        """p50 latency at the smallest batch size, per benchmark variant."""
        if self.benchmark is None:
            return {}
        out = {}
        for v in self.benchmark.variants:
            if v.latency:
                out[v.name] = v.latency[min(v.latency)].p50_ms
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.config.engine,
            "mode": self.config.mode,
            "config": self.config.to_dict(),
            "plan": self.plan.to_dict(),
            "random_data": self.random_data,
            "calibration_samples": self.calibration_samples,
            "evaluation_samples": self.evaluation_samples,
            "calibration_data": self.calibration_data,
            "evaluation_data": self.evaluation_data,
            "preprocessing": {**(self.preprocessing.to_dict() if self.preprocessing is not None else {}),
                              "steps": list(self.preprocessing_steps)},
            "input_shape": list(self.model.input_shape) if getattr(self.model, "input_shape", None) else None,
            "original": self.original_metrics.to_dict() if self.original_metrics is not None else None,
            "quantized": self.quantized_metrics.to_dict() if self.quantized_metrics is not None else None,
            "layer_sqnr": {k: _json_float(v) for k, v in self.layer_sqnr.items()},
            "layer_sensitivity": {k: _json_float(v) for k, v in self.sensitivity.items()},
            "memory": {k: dict(v) for k, v in self.memory.items()},
            "layer_precisions": dict(self.quantized.layer_precisions),
            "fused": [list(g) for g in self.fused],
            "latency_ms": {k: _json_float(v) for k, v in self.latency_ms.items()},
            "benchmark": self.benchmark.to_dict() if self.benchmark is not None else None,
            "sizes": dict(self.sizes),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def run_quantize(
    model: Any,
    data_source: Any,
    preprocessing: Any,
    plan: PrecisionPlan,
    config: QuantConfig,
    ctx: JobContext | None = None,
    *,
    eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
    benchmark: bool = True,
    batch_sizes: Sequence[int] = (1,),
    batch_size: int = 32,
    benchmark_runs: int = 30,
    sqnr_batches: int = SQNR_BATCHES,
    sensitivity: bool = False,
    sensitivity_samples: int = DEFAULT_SENSITIVITY_SAMPLES,
    measure_memory: bool = False,
    eval_data: Any = None,
) -> QuantizeResult:
    """Quantize ``model`` by ``plan``/``config`` on ``data_source`` and measure the result.

    ``data_source`` is a :class:`~quantstudio.core.data.DataSource` (or a spec for
    :func:`~quantstudio.core.data.open_data`: a path or "random"); ``preprocessing`` is
    recorded in the recipe (and used to open a spec). Calibration and evaluation samples
    are disjoint, chosen by ``config.seed``. ``sensitivity`` adds the per-layer
    sensitivity stage (PyTorch models), ``measure_memory`` the peak memory of the
    original and the quantized model, each in a fresh process (a few seconds).
    ``eval_data`` (a DataSource) evaluates on other data than the calibration data (e.g.
    calibrate on train/, evaluate on val/): every calibration sample then comes from
    ``data_source`` and every evaluation sample from ``eval_data``.
    Raises InputError / Cancelled.
    """
    from quantstudio.core.data import open_data

    ctx = ctx or NullContext()
    config.validate()
    if config.calib_samples <= 0:
        raise InputError(f"the number of calibration samples must be positive, not {config.calib_samples}", hint="Give --calib-samples 1 or more.")
    if isinstance(data_source, (str, Path)):
        data_source = open_data(
            data_source,
            input_shape=model.input_shape,
            preprocessing=preprocessing,
            random_samples=config.calib_samples + (eval_samples or 0),
            seed=config.seed,
        )
    data = data_source
    engine = get_engine(config.engine)
    from quantstudio.core.sensitivity import UNAVAILABLE_NOTE, can_measure

    weights = [("quantize", 6.0), ("evaluate", 3.0), ("layer_error", 1.0)]
    sensitivity = sensitivity and sensitivity_samples > 0
    if sensitivity:
        weights.append(("sensitivity", 2.0))
    if benchmark:
        weights.append(("benchmark", 3.0))
    if measure_memory:
        weights.append(("memory", 1.0))
    stages = Stages(ctx, weights)

    fixed = getattr(model, "fixed_batch", None)
    if fixed:
        # An input exported without a dynamic batch axis takes exactly ``fixed`` samples per
        # run: every batch has that size, and the samples are cut to a multiple of it.
        batch_size = fixed
        batch_sizes = (fixed,)
    static = config.mode == "static"
    evaluation_source = eval_data if eval_data is not None else data
    if eval_data is not None:
        # Two data sets: nothing to hold back, each is sampled on its own.
        split = Split(
            calibration=data.choose(config.calib_samples, seed=config.seed) if static else np.zeros(0, np.int64),
            evaluation=eval_data.choose(eval_samples, seed=config.seed) if eval_samples else np.zeros(0, np.int64),
            seed=config.seed,
        )
    else:
        split = data.split(calibration=config.calib_samples if static else 0, evaluation=eval_samples, seed=config.seed)
    if not static:
        # Dynamic INT8 and FP16 calibrate nothing: one batch of the data serves as
        # example input (tracing, FP16 checks) and no evaluation sample is held back.
        example = data.choose(None, seed=config.seed) if eval_data is not None or not len(split.evaluation) else split.evaluation
        split = dataclasses.replace(split, calibration=np.asarray(example[:batch_size]))
    if fixed:
        if len(split.calibration) < fixed:
            raise InputError(
                f"the model takes exactly {fixed} samples per run, and only {len(split.calibration)} are there to calibrate on",
                path=data.path, hint=f"Give {fixed} or more calibration samples.")
        split = dataclasses.replace(
            split,
            calibration=split.calibration[: len(split.calibration) // fixed * fixed],
            evaluation=split.evaluation[: len(split.evaluation) // fixed * fixed],
        )
    notes = list(split.notes)
    warnings = list(getattr(data, "warnings", []))
    if eval_data is not None:
        warnings += [w for w in eval_data.warnings if w not in warnings]
    warnings += _unmatched_rule_warnings(model, plan)
    if data.is_random and RANDOM_NOTE not in warnings:
        warnings.insert(0, RANDOM_NOTE)

    # ---------------------------------------------------------------- quantize
    st = stages.stage("quantize")
    ctx.partial({"type": "stage", "name": "quantize"})
    calib = data.batches(split.calibration, batch_size=batch_size, message="calibrating")
    if len(calib.indices) == 0:
        raise InputError("there is no calibration data", path=data.path, hint="Choose data with at least one sample.")
    from quantstudio.core.equalize import equalized_model

    # Only the engine (and the per-layer error, whose FP32 activations must be the ones the
    # engine quantized) sees the equalized copy; ``model`` stays the reference.
    to_quantize = equalized_model(model, config, notes)
    qm = engine.quantize(to_quantize, plan, config, calib, st)
    if calib.skipped:
        warnings.append(f"{len(calib.skipped)} calibration file(s) could not be read and were skipped")
    notes.extend(qm.notes)
    if qm.fused:
        ctx.partial({"type": "fused", "groups": [list(g) for g in qm.fused]})
    ctx.check_cancelled()

    # ---------------------------------------------------------------- evaluate
    st = stages.stage("evaluate")
    ctx.partial({"type": "stage", "name": "evaluate"})
    seen: list[np.ndarray] = []
    runner = qm.runner

    def quantized_variant(x):
        if len(seen) < max(sqnr_batches, 1):
            seen.append(np.array(x, dtype=np.float32, copy=True))
        return runner(x)

    original_metrics = quantized_metrics = None
    if len(split.evaluation):
        from quantstudio.core.evaluation import evaluate

        ev = evaluate(
            {"original": model, "quantized": quantized_variant},
            evaluation_source,
            split.evaluation,
            reference="original",
            batch_size=batch_size,
            ctx=st,
        )
        original_metrics, quantized_metrics = ev["original"], ev["quantized"]
        for w in ev.warnings + near_chance_warnings(original_metrics, evaluation_source, model):
            if w not in warnings:
                warnings.append(w)
        ctx.partial({"type": "metrics", "original": original_metrics.to_dict(), "quantized": quantized_metrics.to_dict()})
    else:
        notes.append("no samples were left for evaluation: accuracy not measured (use more data or fewer calibration samples)")
        x, _, _ = data.read(np.asarray(split.calibration[:batch_size]))
        seen.append(x)
    ctx.check_cancelled()

    # ---------------------------------------------------------------- per-layer error
    st = stages.stage("layer_error")
    ctx.partial({"type": "stage", "name": "layer_error"})
    st.report(0.0, "measuring per-layer error")
    sqnr = layer_sqnr(to_quantize, qm, seen[: max(sqnr_batches, 1)], st)
    if sqnr:
        ctx.partial({"type": "layer_sqnr", "values": {k: _json_float(v) for k, v in sqnr.items()}})
    st.report(1.0, "per-layer error measured")
    ctx.check_cancelled()

    # ---------------------------------------------------------------- sensitivity
    layer_sens: dict[str, float] = {}
    if sensitivity:
        st = stages.stage("sensitivity")
        ctx.partial({"type": "stage", "name": "sensitivity"})
        if can_measure(model):
            from quantstudio.core.sensitivity import layer_sensitivity

            layer_sens = layer_sensitivity(model, [np.concatenate(seen)[:sensitivity_samples]], config, st)
            if layer_sens:
                ctx.partial({"type": "layer_sensitivity", "values": {k: _json_float(v) for k, v in layer_sens.items()}})
        else:
            notes.append(UNAVAILABLE_NOTE)
        ctx.check_cancelled()

    check = np.concatenate(seen)[: fixed or CHECK_SAMPLES] if seen else None  # a fixed batch runs exactly that many
    sizes = model_sizes(model, qm)
    ctx.partial({"type": "size", **sizes})

    # ---------------------------------------------------------------- benchmark
    bench = None
    if benchmark:
        st = stages.stage("benchmark")
        ctx.partial({"type": "stage", "name": "benchmark"})
        bench = _benchmark(model, qm, batch_sizes, benchmark_runs, st, sizes)
        ctx.partial({"type": "benchmark", "result": bench.to_dict()})
        notes.extend(_speed_notes(bench, qm))
        warnings.extend(w for w in bench.warnings if w not in warnings)
    memory: dict[str, dict[str, int]] = {}
    if measure_memory:
        st = stages.stage("memory")
        ctx.partial({"type": "stage", "name": "memory"})
        memory, failed = _memory(model, qm, st)
        for name, m in memory.items():
            ctx.partial({"type": "memory", "variant": name, **m})
        for name, reason in failed.items():
            notes.append(f"peak memory of the {name} model could not be measured: {reason}")
    ctx.report(1.0, "done")
    return QuantizeResult(
        quantized=qm,
        config=config,
        plan=plan.copy(),
        original_metrics=original_metrics,
        quantized_metrics=quantized_metrics,
        layer_sqnr=sqnr,
        sensitivity=layer_sens,
        memory=memory,
        fused=[list(g) for g in qm.fused],
        notes=notes,
        warnings=warnings,
        benchmark=bench,
        sizes=sizes,
        random_data=bool(data.is_random),
        calibration_samples=int(len(split.calibration)) if static else 0,
        evaluation_samples=int(quantized_metrics.n) if quantized_metrics is not None else 0,
        calibration_data=_source_text(data) if static else "",
        evaluation_data=_evaluation_text(data, eval_data, quantized_metrics, static),
        preprocessing_steps=data.preprocessing_steps(),
        check_samples=check,
        model=model,
        data=data,
        eval_data=eval_data,
        preprocessing=preprocessing,
        calibration_indices=np.asarray(split.calibration if static else [], dtype=np.int64),
        batch_size=batch_size,
    )


def result_recipe(result: QuantizeResult, data_spec: str | None = None, eval_data_spec: str | None = None):
    """The recipe that reproduces ``result`` (written beside every export)."""
    from quantstudio.core.recipe import make_recipe

    recipe = make_recipe(
        result.model,
        result.plan,
        result.config,
        preprocessing=result.preprocessing,
        data=result.data,
        data_spec=data_spec,
        calibration_indices=result.calibration_indices,
        evaluation_samples=result.evaluation_samples,
        batch_size=result.batch_size,
    )
    if recipe.preprocessing is not None:
        recipe.preprocessing["steps"] = list(result.preprocessing_steps)  # what ran; derived, ignored when read
    if eval_data_spec is None and result.eval_data is not None and result.eval_data.path is not None:
        eval_data_spec = str(result.eval_data.path)
    if eval_data_spec:
        spec = eval_data_spec
        recipe.data["evaluation_spec"] = str(Path(spec).resolve()) if Path(spec).exists() else spec
    return recipe


def export_result(result: QuantizeResult, path: str | Path, ctx: JobContext | None = None, *, data_spec: str | None = None,
                  eval_data_spec: str | None = None):
    """Export the quantized model (checked against the in-app outputs) plus its recipe."""
    from quantstudio.core.export import export_model

    recipe = result_recipe(result, data_spec, eval_data_spec)
    return export_model(result.quantized, path, samples=result.check_samples, recipe=recipe, ctx=ctx)


# --------------------------------------------------------------------------- pieces


def _source_text(data: Any) -> str:
    where = f" ({data.path})" if getattr(data, "path", None) is not None else ""
    return f"{data.describe()}{where}"


def _evaluation_text(data: Any, eval_data: Any, metrics: Any, static: bool) -> str:
    """Where the evaluation samples come from, in words every accuracy figure can carry."""
    if metrics is None:
        return ""
    if eval_data is not None:
        return f"{metrics.n} samples of {_source_text(eval_data)}"
    if static:
        return f"{metrics.n} samples of {_source_text(data)} not used for calibration"
    return f"{metrics.n} samples of {_source_text(data)}"


NEAR_CHANCE_FACTOR = 1.5


def near_chance_warnings(metrics: Any, data: Any, model: Any) -> list[str]:
    """A warning when the *original* model scores near chance on labeled data.

    An original model that guesses means the data or its preprocessing is wrong, not the
    quantization: every figure of the run would be meaningless.
    """
    if metrics is None or metrics.top1 is None or not getattr(data, "labeled", False):
        return []
    classes = max(len(getattr(data, "class_names", {}) or {}), 1)
    chance = 1.0 / classes
    if classes < 2 or metrics.top1 >= NEAR_CHANCE_FACTOR * chance:
        return []
    shape = "x".join(str(d) for d in model.input_shape) if getattr(model, "input_shape", None) else "unknown"
    return [
        f"the original model scores near chance on this data (top-1 {metrics.top1:.1%}, chance {chance:.1%} with "
        f"{classes} classes): the data or its preprocessing does not match the model. Check the input size (now "
        f"{shape}), the mean/std, the channel order (RGB/BGR), and that class folder i holds the model's class i "
        "(folders sort by name; numeric names map to that output)"
    ]



def _unmatched_rule_warnings(model: Any, plan: PrecisionPlan) -> list[str]:
    """One warning per plan rule that matches no layer (otherwise silently ignored)."""
    if not plan.rules:
        return []
    from quantstudio.core.inventory import build_inventory

    try:
        tree = build_inventory(model)
    except InputError:
        return []  # the engine reports what is wrong with the model
    prefix = {"exact": "", "glob": "", "regex": "re:", "type": "type:"}
    return [f"precision rule '{prefix[r.kind]}{r.pattern}={r.precision.value}' matches no layer of this model; "
            "check the layer names (quantstudio-cli inspect MODEL) or types" for r in plan.unmatched_rules(tree)]


def layer_sqnr(model: Any, qm: QuantizedModel, batches: list[np.ndarray], ctx: JobContext | None = None) -> dict[str, float]:
    """Per-layer SQNR (dB) for either engine; {} where it cannot be measured."""
    if qm.engine == "torch":
        from quantstudio.core.engines.torch_engine import torch_layer_sqnr

        return torch_layer_sqnr(model.module, qm, batches, ctx)
    from quantstudio.core.engines.ort_engine import ort_layer_sqnr

    return ort_layer_sqnr(qm, batches, ctx)


def _torch_bytes(module: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def model_sizes(model: Any, qm: QuantizedModel) -> dict[str, int | None]:
    """Serialized size of the original and the quantized model, in bytes."""
    try:
        if qm.engine == "onnxruntime":
            original = len(qm.reference_artifact.SerializeToString()) if qm.reference_artifact is not None else None
            quantized = len(qm.artifact.SerializeToString())
        else:
            original = _torch_bytes(model.module)
            quantized = _torch_bytes(qm.artifact)
    except Exception:  # noqa: BLE001 - a size is informative, never worth failing the run
        return {"original_bytes": None, "quantized_bytes": None}
    return {"original_bytes": original, "quantized_bytes": quantized}


def _benchmark(model, qm, batch_sizes, runs, ctx, sizes):
    from quantstudio.core.benchmark import Variant, run_benchmark

    variants = [
        Variant("original", model.forward_numpy, file=None, param_bytes=sizes.get("original_bytes"), kind=f"{model.framework} fp32"),
    ]
    if qm.engine == "onnxruntime" and qm.reference_artifact is not None and model.framework != "onnx":
        from quantstudio.core.engines.ort_engine import OrtRunner, make_session

        # Same runtime, FP32: the fair baseline for the INT8 speed-up.
        variants.append(Variant("original (onnxruntime)", OrtRunner(make_session(qm.reference_artifact)), kind="onnxruntime fp32"))
    variants.append(Variant("quantized", qm.runner, param_bytes=sizes.get("quantized_bytes"), kind=f"{qm.engine} {qm.config.mode}"))
    shape = tuple(model.input_shape)
    return run_benchmark(variants, shape, batch_sizes=tuple(batch_sizes), runs=runs, warmup=3, ctx=ctx)


def _memory(model: Any, qm: QuantizedModel, ctx: JobContext) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Peak memory of the original and the quantized model, each run in a fresh process.

    Both run in the quantized model's runtime (the FP32 ONNX for the ONNX Runtime
    engine, a TorchScript trace for the PyTorch one), so the bars compare models, not
    runtimes. The files go to a temporary folder that is removed afterwards. Returns the
    measurements and, per model that could not be measured, why.
    """
    import tempfile

    from quantstudio.core.benchmark import measure_memory_many

    shape = tuple(model.input_shape)
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="quantstudio-memory-") as tmp:
        files: dict[str, Path] = {}
        ctx.report(0.0, "writing temporary copies to measure memory")
        if qm.engine == "onnxruntime":
            if qm.reference_artifact is not None:
                files["original"] = Path(tmp) / "original.onnx"
                files["original"].write_bytes(qm.reference_artifact.SerializeToString())
            elif model.framework == "onnx":
                files["original"] = Path(model.path)
            files["quantized"] = Path(tmp) / "quantized.onnx"
            files["quantized"].write_bytes(qm.artifact.SerializeToString())
        else:
            from quantstudio.core.export import _write_torchscript

            example = np.zeros(shape, dtype=np.float32)
            backend = getattr(qm.runner, "backend", None)  # the quantized engine it was converted for
            for name, module, engine in (("original", model.module, None), ("quantized", qm.artifact, backend)):
                ctx.check_cancelled()
                files[name] = Path(tmp) / f"{name}.pth"
                try:
                    _write_torchscript(module, example, files[name], backend=engine)
                except InputError as exc:
                    files.pop(name)  # a model TorchScript cannot trace: no bar, not a failed run
                    failed[name] = exc.message
        ctx.check_cancelled()
        ctx.report(0.3, "measuring memory in fresh processes")
        return measure_memory_many(files, shape, ctx=ctx, errors=failed), failed


def _speed_notes(bench, qm: QuantizedModel) -> list[str]:
    """Say so when the quantized model is not faster (the most common complaint)."""
    names = [v.name for v in bench.variants]
    base = "original (onnxruntime)" if "original (onnxruntime)" in names else "original"
    try:
        batch = min(bench.by_name("quantized").latency)
        ratio = bench.speedup(base, "quantized", batch)
    except (KeyError, ValueError, StopIteration, ZeroDivisionError):
        return []
    if ratio >= 1.1:
        return [f"quantized model {ratio:.1f}x faster than {base} at batch {batch}"]
    why = ""
    if qm.config.mode == "fp16" or "fp16" in qm.layer_precisions.values():
        why = " FP16 has no fast kernels on most x86 CPUs; it saves memory, not time."
    elif qm.config.mode == "dynamic":
        why = " Dynamic INT8 speeds up Linear/LSTM-heavy models; conv models want static INT8."
    return [f"the quantized model is not faster than {base} here ({ratio:.2f}x at batch {batch}).{why}"]

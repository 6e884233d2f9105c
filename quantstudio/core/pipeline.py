"""The Quantize job: quantize → evaluate → per-layer error → benchmark, in weighted stages.

:func:`run_quantize` is one plain function taking a job context, so the GUI runs it on a
worker thread and the CLI in the foreground. The quantize stage covers the engine's own
phases (fuse/prepare, calibrate, convert). Original and quantized model are evaluated on
exactly the same decoded tensors (:func:`quantstudio.core.evaluation.evaluate`), and
timed interleaved (:func:`quantstudio.core.benchmark.run_benchmark`).

Live plot data goes out through ``ctx.partial`` as the typed events of
:mod:`quantstudio.core.results` (``StageStarted``, ``LayersFused``, ``MetricsReady``,
``LayerErrors``, ``LayerSensitivity``, ``SizesMeasured``, ``BenchmarkDone``,
``MemoryMeasured``; the benchmark streams ``LatencySample``/``ThroughputMeasured``, the
evaluation ``EvaluationProgress``). The finished run's figures are one
:class:`~quantstudio.core.results.RunSummary` (``QuantizeResult.summary()``), which the
CLI, the GUI, the report and projects all read.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from quantstudio.core.data import Split
from quantstudio.core.engines.base import QuantConfig, QuantizedModel, get_engine
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext, Stages
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.results import (BenchmarkDone, LayerErrors, LayerSensitivity, LayersFused, MemoryMeasured,
                                      MetricsReady, RunSummary, SizesMeasured, StageStarted, VariantMetrics,
                                      VariantRole, finite_values, same_runtime_role, smallest_batch_latency, speedup, speedup_baseline)

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
    training: dict[str, Any] = field(default_factory=dict)  # QAT (core/qat.py): settings, history; {} without
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
    layer_sqnr_isolated: dict[str, float] = field(default_factory=dict)  # layer -> dB, its own error on FP32 input
    sensitivity_fix: dict[str, list[str]] = field(default_factory=dict)  # layer -> the layers to set FP32 to fix it
    auto_precision: dict[str, Any] = field(default_factory=dict)  # the search (RunSummary.auto_precision)
    fp32_reasons: dict[str, str] = field(default_factory=dict)  # layer -> why it runs FP32

    @property
    def latency_ms(self) -> dict[str, float]:
        """p50 latency at the smallest batch size, per benchmark variant."""
        return smallest_batch_latency(self.benchmark)

    def summary(self) -> RunSummary:
        """The run's figures as the one result model every consumer reads."""
        variants = {VariantRole.ORIGINAL.value: VariantMetrics.from_evaluation(self.original_metrics),
                    VariantRole.QUANTIZED.value: VariantMetrics.from_evaluation(self.quantized_metrics)}
        variants[VariantRole.ORIGINAL.value].size_bytes = self.sizes.get("original_bytes")
        variants[VariantRole.QUANTIZED.value].size_bytes = self.sizes.get("quantized_bytes")
        latency_samples: dict[str, dict[int, list[float]]] = {}
        if self.benchmark is not None:
            for v in self.benchmark.variants:
                m = variants.setdefault(v.name, VariantMetrics())
                m.param_bytes = v.param_bytes
                m.throughput = {int(b): float(x) for b, x in v.throughput.items() if np.isfinite(x)}
                latency_samples[v.name] = {int(b): [float(x) for x in xs] for b, xs in v.samples_ms.items()}
            for name, ms in self.latency_ms.items():
                variants[name].latency_ms = ms
        for name, mem in self.memory.items():
            m = variants.setdefault(name, VariantMetrics())
            m.peak_rss_bytes, m.model_peak_bytes = mem.get("peak_rss_bytes"), mem.get("model_peak_bytes")
        return RunSummary(
            engine=self.config.engine,
            mode=self.config.mode,
            config=self.config.to_dict(),
            plan=self.plan.to_dict(),
            variants=variants,
            evaluation={VariantRole.ORIGINAL.value: self.original_metrics.to_dict() if self.original_metrics is not None else None,
                        VariantRole.QUANTIZED.value: self.quantized_metrics.to_dict() if self.quantized_metrics is not None else None},
            latency_samples=latency_samples,
            layer_sqnr=dict(self.layer_sqnr),
            sensitivity=dict(self.sensitivity),
            memory={k: dict(v) for k, v in self.memory.items()},
            layer_precisions=dict(self.quantized.layer_precisions),
            fused=[list(g) for g in self.fused],
            benchmark=self.benchmark.to_dict() if self.benchmark is not None else None,
            sizes=dict(self.sizes),
            notes=list(self.notes),
            warnings=list(self.warnings),
            random_data=self.random_data,
            calibration_samples=self.calibration_samples,
            evaluation_samples=self.evaluation_samples,
            calibration_data=self.calibration_data,
            evaluation_data=self.evaluation_data,
            preprocessing={**(self.preprocessing.to_dict() if self.preprocessing is not None else {}),
                           "steps": list(self.preprocessing_steps)},
            input_shape=list(self.model.input_shape) if getattr(self.model, "input_shape", None) else None,
            fp32_reasons=dict(self.fp32_reasons),
            auto_precision=dict(self.auto_precision),
            sensitivity_fix={k: list(v) for k, v in self.sensitivity_fix.items()},
            layer_sqnr_isolated=dict(self.layer_sqnr_isolated),
            training=dict(self.training),
        )

    def to_dict(self) -> dict[str, Any]:
        return self.summary().to_dict()


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
    budget: Any = None,
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
    ``budget`` (an :class:`~quantstudio.core.auto_precision.Budget`) turns the quantize
    stage into the automatic mixed-precision search (static INT8): candidates are judged
    on samples of ``data_source`` held out from calibration and evaluation; the rest of
    the run measures the chosen one.
    Raises InputError / Cancelled.
    """
    from quantstudio.core.data import open_data

    ctx = ctx or NullContext()
    config.validate()
    guard = None
    if config.qat and budget is not None:
        raise InputError("fine-tuning (QAT) and the automatic mixed-precision search cannot run together",
                         hint="Search for a plan first (--auto-precision), then fine-tune that plan with --qat "
                              "(its recipe keeps the plan).")
    if config.qat:
        from quantstudio.core.qat import CancelGuard, check_qat_config

        check_qat_config(config, model, get_engine(config.engine))
        # A cancel during training keeps the best epoch and the run finishes (core/qat.py).
        ctx = guard = CancelGuard(ctx)
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

    sensitivity = sensitivity and sensitivity_samples > 0
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
    judge = None
    if budget is not None:  # automatic mixed precision: a held-out split to judge candidates on
        from quantstudio.core.auto_precision import held_out_split

        if not static:
            raise InputError(f"automatic mixed precision searches static INT8 plans, not {config.mode}",
                             hint="Use --mode static (the default) with --auto-precision.")
        shape = tuple(model.input_shape or (1,))
        judge, evaluation, judge_notes = held_out_split(
            data, split.calibration, split.evaluation if eval_data is None else np.zeros(0, np.int64),
            seed=config.seed, sample_bytes=4 * int(np.prod(shape[1:])))
        if eval_data is None:
            split = dataclasses.replace(split, evaluation=evaluation[: len(evaluation) // fixed * fixed] if fixed else evaluation)
        if fixed:
            judge = judge[: len(judge) // fixed * fixed]
        notes.extend(judge_notes)
        if not len(judge):
            raise InputError("no samples are left to judge the auto-precision candidates on", path=data.path,
                             hint="Use more data, or fewer calibration/evaluation samples (--calib-samples, --eval-samples).")
    if eval_data is not None:
        warnings += [w for w in eval_data.warnings if w not in warnings]
    warnings += _unmatched_rule_warnings(model, plan)
    if data.is_random and RANDOM_NOTE not in warnings:
        warnings.insert(0, RANDOM_NOTE)

    state = _RunState(model=model, data=data, evaluation_source=evaluation_source, config=config, plan=plan,
                      engine=engine, split=split, batch_size=batch_size, batch_sizes=tuple(batch_sizes), fixed=fixed,
                      sqnr_batches=sqnr_batches, sensitivity_samples=sensitivity_samples,
                      benchmark_runs=benchmark_runs, notes=notes, warnings=warnings, budget=budget, judge=judge)
    if config.qat:
        from quantstudio.core.qat import training_data

        state.training_data = training_data(config, data, split.evaluation, eval_data is not None)
        state.cancel_guard = guard
    # (name, weight ≈ expected share of the time, function): the run is this list, in order.
    stages = [
        ("train", 30.0, _train_stage) if config.qat else ("quantize", 6.0, _quantize_stage),
        ("evaluate", 3.0, _evaluate_stage),
        ("layer_error", 1.0, _layer_error_stage),
        *([("sensitivity", 2.0, _sensitivity_stage)] if sensitivity else []),
        ("sizes", 0.0, _sizes_step),
        *([("benchmark", 3.0, _benchmark_stage)] if benchmark else []),
        *([("memory", 1.0, _memory_stage)] if measure_memory else []),
    ]
    progress = Stages(ctx, [(name, weight) for name, weight, _ in stages])
    for name, weight, run_stage in stages:
        if guard is not None and guard.consumed and name in _SKIPPED_AFTER_TRAINING_CANCEL:
            state.notes.append(f"{name} skipped: the fine-tuning was cancelled")
            continue
        st = progress.stage(name)
        if weight > 0:  # a zero-weight step is bookkeeping, not a stage the user is told about
            ctx.partial(StageStarted(name))
        run_stage(state, st)
        if name == "quantize" and state.auto.get("cancelled"):
            # Cancel during the search keeps the best plan so far and finishes the run; only
            # a cancel from now on stops it (a context that cannot forget one is not asked again).
            reset = getattr(ctx, "reset_cancel", None)
            if callable(reset):
                reset()
            else:
                from quantstudio.core.qat import CancelGuard

                ctx = CancelGuard(ctx)
                ctx.consume()  # the search spent the cancel: the rest of the run finishes
                progress.ctx = ctx
        ctx.check_cancelled()
    ctx.report(1.0, "done")
    qm = state.quantized
    seen, original_metrics, quantized_metrics = state.seen, state.original_metrics, state.quantized_metrics
    return QuantizeResult(
        quantized=qm,
        config=state.config,  # the search's choice when there was one
        plan=state.plan.copy(),
        original_metrics=original_metrics,
        quantized_metrics=quantized_metrics,
        layer_sqnr=state.sqnr,
        sensitivity=state.layer_sens,
        memory=state.memory,
        fused=[list(g) for g in qm.fused],
        training=state.training,
        notes=notes,
        warnings=warnings,
        benchmark=state.bench,
        sizes=state.sizes,
        random_data=bool(data.is_random),
        calibration_samples=int(len(split.calibration)) if static else 0,
        evaluation_samples=int(quantized_metrics.n) if quantized_metrics is not None else 0,
        calibration_data=_source_text(data) if static else "",
        evaluation_data=_evaluation_text(data, eval_data, quantized_metrics, static),
        preprocessing_steps=data.preprocessing_steps(),
        check_samples=np.concatenate(seen)[: fixed or CHECK_SAMPLES] if seen else None,  # a fixed batch runs exactly that many
        model=model,
        data=data,
        eval_data=eval_data,
        preprocessing=preprocessing,
        calibration_indices=np.asarray(split.calibration if static else [], dtype=np.int64),
        batch_size=batch_size,
        layer_sqnr_isolated=state.sqnr_isolated,
        sensitivity_fix=state.sens_fix,
        auto_precision=state.auto,
        fp32_reasons=_fp32_reasons(state),
    )


# --------------------------------------------------------------------------- stages


@dataclass
class _RunState:
    """What the stages of one run share: its inputs, and what each stage adds for the next."""

    model: Any
    data: Any
    evaluation_source: Any
    config: QuantConfig
    plan: PrecisionPlan
    engine: Any
    split: Split
    batch_size: int
    batch_sizes: tuple[int, ...]
    fixed: int | None
    sqnr_batches: int
    sensitivity_samples: int
    benchmark_runs: int
    notes: list[str]
    warnings: list[str]
    qm: QuantizedModel | None = None
    # What the engine quantized: ``model``, or its outlier-equalized copy (core/equalize.py).
    # ``model`` stays the FP32 reference for accuracy and speed.
    quantized_source: Any = None
    seen: list[np.ndarray] = field(default_factory=list)  # quantized-model inputs kept for SQNR, sensitivity, checks
    original_metrics: Any = None
    quantized_metrics: Any = None
    sqnr: dict[str, float] = field(default_factory=dict)
    layer_sens: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int | None] = field(default_factory=dict)
    bench: Any = None
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    budget: Any = None  # auto_precision.Budget: the quantize stage searches
    judge: np.ndarray | None = None  # held-out samples the search judges candidates on
    auto: dict[str, Any] = field(default_factory=dict)  # RunSummary.auto_precision
    auto_reasons: dict[str, str] = field(default_factory=dict)  # FP32 layers the search chose -> why
    sqnr_isolated: dict[str, float] = field(default_factory=dict)
    sens_fix: dict[str, list[str]] = field(default_factory=dict)
    training_data: Any = None  # core.qat.TrainingData when config.qat
    cancel_guard: Any = None  # core.qat.CancelGuard when config.qat
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> QuantizedModel:
        """The quantized model (every stage after "quantize" runs with one)."""
        assert self.qm is not None, "the quantize stage runs first"
        return self.qm


def _quantize_stage(s: _RunState, st: JobContext) -> None:
    calib = s.data.batches(s.split.calibration, batch_size=s.batch_size, message="calibrating")
    if len(calib.indices) == 0:
        raise InputError("there is no calibration data", path=s.data.path, hint="Choose data with at least one sample.")
    from quantstudio.core.equalize import calibration_batches, equalized_model

    s.quantized_source = equalized_model(s.model, s.config, s.notes, calibration_batches(calib, st))
    if s.budget is not None:
        _search_stage(s, calib, st)
    else:
        s.qm = s.engine.quantize(s.quantized_source, s.plan, s.config, calib, st)
    if calib.skipped:
        s.warnings.append(f"{len(calib.skipped)} calibration file(s) could not be read and were skipped")
    s.notes.extend(s.quantized.notes)
    if s.quantized.fused:
        st.partial(LayersFused(tuple(tuple(g) for g in s.quantized.fused)))


# After a cancelled fine-tune the run finishes with what the result needs (convert, evaluate,
# per-layer error, sizes) and skips the optional measurements the user no longer waits for.
_SKIPPED_AFTER_TRAINING_CANCEL = ("sensitivity", "benchmark", "memory")


def _train_stage(s: _RunState, st: JobContext) -> None:
    """QAT (core/qat.py): calibrate as PTQ, fine-tune, convert — the engine's ``quantize_aware``."""
    calib = s.data.batches(s.split.calibration, batch_size=s.batch_size, message="calibrating")
    if len(calib.indices) == 0:
        raise InputError("there is no calibration data", path=s.data.path, hint="Choose data with at least one sample.")
    from quantstudio.core.equalize import calibration_batches, equalized_model

    s.quantized_source = equalized_model(s.model, s.config, s.notes, calibration_batches(calib, st))
    s.qm, s.training = s.engine.quantize_aware(s.quantized_source, s.plan, s.config, calib, s.training_data, st)
    if s.training.get("cancelled") and s.cancel_guard is not None:
        s.cancel_guard.consume()  # the user's cancel ended the training, not the run
    s.notes.extend(s.quantized.notes)
    if s.quantized.fused:
        st.partial(LayersFused(tuple(tuple(g) for g in s.quantized.fused)))


def _evaluate_stage(s: _RunState, st: JobContext) -> None:
    runner = s.quantized.runner
    keep = max(s.sqnr_batches, 1)

    def quantized_variant(x):
        if len(s.seen) < keep:
            s.seen.append(np.array(x, dtype=np.float32, copy=True))
        return runner(x)

    if not len(s.split.evaluation):
        s.notes.append("no samples were left for evaluation: accuracy not measured (use more data or fewer calibration samples)")
        x, _, _ = s.data.read(np.asarray(s.split.calibration[: s.batch_size]))
        s.seen.append(x)
        return
    from quantstudio.core.evaluation import evaluate

    ev = evaluate(
        {VariantRole.ORIGINAL.value: s.model, VariantRole.QUANTIZED.value: quantized_variant},
        s.evaluation_source,
        s.split.evaluation,
        reference=VariantRole.ORIGINAL.value,
        batch_size=s.batch_size,
        ctx=st,
    )
    s.original_metrics, s.quantized_metrics = ev[VariantRole.ORIGINAL.value], ev[VariantRole.QUANTIZED.value]
    for w in ev.warnings + near_chance_warnings(s.original_metrics, s.evaluation_source, s.model):
        if w not in s.warnings:
            s.warnings.append(w)
    st.partial(MetricsReady(VariantMetrics.from_evaluation(s.original_metrics),
                            VariantMetrics.from_evaluation(s.quantized_metrics)))


def _layer_error_stage(s: _RunState, st: JobContext) -> None:
    st.report(0.0, "measuring per-layer error")
    # The FP32 activations compared must be the ones the engine quantized (equalization
    # rescales channels between conv pairs; the names are the same).
    s.sqnr = layer_sqnr(s.quantized_source or s.model, s.quantized, s.seen[: max(s.sqnr_batches, 1)], st)
    if s.sqnr:
        st.partial(LayerErrors(finite_values(s.sqnr)))
    if s.config.mode == "static":
        # Each layer's own error on FP32 input (nothing accumulated from the layers before it).
        from quantstudio.core.sensitivity import isolated_errors

        iso = isolated_errors(s.quantized_source or s.model, s.seen[: max(s.sqnr_batches, 1)], s.config, st)
        s.sqnr_isolated = {k: v["both"] for k, v in iso.items()}
    st.report(1.0, "per-layer error measured")


def _sensitivity_stage(s: _RunState, st: JobContext) -> None:
    from quantstudio.core.sensitivity import UNAVAILABLE_NOTE, can_measure

    if not can_measure(s.model):
        s.notes.append(UNAVAILABLE_NOTE)
        return
    from quantstudio.core.sensitivity import measure_with_fix

    # Measured on what the engine quantizes (the equalized copy; same layer names), reused
    # when the same model, samples and settings were measured before.
    s.layer_sens, s.sens_fix, _ = measure_with_fix(s.quantized_source or s.model,
                                                   [np.concatenate(s.seen)[: s.sensitivity_samples]], s.config, st)
    if s.layer_sens:
        st.partial(LayerSensitivity(finite_values(s.layer_sens)))


def _search_stage(s: _RunState, calib: Any, st: JobContext) -> None:
    """The quantize stage as the automatic mixed-precision search (core/auto_precision.py)."""
    from quantstudio.core.auto_precision import search

    assert s.judge is not None
    x, kept, _ = s.data.read(np.asarray(s.judge))
    y = None
    if s.data.labeled and s.data.targets is not None:
        y = np.asarray(s.data.targets)[np.asarray(kept)]
    found = search(s.quantized_source, s.model, s.plan, s.config, s.engine, calib, x, y, s.budget, st,
                   batch_size=s.batch_size, latency_batch=s.fixed or 1)
    s.qm, s.plan, s.config = found.quantized, found.plan, found.config
    s.auto, s.auto_reasons = found.record, found.fp32_reasons
    s.notes.extend(found.notes)
    s.warnings.extend(found.warnings)


def _fp32_reasons(s: _RunState) -> dict[str, str]:
    """layer → why it runs FP32, for every layer the built model leaves FP32."""
    if s.qm is None:
        return {}
    producers_of = {p: c for c, layers in s.sens_fix.items() for p in layers if p != c}
    out: dict[str, str] = {}
    for layer, precision in s.quantized.layer_precisions.items():
        if precision != "fp32":
            continue
        requested = s.plan.precision_for(layer).value
        if layer in s.auto_reasons:
            out[layer] = s.auto_reasons[layer]
        elif requested == "fp32":
            out[layer] = "set by you"
        elif layer in producers_of:
            out[layer] = f"feeds {producers_of[layer]}"
        elif s.config.mode != "static":
            out[layer] = f"{s.config.mode} mode leaves it FP32"
        else:
            out[layer] = ""
    # A BN/ReLU fused into (or folded with) an FP32 layer is FP32 for the same reason.
    for group in s.quantized.fused:
        why = next((f"fused with {g} ({out[g]})" for g in group if out.get(g)), None)
        for g in group:
            if why and g in out and not out[g]:
                out[g] = why
    for layer, why in out.items():
        if not why:
            out[layer] = (f"runs in float in the {s.quantized.engine} engine: no INT8 form, or it only feeds "
                          "float layers")
    return out


def _sizes_step(s: _RunState, st: JobContext) -> None:
    s.sizes = model_sizes(s.model, s.quantized)
    st.partial(SizesMeasured(s.sizes.get("original_bytes"), s.sizes.get("quantized_bytes")))


def _benchmark_stage(s: _RunState, st: JobContext) -> None:
    s.bench = _benchmark(s.model, s.quantized, s.batch_sizes, s.benchmark_runs, st, s.sizes)
    st.partial(BenchmarkDone(tuple(s.bench.warnings), s.bench.to_dict()))
    s.notes.extend(_speed_notes(s.bench, s.quantized))
    s.warnings.extend(w for w in s.bench.warnings if w not in s.warnings)


def _memory_stage(s: _RunState, st: JobContext) -> None:
    s.memory, failed = _memory(s.model, s.quantized, st)
    for name, m in s.memory.items():
        st.partial(MemoryMeasured(name, m.get("peak_rss_bytes"), m.get("model_peak_bytes")))
    for name, reason in failed.items():
        s.notes.append(f"peak memory of the {name} model could not be measured: {reason}")


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
    """Per-layer SQNR (dB), measured by the engine that made ``qm``; {} where it cannot be measured."""
    return get_engine(qm.engine).layer_error(model, qm, batches, ctx)


def model_sizes(model: Any, qm: QuantizedModel) -> dict[str, int | None]:
    """Serialized size of the original and the quantized model, in bytes."""
    try:
        return get_engine(qm.engine).sizes(model, qm)
    except Exception:  # noqa: BLE001 - a size is informative, never worth failing the run
        return {"original_bytes": None, "quantized_bytes": None}


def _benchmark(model, qm, batch_sizes, runs, ctx, sizes):
    from quantstudio.core.benchmark import Variant, run_benchmark

    engine = get_engine(qm.engine)
    variants = [
        Variant(VariantRole.ORIGINAL.value, model.forward_numpy, file=None, param_bytes=sizes.get("original_bytes"), kind=f"{model.framework} fp32"),
    ]
    reference = engine.reference_runner(model, qm)
    if reference is not None:
        # Same runtime, FP32: the fair baseline for the INT8 speed-up; its name says which runtime.
        variants.append(Variant(same_runtime_role(engine.name), reference, kind=f"{engine.name} fp32"))
    variants.append(Variant(VariantRole.QUANTIZED.value, qm.runner, param_bytes=sizes.get("quantized_bytes"), kind=f"{qm.engine} {qm.config.mode}"))
    shape = tuple(model.input_shape)
    return run_benchmark(variants, shape, batch_sizes=tuple(batch_sizes), runs=runs, warmup=3, ctx=ctx)


def _memory(model: Any, qm: QuantizedModel, ctx: JobContext) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Peak memory of the original and the quantized model, each run in a fresh process.

    Both run in the quantized model's runtime (the engine writes both files: the FP32
    ONNX for the ONNX Runtime engine, a TorchScript trace for the PyTorch one), so the
    bars compare models, not runtimes. The files go to a temporary folder that is
    removed afterwards. Returns the measurements and, per model that could not be
    measured, why.
    """
    import tempfile

    from quantstudio.core.benchmark import measure_memory_many

    shape = tuple(model.input_shape)
    with tempfile.TemporaryDirectory(prefix="quantstudio-memory-") as tmp:
        ctx.report(0.0, "writing temporary copies to measure memory")
        files, failed = get_engine(qm.engine).memory_files(model, qm, Path(tmp), ctx)
        ctx.check_cancelled()
        ctx.report(0.3, "measuring memory in fresh processes")
        return measure_memory_many(files, shape, ctx=ctx, errors=failed), failed


def _speed_notes(bench, qm: QuantizedModel) -> list[str]:
    """Say so when the quantized model is not faster (the most common complaint)."""
    # The same p50-at-smallest-batch and baseline rule as every other speed-up shown.
    latency = smallest_batch_latency(bench)
    base, ratio = speedup_baseline(latency), speedup(latency)
    if base is None or ratio is None:
        return []
    batch = min(bench.by_name(VariantRole.QUANTIZED.value).latency)
    if ratio >= 1.1:
        return [f"quantized model {ratio:.1f}x faster than {base} at batch {batch}"]
    why = ""
    if qm.config.mode == "fp16" or "fp16" in qm.layer_precisions.values():
        why = " FP16 has no fast kernels on most x86 CPUs; it saves memory, not time."
    elif qm.config.mode == "dynamic":
        why = " Dynamic INT8 speeds up Linear/LSTM-heavy models; conv models want static INT8."
    return [f"the quantized model is not faster than {base} here ({ratio:.2f}x at batch {batch}).{why}"]

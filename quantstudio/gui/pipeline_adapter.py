"""Runs the core Quantize pipeline (worker thread) and reduces its result for the GUI.

Only plain numbers, names and lists leave this module in a :class:`RunOutcome`; the core
``QuantizeResult`` rides along in ``raw`` so an export can use the in-memory model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from quantstudio.gui.tasks import QuantizeRequest, RunOutcome

SPEED_BASELINE = "original (onnxruntime)"  # same runtime, FP32: the fair reference for speed-ups


def run(ctx, request: QuantizeRequest) -> RunOutcome:
    from quantstudio.core.data import Preprocessing, open_data
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.pipeline import run_quantize
    from quantstudio.core.plan import PrecisionPlan

    t0 = time.perf_counter()
    model = request.model
    plan = PrecisionPlan.from_dict(request.plan)
    config = QuantConfig.from_dict(request.config)
    prep = Preprocessing.from_dict(request.preprocessing) if request.preprocessing else Preprocessing()
    ctx.report(0.0, "Reading the data")
    data = open_data(
        request.data_spec,
        input_shape=model.input_shape,
        preprocessing=prep,
        random_samples=request.calib_samples + request.eval_samples,
        seed=config.seed,
    )
    eval_data = None
    if request.eval_data_spec and Path(request.eval_data_spec).resolve() != Path(request.data_spec).resolve():
        ctx.report(0.0, "Reading the evaluation data")
        eval_data = open_data(request.eval_data_spec, input_shape=model.input_shape, preprocessing=prep,
                              random_samples=request.eval_samples, seed=config.seed + 1)
    ctx.check_cancelled()
    result = run_quantize(
        model, data, prep, plan, config, ctx,
        eval_data=eval_data,
        eval_samples=request.eval_samples,
        batch_sizes=tuple(request.benchmark_batches),
        benchmark_runs=request.benchmark_runs,
        sensitivity=request.sensitivity,
        measure_memory=request.measure_memory,
    )
    run = reduce_result(result, request.name, data, request)
    run.seconds = time.perf_counter() - t0
    return run


def _f(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _metrics(ev: Any) -> dict[str, Any]:
    if ev is None:
        return {}
    return {
        "top1": _f(ev.top1), "top5": _f(ev.top5), "precision": _f(ev.precision), "recall": _f(ev.recall),
        "f1": _f(ev.f1), "agreement": _f(ev.agreement), "sqnr_db": _f(ev.sqnr_db), "cosine": _f(ev.cosine),
        "n": int(ev.n),
    }


def reduce_result(result: Any, name: str, data: Any, request: QuantizeRequest | None = None) -> RunOutcome:
    """A :class:`RunOutcome` from a core ``QuantizeResult``."""
    metrics: dict[str, dict[str, Any]] = {
        "original": _metrics(result.original_metrics),
        "quantized": _metrics(result.quantized_metrics),
    }
    metrics["original"]["size_bytes"] = result.sizes.get("original_bytes")
    metrics["quantized"]["size_bytes"] = result.sizes.get("quantized_bytes")
    for variant, mem in result.memory.items():
        metrics.setdefault(variant, {}).update(mem)
    latency_samples: dict[str, dict[int, list[float]]] = {}
    throughput: dict[str, dict[int, float]] = {}
    if result.benchmark is not None:
        for v in result.benchmark.variants:
            m = metrics.setdefault(v.name, {})
            if v.latency:
                m["latency_ms"] = float(v.latency[min(v.latency)].p50_ms)
            m.setdefault("param_bytes", v.param_bytes)
            latency_samples[v.name] = {int(b): [float(x) for x in xs] for b, xs in v.samples_ms.items()}
            throughput[v.name] = {int(b): float(x) for b, x in v.throughput.items() if math.isfinite(x)}
    class_names = getattr(data, "class_names", {}) or {}

    def cname(i: Any) -> str:
        return class_names.get(int(i), str(int(i))) if i is not None else ""

    changed = []
    q = result.quantized_metrics
    if q is not None:
        for c in q.changed:
            changed.append({
                "index": int(c.index), "path": c.path, "reference": cname(c.reference),
                "prediction": cname(c.prediction), "label": cname(c.label) if c.label is not None else None,
            })
    confusion = {}
    for vname, ev in (("original", result.original_metrics), ("quantized", result.quantized_metrics)):
        if ev is not None and ev.confusion is not None:
            confusion[vname] = (ev.confusion, list(ev.confusion_labels or []))
    skipped = [(s.path, s.reason) for s in (q.skipped if q is not None else [])]
    description = data.describe() if hasattr(data, "describe") else str(getattr(data, "path", ""))
    return RunOutcome(
        name=name,
        reference="original",
        quantized="quantized",
        plan=result.plan.to_dict(),
        config=result.config.to_dict(),
        data=description,
        metrics=metrics,
        latency_samples=latency_samples,
        throughput=throughput,
        layer_sqnr={k: float(v) for k, v in result.layer_sqnr.items() if v is not None},
        layer_precisions=dict(result.quantized.layer_precisions),
        sensitivity={k: float(v) for k, v in result.sensitivity.items() if v is not None},
        fused=[list(g) for g in result.fused],
        confusion=confusion,
        changed=changed,
        n_evaluated=int(result.evaluation_samples),
        n_calibrated=int(result.calibration_samples),
        calibration_data=result.calibration_data,
        evaluation_data=result.evaluation_data,
        preprocessing_steps=list(result.preprocessing_steps),
        input_shape=list(result.model.input_shape) if getattr(result.model, "input_shape", None) else None,
        timing_warnings=list(result.benchmark.warnings) if result.benchmark is not None else [],
        skipped=skipped,
        is_random=bool(result.random_data),
        labeled=bool(q is not None and q.top1 is not None),
        data_note="random data — accuracy not meaningful" if result.random_data else (
            "" if (q is None or q.top1 is not None) else "no labels: only agreement with the original is measured"),
        warnings=list(result.warnings),
        notes=list(result.notes),
        raw=result,
    )


# --------------------------------------------------------------------------- export


def export_job(ctx, result: Any, path: str, data_spec: str | None, measure_memory: bool = False) -> dict[str, Any]:
    """Export a run's quantized model (checked, atomic) with its recipe; returns a summary dict."""
    from quantstudio.core.pipeline import export_result

    exported = export_result(result, path, ctx, data_spec=data_spec)
    out = exported.to_dict()
    if measure_memory:
        from quantstudio.core.benchmark import measure_memory_many

        ctx.report(0.97, "measuring memory of the exported model")
        mem = measure_memory_many({"exported": Path(exported.path)}, tuple(result.model.input_shape), ctx=ctx)
        m = mem.get("exported") or {}
        out["peak_rss_bytes"] = m.get("peak_rss_bytes")  # the whole process
        out["model_peak_bytes"] = m.get("model_peak_bytes")  # what the model adds (the Size panel's bar)
    return out


def stored_recipe_job(ctx, model: Any, plan: dict, config: dict, preprocessing: dict | None,
                      data_spec: str | None, path: str) -> str:
    """A recipe from a variant's stored plan and settings (a reopened project: no model in memory).

    It reproduces the variant with ``quantstudio-cli quantize --recipe``; without the run
    in memory there is no fingerprint of its calibration images to check against.
    """
    from quantstudio.core.data import Preprocessing
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.recipe import make_recipe

    recipe = make_recipe(model, PrecisionPlan.from_dict(plan), QuantConfig.from_dict(config),
                         preprocessing=Preprocessing.from_dict(preprocessing) if preprocessing else None)
    if data_spec:
        spec = data_spec if data_spec == "random" or not Path(data_spec).exists() else str(Path(data_spec).resolve())
        recipe.data = {"spec": spec, "calibration_samples": recipe.config.get("calib_samples")}
    return str(recipe.save(path))


def recipe_job(ctx, result: Any, path: str, data_spec: str | None) -> str:
    from quantstudio.core.pipeline import result_recipe

    return str(result_recipe(result, data_spec).save(path))

"""Runs the core Quantize pipeline (worker thread) and reduces its result for the GUI.

Only plain numbers, names and lists leave this module in a :class:`RunOutcome`; the core
``QuantizeResult`` rides along in ``raw`` so an export can use the in-memory model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from quantstudio.gui.tasks import QuantizeRequest, RunOutcome




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
        **_budget_kwargs(run_quantize, request),
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


def _budget_kwargs(run_quantize: Callable[..., Any], request: QuantizeRequest) -> dict[str, Any]:
    """``budget=`` for an Auto run; a clear error where this core's pipeline cannot search yet."""
    budget = getattr(request, "budget", None)
    if budget is None:
        return {}
    import inspect

    from quantstudio.core.errors import InputError
    from quantstudio.gui import glossary

    if "budget" not in inspect.signature(run_quantize).parameters:
        raise InputError(glossary.AUTO_NOT_AVAILABLE, hint="Use Quantize, or update QuantStudio.")
    return {"budget": budget}


def reduce_result(result: Any, name: str, data: Any, request: QuantizeRequest | None = None) -> RunOutcome:
    """A :class:`RunOutcome` from a core ``QuantizeResult``, through its ``RunSummary``.

    Only what needs the data source (class names of changed predictions, skipped files,
    the data's description) is read here; every figure comes from the summary.
    """
    class_names = getattr(data, "class_names", {}) or {}

    def cname(i: Any) -> str:
        return class_names.get(int(i), str(int(i))) if i is not None else ""

    q = result.quantized_metrics
    changed = [{"index": int(c.index), "path": c.path, "reference": cname(c.reference),
                "prediction": cname(c.prediction), "label": cname(c.label) if c.label is not None else None}
               for c in (q.changed if q is not None else [])]
    skipped = [(s.path, s.reason) for s in (q.skipped if q is not None else [])]
    description = data.describe() if hasattr(data, "describe") else str(getattr(data, "path", ""))
    return RunOutcome.from_summary(result.summary(), name, data=description, changed=changed, skipped=skipped,
                                   raw=result)


# --------------------------------------------------------------------------- export


def export_job(ctx, result: Any, path: str | list[str], data_spec: str | None, measure_memory: bool = False, *,
               with_recipe: bool = True, report_path: str | None = None,
               make_report: Callable[[dict[str, Any] | None], str] | None = None) -> dict[str, Any]:
    """Export a run's model file(s), its recipe and report as one transaction; a summary dict.

    ``path``: one model file or several. A format the run's engine does not write (a
    ``.pth`` of an ONNX Runtime run) is built first, by quantizing again with the same
    plan, settings, data and preprocessing but the engine that writes it. Every file is
    checked before the commit, and nothing replaces an earlier file unless all of them
    can (see :mod:`quantstudio.core.transaction`). ``make_report(summary)`` gives the
    report's HTML once the checks (and memory) are known, so the report is in the set.
    """
    from quantstudio.core.export import ExportItem, ScaledContext, export_format, export_set
    from quantstudio.core.pipeline import result_recipe

    paths = [Path(p) for p in ([path] if isinstance(path, str) else path)]
    own = [p for p in paths if _writes(result.config.engine, p)]
    other = [p for p in paths if p not in own]
    runs: list[tuple[Any, Path]] = [(result, p) for p in own]
    # Each format the variant's engine does not write is built by the engine that writes it
    # (a tflite variant exported with .onnx and .pth too: one run each of ORT and torch).
    engines: dict[str, list[Path]] = {}
    for p in other:
        engine = _engine_writing(p.suffix)
        export_format(engine, p)  # InputError naming the file if no engine writes it
        engines.setdefault(engine, []).append(p)
    for i, (engine, files) in enumerate(engines.items()):
        share = 0.6 / len(engines)
        # Its live results (plots, layer errors) are not the variant's: the window keeps showing the variant.
        built = _quantize_with(ScaledContext(ctx, i * share, share, partials=False), result, engine)
        runs += [(built, p) for p in files]
    ectx = ScaledContext(ctx, 0.6, 0.4) if other else ctx
    recipe = result_recipe(runs[0][0], data_spec) if with_recipe else None
    memory: dict[str, Any] = {}

    def extras(exported: list) -> dict[Path, str]:
        if measure_memory:
            memory.update(_measure_exported(ectx, exported[0], result.model.input_shape))
        if make_report is None or report_path is None:
            return {}
        return {Path(report_path): make_report(_summary(exported, recipe is not None, memory, report_path))}

    exported = export_set([ExportItem(r.quantized, p, r.check_samples) for r, p in runs], recipe=recipe,
                          extra=extras, extra_targets=[Path(report_path)] if report_path else [], ctx=ectx)
    return _summary(exported, recipe is not None, memory, report_path)


def _writes(engine: str, path: Path) -> bool:
    from quantstudio.core.export import FORMATS

    return path.suffix.lower() in FORMATS.get(engine, {})


def _engine_writing(suffix: str) -> str:
    from quantstudio.core.export import FORMATS

    return next((engine for engine, fmts in FORMATS.items() if suffix.lower() in fmts), "")


def _quantize_with(ctx, result: Any, engine: str) -> Any:
    """The run again with another engine: same model, plan, settings, data, preprocessing, samples."""
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.pipeline import run_quantize

    config = QuantConfig.from_dict({**result.config.to_dict(), "engine": engine})
    ctx.report(0.0, f"Building the {'/'.join(_formats(engine))} file: quantizing again with the same plan and data")
    return run_quantize(result.model, result.data, result.preprocessing, result.plan, config, ctx,
                        eval_samples=result.evaluation_samples, benchmark=False,
                        batch_size=result.batch_size or 32, sensitivity=False, measure_memory=False)


def _formats(engine: str) -> dict[str, str]:
    from quantstudio.core.export import FORMATS

    return FORMATS.get(engine, {})


def _measure_exported(ctx, exported: Any, input_shape: Any) -> dict[str, Any]:
    """Peak memory of the checked, not yet committed file (a copy with its real suffix)."""
    import shutil
    import tempfile

    from quantstudio.core.benchmark import measure_memory_many

    ctx.report(0.9, "measuring memory of the exported model")
    with tempfile.TemporaryDirectory(prefix="quantstudio-memory-") as tmp:
        copy = Path(tmp) / exported.path.name
        shutil.copyfile(exported.temp, copy)
        mem = measure_memory_many({"exported": copy}, tuple(input_shape), ctx=ctx).get("exported") or {}
    return {"peak_rss_bytes": mem.get("peak_rss_bytes"),  # the whole process
            "model_peak_bytes": mem.get("model_peak_bytes")}  # what the model adds (the Size panel's bar)


def _summary(exported: list, with_recipe: bool, memory: dict[str, Any], report_path: str | None) -> dict[str, Any]:
    """The first model's summary (as before), every file's in ``files``, the report's path."""
    out = exported[0].to_dict()
    out["files"] = [e.to_dict() for e in exported]
    if not with_recipe:
        out["recipe"] = None
    out.update({k: v for k, v in memory.items() if v is not None})
    out["report"] = report_path
    return out


def write_files_job(ctx, files: dict[str, Callable[[], str]]) -> list[str]:
    """Text files (recipe, report) written as one transaction: all of them or none."""
    from quantstudio.core.transaction import ExportTransaction

    targets = [Path(p) for p in files]
    with ExportTransaction(targets) as txn:
        for target, make in zip(targets, files.values()):
            ctx.check_cancelled()
            txn.write_text(target, make())
        ctx.check_cancelled()
        txn.commit()
    return [str(t) for t in targets]


def stored_recipe_job(ctx, model: Any, plan: dict, config: dict, preprocessing: dict | None,
                      data_spec: str | None, path: str, report_path: str | None = None,
                      make_report: Callable[[dict[str, Any] | None], str] | None = None) -> str:
    """A recipe from a variant's stored plan and settings (a reopened project: no model in memory).

    It reproduces the variant with ``quantstudio-cli quantize --recipe``; without the run
    in memory there is no fingerprint of its calibration images to check against. The
    report, if asked for, is committed with it.
    """
    import json

    from quantstudio.core.data import Preprocessing
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.recipe import make_recipe

    recipe = make_recipe(model, PrecisionPlan.from_dict(plan), QuantConfig.from_dict(config),
                         preprocessing=Preprocessing.from_dict(preprocessing) if preprocessing else None)
    if data_spec:
        spec = data_spec if data_spec == "random" or not Path(data_spec).exists() else str(Path(data_spec).resolve())
        recipe.data = {"spec": spec, "calibration_samples": recipe.config.get("calib_samples")}
    files: dict[str, Callable[[], str]] = {path: lambda: json.dumps(recipe.to_dict(), indent=2) + "\n"}
    if report_path and make_report is not None:
        files[report_path] = lambda: make_report(None)
    return write_files_job(ctx, files)[0]


def recipe_job(ctx, result: Any, path: str, data_spec: str | None, report_path: str | None = None,
               make_report: Callable[[dict[str, Any] | None], str] | None = None) -> str:
    """The run's recipe (and report) without its model, as one transaction."""
    import json

    from quantstudio.core.pipeline import result_recipe

    recipe = result_recipe(result, data_spec)
    files: dict[str, Callable[[], str]] = {path: lambda: json.dumps(recipe.to_dict(), indent=2) + "\n"}
    if report_path and make_report is not None:
        files[report_path] = lambda: make_report(None)
    return write_files_job(ctx, files)[0]

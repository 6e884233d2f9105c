"""quantstudio-cli quantize: settings from flags and recipes, the run, what it prints, the export.

Split from :mod:`quantstudio.cli` (the parser, the other commands and the shared helpers),
which registers it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from quantstudio.cli import CliProgress, _add_model_args, _print_json, load_model_from_args, preprocessing_overrides


# --------------------------------------------------------------------------- quantize
# (issue: quantization engines)


def _add_quantize(sub) -> None:
    from quantstudio.core.engines.base import ENGINES, QuantConfig

    p = sub.add_parser(
        "quantize",
        help="quantize a model (static/dynamic INT8, FP16, mixed) on your data, compare it with the original, export it",
    )
    _add_model_args(p, optional=True)
    p.add_argument("--data", help="calibration/evaluation data: folder of images, .npy/.npz/.pt file, or 'random' (speed only)")
    p.add_argument("--eval-data", help="evaluate on this data instead of samples held back from --data "
                   "(e.g. --data images/train --eval-data images/val)")
    p.add_argument("--preset", choices=["default", "imagenet"], help="preprocessing preset (options below override it)")
    p.add_argument("--resize", help="resize to N (shorter side) or H,W")
    p.add_argument("--crop", help="center crop N or H,W")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    p.add_argument("--channel-order", choices=["RGB", "BGR"], help="channel order the model expects (default RGB)")
    p.add_argument("--engine", choices=list(ENGINES), help=f"quantization engine (default {QuantConfig().engine})")
    p.add_argument("--mode", choices=["static", "dynamic", "fp16"], help="static INT8 (default), dynamic INT8, or FP16")
    p.add_argument("--backend", choices=["auto", "x86", "qnnpack"], help="CPU the model will run on (default auto: this one)")
    p.add_argument(
        "--precision",
        action="append",
        default=[],
        metavar="PATTERN=int8|fp16|fp32",
        help="per-layer precision, e.g. 'layer4.*=fp32' or 'type:Linear=fp16' (repeatable; later ones win)",
    )
    p.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], help="activation range method (default minmax)")
    p.add_argument("--calib-samples", type=int, help="samples to calibrate on (default 256)")
    p.add_argument("--eval-samples", type=int, help="samples to evaluate on: held back from --data (disjoint from "
                   "calibration), or taken from --eval-data (default 1000)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--per-tensor", action="store_true", default=None, help="one weight scale per tensor instead of per channel")
    weights.add_argument("--per-channel", action="store_true", default=None,
                         help="one weight scale per output channel (the default; overrides a per-tensor recipe)")
    p.add_argument("--symmetric-activations", action="store_true", default=None, help="symmetric activation ranges")
    p.add_argument("--no-equalize", action="store_true", default=None,
                   help="do not equalize outlier channels (cross-layer equalization of conv pairs and gated "
                        "equalization of residual streams, on by default for PyTorch models in static INT8; "
                        "it keeps the FP32 function and the INT8 speed)")
    p.add_argument("--seed", type=int, help="seed that picks the samples (default 0)")
    _add_qat_args(p)
    p.add_argument("--batch-size", type=int, help="samples per batch (default 32, or the recipe's)")
    p.add_argument("--no-benchmark", action="store_true", help="skip the latency comparison")
    p.add_argument("--sensitivity", action="store_true",
                   help="also measure each layer's sensitivity: how much the output changes with only that layer INT8 (PyTorch models)")
    p.add_argument("--memory", action="store_true", help="also measure the peak memory of both models, each in a fresh process")
    p.add_argument("--auto-precision", action="store_true",
                   help="search calibration methods, then layers back to FP32, for the fastest plan within a budget "
                        "(--max-drop or --min-agreement); candidates are judged on samples held out from calibration "
                        "and evaluation, and the recipe written keeps the chosen plan (no search when re-applied)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="with --auto-precision: at most this many points of top-1 below the original (labeled data)")
    budget.add_argument("--min-agreement", type=float, metavar="PCT",
                        help="with --auto-precision: at least this %% of predictions equal to the original's (any data)")
    p.add_argument("--recipe", help="re-apply a recipe (.recipe.json): its model, data and settings; options given here override it")
    p.add_argument("--out", required=True, help="where to write the model: FILE.onnx (onnxruntime), FILE.pth (torch) or FILE.tflite (tflite)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_quantize)


def _add_qat_args(p: argparse.ArgumentParser) -> None:
    qat = p.add_argument_group("quantization-aware training (QAT): fine-tune after calibration")
    qat.add_argument("--qat", action="store_true", default=None,
                     help="fine-tune with fake quantization on --data (labels from class folders, else distillation "
                          "from the original model); needs a PyTorch model")
    qat.add_argument("--epochs", type=int, help="QAT epochs (default 2; the best epoch on the validation split is kept)")
    qat.add_argument("--lr", type=float, help="QAT learning rate (default: automatic, Adam 4e-3 x batch/256 = 5e-4 at batch 32)")
    qat.add_argument("--qat-batch-size", type=int, help="QAT training batch size (default 32)")
    qat.add_argument("--qat-signal", choices=["auto", "labels", "distill"],
                     help="what QAT trains on: labels, distill(ation from the original model), auto (labels when the data has classes)")


def _apply_qat_args(args, config) -> None:
    """The QAT flags onto ``config`` (a recipe's QAT settings stay unless a flag overrides them)."""
    if getattr(args, "qat", None):
        config.qat = True
    for flag, key in (("epochs", "qat_epochs"), ("lr", "qat_lr"), ("qat_batch_size", "qat_batch_size"),
                      ("qat_signal", "qat_signal")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(config, key, value)


def _print_qat_estimate(model, data, config, eval_samples: int, separate_eval: bool) -> None:
    """Before a QAT run: how long and how much memory it will roughly take (stderr)."""
    from quantstudio.core.qat import VALIDATION_FRACTION, estimate_qat

    pool = len(data) - (0 if separate_eval else min(eval_samples, len(data)))
    train = max(int(pool * (1 - VALIDATION_FRACTION)), 1)
    try:
        seconds, nbytes = estimate_qat(model, model.input_shape, train, config.qat_epochs, config.qat_batch_size)
    except Exception as exc:  # noqa: BLE001 - an estimate is informative; the run says what is wrong
        print(f"note: no QAT estimate ({exc})", file=sys.stderr)
        return
    print(f"QAT estimate: ~{seconds / 60:.1f} min and ~{nbytes / 1e6:.0f} MB for {config.qat_epochs} epoch(s) "
          f"on ~{train} training samples (rough; measured from two float training steps)", file=sys.stderr)


class _CancellableProgress(CliProgress):
    """CliProgress whose Ctrl+C asks the job to stop at its next check (a second one aborts)."""

    def __init__(self, quiet: bool = False) -> None:
        import threading

        super().__init__(quiet)
        self._stop = threading.Event()

    def interrupt(self, signum=None, frame=None) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt
        self._stop.set()
        print("cancelling…", file=sys.stderr)

    def resume(self) -> None:
        """Forget a Ctrl+C that has been honoured (a cancelled fine-tune still exports)."""
        self._stop.clear()

    def check_cancelled(self) -> None:
        from quantstudio.core.errors import Cancelled

        if self._stop.is_set():
            raise Cancelled("cancelled")

    def reset_cancel(self) -> None:
        """The cancel was spent stopping the auto-precision search: the run goes on, a new Ctrl+C stops it."""
        self._stop.clear()

    def partial(self, payload: Any) -> None:
        from quantstudio.core.results import CandidateTried

        if isinstance(payload, CandidateTried) and not self.quiet:
            print("  " + candidate_line(payload.index, payload.label, payload.metric, payload.drop, payload.latency_ms,
                                        payload.meets_budget), file=sys.stderr)


def candidate_line(index: int, label: str, metric: float, drop: float, latency_ms: float | None, meets: bool) -> str:
    """One auto-precision candidate on one line (printed as it is tried, and the chosen one at the end)."""
    latency = f"{latency_ms:.2f} ms" if latency_ms is not None else "? ms"
    return (f"candidate {index}: {label:<22} held-out {metric:6.2f}% ({-drop:+.2f} pt)  {latency}  "
            f"{'meets the budget' if meets else 'misses the budget'}")


def _budget_from_args(args):
    """The accuracy budget of --auto-precision, or None; bad combinations are an InputError."""
    from quantstudio.core.auto_precision import Budget
    from quantstudio.core.errors import InputError

    given = args.max_drop is not None or args.min_agreement is not None
    if not args.auto_precision:
        if given:
            raise InputError("--max-drop / --min-agreement set the budget of --auto-precision",
                             hint="Add --auto-precision to search for a plan within that budget.")
        return None
    if not given:
        raise InputError("--auto-precision needs a budget",
                         hint="Give --max-drop POINTS (labeled data) or --min-agreement PCT.")
    return Budget(max_drop=args.max_drop, min_agreement=args.min_agreement)


def _quantize_settings(args):
    """(config, plan, preprocessing, data spec, eval samples) from a recipe + flags."""
    import dataclasses

    from quantstudio.core.data import DEFAULT_EVALUATION_SAMPLES, Preprocessing
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.errors import InputError
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.recipe import Recipe

    recipe = Recipe.load(args.recipe) if args.recipe else None
    _apply_recipe_model(args, recipe)
    config = recipe.quant_config() if recipe else QuantConfig()
    plan = recipe.precision_plan() if recipe else PrecisionPlan()
    prep = (recipe.preprocessing_obj() if recipe else None) or Preprocessing()
    for flag, key in (("engine", "engine"), ("mode", "mode"), ("backend", "backend"), ("calibration", "calibration"),
                      ("calib_samples", "calib_samples"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            setattr(config, key, value)
    if args.per_tensor:
        config.per_channel = False
    if args.per_channel:
        config.per_channel = True
    if args.symmetric_activations:
        config.symmetric_activations = True
    if getattr(args, "no_equalize", None):
        config.equalize = False
    _apply_qat_args(args, config)
    config.validate()
    if config.calib_samples <= 0:
        raise InputError(f"the number of calibration samples must be positive, not {config.calib_samples}", hint="Give --calib-samples 1 or more.")
    for assignment in args.precision:
        plan.parse_assignment(assignment)
    if args.preset:
        prep = Preprocessing.from_preset(args.preset)
    prep = dataclasses.replace(prep, **preprocessing_overrides(args))
    data_spec = args.data or (recipe.data.get("spec") if recipe else None)
    if not data_spec:
        raise InputError("no data given", hint="Give --data FOLDER, a .npy/.pt file, or --data random (speed only).")
    if args.eval_data is None and recipe is not None and recipe.data.get("evaluation_spec"):
        args.eval_data = str(recipe.data["evaluation_spec"])
    eval_samples = args.eval_samples
    if eval_samples is None and recipe is not None:
        eval_samples = recipe.data.get("evaluation_samples")
    if eval_samples is None:
        eval_samples = DEFAULT_EVALUATION_SAMPLES
    if eval_samples < 0:
        raise InputError(f"the number of evaluation samples must not be negative, not {eval_samples}", hint="Give --eval-samples 0 or more.")
    if args.batch_size is None:
        args.batch_size = int((recipe.data.get("batch_size") if recipe else None) or 32)
    return config, plan, prep, str(data_spec), int(eval_samples), recipe


def _apply_recipe_model(args, recipe) -> None:
    """The recipe's model file, architecture and input shape where the flags give none."""
    from quantstudio.core.errors import InputError
    from quantstudio.core.loading import KIND_STATE_DICT

    info = recipe.model if recipe else {}
    if args.model is None:
        if not info.get("path"):
            raise InputError("no model given", hint="Give the model file (quantstudio-cli quantize MODEL …), or a --recipe written by QuantStudio.")
        args.model = info["path"]
    same_kind = info.get("kind") == KIND_STATE_DICT
    if args.arch is None and same_kind and info.get("arch"):
        args.arch = info["arch"]
    if args.input_shape is None and info.get("input_shape"):
        args.input_shape = ",".join(str(int(d)) for d in info["input_shape"])


def _cmd_quantize(args) -> int:
    import signal

    from quantstudio.core.data import model_fit_warnings, open_data
    from quantstudio.core.errors import InputError
    from quantstudio.core.export import check_writable, export_format
    from quantstudio.core.geometry import resolve_input_shape
    from quantstudio.core.pipeline import export_result, run_quantize
    from quantstudio.core.recipe import sha256_file

    config, plan, prep, data_spec, eval_samples, recipe = _quantize_settings(args)
    budget = _budget_from_args(args)
    export_format(config.engine, args.out)  # a wrong extension or place fails before any work
    check_writable(args.out)
    _check_export_targets(args)
    if args.batch_size <= 0:
        raise InputError(f"the batch size must be positive, not {args.batch_size}", hint="Give --batch-size 1 or more.")
    model = load_model_from_args(args)
    model.notes.extend(resolve_input_shape(model, prep, data_spec))
    notes = list(model.notes)
    if recipe and recipe.model.get("sha256") and model.path.is_file() and sha256_file(model.path) != recipe.model["sha256"]:
        notes.append("the model file differs from the one the recipe was made with (sha256 mismatch)")
    data = open_data(
        data_spec,
        input_shape=model.input_shape,
        preprocessing=prep,
        random_samples=config.calib_samples + eval_samples,
        seed=config.seed,
    )
    eval_data = None
    if args.eval_data and Path(args.eval_data).resolve() != Path(data_spec).resolve():
        eval_data = open_data(args.eval_data, input_shape=model.input_shape, preprocessing=prep,
                              random_samples=eval_samples or 64, seed=config.seed + 1)
    if not args.json:
        for source in (data, eval_data):
            for w in model_fit_warnings(source, model.num_classes) if source is not None else []:
                print(f"warning: {w}", file=sys.stderr)
    if config.qat and not args.json:
        _print_qat_estimate(model, data, config, eval_samples, eval_data is not None)
    progress = _CancellableProgress(quiet=args.json)
    previous = signal.getsignal(signal.SIGINT)
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, progress.interrupt)
        # SIGTERM (a logout, `kill`, a scheduler's stop) takes the same path as Ctrl+C: the
        # job stops at its next check and the export deletes its temporaries.
        signal.signal(signal.SIGTERM, progress.interrupt)
    except ValueError:  # not the main thread (tests): Ctrl+C handling stays the default
        previous = None
    try:
        result = run_quantize(
            model, data, prep, plan, config, progress,
            eval_samples=eval_samples, benchmark=not args.no_benchmark, batch_size=args.batch_size,
            sensitivity=args.sensitivity, measure_memory=args.memory, eval_data=eval_data, budget=budget,
        )
        if result.training.get("cancelled"):
            progress.resume()  # Ctrl+C ended the fine-tuning only: the best epoch is exported
        exported = export_result(result, args.out, progress, data_spec=data_spec,
                                 eval_data_spec=args.eval_data if eval_data is not None else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
    if recipe is not None:
        result.warnings.extend(_recipe_data_warnings(recipe, exported.recipe_path))
    summary = result.summary()  # the one result model: --json and the text below read the same figures
    d = summary.to_dict()
    if args.json:
        d["model"] = str(model.path)
        d["export"] = exported.to_dict()
        d["notes"] = notes + d["notes"]
        _print_json(d)
        return 0
    for note in notes + result.notes:
        print(f"note: {note}", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    calibration = (f"{result.calibration_samples} calibration samples ({result.config.calibration})" if config.mode == "static"
                   else "no calibration (weights only)" if config.mode == "dynamic" else "no calibration")
    print(f"{model.path.name} → {exported.path.name}: {config.engine} {config.mode}, {calibration}")
    if result.training:
        _print_training(result.training)
    shape = "x".join(str(d) for d in model.input_shape) if model.input_shape else "?"
    print(f"model input {shape}; preprocessing: {', '.join(result.preprocessing_steps)}")
    if result.evaluation_data:
        print(f"accuracy measured on {result.evaluation_data}")
    for label, m in (("original", result.original_metrics), ("quantized", result.quantized_metrics)):
        if m is None:
            continue
        parts = [f"{label:<10}"]
        if result.random_data:
            parts.append("random data — accuracy not meaningful")
        elif m.top1 is not None:
            parts.append(f"top-1 {m.top1:.2%}")
            if m.top5 is not None:
                parts.append(f"top-5 {m.top5:.2%}")
            parts.append(f"F1 {m.f1:.3f}")
        if m.agreement is not None:
            sqnr = "inf" if m.sqnr_db is not None and m.sqnr_db == float("inf") else f"{m.sqnr_db:.1f}"
            parts.append(f"agreement {m.agreement:.2%}  SQNR {sqnr} dB")
        print("  ".join(parts) + f"  (n={m.n})")
    lat = summary.latency_ms
    if lat:
        print("latency (batch 1, p50): " + ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items()))
    if summary.speedup is not None:
        print(f"speed-up: {summary.speedup:.2f}x against {summary.speedup_baseline}")
    s = result.sizes
    if s.get("original_bytes") and s.get("quantized_bytes"):
        print(f"size: {s['original_bytes'] / 1e6:.2f} MB → {s['quantized_bytes'] / 1e6:.2f} MB")
    if result.layer_sqnr:
        worst = sorted(result.layer_sqnr.items(), key=lambda kv: kv[1])[:3]
        print("lowest per-layer SQNR: " + ", ".join(f"{k} {v:.1f} dB" for k, v in worst))
    if result.sensitivity:
        from quantstudio.core.sensitivity import most_sensitive

        print("most sensitive layers (output change with only that layer INT8): "
              + ", ".join(f"{k} {v:.2f}%" for k, v in most_sensitive(result.sensitivity, 5)))
    if result.sensitivity_fix:
        fix = [(k, result.sensitivity_fix.get(k, [k])) for k, _ in most_sensitive(result.sensitivity, 3)]
        print("to fix, set FP32 together: " + "; ".join(" + ".join(layers) for _, layers in fix))
    _print_auto_precision(result)
    if result.memory:
        print("peak memory (fresh process, above the runtime's own): "
              + ", ".join(f"{k} {m['model_peak_bytes'] / 1e6:.0f} MB" for k, m in result.memory.items()))
    c = exported.check
    print(f"wrote {exported.path} (reloaded and checked: max difference {c.max_abs_diff:.2g}, "
          f"top-1 agreement {c.top1_agreement:.0%}) and {exported.recipe_path.name if exported.recipe_path else 'no recipe'}")
    return 0


def _print_auto_precision(result) -> None:
    """The chosen auto-precision candidate, and every FP32 layer with why."""
    auto = result.auto_precision
    if auto:
        b = auto["budget"]
        what = f"at most {b['max_drop']:g} pt top-1 drop" if auto["metric"] == "top1" else f"at least {b['min_agreement']:g} % agreement"
        print(f"auto precision ({what}, {auto['heldout_samples']} held-out samples, {len(auto['candidates'])} candidate{'s' if len(auto['candidates']) != 1 else ''}, "
              f"{auto['seconds']:.0f} s{', cancelled' if auto['cancelled'] else ''}): chose")
        c = auto["candidates"][auto["chosen"] - 1] if auto.get("chosen") else None
        if c is not None:
            print("  " + candidate_line(c["index"], c["label"], c["metric"], c["drop"], c["latency_ms"], c["meets_budget"]))
    if result.fp32_reasons:
        print(f"FP32 layers ({len(result.fp32_reasons)}): "
              + "; ".join(f"{k} ({why})" for k, why in result.fp32_reasons.items()))


def _print_training(t: dict) -> None:
    """The QAT curve as text: validation metric per epoch (0 = the PTQ start), the epoch kept."""
    st = t.get("settings", {})
    what = "top-1" if t.get("metric") == "top1" else "agreement with the original"
    print(f"fine-tuned (QAT, {st.get('signal')}): {st.get('epochs')} epoch(s), batch {st.get('batch_size')}, "
          f"lr {st.get('lr', 0):.3g}, {st.get('train_samples')} training / {st.get('val_samples')} validation samples, "
          f"{t.get('seconds', 0):.0f} s")
    for h in t.get("history", []):
        loss = "" if h.get("train_loss") is None else f"  loss {h['train_loss']:.4f}"
        label = "PTQ start" if h["epoch"] == 0 else f"epoch {h['epoch']}"
        kept = "  ← kept" if h["epoch"] == t.get("best_epoch") else ""
        print(f"  {label:<10} validation {what} {h['val_metric']:.2f}%{loss}{kept}")
    if t.get("cancelled"):
        print("  training cancelled: the best epoch so far was kept")
    elif t.get("stopped_early"):
        print("  stopped early: the validation metric stopped improving")


def _check_export_targets(args) -> None:
    """Before any work: every file the export writes can be written, and none is an input.

    Also finishes exports that a kill interrupted in the recently exported-to folders
    (see quantstudio.core.transaction), so this run starts from whole sets of files.
    """
    from quantstudio.core.errors import InputError
    from quantstudio.core.recipe import recipe_path_for
    from quantstudio.core.transaction import check_targets, recover_recent

    for note in recover_recent():
        print(f"note: {note}", file=sys.stderr)
    out, recipe_out = Path(args.out), recipe_path_for(args.out)
    if args.recipe and recipe_out.resolve() == Path(args.recipe).resolve():
        raise InputError(
            "--out would overwrite the recipe being read",
            path=recipe_out,
            hint=f"Give another --out, e.g. {out.with_name(out.stem + '_2' + out.suffix)}; the recipe stays as it is.",
        )
    check_targets([out, recipe_out], protect=[args.recipe, args.model])


def _recipe_data_warnings(recipe, new_recipe_path) -> list[str]:
    """Warn when the data a recipe is re-applied to is not the data it was made with."""
    if new_recipe_path is None:
        return []
    old = (recipe.data or {}).get("calibration_fingerprint") or {}
    new = json.loads(Path(new_recipe_path).read_text()).get("data", {}).get("calibration_fingerprint") or {}
    if not old.get("sha256") or not new.get("sha256") or old.get("method") != new.get("method"):
        return []
    if old["sha256"] != new["sha256"]:
        return ["the calibration samples differ from the recipe's (different files, contents or count): "
                "the quantized model will not be identical to the recipe's"]
    return []


# --------------------------------------------------------------------------- main

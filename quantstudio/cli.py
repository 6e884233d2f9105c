"""quantstudio-cli: the headless entry point. Same core, same recipes as the GUI.

Exit codes: 0 success, 2 bad input (one line naming the file and what to do),
1 unexpected failure, 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from quantstudio import __version__

EXIT_BAD_INPUT = 2


class CliProgress:
    """A job context that prints progress on stderr (one line per message change)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._last = ""

    def report(self, fraction: float, message: str = "") -> None:
        # One line per step ("timing batch 1"), not per run ("...: run 7/30").
        step = message.split(":", 1)[0]
        if not self.quiet and step and step != self._last:
            print(f"[{fraction:5.0%}] {message}", file=sys.stderr)
            self._last = step

    def partial(self, payload: Any) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


# --------------------------------------------------------------------------- helpers


def _add_model_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    help_text = "model file: .pth/.pt (state_dict or whole model), TorchScript, .pt2, .onnx"
    if optional:
        p.add_argument("model", nargs="?", help=help_text + " (default with --recipe: the recipe's model)")
    else:
        p.add_argument("model", help=help_text)
    p.add_argument("--arch", help="torchvision architecture of a state_dict (guessed when omitted)")
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (read from the model when known)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow loading a whole pickled model; this runs code from the file, so only for files you trust",
    )
    p.add_argument("--source", help="folder holding the Python source of a pickled model's classes")


def load_model_from_args(args):
    from quantstudio.core.loading import load_model, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, arch=args.arch, input_shape=shape, trust=args.trust, source_dir=args.source)


def preprocessing_overrides(args) -> dict[str, Any]:
    """The preprocessing fields the user gave on the command line (evaluate, quantize)."""
    from quantstudio.core.data import parse_floats, parse_size

    overrides: dict[str, Any] = {}
    if args.resize:
        overrides["resize"] = parse_size(args.resize, "resize")
    if args.crop:
        overrides["crop"] = parse_size(args.crop, "crop")
    if args.mean:
        overrides["mean"] = parse_floats(args.mean, "mean")
    if args.std:
        overrides["std"] = parse_floats(args.std, "std")
    if getattr(args, "channel_order", None):
        overrides["channel_order"] = args.channel_order
    return overrides


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.3g}P"


# --------------------------------------------------------------------------- inspect


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show the model's layer tree: shapes, params, MACs, quantizability")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.add_argument("--depth", type=int, default=None, help="show only this many levels of the tree")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from quantstudio.core.inventory import build_inventory

    model = load_model_from_args(args)
    tree = build_inventory(model)
    if args.json:
        _print_json(
            {
                "model": str(model.path),
                "kind": model.kind,
                "arch": model.arch,
                "arch_confidence": model.arch_confidence,
                "num_classes": model.num_classes,
                "input_shape": list(model.input_shape) if model.input_shape else None,
                "notes": model.notes,
                "total_params": tree.params,
                "total_macs": tree.macs,
                "tree": tree.to_dict(),
            }
        )
        return 0
    for note in model.notes:
        print(f"note: {note}", file=sys.stderr)
    rows = [("name", "type", "output shape", "params", "MACs", "quantizable")]
    for node, depth in tree.walk():
        if args.depth is not None and depth > args.depth:
            continue
        # The full dotted name: the exact string --precision patterns match.
        name = "  " * depth + (node.name or "(model)")
        shape = "x".join(str(d) for d in node.output_shape) if node.output_shape else "-"
        q = "yes" if node.quantizable else f"no: {node.reason}"
        rows.append((name, node.type, shape, human(node.params), human(node.macs), q))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    print()
    print(
        f"{model.kind_label} {model.path.name}: {model.arch or ''} input {model.input_shape and 'x'.join(map(str, model.input_shape))}, "
        f"{tree.count_layers()} layers, {tree.params:,} parameters, {tree.macs:,} MACs"
    )
    return 0


def _add_archs(sub) -> None:
    p = sub.add_parser("archs", help="list the torchvision architectures a state_dict can be loaded into")
    p.set_defaults(func=_cmd_archs)


def _cmd_archs(args) -> int:
    from quantstudio.core.archs import list_architectures

    print("\n".join(list_architectures()))
    return 0


# --------------------------------------------------------------------------- evaluate
# (issue: data and evaluation)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a model on a folder of images or a tensor file")
    _add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="folder of images (one sub-folder per class, or flat), a .npy/.npz/.pt file, or 'random'",
    )
    p.add_argument("--preset", choices=["default", "imagenet"], default="default",
                   help="preprocessing preset: default = resize to the model's input + ImageNet mean/std; "
                   "imagenet = resize 256, center crop 224 (options below override it)")
    p.add_argument("--resize", help="resize to N (shorter side) or H,W")
    p.add_argument("--crop", help="center crop N or H,W")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    p.add_argument("--channel-order", choices=["RGB", "BGR"], help="channel order the model expects (default RGB)")
    p.add_argument("--samples", type=int, help="evaluate this many samples, stratified by class (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the samples (default 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    import dataclasses

    from quantstudio.core.data import Preprocessing, model_fit_warnings, open_data
    from quantstudio.core.errors import InputError
    from quantstudio.core.evaluation import evaluate
    from quantstudio.core.geometry import resolve_input_shape
    from quantstudio.core.pipeline import near_chance_warnings

    if args.batch_size <= 0:
        raise InputError(f"the batch size must be positive, not {args.batch_size}", hint="Give --batch-size 1 or more.")
    if args.samples is not None and args.samples <= 0:
        raise InputError(f"the number of samples must be positive, not {args.samples}", hint="Give --samples 1 or more.")
    prep = dataclasses.replace(Preprocessing.from_preset(args.preset), **preprocessing_overrides(args))

    model = load_model_from_args(args)
    model.notes.extend(resolve_input_shape(model, prep, args.data))
    data = open_data(
        args.data,
        input_shape=model.input_shape,
        preprocessing=prep,
        random_samples=args.samples or 64,
        seed=args.seed,
    )
    indices = data.choose(args.samples, seed=args.seed)
    if not args.json:
        for w in model_fit_warnings(data, model.num_classes):
            print(f"warning: {w}", file=sys.stderr)
    progress = CliProgress(quiet=args.json)
    result = evaluate({"model": model}, data, indices, batch_size=model.batch_size_for(args.batch_size), ctx=progress)["model"]
    d = result.to_dict()

    if args.json:
        out = {
            "model": str(model.path),
            "data": str(data.path) if data.path is not None else "random",
            "data_kind": data.kind,
            "preprocessing": {**prep.to_dict(), "steps": data.preprocessing_steps()},
            "input_shape": list(model.input_shape) if model.input_shape else None,
            "n": d["n"],
            "top1": d["top1"],
            "top5": d["top5"],
            "precision": d["precision"],
            "recall": d["recall"],
            "f1": d["f1"],
            "num_outputs": d["num_outputs"],
            "num_classes": data.num_classes,
            "random_data": d["random_data"],
            "per_class_accuracy": d["per_class_accuracy"],
            "confusion": d["confusion"],
            "confusion_labels": d["confusion_labels"],
            "skipped": d["skipped"],
            "warnings": d["warnings"] + near_chance_warnings(result, data, model),
            "notes": model.notes + d["notes"],
        }
        _print_json(out)
        return 0

    for note in model.notes + result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.is_random:
        print(f"{model.path.name} on {data.describe()}")
        print(f"evaluated {result.n} samples: speed only, random data — accuracy not meaningful")
    elif result.top1 is None:
        print(f"evaluated {result.n} samples: no labels, so no accuracy (use one sub-folder per class)")
    else:
        print(f"{model.path.name} on {data.path}: {data.describe()}")
        shape = "x".join(str(d) for d in model.input_shape) if model.input_shape else "?"
        print(f"model input {shape}; preprocessing: {', '.join(data.preprocessing_steps())}")
        top5 = f"   top-5 {result.top5:.2%}" if result.top5 is not None else ""
        print(
            f"top-1 {result.top1:.2%}{top5}   precision {result.precision:.3f}   "
            f"recall {result.recall:.3f}   F1 {result.f1:.3f}   (n={result.n})"
        )
        worst = [kv for kv in sorted(result.per_class_accuracy.items(), key=lambda kv: kv[1]) if kv[1] < result.top1]
        if worst:
            print("weakest classes: " + ", ".join(f"{k} {v:.1%}" for k, v in worst[:3]))
    if result.skipped:
        shown = ", ".join(s.path for s in result.skipped[:3])
        more = f" and {len(result.skipped) - 3} more" if len(result.skipped) > 3 else ""
        print(f"skipped {len(result.skipped)} unreadable file(s): {shown}{more}")
    for w in result.warnings + near_chance_warnings(result, data, model):
        # The skipped line and the random-data line above already say these.
        if not (w.endswith("skipped") or (result.is_random and "random data" in w)):
            print(f"warning: {w}")
    return 0


# --------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time models side by side (interleaved), with size, memory and the doctor's findings",
    )
    p.add_argument("models", nargs="+", help="model files; the first is the baseline the others are compared with")
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (read from the model when known)")
    p.add_argument("--arch", help="architecture for state_dict files")
    p.add_argument("--trust", action="store_true", help="allow whole pickled models (runs code from the file)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant and batch size (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement (one process per model)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from quantstudio.core.benchmark import run_benchmark, variant_from_file
    from quantstudio.core.doctor import check_variants
    from quantstudio.core.errors import InputError
    from quantstudio.core.loading import parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        batch_sizes = []
    if not batch_sizes or min(batch_sizes) <= 0:
        raise InputError(f"'{args.batch_sizes}' is not a list of batch sizes", hint="Use e.g. --batch-sizes 1,8,32.")
    if args.runs < 2:
        raise InputError("--runs must be at least 2", hint="Use e.g. --runs 50.")
    variants, models = [], []
    names = _unique_names(args.models)
    for path, name in zip(args.models, names):
        v, m = variant_from_file(path, name, threads=args.threads, trust=args.trust, arch=args.arch, input_shape=shape)
        variants.append(v)
        models.append(m)
    input_shape = shape or models[0].input_shape
    if input_shape is None:
        raise InputError("the input shape is unknown", path=args.models[0], hint="Give it with --input-shape 1,C,H,W.")
    result = run_benchmark(
        variants, input_shape, batch_sizes=batch_sizes, runs=args.runs, warmup=args.warmup,
        threads=args.threads, memory=not args.no_memory, ctx=CliProgress(quiet=args.json),
    )
    findings = check_variants(result, models, batch=batch_sizes[0])
    if args.json:
        out = result.to_dict()
        for v in out["variants"]:
            v.pop("samples_ms", None)
        out["doctor"] = {name: [f.to_dict() for f in fs] for name, fs in findings.items()}
        _print_json(out)
        return 0
    header = ["variant", "p50 ms", "p90 ms"] + [f"img/s @{b}" for b in batch_sizes] + ["size", "memory"]
    rows = [header]
    first = batch_sizes[0]
    for v in result.variants:
        lat = v.latency.get(first)
        rows.append(
            [v.name, f"{lat.p50_ms:.2f}" if lat else "-", f"{lat.p90_ms:.2f}" if lat else "-"]
            + [f"{v.throughput[b]:.1f}" if b in v.throughput else "-" for b in batch_sizes]
            + [_mb(v.size_bytes), _mb(v.inference_rss_bytes)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(
        f"\n{result.cpu}, {result.threads} threads, {result.runs} interleaved runs; latency at batch {first}; "
        "memory = resident memory a fresh process gains by loading the model and running it"
    )
    for v in result.variants:
        for note in v.notes:
            print(f"note ({v.name}): {note}")
    for w in result.warnings:
        print(f"warning: {w}")
    for name, fs in findings.items():
        print(f"\nDoctor on {name}:")
        for f in fs:
            print(f"  - {f.text()}")
    return 0


def _unique_names(paths: list[str]) -> list[str]:
    from pathlib import Path

    names = []
    for p in paths:
        base = Path(p).name
        name, i = base, 2
        while name in names:
            name, i = f"{base} ({i})", i + 1
        names.append(name)
    return names


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantstudio-cli", description="Quantize neural networks without writing code (headless)."
    )
    parser.add_argument("--version", action="version", version=f"quantstudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    from quantstudio.cli_quantize import _add_quantize

    for add in (_add_inspect, _add_archs, _add_evaluate, _add_bench, _add_quantize):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from quantstudio.core.errors import Cancelled, InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # torch.ao and the ONNX exporter print deprecation chatter a user cannot act on.
        warnings.simplefilter("ignore")
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

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
        if not self.quiet and message and message != self._last:
            print(f"[{fraction:5.0%}] {message}", file=sys.stderr)
            self._last = message

    def partial(self, payload: Any) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


# --------------------------------------------------------------------------- helpers


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: .pth/.pt (state_dict or whole model), TorchScript, .pt2, .onnx")
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
        name = "  " * depth + (node.name.rsplit(".", 1)[-1] if node.name else "(model)")
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
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    raise NotImplementedError("evaluate")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantstudio-cli", description="Quantize neural networks without writing code (headless)."
    )
    parser.add_argument("--version", action="version", version=f"quantstudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_inspect, _add_archs, _add_evaluate):
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

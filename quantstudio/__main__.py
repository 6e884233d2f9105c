"""The desktop application: ``quantstudio [MODEL | --demo]`` or ``python -m quantstudio``."""

from __future__ import annotations

import argparse
import sys

from quantstudio import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantstudio", description="QuantStudio: quantize neural networks without code.")
    parser.add_argument("model", nargs="?", help="a model (.pth/.pt/.pt2/.onnx) or project (.qsproj) to open")
    parser.add_argument("--demo", action="store_true", help="open the bundled demo model and its images")
    parser.add_argument("--version", action="version", version=f"QuantStudio {__version__}")
    args, qt_args = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    from quantstudio.gui.app import run

    return run(model=args.model, demo=args.demo, argv=[sys.argv[0], *qt_args])


if __name__ == "__main__":
    sys.exit(main())

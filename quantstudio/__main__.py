"""The desktop application: ``quantstudio [MODEL | --demo]`` or ``python -m quantstudio``.

The same entry point serves three other purposes, so that a PyInstaller bundle (where
``sys.executable`` is the app itself) needs no Python interpreter beside it:

- ``quantstudio --child …`` runs a helper process (quantstudio.core.child);
- ``quantstudio --version`` prints the version without starting Qt or importing torch;
- ``quantstudio --self-test`` checks an install end to end, offscreen (quantstudio.selftest);
- ``quantstudio --install-desktop`` adds the menu entry and the .qsproj file type (quantstudio.desktop_entry).
"""

from __future__ import annotations

import argparse
import sys

from quantstudio import __version__

EXIT_NO_DISPLAY_LIBS = 3


def _run_child(args: list[str]) -> int:
    """Helper processes start here: ``quantstudio --child <what> …``."""
    try:
        from quantstudio.core.child import main as child_main
    except ImportError as exc:  # a build that lacks the module: say so instead of a traceback
        print(f"QuantStudio {__version__}: helper processes are not available in this build "
              f"(quantstudio.core.child cannot be imported: {exc}). Reinstall QuantStudio.", file=sys.stderr)
        return 1
    return child_main(args)


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] == "--child":  # first: a helper process must not parse the app's options
        sys.exit(_run_child(given[1:]))
    parser = argparse.ArgumentParser(prog="quantstudio", description="QuantStudio: quantize neural networks without code.")
    parser.add_argument("model", nargs="?", help="a model (.pth/.pt/.pt2/.onnx) or project (.qsproj) to open")
    parser.add_argument("--demo", action="store_true", help="open the bundled demo model and its images")
    parser.add_argument("--version", action="version", version=f"QuantStudio {__version__}")
    parser.add_argument("--install-desktop", action="store_true",
                        help="add QuantStudio to your applications menu and let it open .qsproj projects (Linux; "
                             "--install-desktop --uninstall removes them)")
    parser.add_argument("--uninstall", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--self-test", action="store_true",
                        help="check this installation: open the demo, quantize it with both engines, export, "
                             "reload and compare (offscreen, about a minute); exit code 0 when all is well")
    args, qt_args = parser.parse_known_args(given)
    if args.install_desktop:
        from quantstudio.desktop_entry import main as desktop_main

        return desktop_main(["--uninstall"] if args.uninstall else [])
    if args.self_test:
        from quantstudio.selftest import main as self_test_main

        return self_test_main()
    from quantstudio.gui.syslibs import check_xcb_or_explain

    if not check_xcb_or_explain():
        return EXIT_NO_DISPLAY_LIBS
    from quantstudio.gui.app import run

    return run(model=args.model, demo=args.demo, argv=[sys.argv[0], *qt_args])


if __name__ == "__main__":
    sys.exit(main())

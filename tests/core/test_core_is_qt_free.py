"""quantstudio.core never imports Qt: checked in a fresh interpreter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import quantstudio.core


def test_core_imports_no_qt():
    # prefix=: without it walk_packages yields "engines.pytorch.engine" for sub-packages,
    # which is never a module name, and every engine module went unchecked.
    modules = [m.name for m in pkgutil.walk_packages(quantstudio.core.__path__, prefix="quantstudio.core.")]
    assert "quantstudio.core.loading" in modules
    assert any(m.startswith("quantstudio.core.engines.") and m.count(".") >= 3 for m in modules)
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'PyQt5', 'PyQt6')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

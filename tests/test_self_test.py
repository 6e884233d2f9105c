"""``quantstudio --self-test``, the check a user runs on an install, and ``--version``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("QT_QPA_PLATFORM", None)  # the self-test goes offscreen by itself
    env.pop("DISPLAY", None)
    return env


def test_version_prints_without_qt_or_torch():
    code = ("import sys, runpy; sys.argv = ['quantstudio', '--version']\n"
            "try:\n    runpy.run_module('quantstudio', run_name='__main__')\nexcept SystemExit as e:\n"
            "    heavy = sorted(m for m in ('torch', 'PySide6', 'onnxruntime') if m in sys.modules)\n"
            "    print('exit', e.code, 'heavy', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    from quantstudio import __version__

    assert out.stdout.splitlines()[0] == f"QuantStudio {__version__}"
    assert out.stdout.splitlines()[1] == "exit 0 heavy []"


def test_failing_step_is_named_and_exits_non_zero():
    from quantstudio.selftest import SelfTest, StepFailed

    def broken():
        raise StepFailed("the exported file does not match")

    class Probe(SelfTest):
        def steps(self):
            return [("first", lambda: "fine"), ("export .onnx", broken), ("never", lambda: "not reached")]

    out = io.StringIO()
    assert Probe(out=out).run() == 1
    text = out.getvalue()
    assert "ok      first" in text
    assert "FAILED  export .onnx: StepFailed: the exported file does not match" in text
    assert "never" not in text
    assert "Self-test FAILED" in text


@pytest.mark.slow
def test_self_test_passes_from_source():
    out = subprocess.run([sys.executable, "-m", "quantstudio", "--self-test"], capture_output=True, text=True,
                         timeout=280, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for step in ("open the demo in the window", "quantize with ONNX Runtime", "export .onnx", "reload .onnx and compare",
                 "quantize with PyTorch", "export .pth", "reload .pth and compare"):
        assert any(line.startswith(f"ok      {step}") for line in lines), out.stdout
    assert "Self-test passed" in lines[-1]

"""Helper processes: started through the app's entry point, gone with the app, no litter.

Issue 17 items 7-8 and issue 16 item 2: in a PyInstaller bundle ``sys.executable`` is
the app, so ``sys.executable -c CODE`` cannot start a helper; a helper outlived an app
killed with ``kill -9`` and left its ~109 MB work folder; a cancel during ONNX Runtime's
calibration left its 43 MB ``augmented_model.onnx`` in TMPDIR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from quantstudio.core.child import child_command
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.ort.engine import OrtEngine
from quantstudio.core.errors import Cancelled
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.plan import PrecisionPlan
from tests.core.models import tiny_net
from tests.core.test_engines import batches, loaded

ROOT = Path(__file__).resolve().parents[2]


def test_child_command_uses_the_module_or_the_bundled_apps_child_switch(monkeypatch):
    assert child_command("memory", "a", "b") == [sys.executable, "-m", "quantstudio.core.child", "memory", "a", "b"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/QuantStudio/quantstudio")
    assert child_command("ort-tool", "job.json") == ["/opt/QuantStudio/quantstudio", "--child", "ort-tool", "job.json"]
    with pytest.raises(ValueError):
        child_command("no-such-task")


def test_unknown_task_is_an_error_exit():
    res = subprocess.run([sys.executable, "-m", "quantstudio.core.child", "nothing"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr


@pytest.fixture
def frozen_app(tmp_path, monkeypatch):
    """sys.executable is a stand-in for the bundled app: it logs its arguments, drops
    ``--child`` and runs the helper, as the app's ``__main__`` does."""
    log = tmp_path / "launched.txt"
    app = tmp_path / "QuantStudio"
    app.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> '{log}'
        [ "$1" = "--child" ] || exit 3
        shift
        PYTHONPATH='{ROOT}' exec '{sys.executable}' -m quantstudio.core.child "$@"
        """))
    app.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app))
    return log


def test_ort_tools_and_the_memory_probe_run_through_the_bundled_app(frozen_app, tmp_path):
    from quantstudio.core.benchmark import measure_memory

    xs = batches()
    model = loaded(tiny_net())
    q = OrtEngine().quantize(model, PrecisionPlan(), QuantConfig(), xs, NullContext())
    assert not any("skipped" in n for n in q.notes)  # pre-processing ran in its helper too
    path = tmp_path / "int8.onnx"
    path.write_bytes(q.artifact.SerializeToString())
    assert measure_memory(path, (1, 3, 32, 32)) is not None
    launched = frozen_app.read_text().splitlines()
    jobs = [line.split()[2].rsplit("/", 1)[-1] for line in launched if line.startswith("--child ort-tool")]
    assert jobs == ["pre_process-job.json", "static-job.json", "check-job.json"]
    assert sum(line.startswith("--child memory ") for line in launched) == 1


def _litter(folder: Path) -> list[str]:
    """What is in ``folder`` but torch's compile-cache folder (made when torch is
    imported) and the test machine's own session file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(("torchinductor_", ".ses")))


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie has exited
    except FileNotFoundError:
        return True


PARENT = """
import sys, numpy as np, torch
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.ort.engine import OrtEngine
from quantstudio.core.jobs import NullContext
from quantstudio.core.plan import PrecisionPlan
from tests.core.models import tiny_net
from tests.core.test_engines import batches, loaded
xs = batches(1600, (8, 3, 32, 32))  # calibration long enough to be caught in the middle (~3 s on a fast CPU)
OrtEngine().quantize(loaded(tiny_net()), PrecisionPlan(), QuantConfig(), xs, NullContext())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow
def test_ort_helper_dies_with_a_killed_app_and_removes_its_work_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 120
        helper = None
        while helper is None and time.monotonic() < deadline and parent.poll() is None:
            for pid in _children(parent.pid):
                try:
                    if b"static-job.json" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        helper = pid
                except FileNotFoundError:
                    pass
            time.sleep(0.05)
        assert helper is not None, "the calibration helper never started"
        assert _litter(tmp)  # the work folder exists
        time.sleep(0.3)  # inside the calibration
        assert not _gone(helper), "the calibration ended before the kill: give it more batches"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while not _gone(helper) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        took = time.monotonic() - killed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert took < 1.0, f"the helper outlived the app by {took:.1f} s"
    assert not _litter(tmp), "the helper left files behind"


PROBE_PARENT = """
import sys, time
from pathlib import Path
from quantstudio.core.benchmark import measure_memory_many
measure_memory_many({"a": Path(sys.argv[1])}, (1, 3, 32, 32))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_probe_dies_with_a_killed_app(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PROBE_PARENT, str(tmp_path / "none.onnx")], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        probes: list[int] = []
        while not probes and time.monotonic() < deadline and parent.poll() is None:
            probes = [p for p in _children(parent.pid) if b"memory" in Path(f"/proc/{p}/cmdline").read_bytes()]
            time.sleep(0.02)
        assert probes, "the probe never started"
        time.sleep(0.3)  # the probe is importing torch and ONNX Runtime (2+ s)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while not _gone(probes[0]) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        took = time.monotonic() - killed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert took < 1.0, f"the probe outlived the app by {took:.1f} s"


def test_cancel_during_ort_calibration_leaves_nothing_in_tmpdir(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again

    class CancelInCalibration(RecordingContext):
        def report(self, fraction: float, message: str = "") -> None:
            super().report(fraction, message)
            # the helper is reading batches (a fast machine may report only the last one)
            if message.startswith(("calibrating: batch", "computing ranges")):
                self.cancel()

    torch.manual_seed(0)
    xs = batches(60, (8, 3, 32, 32))
    ctx = CancelInCalibration()
    with pytest.raises(Cancelled):
        OrtEngine().quantize(loaded(tiny_net()), PrecisionPlan(), QuantConfig(), xs, ctx)
    assert any(m.startswith(("calibrating: batch", "computing ranges")) for _, m in ctx.reports)
    assert not _litter(tmp), f"left in TMPDIR: {_litter(tmp)}"

"""How long does the window freeze during a Quantize run on the demo?

A QTimer asks to fire every 10 ms in the GUI thread; the longest gap between two of its
ticks, minus 10 ms, is the longest event-loop stall a user would feel. The run (open
demo, quantize, evaluate, benchmark) happens on the app's worker thread as usual.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.benchmarks.gui_stall
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_tmp = tempfile.mkdtemp(prefix="qs-stall-")
os.environ["QUANTSTUDIO_SETTINGS"] = str(Path(_tmp) / "settings.ini")
os.environ["QUANTSTUDIO_DATA_DIR"] = str(Path(_tmp) / "data")

from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer  # noqa: E402

from quantstudio.gui.app import make_application  # noqa: E402

TICK_MS = 10


class StallMeter:
    def __init__(self) -> None:
        self.clock = QElapsedTimer()
        self.clock.start()
        self.last = 0
        self.gaps: list[int] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)

    def tick(self) -> None:
        now = self.clock.elapsed()
        self.gaps.append(now - self.last)
        self.last = now

    def start(self) -> None:
        self.last = self.clock.elapsed()
        self.gaps.clear()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        stalls = sorted(max(0, g - TICK_MS) for g in self.gaps)
        return {
            "ticks": len(stalls),
            "max_stall_ms": stalls[-1] if stalls else None,
            "p99_stall_ms": stalls[int(0.99 * (len(stalls) - 1))] if stalls else None,
            "stalls_over_100ms": sum(1 for s in stalls if s > 100),
        }


def measure() -> dict:
    app = make_application([])
    from quantstudio.gui.main_window import MainWindow

    def pump_until(cond, timeout=900.0):
        # A real event loop (no busy polling that would steal a core from the worker).
        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(50)
        poll.timeout.connect(lambda: loop.quit() if cond() else None)
        limit = QTimer()
        limit.setSingleShot(True)
        limit.timeout.connect(loop.quit)
        poll.start()
        limit.start(int(timeout * 1000))
        loop.exec()
        poll.stop()
        if not cond():
            raise TimeoutError("the run did not finish")

    w = MainWindow()
    w.resize(1440, 900)
    w.show()
    meter = StallMeter()
    meter.start()
    t0 = time.monotonic()
    w.open_demo()
    pump_until(lambda: w.loaded is not None and w.data_panel.summary is not None and not w.runner.busy)
    opening = meter.stop()
    opening["seconds"] = time.monotonic() - t0
    p = w.data_panel
    p.calib_spin.setValue(64)
    p.eval_spin.setValue(200)
    p.runs_spin.setValue(20)
    p.batches_edit.setText("1,8")
    done: list = []
    w.run_finished.connect(done.append)
    meter.start()
    t0 = time.monotonic()
    w.quantize()
    pump_until(lambda: bool(done) or not w.runner.busy)
    run = meter.stop()
    run["seconds"] = time.monotonic() - t0
    run["finished"] = bool(done)
    w.close()
    return {"open_demo": opening, "quantize_run": run}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
    sys.exit(0)

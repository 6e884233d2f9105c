"""How long does the window freeze during a Quantize run on the demo?

A QTimer asks to fire every 10 ms in the GUI thread; the longest gap between two of its
ticks, minus 10 ms, is the longest event-loop stall a user would feel. The run (open
demo, quantize, evaluate, benchmark) happens on the app's worker thread as usual.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.benchmarks.gui_stall
    ... -m tests.benchmarks.gui_stall --explain     # + what ran during the longest stalls
    ... -m tests.benchmarks.gui_stall --repeat 5    # 5 fresh processes, and a summary

``--explain`` starts a sampling thread that records every thread's Python stack every
3 ms, the CPU time of the GUI and worker threads (Linux) and every garbage collection;
for each of the longest stalls it reports what the GUI thread was doing, what the worker
was doing, for how long the sampler itself could not run (``sampler_blocked_ms``: another
thread held the GIL, or the process got no CPU) and the CPU time of the GUI thread, the
worker and the whole process in the stall, with the time the GUI thread (and the
sampler) sat ready but waiting for a CPU: a GUI thread that used little CPU and waited
little was waiting for the GIL. The sampler costs a little GIL time itself, so compare
numbers taken without it.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_tmp = tempfile.mkdtemp(prefix="qs-stall-")
os.environ["QUANTSTUDIO_SETTINGS"] = str(Path(_tmp) / "settings.ini")
os.environ["QUANTSTUDIO_DATA_DIR"] = str(Path(_tmp) / "data")

from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer  # noqa: E402

from quantstudio.gui.app import make_application  # noqa: E402

TICK_MS = 10
EXPLAIN_OVER_MS = 40  # stalls shorter than this are not explained
EXPLAIN_TOP = 8


class StallMeter:
    def __init__(self) -> None:
        self.clock = QElapsedTimer()
        self.clock.start()
        self.last = 0
        self.gaps: list[int] = []
        self.windows: list[tuple[int, float, float]] = []  # (gap ms, perf_counter start, end) of long gaps
        self._last_pc = 0.0
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)

    def tick(self) -> None:
        now = self.clock.elapsed()
        pc = time.perf_counter()
        gap = now - self.last
        self.gaps.append(gap)
        if gap - TICK_MS >= EXPLAIN_OVER_MS:
            self.windows.append((gap - TICK_MS, self._last_pc, pc))
        self.last = now
        self._last_pc = pc

    def start(self) -> None:
        self.last = self.clock.elapsed()
        self._last_pc = time.perf_counter()
        self.gaps.clear()
        self.windows.clear()
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


# --------------------------------------------------------------------------- --explain


def _schedstat(tid: int | str) -> tuple[int, int]:
    """(ns on a CPU, ns waiting for a CPU) of one thread (Linux; zeros elsewhere)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


def _worker_native_id() -> str | None:
    """The app's QThread ("quantstudio-worker", names are cut to 15 characters by Linux)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("quantstudio"):
                    return tid
    except OSError:
        pass
    return None


def _stack(frame, depth: int = 4) -> str:
    """Innermost ``depth`` frames, plus the innermost QuantStudio frame below them."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    shown = frames[:depth]
    ours = next((f for f in frames if "quantstudio" in f.f_code.co_filename), None)
    if ours is not None and ours not in shown:
        shown.append(ours)

    def fmt(f) -> str:
        path = Path(f.f_code.co_filename)
        where = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        return f"{where}:{f.f_lineno} {f.f_code.co_name}"

    return " < ".join(fmt(f) for f in shown)


class StallExplainer:
    """A helper thread that samples stacks and thread CPU times (see the module docstring)."""

    def __init__(self, interval_s: float = 0.003) -> None:
        self.interval_s = interval_s
        self.samples: collections.deque = collections.deque(maxlen=400_000)
        self.gcs: list[tuple[float, float, int, bool]] = []  # start, seconds, generation, in the GUI thread
        self._gc_start: dict[int, float] = {}
        self._stop = threading.Event()
        self._main = threading.main_thread()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        tid = threading.get_ident()
        if phase == "start":
            self._gc_start[tid] = time.perf_counter()
        elif tid in self._gc_start:
            t0 = self._gc_start.pop(tid)
            self.gcs.append((t0, time.perf_counter() - t0, info.get("generation", -1), tid == self._main.ident))

    def _run(self) -> None:
        me = threading.get_ident()
        my_tid = threading.get_native_id()
        main_tid = self._main.native_id
        worker_tid = None
        n = 0
        while not self._stop.wait(self.interval_s):
            if worker_tid is None and n % 50 == 0:
                worker_tid = _worker_native_id()
            n += 1
            now = time.perf_counter()
            frames = sys._current_frames()
            gui = frames.get(self._main.ident)
            others = [_stack(f) for ident, f in frames.items() if ident not in (me, self._main.ident)]
            gui_run, gui_wait = _schedstat(main_tid)
            t = os.times()
            cpu = (gui_run, _schedstat(worker_tid)[0] if worker_tid else 0, _schedstat(my_tid)[1], gui_wait,
                   t.user + t.system)
            self.samples.append((now, _stack(gui) if gui is not None else "", others, cpu))

    def explain(self, stall_ms: int, t0: float, t1: float) -> dict:
        samples = list(self.samples)
        first = next((i for i in range(len(samples) - 1, -1, -1) if samples[i][0] <= t0), 0)
        window = [s for s in samples[first:] if s[0] <= t1 + self.interval_s * 2]
        out: dict = {"stall_ms": stall_ms}
        if len(window) < 2:
            out["note"] = "no samples: the sampler never ran during the stall"
            return out
        longest, before, after = 0.0, window[0], window[1]
        for a, b in zip(window, window[1:]):
            if b[0] - a[0] > longest:
                longest, before, after = b[0] - a[0], a, b
        gui = collections.Counter(s[1] for s in window[1:])
        out["gui_thread"] = [f"{n}x {stack or '(no Python frame)'}" for stack, n in gui.most_common(3)]
        out["sampler_blocked_ms"] = round(1000 * (longest - self.interval_s))
        out["other_threads_before_that"] = [s for s in before[2] if "threading.py" not in s.split(" < ")[0]][:2]
        out["other_threads_after_that"] = [s for s in after[2] if "threading.py" not in s.split(" < ")[0]][:2]
        a, b = window[0][3], window[-1][3]
        out["cpu_ms"] = {"gui": round((b[0] - a[0]) / 1e6), "gui_waiting_for_a_cpu": round((b[3] - a[3]) / 1e6),
                         "worker": round((b[1] - a[1]) / 1e6), "whole_process": round(1000 * (b[4] - a[4])),
                         "sampler_waiting_for_a_cpu": round((b[2] - a[2]) / 1e6)}
        gcs = [g for g in self.gcs if g[0] < t1 and g[0] + g[1] > t0 and g[1] > 0.005]
        if gcs:
            out["gc"] = [f"gen {g[2]} {1000 * g[1]:.0f} ms in the {'GUI' if g[3] else 'worker'} thread" for g in gcs]
        return out


# --------------------------------------------------------------------------- the measurement


def measure(explain: bool = False) -> dict:
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

    explainer = StallExplainer() if explain else None
    if explainer is not None:
        explainer.start()

    def top_stalls(meter: StallMeter) -> list[dict]:
        worst = sorted(meter.windows, key=lambda w: -w[0])[:EXPLAIN_TOP]
        return [explainer.explain(*w) for w in worst]

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
    if explainer is not None:
        opening["top_stalls"] = top_stalls(meter)
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
    if explainer is not None:
        run["top_stalls"] = top_stalls(meter)
        explainer.stop()
    w.maybe_save_changes = lambda *a, **k: True  # no "Save changes?" box: nobody is there to answer it
    w.close()
    return {"open_demo": opening, "quantize_run": run}


def repeat(n: int, explain: bool) -> dict:
    """``n`` measurements, each in a fresh process (the first import of torch is part of it)."""
    runs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "tests.benchmarks.gui_stall"] + (["--explain"] if explain else [])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip()[-2000:])
        runs.append(json.loads(res.stdout))
        print(f"run {i + 1}/{n}: " + ", ".join(
            f"{phase} max {r['max_stall_ms']} ms" for phase, r in runs[-1].items()), file=sys.stderr)
    summary = {}
    for phase in ("open_demo", "quantize_run"):
        maxes = [r[phase]["max_stall_ms"] for r in runs]
        p99s = [r[phase]["p99_stall_ms"] for r in runs]
        summary[phase] = {"max_stall_ms": maxes, "median_of_max_ms": statistics.median(maxes),
                          "p99_stall_ms": p99s, "stalls_over_100ms": [r[phase]["stalls_over_100ms"] for r in runs]}
    return {"summary": summary, "runs": runs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explain", action="store_true", help="report what ran during the longest stalls")
    parser.add_argument("--repeat", type=int, default=1, help="measure N times, each in a fresh process")
    args = parser.parse_args()
    result = repeat(args.repeat, args.explain) if args.repeat > 1 else measure(args.explain)
    print(json.dumps(result, indent=2))
    sys.exit(0)

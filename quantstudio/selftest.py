"""``quantstudio --self-test``: check an installation end to end, offscreen.

Opens the bundled demo in the main window (without showing it on screen), quantizes the
demo with both engines on a few images, exports both files, loads each export back with
QuantStudio's own loader and compares its predictions with the original model's. Prints
one line per step; exits 0 when every step passed, 1 at the first that failed (naming it,
with the error and its traceback). A user runs it to check an install; ``make test``
runs it from source (tests/test_self_test.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Small on purpose: the self-test checks that every piece works, not how well.
CALIB_SAMPLES = 32
EVAL_SAMPLES = 48
MIN_TOP1 = 0.80  # the demo scores ~98 %; far below means a broken install, not a noisy one
MIN_AGREEMENT = 0.90  # reloaded export vs original model, top-1 on the check samples
WINDOW_TIMEOUT_S = 180


class StepFailed(Exception):
    """A check inside a step did not hold (the message says which)."""


class SelfTest:
    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.workdir = Path(tempfile.mkdtemp(prefix="quantstudio-selftest-"))
        self.state: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        start = time.perf_counter()
        try:
            detail = fn()
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, with its step
            self.say(f"FAILED  {name}: {type(exc).__name__}: {exc}")
            if not isinstance(exc, StepFailed):
                self.say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
            raise
        took = time.perf_counter() - start
        self.say(f"ok      {name} ({took:.1f} s){': ' + detail if detail else ''}")

    # ------------------------------------------------------------------ steps
    def start_qt(self) -> str:
        # Offscreen, and with private settings: the user's own window layout, recent files
        # and autosave are never touched by a self-test.
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        os.environ["QUANTSTUDIO_SETTINGS"] = str(self.workdir / "settings.ini")
        os.environ["QUANTSTUDIO_DATA_DIR"] = str(self.workdir / "appdata")
        from PySide6.QtCore import qInstallMessageHandler

        from quantstudio.gui.app import make_application

        qInstallMessageHandler(_qt_message)

        self.state["app"] = make_application(["quantstudio", "-platform", "offscreen"])
        from PySide6 import __version__ as pyside_version

        return f"PySide6 {pyside_version}"

    def open_demo_in_window(self) -> str:
        from PySide6.QtCore import QEventLoop, QTimer

        from quantstudio.gui.main_window import MainWindow

        window = MainWindow()
        self.state["window"] = window
        window.show()
        loop = QEventLoop()
        failed: list[str] = []
        window.model_loaded.connect(loop.quit)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        timer.start(WINDOW_TIMEOUT_S * 1000)
        # The window reports a failure in a message box; record it instead of waiting on it.
        from quantstudio.gui import dialogs

        def record_error(parent, title, exc=None, **kw):
            failed.append(f"{title}: {exc or kw.get('message', '')}")
            loop.quit()

        original = dialogs.show_error
        import quantstudio.gui.main_window as mw

        mw.show_error = record_error
        try:
            window.open_demo()
            loop.exec()
        finally:
            mw.show_error = original
        if failed:
            raise StepFailed(failed[0])
        if window.loaded is None:
            raise StepFailed(f"the demo did not open within {WINDOW_TIMEOUT_S} s")
        layers = window.layer_model.tree.count_layers()
        if layers < 10:
            raise StepFailed(f"the layer tree has {layers} layers; the demo has more than 100")
        return f"{layers} layers in the tree"

    def close_window(self) -> None:
        window = self.state.pop("window", None)
        if window is None:
            return
        from PySide6.QtCore import QCoreApplication

        deadline = time.monotonic() + 60
        while window.runner.busy and time.monotonic() < deadline:  # the demo's data scan
            QCoreApplication.processEvents()
            time.sleep(0.02)
        window.shutdown()
        window.hide()
        window.deleteLater()
        QCoreApplication.processEvents()

    def load_demo(self) -> str:
        import json

        from quantstudio.core.data import Preprocessing, open_data
        from quantstudio.core.loading import load_model
        from quantstudio.gui.paths import demo_dir

        folder = demo_dir()
        meta = json.loads((folder / "demo.json").read_text(encoding="utf-8"))
        model = load_model(folder / meta["weights"], arch=meta["arch"], input_shape=tuple(meta["input_shape"]))
        prep = Preprocessing()
        data = open_data(folder / meta["data"], input_shape=model.input_shape, preprocessing=prep)
        self.state.update(model=model, prep=prep, data=data, data_spec=str(folder / meta["data"]))
        return f"{meta['arch']}, {len(data)} images"

    def quantize(self, engine: str) -> str:
        from quantstudio.core.engines.base import QuantConfig
        from quantstudio.core.pipeline import run_quantize
        from quantstudio.core.plan import PrecisionPlan

        config = QuantConfig(engine=engine, calib_samples=CALIB_SAMPLES)
        result = run_quantize(
            self.state["model"], self.state["data"], self.state["prep"], PrecisionPlan(), config,
            eval_samples=EVAL_SAMPLES, benchmark=False, batch_size=16, sqnr_batches=1,
        )
        top1 = result.quantized_metrics.top1 if result.quantized_metrics is not None else None
        if top1 is None:
            raise StepFailed("the quantized model was not evaluated")
        if top1 < MIN_TOP1:
            raise StepFailed(f"top-1 of the INT8 model is {100 * top1:.1f} %, expected at least {100 * MIN_TOP1:.0f} %")
        self.state[f"result_{engine}"] = result
        return f"INT8 top-1 {100 * top1:.1f} % on {result.evaluation_samples} images"

    def export(self, engine: str, suffix: str) -> str:
        from quantstudio.core.pipeline import export_result

        result = self.state[f"result_{engine}"]
        path = self.workdir / f"demo_int8_{engine}{suffix}"
        exported = export_result(result, path, data_spec=self.state["data_spec"])
        if not exported.check.passed:
            raise StepFailed(f"the exported file does not match the in-app model: {exported.check.to_dict()}")
        if not path.is_file():
            raise StepFailed(f"{path} was not written")
        self.state[f"export_{engine}"] = path
        return f"{path.name}, {exported.size_bytes / 1e6:.1f} MB"

    def reload_and_compare(self, engine: str) -> str:
        import numpy as np

        from quantstudio.core.loading import load_model

        path = self.state[f"export_{engine}"]
        original = self.state["model"]
        samples = self.state[f"result_{engine}"].check_samples
        reloaded = load_model(path, input_shape=tuple(original.input_shape))
        want = np.asarray(original.forward_numpy(samples)).argmax(axis=1)
        got = np.asarray(reloaded.forward_numpy(samples)).argmax(axis=1)
        agreement = float((want == got).mean())
        if agreement < MIN_AGREEMENT:
            raise StepFailed(f"the reloaded {path.name} agrees with the original on {100 * agreement:.0f} % "
                             f"of {len(samples)} images, expected at least {100 * MIN_AGREEMENT:.0f} %")
        return f"{reloaded.kind_label}, agrees with the original on {100 * agreement:.0f} % of {len(samples)} images"

    # ------------------------------------------------------------------ driver
    def steps(self) -> list[tuple[str, Callable[[], Any]]]:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("start Qt (offscreen)", self.start_qt),
            ("open the demo in the window", self.open_demo_in_window),
            ("close the window", self.close_window),
            ("load the demo model and images", self.load_demo),
        ]
        for engine, suffix, label in (("onnxruntime", ".onnx", "ONNX Runtime"), ("torch", ".pth", "PyTorch")):
            steps += [
                (f"quantize with {label}", lambda e=engine: self.quantize(e)),
                (f"export {suffix}", lambda e=engine, s=suffix: self.export(e, s)),
                (f"reload {suffix} and compare", lambda e=engine: self.reload_and_compare(e)),
            ]
        return steps

    def run(self) -> int:
        from quantstudio import __version__

        self.say(f"QuantStudio {__version__} self-test (offscreen; files in {self.workdir})")
        start = time.perf_counter()
        try:
            for name, fn in self.steps():
                self.step(name, fn)
        except BaseException:  # noqa: BLE001 - reported by step()
            self.close_window()
            self.say(f"Self-test FAILED after {time.perf_counter() - start:.0f} s.")
            return 1
        self.say(f"Self-test passed in {time.perf_counter() - start:.0f} s: this installation works.")
        return 0


# Said once by the offscreen platform when a window's size limits change; not a problem.
OFFSCREEN_NOISE = "does not support propagateSizeHints"


def _qt_message(kind, context, message: str) -> None:
    if OFFSCREEN_NOISE not in message:
        print(f"Qt: {message}", file=sys.stderr)


def main() -> int:
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the window logs its progress at INFO: not here
        handler.setLevel(logging.WARNING)
    # torch notes that triton (its GPU compiler, left out of the packaged app) is absent.
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices are not the user's concern here
    return SelfTest().run()


if __name__ == "__main__":
    sys.exit(main())

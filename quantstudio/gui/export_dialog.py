"""Export dialog: the quantized model (.onnx and/or .pth), its recipe, an HTML report.

Everything chosen is written by one job on the window's worker and committed as one
transaction (:mod:`quantstudio.core.transaction`): the earlier files or the complete
new set, whatever fails or is cancelled. A PyTorch source can give both formats: the
one the variant's engine does not write is built by that job, quantizing again with
the same plan, settings and data. The report's plots are painted here, in the GUI
thread (the exported run's own, drawn off screen), before the job starts; the job puts
the HTML together once the checks are known. Every target is checked before anything
starts and nothing is overwritten without asking. SIGTERM while exporting cancels the
job (its temporaries are deleted) and then quits. Every failure ends in the app's
error box (plain message, a hint, the details folded away); the dialog keeps a
one-line summary.
"""

from __future__ import annotations

import html
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from quantstudio.gui.dialogs import ask_yes_no, error_texts, show_error
from quantstudio.gui.settings import SETTINGS
from quantstudio.gui.variants import export_stem
from quantstudio.gui.worker import Job

MODEL_KEYS = {"onnx": ".onnx", "pth": ".pth", "tflite": ".tflite"}  # targets() key → file suffix
MODEL_LABELS = {"onnx": "Quantized model (.onnx)", "pth": "Quantized model (.pth, TorchScript)",
                "tflite": "Quantized model (.tflite, LiteRT)"}
BUILT_ON_EXPORT = " — made on export (quantized again; see the tooltip)"


class ExportDialog(QDialog):
    def __init__(self, window) -> None:
        super().__init__(window)
        self.window_ = window
        self.setWindowTitle("Export")
        self.setMinimumWidth(560)
        self.runs = window.variants_panel.model.runs
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.variant_combo = QComboBox()
        for i, run in enumerate(self.runs):
            label = run.name if run.raw is not None else f"{run.name} (re-run to export the model)"
            self.variant_combo.addItem(label, i)
        self.variant_combo.setCurrentIndex(len(self.runs) - 1)
        form.addRow("Variant:", self.variant_combo)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit(SETTINGS["last_export_dir"] or str(Path.home()))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._choose_folder)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form.addRow("Folder:", row)
        self.name_edit = QLineEdit()
        form.addRow("File name:", self.name_edit)
        self.onnx_check = QCheckBox(MODEL_LABELS["onnx"])
        self.pth_check = QCheckBox(MODEL_LABELS["pth"])
        self.tflite_check = QCheckBox(MODEL_LABELS["tflite"])
        self.model_checks = {"onnx": self.onnx_check, "pth": self.pth_check, "tflite": self.tflite_check}
        self.recipe_check = QCheckBox("Recipe (.recipe.json) — re-runs the same quantization with quantstudio-cli")
        self.report_check = QCheckBox("HTML report with the plots")
        self.memory_check = QCheckBox("Measure peak memory of the exported model (a few seconds)")
        for c in (self.recipe_check, self.report_check):
            c.setChecked(True)
        for c in (*self.model_checks.values(), self.recipe_check, self.report_check, self.memory_check):
            form.addRow("", c)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        layout.addWidget(self.progress)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.result_label)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button.clicked.connect(self._on_close_or_cancel)
        layout.addWidget(self.buttons)
        self.variant_combo.currentIndexChanged.connect(self._on_variant_changed)
        window.runner.progress.connect(self._on_progress)
        self.written: list[Path] = []
        self.export_summary: dict | None = None
        self._targets: dict[str, Path] = {}
        self._terminating = False
        self._previous_sigterm: Any = None
        # Python runs a signal handler only when the interpreter gets control: a tick while
        # exporting makes SIGTERM act even when no progress arrives (the commit, a long step).
        self._signal_tick = QTimer(self)
        self._signal_tick.setInterval(200)
        self._signal_tick.timeout.connect(self._tick)
        self._on_variant_changed()
        self._repair_recent_exports()

    def _repair_recent_exports(self) -> None:
        """Finish exports a kill interrupted in recently used folders (a listing each: quick)."""
        import logging

        from quantstudio.core.transaction import recover_recent

        for note in recover_recent():
            logging.getLogger("quantstudio.gui").info("%s", note)

    # ------------------------------------------------------------------ choices
    @property
    def run(self):
        i = self.variant_combo.currentData()
        return self.runs[i] if i is not None and 0 <= i < len(self.runs) else None

    @Slot()
    def _on_variant_changed(self) -> None:
        from quantstudio.core.engines.base import ENGINES, QuantConfig, engine_writing, get_engine

        run = self.run
        if run is None:
            return
        engine = run.config.get("engine", QuantConfig().engine)
        stem = Path(self.window_.loaded.path).stem if self.window_.loaded is not None else "model"
        # Derived from the variant (engine, mode, calibration, its number): two variants
        # never propose the same file.
        self.name_edit.setText(export_stem(stem, run))
        can_model = run.raw is not None
        # A format this variant's engine does not write is built on export by the engine that
        # writes it, when that engine can quantize the source (a state_dict, a trusted pickle).
        source = getattr(run.raw, "model", None)
        native = get_engine(engine).formats if engine in ENGINES else {}
        for key, check in self.model_checks.items():
            suffix, label = MODEL_KEYS[key], MODEL_LABELS[key]
            own = suffix in native
            writer = engine_writing(suffix)
            why_not = None if own or writer is None or source is None else writer.unsupported_reason(source)
            check.setEnabled(can_model and (own or (source is not None and writer is not None and why_not is None)))
            check.setChecked(can_model and own)
            check.setText(label + ("" if own or not check.isEnabled() else BUILT_ON_EXPORT))
            check.setToolTip(
                "" if own else
                "Quantizes this variant again with the engine that writes this format (same plan, settings, data "
                "and preprocessing), checks it and exports it with the rest." if check.isEnabled() else
                "Re-run this variant to export its model." if not can_model else
                f"Not available for this model: {why_not}." if why_not else
                "Only a PyTorch source model (state_dict or trusted pickle) can be quantized into other formats.")
        self.recipe_check.setEnabled(True)  # a reopened variant's stored plan and settings make one too
        self.recipe_check.setChecked(True)
        self.memory_check.setEnabled(can_model)

    @Slot()
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def targets(self) -> dict[str, Path]:
        """What would be written: keys "onnx", "pth", "recipe", "report"."""
        folder = Path(self.folder_edit.text()).expanduser()
        stem = self.name_edit.text().strip() or "model"
        out: dict[str, Path] = {}
        for key, check in self.model_checks.items():
            if check.isChecked() and check.isEnabled():
                out[key] = folder / f"{stem}{MODEL_KEYS[key]}"
        if self.recipe_check.isChecked() and self.recipe_check.isEnabled():
            out["recipe"] = folder / f"{stem}.recipe.json"
        if self.report_check.isChecked():
            out["report"] = folder / f"{stem}.report.html"
        return out

    # ------------------------------------------------------------------ export
    @Slot()
    def start_export(self) -> bool:
        from quantstudio.core.errors import InputError
        from quantstudio.core.transaction import check_targets
        from quantstudio.gui import pipeline_adapter

        run = self.run
        targets = self.targets()
        if run is None or not targets:
            self.result_label.setText("Choose at least one thing to export.")
            return False
        self._targets = targets
        try:
            check_targets(list(targets.values()))  # a folder or read-only file in the way: say so now
        except InputError as exc:
            self._on_failed(exc, started=False)
            return False
        existing = [p for p in targets.values() if p.exists()]
        if existing and not ask_yes_no(
            self, "Replace files?", "These files exist already:\n" + "\n".join(str(p) for p in existing),
            "Replace them? (They are replaced all together, only once every new file is complete and checked.)",
        ):
            return False
        SETTINGS["last_export_dir"] = str(Path(self.folder_edit.text()).expanduser())
        self.written = []
        self.export_summary = None
        self.result_label.setText("")
        make_report = None
        if "report" in targets:
            try:
                make_report = self._report_maker(run)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is silent
                self._on_failed(exc, started=False)
                return False
        report_path = str(targets["report"]) if "report" in targets else None
        data_spec = self.window_.data_panel.data_spec()
        models = [str(targets[k]) for k in MODEL_KEYS if k in targets]
        ends = dict(on_failed=self._on_failed, on_cancelled=self._on_cancelled)
        if models:
            job = Job("Exporting", pipeline_adapter.export_job,
                      (run.raw, models, data_spec, self.memory_check.isChecked()),
                      dict(with_recipe="recipe" in targets, report_path=report_path, make_report=make_report),
                      on_done=self._on_model_exported, **ends)
        elif "recipe" in targets and run.raw is not None:
            job = Job("Writing the recipe", pipeline_adapter.recipe_job,
                      (run.raw, str(targets["recipe"]), data_spec, report_path, make_report),
                      on_done=self._on_files_written, **ends)
        elif "recipe" in targets:
            try:
                prep = self.window_.data_panel.preprocessing_dict()
            except ValueError:
                prep = None
            job = Job("Writing the recipe", pipeline_adapter.stored_recipe_job,
                      (self.window_.loaded, run.plan, run.config, prep, data_spec, str(targets["recipe"]),
                       report_path, make_report),
                      on_done=self._on_files_written, **ends)
        else:
            job = Job("Writing the report", pipeline_adapter.write_files_job,
                      ({report_path: lambda: make_report(None)},), on_done=self._on_files_written, **ends)
        if not self.window_.start_job(job):
            self.result_label.setText("Another job is running; wait for it or cancel it.")
            return False
        self._set_running(True)
        return True

    def _report_maker(self, run: Any) -> Callable[[dict | None], str]:
        """Paint the run's plots now (GUI thread); the job adds the export's checks to the HTML."""
        from quantstudio.gui.report import build_report, render_plots

        # The exported run's own plots, drawn by off-screen panels: not what the window shows now.
        plots = render_plots(run, self.runs)
        model_text = self.window_.model_label.text().replace("<b>", "").replace("</b>", "")

        def make(summary: dict | None) -> str:  # runs on the worker: plain data only
            return build_report(run, model_text, plots, summary)

        return make

    def _set_running(self, running: bool) -> None:
        self.variant_combo.setEnabled(not running)  # the results and report belong to the variant being exported
        self.progress.setVisible(running)
        self.export_button.setEnabled(not running)
        self.cancel_button.setText("Cancel" if running else "Close")
        self._catch_sigterm(running)

    def _catch_sigterm(self, on: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if on and self._previous_sigterm is None:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._signal_tick.start()
        elif not on and self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
            self._signal_tick.stop()
            if self._terminating:
                QApplication.exit(128 + signal.SIGTERM)  # the export has cleaned up: now go

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM while exporting: the same path as Cancel (temporaries deleted), then quit."""
        self._terminating = True
        self.window_.runner.cancel()

    @Slot()
    def _tick(self) -> None:
        pass  # only lets Python run a pending signal handler

    @Slot(float, str)
    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(message)

    def _on_model_exported(self, summary: dict) -> None:
        self.export_summary = summary
        lines = []
        for f in summary.get("files") or [summary]:
            self.written.append(Path(f["path"]))
            check = f.get("check") or {}
            lines += [
                f"✔ Wrote <b>{html.escape(Path(f['path']).name)}</b> ({f['size_bytes'] / 1e6:.2f} MB).",
                f"Round-trip check {'<b style=color:#207020>passed</b>' if check.get('passed') else '<b style=color:#a02020>failed</b>'}: "
                f"reloaded with {check.get('reloaded_with')}; max difference {check.get('max_abs_diff', 0):.3g}, "
                f"top-1 agreement {100 * check.get('top1_agreement', 0):.1f}% on {check.get('samples')} samples.",
            ]
        if summary.get("recipe"):
            self.written.append(Path(summary["recipe"]))
            lines.append(f"✔ Wrote <b>{html.escape(Path(summary['recipe']).name)}</b>.")
        if summary.get("report"):
            self.written.append(Path(summary["report"]))
            lines.append(f"✔ Wrote <b>{html.escape(Path(summary['report']).name)}</b>.")
        lines += [f"<span style='color:#666'>{html.escape(n)}</span>" for n in summary.get("notes", [])]
        if summary.get("model_peak_bytes"):
            lines.append(f"Memory running it: {summary['model_peak_bytes'] / 1e6:.0f} MB above the runtime's own "
                         f"(the whole process peaked at {summary['peak_rss_bytes'] / 1e6:.0f} MB).")
            metrics = self.run.metrics.setdefault(self.run.quantized, {})
            metrics["peak_rss_bytes"] = summary["peak_rss_bytes"]
            metrics["model_peak_bytes"] = summary["model_peak_bytes"]
            size_panel = self.window_.size_panel
            if getattr(size_panel, "shown_run", None) is self.run:  # only when the window shows this run
                size_panel.show_run(self.run, self.runs)
        self.result_label.setText("<br>".join(lines))
        self._set_running(False)

    def _on_files_written(self, paths: str | list[str]) -> None:
        written = [Path(paths)] if isinstance(paths, str) else [Path(p) for p in paths]
        if "report" in self._targets and self._targets["report"] not in written:
            written.append(self._targets["report"])  # committed with the recipe
        self.written += written
        self.result_label.setText("<br>".join(f"✔ Wrote <b>{html.escape(p.name)}</b>." for p in written))
        self._set_running(False)

    def _append_result(self, line: str) -> None:
        text = self.result_label.text()
        self.result_label.setText(f"{text}<br>{line}" if text else line)

    @staticmethod
    def failure_texts(exc: BaseException, target: Path | None = None) -> tuple[str, str, str]:
        """(message, hint, details) for a failed export, in plain words."""
        message, hint, details = error_texts(exc, "exporting")
        if isinstance(exc, OSError):
            where = Path(exc.filename) if getattr(exc, "filename", None) else (target.parent if target else None)
            reason = exc.strerror or str(exc)
            message = f"Could not write to {where}: {reason}." if where else f"Could not write the files: {reason}."
            hint = "Choose a folder that exists and that you can write to, then export again."
        return message, hint, details

    def _on_failed(self, exc: BaseException, started: bool = True) -> None:
        target = getattr(exc, "path", None) or next(iter(self._targets.values()), None)
        message, hint, details = self.failure_texts(exc, Path(target) if target else None)
        hint = f"{hint} Nothing was overwritten."
        self.result_label.setText(
            f"<span style='color:#a02020'>✘ Export failed: {html.escape(message)}</span><br>Nothing was overwritten.")
        if started:
            self._set_running(False)
        show_error(self, "Export failed", message=message, hint=hint, details=details)

    def _on_cancelled(self) -> None:
        self.result_label.setText("Export cancelled; no file was written or changed.")
        self._set_running(False)

    @Slot()
    def _on_close_or_cancel(self) -> None:
        if self.window_.runner.busy:
            self.window_.runner.cancel()
        else:
            self.reject()

    def reject(self) -> None:
        """Overrides QDialog.reject: closing while exporting cancels instead."""
        if self.window_.runner.busy:
            self.window_.runner.cancel()
            return
        self.window_.runner.progress.disconnect(self._on_progress)
        super().reject()

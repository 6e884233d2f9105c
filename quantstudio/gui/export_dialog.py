"""Export dialog: the quantized model (.onnx or .pth, by engine), its recipe, an HTML report.

The model export runs on the window's worker (it reloads and checks the file); the
report is painted here (plots of the exported run, drawn off screen) and written
atomically. Nothing is overwritten without asking. Every failure ends in the app's
error box (plain message, a hint, the details folded away); the dialog keeps a
one-line summary.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
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
from quantstudio.gui.worker import Job

MODEL_SUFFIX = {"onnxruntime": ".onnx", "torch": ".pth"}


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
        self.onnx_check = QCheckBox("Quantized model (.onnx)")
        self.pth_check = QCheckBox("Quantized model (.pth, TorchScript)")
        self.recipe_check = QCheckBox("Recipe (.recipe.json) — re-runs the same quantization with quantstudio-cli")
        self.report_check = QCheckBox("HTML report with the plots")
        self.memory_check = QCheckBox("Measure peak memory of the exported model (a few seconds)")
        for c in (self.recipe_check, self.report_check):
            c.setChecked(True)
        for c in (self.onnx_check, self.pth_check, self.recipe_check, self.report_check, self.memory_check):
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
        self._pending: list[str] = []
        self.written: list[Path] = []
        self.export_summary: dict | None = None
        self._on_variant_changed()

    # ------------------------------------------------------------------ choices
    @property
    def run(self):
        i = self.variant_combo.currentData()
        return self.runs[i] if i is not None and 0 <= i < len(self.runs) else None

    @Slot()
    def _on_variant_changed(self) -> None:
        run = self.run
        if run is None:
            return
        engine = run.config.get("engine", "onnxruntime")
        stem = Path(self.window_.loaded.path).stem if self.window_.loaded is not None else "model"
        self.name_edit.setText(f"{stem}_{engine}_{run.config.get('mode', 'int8')}")
        can_model = run.raw is not None
        self.onnx_check.setEnabled(can_model and engine == "onnxruntime")
        self.pth_check.setEnabled(can_model and engine == "torch")
        self.onnx_check.setChecked(self.onnx_check.isEnabled())
        self.pth_check.setChecked(self.pth_check.isEnabled())
        self.recipe_check.setEnabled(True)  # a reopened variant's stored plan and settings make one too
        self.recipe_check.setChecked(True)
        self.memory_check.setEnabled(can_model)
        tip = "The ONNX Runtime engine writes .onnx; the PyTorch engine writes .pth. Change the engine and quantize again for the other."
        self.onnx_check.setToolTip(tip)
        self.pth_check.setToolTip(tip)

    @Slot()
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def targets(self) -> dict[str, Path]:
        folder = Path(self.folder_edit.text()).expanduser()
        stem = self.name_edit.text().strip() or "model"
        out: dict[str, Path] = {}
        if self.onnx_check.isChecked() and self.onnx_check.isEnabled():
            out["model"] = folder / f"{stem}.onnx"
        elif self.pth_check.isChecked() and self.pth_check.isEnabled():
            out["model"] = folder / f"{stem}.pth"
        if self.recipe_check.isChecked() and self.recipe_check.isEnabled():
            out["recipe"] = folder / f"{stem}.recipe.json"
        if self.report_check.isChecked():
            out["report"] = folder / f"{stem}.report.html"
        return out

    # ------------------------------------------------------------------ export
    @Slot()
    def start_export(self) -> bool:
        run = self.run
        targets = self.targets()
        if run is None or not targets:
            self.result_label.setText("Choose at least one thing to export.")
            return False
        existing = [p for p in targets.values() if p.exists()]
        if existing and not ask_yes_no(
            self, "Replace files?", "These files exist already:\n" + "\n".join(str(p) for p in existing),
            "Replace them? (They are replaced only once the new files are complete and checked.)",
        ):
            return False
        SETTINGS["last_export_dir"] = str(Path(self.folder_edit.text()).expanduser())
        self.written = []
        self.export_summary = None
        self._targets = targets
        self.result_label.setText("")
        from quantstudio.gui import pipeline_adapter

        data_spec = self.window_.data_panel.data_spec()
        if "model" in targets:
            job = Job("Exporting", pipeline_adapter.export_job,
                      (run.raw, str(targets["model"]), data_spec, self.memory_check.isChecked()),
                      on_done=self._on_model_exported, on_failed=self._on_failed, on_cancelled=self._on_cancelled)
        elif "recipe" in targets and run.raw is not None:
            job = Job("Writing the recipe", pipeline_adapter.recipe_job, (run.raw, str(targets["recipe"]), data_spec),
                      on_done=self._on_recipe_written, on_failed=self._on_failed, on_cancelled=self._on_cancelled)
        elif "recipe" in targets:
            try:
                prep = self.window_.data_panel.preprocessing_dict()
            except ValueError:
                prep = None
            job = Job("Writing the recipe", pipeline_adapter.stored_recipe_job,
                      (self.window_.loaded, run.plan, run.config, prep, data_spec, str(targets["recipe"])),
                      on_done=self._on_recipe_written, on_failed=self._on_failed, on_cancelled=self._on_cancelled)
        else:
            self._write_report()
            return True
        if not self.window_.start_job(job):
            self.result_label.setText("Another job is running; wait for it or cancel it.")
            return False
        self._set_running(True)
        return True

    def _set_running(self, running: bool) -> None:
        self.variant_combo.setEnabled(not running)  # the results and report belong to the variant being exported
        self.progress.setVisible(running)
        self.export_button.setEnabled(not running)
        self.cancel_button.setText("Cancel" if running else "Close")

    @Slot(float, str)
    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(message)

    def _on_model_exported(self, summary: dict) -> None:
        self.export_summary = summary
        self.written.append(Path(summary["path"]))
        check = summary.get("check") or {}
        lines = [
            f"✔ Wrote <b>{Path(summary['path']).name}</b> ({summary['size_bytes'] / 1e6:.2f} MB).",
            f"Round-trip check {'<b style=color:#207020>passed</b>' if check.get('passed') else '<b style=color:#a02020>failed</b>'}: "
            f"reloaded with {check.get('reloaded_with')}; max difference {check.get('max_abs_diff', 0):.3g}, "
            f"top-1 agreement {100 * check.get('top1_agreement', 0):.1f}% on {check.get('samples')} samples.",
        ]
        if summary.get("recipe"):
            self.written.append(Path(summary["recipe"]))
            lines.append(f"✔ Wrote <b>{Path(summary['recipe']).name}</b>.")
        lines += [f"<span style='color:#666'>{n}</span>" for n in summary.get("notes", [])]
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
        self._finish()

    def _on_recipe_written(self, path: str) -> None:
        self.written.append(Path(path))
        self.result_label.setText(f"✔ Wrote <b>{Path(path).name}</b>.")
        self._finish()

    def _finish(self) -> None:
        self._set_running(False)
        if "report" in self._targets:
            self._write_report()

    def _write_report(self) -> None:
        from quantstudio.core.export import atomic_write_text
        from quantstudio.gui.report import build_report, render_plots

        w = self.window_
        path = self._targets["report"]
        try:
            # The exported run's own plots, drawn by off-screen panels: not what the window shows now.
            plots = render_plots(self.run, self.runs)
            html_text = build_report(self.run, w.model_label.text().replace("<b>", "").replace("</b>", ""),
                                     plots, self.export_summary)
            atomic_write_text(path, html_text)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is silent
            message, hint, details = self.failure_texts(exc, path)
            if self.written:
                hint += " The files listed above were written and checked."
            self._append_result(f"<span style='color:#a02020'>✘ The report was not written: {html.escape(message)}</span>")
            show_error(self, "Report not written", message=message, hint=hint, details=details)
            return
        self.written.append(path)
        self._append_result(f"✔ Wrote <b>{html.escape(path.name)}</b>.")

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

    def _on_failed(self, exc: BaseException) -> None:
        target = next(iter(self._targets.values()), None)
        message, hint, details = self.failure_texts(exc, target)
        hint = f"{hint} Nothing was overwritten."
        self.result_label.setText(
            f"<span style='color:#a02020'>✘ Export failed: {html.escape(message)}</span><br>Nothing was overwritten.")
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

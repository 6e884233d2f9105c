"""The main window: welcome page or layer tree in the middle, docks around it.

Opening models lives in :mod:`quantstudio.gui.model_import`, projects in
:mod:`quantstudio.gui.project_session`, small widgets in :mod:`quantstudio.gui.window_widgets`.

Every long operation (open a model, scan data, quantize, export) is a job run by
:class:`~quantstudio.gui.worker.JobRunner`, one at a time; this window only starts
jobs and shows what they report. State that matters lives in core objects: the
``LoadedModel``, its ``LayerNode`` tree, and the ``PrecisionPlan`` (shared with the
layer model, edited only through it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QMainWindow,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTabBar,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from quantstudio import __version__
from quantstudio.core.errors import InputError
from quantstudio.core.plan import Precision, PrecisionPlan
from quantstudio.gui import compat, glossary, plots, style, tasks, warmup
from quantstudio.gui.data_panel import DataPanel
from quantstudio.gui.guidance import AutoButton, HintBar, QuantizeButton
from quantstudio.gui.dialogs import GettingStartedDialog, ask_yes_no, show_error
from quantstudio.gui.layer_model import LayerTreeModel
from quantstudio.gui.layer_view import LayerPanel
from quantstudio.gui.paths import demo_dir
from quantstudio.gui.project import PROJECT_SUFFIX
from quantstudio.gui.settings import SETTINGS, data_dir
from quantstudio.gui.variants import VariantsPanel, variant_name
from quantstudio.gui.model_import import ModelImportMixin
from quantstudio.gui.project_session import ProjectSessionMixin
from quantstudio.gui.recovery_actions import AutoPrecisionMixin, FineTuningMixin
from quantstudio.gui.welcome import WelcomePage
from quantstudio.gui.window_widgets import UndoToolAction, WarningBanner, _LogBridge
from quantstudio.gui.worker import Job, JobRunner

log = logging.getLogger("quantstudio.gui")

AUTOSAVE_MS = 60_000


class MainWindow(ModelImportMixin, ProjectSessionMixin, AutoPrecisionMixin, FineTuningMixin, QMainWindow):
    """Signals: ``model_loaded()``, ``run_finished(object)``, ``job_idle()``."""

    model_loaded = Signal()
    run_finished = Signal(object)
    job_idle = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("QuantStudio")
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        compat.collect_garbage_on_gui_thread(paused=warmup.importing)  # before any worker thread exists
        self.runner = JobRunner(self, before_first_job=warmup.warm_up)
        self.loaded = None  # core LoadedModel
        self.model_request: tasks.LoadRequest | None = None
        self.plan = PrecisionPlan()
        self.project_path: Path | None = None
        self._after_load: dict[str, Any] | None = None  # project to finish applying after its model loads
        self._dirty = False
        self._autosaved: dict[str, Any] | None = None  # what the autosave file holds (skip rewriting it)
        self._closing = False
        self._shown_run: tasks.RunOutcome | None = None  # the variant the panels show
        self._shown_once = False
        self._layout_restored = False  # a saved dock layout was restored (keep its sizes)

        self.layer_model = LayerTreeModel(self)
        self.layer_panel = LayerPanel(self.layer_model)
        self.welcome = WelcomePage()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.layer_panel)
        self.hint_bar = HintBar()
        self.hint_bar.dismissed.connect(self._on_hint_dismissed)
        self.warning_banner = WarningBanner()
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(self.hint_bar)
        column.addWidget(self.warning_banner)
        column.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self._make_docks()
        self._make_actions()
        self._make_menus_and_toolbar()
        self._make_status_bar()
        self._connect()

        self.log_bridge = _LogBridge()
        self.log_bridge.line.connect(self.log_view.appendPlainText)
        logging.getLogger("quantstudio").addHandler(self.log_bridge)
        logging.getLogger("quantstudio").setLevel(logging.INFO)

        self.autosave_timer = QTimer(self)
        self.autosave_timer.setInterval(AUTOSAVE_MS)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start()

        self._refresh_recent()
        self._update_actions()
        self.restore_layout()

    # ================================================================== construction
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea, name: str) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _make_docks(self) -> None:
        # The plots on the right run the full height; Log and Variants sit below the data
        # panel and the tree. Below all three columns, the plots' minimum heights left the
        # Variants comparison two rows.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.data_panel = DataPanel()
        self.data_dock = self._dock("Data && settings", self.data_panel, Qt.DockWidgetArea.LeftDockWidgetArea, "data_dock")

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_dock = self._dock("Log", self.log_view, Qt.DockWidgetArea.BottomDockWidgetArea, "log_dock")

        self.variants_panel = VariantsPanel()
        self.variants_dock = self._dock("Variants", self.variants_panel, Qt.DockWidgetArea.BottomDockWidgetArea, "variants_dock")
        self.tabifyDockWidget(self.log_dock, self.variants_dock)

        self.latency_panel = plots.LatencyPanel()
        self.accuracy_panel = plots.AccuracyPanel()
        self.size_panel = plots.SizePanel()
        self.layer_error_panel = plots.LayerErrorPanel()
        self.confusion_panel = plots.ConfusionPanel()
        self.changed_panel = plots.ChangedSamplesPanel()
        self.tradeoff_panel = plots.TradeoffPanel()
        self.candidates_panel = plots.CandidatesPanel()
        self.training_panel = plots.TrainingPanel()
        self.plot_panels = [
            self.latency_panel, self.accuracy_panel, self.size_panel, self.layer_error_panel,
            self.confusion_panel, self.tradeoff_panel, self.training_panel,
        ]
        self.plot_panels.append(self.candidates_panel)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self.plot_docks: list[QDockWidget] = []
        top = [(self.latency_panel, "Speed"), (self.size_panel, "Size"), (self.tradeoff_panel, "Speed vs accuracy")]
        top.append((self.candidates_panel, "Auto precision"))
        bottom = [(self.accuracy_panel, "Accuracy"), (self.layer_error_panel, "Per-layer error"),
                  (self.confusion_panel, "Confusion"), (self.changed_panel, "Changed"),
                  (self.training_panel, "Training")]
        firsts = []
        for group in (top, bottom):
            first = None
            for panel, title in group:
                dock = QDockWidget(title, self)
                dock.setObjectName(f"plot_{title.lower().replace(' ', '_')}")
                dock.setWidget(panel)
                self.plot_docks.append(dock)
                if first is None:
                    first = dock
                    self.addDockWidget(right, dock, Qt.Orientation.Vertical)
                    firsts.append(dock)
                else:
                    self.tabifyDockWidget(first, dock)
                # A tab group that grows while the window is hidden gets a new tab bar; Qt
                # retires the old one with deleteLater, and until an event loop deletes it
                # (never, in scripts that only call processEvents, like the screenshot
                # generator) it is drawn over the layer tree as a stray "Speed | Size"
                # strip. Letting the layout run after each change keeps one bar per group.
                self.layout().activate()
        self.training_dock = next(d for d in self.plot_docks if d.widget() is self.training_panel)
        for dock in firsts:
            dock.raise_()
        self._apply_default_dock_sizes()
        self.log_dock.raise_()

    def _apply_default_dock_sizes(self) -> None:
        """Dock sizes of the default layout, for the window's current size.

        Run again when the window first shows (unless a saved layout was restored): a
        window made smaller after construction would otherwise squeeze the bottom docks
        to a few rows.
        """
        right = self.plot_docks[0]
        data_width = max(340, self.data_panel.minimumSizeHint().width())
        self.resizeDocks([self.data_dock, right], [data_width, max(420, int(0.4 * self.width()))],
                         Qt.Orientation.Horizontal)
        # Tall enough for the Variants comparison (10 one-line rows) where the window allows.
        self.resizeDocks([self.log_dock], [max(170, min(300, int(0.33 * self.height())))], Qt.Orientation.Vertical)

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        if tip:
            act.setToolTip(tip)
            act.setStatusTip(tip)
        act.triggered.connect(slot)
        return act

    def _make_actions(self) -> None:
        self.open_action = self._action("&Open model…", self.choose_model, QKeySequence.StandardKey.Open,
                                        "Open a .pth, .pt, .pt2 or .onnx model")
        self.demo_action = self._action("Open &demo", self.open_demo, tip="The bundled digit classifier and its images")
        self.open_project_action = self._action("Open &project…", self.choose_project, "Ctrl+Shift+O")
        self.save_project_action = self._action("&Save project", self.save_project, QKeySequence.StandardKey.Save)
        self.save_project_as_action = self._action("Save project &as…", self.save_project_as, "Ctrl+Shift+S")
        self.export_action = self._action("&Export…", self.open_export_dialog, "Ctrl+E",
                                          "Write the quantized model (.onnx / .pth), its recipe and a report")
        self.restore_autosave_action = self._action("Restore &autosave", self.restore_autosave)
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.undo_action = self.layer_model.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo_action = self.layer_model.undo_stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        # The toolbar keeps short labels; what would be undone is its tooltip and status tip
        # (the stack's own actions put the whole command in their text, e.g. "Undo features.0
        # and its layers → FP32", which stretched the toolbar).
        self.undo_tool_action = UndoToolAction(self.layer_model.undo_stack, False, "Ctrl+Z", self)
        self.redo_tool_action = UndoToolAction(self.layer_model.undo_stack, True, "Ctrl+Shift+Z", self)
        self.all_actions = {}
        for p in Precision:
            act = QAction(style.swatch_icon(style.PRECISION_COLOUR[p]), f"All layers {style.PRECISION_LABEL[p]}", self)
            act.setData(p.value)
            act.setToolTip(style.PRECISION_HELP[p])
            act.triggered.connect(self._on_all_action)
            self.all_actions[p] = act
        self.quantize_action = self._action("&Quantize", self.quantize, "Ctrl+R", style.QUANTIZE_HELP)
        self.auto_action = self._action("&Auto", self.auto_quantize, "Ctrl+Shift+R", glossary.AUTO_HELP)
        self.cancel_action = self._action("&Cancel", self.cancel_job, "Esc", "Stop the running job")
        self.reset_layout_action = self._action("Reset &layout", self.reset_layout)
        self.getting_started_action = self._action("&Getting started", self.show_getting_started, "F1",
                                                   "A five-minute walk through QuantStudio with the bundled demo")
        self.about_action = self._action("&About QuantStudio", self.show_about)

    def _make_menus_and_toolbar(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.demo_action)
        self.recent_menu = QMenu("Open &recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.open_project_action)
        file_menu.addAction(self.save_project_action)
        file_menu.addAction(self.save_project_as_action)
        file_menu.addAction(self.restore_autosave_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = bar.addMenu("&Edit")
        edit_menu.addAction(self.undo_action)
        edit_menu.addAction(self.redo_action)
        edit_menu.addSeparator()
        for act in self.all_actions.values():
            edit_menu.addAction(act)
        run_menu = bar.addMenu("&Run")
        run_menu.addAction(self.quantize_action)
        run_menu.addAction(self.auto_action)
        run_menu.addAction(self.cancel_action)
        view_menu = bar.addMenu("&View")
        for dock in [self.data_dock, self.log_dock, self.variants_dock, *self.plot_docks]:
            view_menu.addAction(dock.toggleViewAction())
        view_menu.addSeparator()
        view_menu.addAction(self.reset_layout_action)
        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.getting_started_action)
        help_menu.addSeparator()
        help_menu.addAction(self.about_action)

        tb = QToolBar("Main")
        tb.setObjectName("main_toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for act in (self.open_action, self.undo_tool_action, self.redo_tool_action):
            tb.addAction(act)
        tb.addSeparator()
        self.quantize_button = QuantizeButton(self.quantize_action)
        tb.addWidget(self.quantize_button)
        self.auto_button = AutoButton(self.auto_action)
        tb.addWidget(self.auto_button)
        tb.addAction(self.cancel_action)
        tb.addSeparator()
        tb.addAction(self.export_action)
        self.addToolBar(tb)
        self.toolbar = tb

    # ================================================================== first-screen guidance
    @Slot()
    def _update_demo_hint(self) -> None:
        """The one-line hint over the demo, until the user closes it once (remembered)."""
        is_demo = self.loaded is not None and Path(self.loaded.path).resolve().parent == demo_dir().resolve()
        if is_demo and not SETTINGS["demo_hint_dismissed"]:
            self.hint_bar.show_text(style.HINT_DEMO)
        else:
            self.hint_bar.hide()

    @Slot()
    def _on_hint_dismissed(self) -> None:
        SETTINGS["demo_hint_dismissed"] = True

    @Slot(object)
    def _on_quantize_stage(self, payload: Any) -> None:
        if isinstance(payload, dict) and payload.get("type") == "stage":
            self.quantize_button.show_stage(str(payload.get("name", "")))

    @Slot(float, str)
    def _on_quantize_progress(self, fraction: float, _message: str) -> None:
        self.quantize_button.show_fraction(fraction)

    def _make_status_bar(self) -> None:
        sb = self.statusBar()
        self.model_label = QLabel("No model")
        self.stage_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(False)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_job)
        sb.addWidget(self.model_label, 1)
        sb.addPermanentWidget(self.stage_label)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)

    def _connect(self) -> None:
        self.welcome.open_model.connect(self.choose_model)
        self.welcome.open_demo.connect(self.open_demo)
        self.welcome.open_project.connect(self.choose_project)
        self.welcome.open_path.connect(self.open_path)
        self.runner.progress.connect(self._on_progress)
        self.runner.busy_changed.connect(self._on_busy_changed)
        self.runner.partial.connect(self._on_partial)
        self.runner.partial.connect(self._on_quantize_stage)
        self.runner.progress.connect(self._on_quantize_progress)
        self.runner.busy_changed.connect(self.quantize_button.set_busy)
        self.runner.busy_changed.connect(self._on_busy_for_auto)
        self.model_loaded.connect(self._update_demo_hint)
        self.runner.log.connect(self._on_job_log)
        self.data_panel.scan_requested.connect(self.scan_data)
        self.layer_model.plan_changed.connect(self._on_plan_changed)
        self.layer_panel.layer_selected.connect(self.layer_error_panel.highlight_layer)
        self.layer_error_panel.layer_clicked.connect(self.layer_panel.select_layer)
        self.variants_panel.apply_plan_requested.connect(self.apply_variant_plan)
        self.variants_panel.rerun_requested.connect(self.rerun_variant)
        self.data_panel.engine_note.connect(self._on_job_log)
        self.variants_panel.variants_changed.connect(self._on_variants_changed)
        self.data_panel.qat_estimate_requested.connect(self.estimate_qat)
        self.job_idle.connect(self._on_idle_for_qat_estimate)

    # ================================================================== jobs
    def start_job(self, job: Job) -> bool:
        if not self.runner.start(job):
            self.statusBar().showMessage(f"Busy: {self.runner.current_name}. Wait or cancel it first.", 5000)
            return False
        log.info("%s…", job.name)
        return True

    @Slot(float, str)
    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        self.stage_label.setText(message)

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.progress.setValue(0)
        if not busy:
            self.stage_label.setText("")
            self._end_training_stage()
        self._update_actions()
        if not busy:
            self.job_idle.emit()

    @Slot(str)
    def _on_job_log(self, message: str) -> None:
        log.info("%s", message)

    @Slot()
    def cancel_job(self) -> None:
        if self._stop_training():
            return
        if self.runner.busy:
            self.stage_label.setText(glossary.AUTO_CANCELLING if self._auto_running else "Cancelling…")
            self.runner.cancel()

    def _on_cancelled(self) -> None:
        log.info("Cancelled.")
        self.statusBar().showMessage("Cancelled.", 5000)

    def _update_actions(self) -> None:
        busy = self.runner.busy
        has_model = self.loaded is not None
        for act in (self.open_action, self.demo_action, self.open_project_action, self.restore_autosave_action):
            act.setEnabled(not busy)
        self.welcome.setEnabled(not busy)
        self.quantize_action.setEnabled(has_model and not busy)
        self.auto_action.setEnabled(has_model and not busy)
        self.cancel_action.setEnabled(busy)
        self.export_action.setEnabled(not busy and bool(self.variants_panel.model.runs))
        self.save_project_action.setEnabled(has_model)
        self.save_project_as_action.setEnabled(has_model)
        self.data_panel.browse_button.setEnabled(not busy and self.data_panel.kind != "random")
        self.data_panel.kind_combo.setEnabled(not busy)
        self.variants_panel.set_rerun_allowed(not busy and has_model)
        for act in self.all_actions.values():
            act.setEnabled(has_model)
        self.restore_autosave_action.setEnabled(not busy and (data_dir() / f"autosave{PROJECT_SUFFIX}").exists())

    # ================================================================== drag and drop
    def dragEnterEvent(self, event) -> None:
        """Overrides QWidget.dragEnterEvent: accept one local file."""
        urls = event.mimeData().urls()
        if len(urls) == 1 and urls[0].isLocalFile() and not self.runner.busy:
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        """Overrides QWidget.dropEvent: open the dropped model or project."""
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()
            self.open_path(urls[0].toLocalFile())

    # ================================================================== plan
    @Slot()
    def _on_all_action(self) -> None:
        self.layer_model.set_all(self.sender().data())

    @Slot()
    def _on_plan_changed(self) -> None:
        self._dirty = True

    @Slot(int)
    def apply_variant_plan(self, row: int) -> None:
        runs = self.variants_panel.model.runs
        if not (0 <= row < len(runs)) or self.layer_model.tree is None:
            return
        try:
            plan = PrecisionPlan.from_dict(runs[row].plan)
        except InputError as exc:
            show_error(self, "Could not apply the plan", exc)
            return
        self.layer_model.replace_plan(plan, f"Apply plan of {runs[row].name}")
        log.info("Applied the plan of %s (Ctrl+Z undoes it).", runs[row].name)

    @Slot(int)
    def rerun_variant(self, row: int) -> bool:
        """Apply a variant's plan (undoable) and quantization settings, then quantize.

        A variant read from a project holds results but no quantized model, so it cannot be
        exported; running it again makes one. The data, preprocessing and benchmark
        settings are the Data panel's (a variant does not store them).
        """
        runs = self.variants_panel.model.runs
        if not (0 <= row < len(runs)) or self.layer_model.tree is None:
            return False
        if self.runner.busy:
            self.statusBar().showMessage(f"Busy: {self.runner.current_name}. Wait or cancel it first.", 5000)
            return False
        run = runs[row]
        try:
            plan = PrecisionPlan.from_dict(run.plan)
        except InputError as exc:
            show_error(self, "Could not re-run the variant", exc)
            return False
        self.layer_model.replace_plan(plan, f"Re-run plan of {run.name}")
        keys = ("engine", "mode", "backend", "calibration", "per_channel", "equalize", "calib_samples",
                "qat", "qat_epochs", "qat_lr", "qat_batch_size", "qat_signal")
        self.data_panel.restore_state({k: run.config[k] for k in keys if k in run.config})
        self.data_panel.set_model(self.loaded)
        log.info("Re-running %s with its plan (Ctrl+Z restores the previous plan) and quantization settings.", run.name)
        self.quantize()
        return True

    # ================================================================== data
    @Slot()
    def scan_data(self) -> None:
        spec = self.data_panel.data_spec()
        if spec is None:
            return
        if self.loaded is None:
            self.data_panel.summary_label.setText("Open a model first: the data is read at the model's input size.")
            return
        if self.runner.busy:
            QTimer.singleShot(300, self.scan_data)  # after the current job
            return
        try:
            prep = self.data_panel.preprocessing_dict()
        except ValueError:
            prep = None
        self.start_job(Job(
            "Reading data", tasks.scan_data_job,
            (spec, self.loaded.input_shape, prep, self.data_panel.calib_spin.value(),
             self.data_panel.eval_data_spec(), self.loaded.num_classes),
            on_done=self._on_data_scanned, on_failed=self._on_data_failed, on_cancelled=self._on_cancelled,
        ))

    def _on_data_scanned(self, summary: tasks.DataSummary) -> None:
        self.data_panel.set_summary(summary)
        log.info("Data: %s", summary.description)
        for w in summary.warnings:
            log.info("Data warning: %s", w)

    def _on_data_failed(self, exc: BaseException) -> None:
        msg = exc.one_line() if isinstance(exc, InputError) else str(exc)
        self.data_panel.set_error(msg)
        show_error(self, "Could not read the data", exc, doing="reading the data")

    # ================================================================== quantize
    @Slot()
    def quantize(self) -> None:
        if self.loaded is None:
            return
        spec = self.data_panel.data_spec()
        if spec is None:
            show_error(self, "Choose data first", message="No data is chosen for calibration and evaluation.",
                       hint="Choose a folder of images in the Data panel, or 'Random data — speed only'.")
            return
        try:
            prep = self.data_panel.preprocessing_dict()
        except ValueError as exc:
            show_error(self, "Preprocessing", message="The custom preprocessing values are not numbers.",
                       hint="Write sizes as 224 or 224,224 and mean/std as comma-separated numbers.", details=str(exc))
            return
        config = self.data_panel.quant_config()
        counts = self.plan.counts(self.layer_model.tree)
        name = variant_name(len(self.variants_panel.model.runs) + 1, config, counts)
        request = tasks.QuantizeRequest(
            name=name, model=self.loaded, tree=self.layer_model.tree, plan=self.plan.to_dict(), config=config,
            data_spec=spec, preprocessing=prep,
            calib_samples=self.data_panel.calib_spin.value(), eval_samples=self.data_panel.eval_spin.value(),
            eval_data_spec=self.data_panel.eval_data_spec(),
            benchmark_runs=self.data_panel.runs_spin.value(), benchmark_batches=self.data_panel.benchmark_batches(),
            sensitivity=self.data_panel.sensitivity_check.isChecked(),
            measure_memory=self.data_panel.memory_check.isChecked(),
        )
        self._attach_budget(request)
        self.run_job(tasks.quantize_job, request, name)

    def run_job(self, fn, request, name: str) -> bool:
        """Start a quantize-like job (the real one or a test's) with the live panels attached."""
        for panel in (self.latency_panel, self.accuracy_panel, self.size_panel, self.training_panel):
            panel.clear()
        self.accuracy_panel.set_note("")
        if getattr(request, "data_spec", None) == "random":
            self.accuracy_panel.set_note(style.RANDOM_DATA_LABEL)
        self.plot_docks[0].raise_()
        started = self.start_job(Job(
            f"Quantizing {name}", fn, (request,),
            on_done=self._on_run_done, on_failed=self._on_run_failed, on_cancelled=self._on_run_cancelled,
        ))
        if started:
            self._prepare_auto_run(request)
        return started

    @Slot(object)
    def _on_partial(self, payload: Any) -> None:
        from quantstudio.core.results import (CandidateTried, LayerErrors, LayerSensitivity, LayersFused, StageStarted,
                                              as_event)

        event = as_event(payload)  # typed once here; the engines' own stage dicts included
        if event is None:
            return
        for panel in (self.latency_panel, self.accuracy_panel, self.size_panel, self.training_panel):
            panel.feed(event)
        self._on_training_event(event)
        if isinstance(event, StageStarted):
            log.info("Stage: %s", event.name.replace("_", " "))
        elif isinstance(event, LayersFused) and event.groups:
            self.layer_panel.set_layer_results(fused=[list(g) for g in event.groups])
        elif isinstance(event, LayerErrors) and event.values:
            values = dict(event.values)
            self.layer_panel.set_layer_results(sqnr=values)
            self.layer_error_panel.set_layers(values, {k: self.layer_model.precision_of(k) or "" for k in values})
        elif isinstance(event, LayerSensitivity) and event.values:
            self.layer_panel.set_layer_results(sensitivity=dict(event.values))
        elif isinstance(event, CandidateTried):
            self.candidates_panel.feed(event)

    def _on_run_done(self, run: tasks.RunOutcome) -> None:
        self._apply_auto_result(run)
        self.variants_panel.model.add(run)
        self._show_run(run)
        self.data_panel.set_skipped(run.skipped)
        q = run.metrics.get(run.quantized, {})
        ref = run.metrics.get(run.reference, {})
        parts = [f"Finished {run.name} in {run.seconds:.1f} s"]
        ratio = run.speedup
        if ratio is not None:
            parts.append(f"{ratio:.2f}× the speed of the FP32 model" if ratio < 1.1 else f"{ratio:.2f}× faster")
        if q.get("top1") is not None and ref.get("top1") is not None:
            parts.append(f"top-1 {100 * ref['top1']:.2f}% → {100 * q['top1']:.2f}%")
        elif q.get("agreement") is not None:
            parts.append(f"agreement {100 * q['agreement']:.2f}%")
        log.info("%s.", ", ".join(parts))
        if run.training:
            from quantstudio.gui.variants import training_text

            log.info("%s.", training_text(run))
        for w in run.warnings:
            log.info("⚠ %s", w)
        self.statusBar().showMessage(", ".join(parts), 10000)
        self._dirty = True
        self._update_actions()
        self.run_finished.emit(run)

    def _show_run(self, run: tasks.RunOutcome) -> None:
        runs = self.variants_panel.model.runs
        self._shown_run = run
        self.warning_banner.set_warnings(f"{run.name}: check before trusting these results", run.warnings)
        for panel in self.plot_panels + [self.changed_panel]:
            panel.show_run(run, runs)
        self.tradeoff_panel.show_variants(runs)
        self.layer_panel.set_layer_results(sqnr=run.layer_sqnr, sensitivity=run.sensitivity, fused=run.fused)
        self.layer_panel.set_layer_results(**self._fp32_results(run))

    def _show_current_variant(self) -> None:
        """Put back what the panels showed before a run that did not finish.

        A run streams partial results into the Speed, Accuracy and Size panels (and
        per-layer results into the tree); when it is cancelled or fails, they would keep
        half a run that no variant holds. Show the variant shown before, or nothing.
        """
        runs = self.variants_panel.model.runs
        run = self._shown_run if any(r is self._shown_run for r in runs) else (runs[-1] if runs else None)
        for panel in (self.latency_panel, self.accuracy_panel, self.size_panel):
            panel.clear()
            panel.set_note("")
        if run is not None:
            self._show_run(run)
            return
        self._shown_run = None
        self.warning_banner.set_warnings("", [])
        for panel in self.plot_panels + [self.changed_panel]:
            panel.clear()
        for panel in (self.latency_panel, self.accuracy_panel, self.size_panel):
            panel.redraw()
        self.tradeoff_panel.show_variants(runs)
        self.layer_panel.set_layer_results(sqnr={}, sensitivity={}, fused=[])

    def _on_run_failed(self, exc: BaseException) -> None:
        self._show_current_variant()
        if isinstance(exc, ImportError) and "pipeline" in str(exc):
            show_error(self, "Quantization not available", message="This build has no quantization pipeline yet.",
                       hint="Update QuantStudio.", details=str(exc))
            return
        show_error(self, "Quantization failed", exc, doing="quantizing")

    def _on_run_cancelled(self) -> None:
        self._on_cancelled()
        self._show_current_variant()
        log.info("The run was cancelled; nothing was kept.")

    @Slot()
    def _on_variants_changed(self) -> None:
        self.tradeoff_panel.show_variants(self.variants_panel.model.runs)
        self._dirty = True
        self._update_actions()

    # ================================================================== export
    @Slot()
    def open_export_dialog(self) -> None:
        from quantstudio.gui.export_dialog import ExportDialog

        if not self.variants_panel.model.runs:
            return
        dlg = ExportDialog(self)
        dlg.exec()

    # ================================================================== layout, about, close
    def restore_layout(self) -> None:
        geometry, state = SETTINGS["window_geometry"], SETTINGS["window_state"]
        self._default_state = self.saveState()
        if not geometry.isEmpty():
            self.restoreGeometry(geometry)
        self._layout_restored = not state.isEmpty() and self.restore_dock_state(state)
        header = SETTINGS["tree_header_state"]
        if not header.isEmpty():
            self.layer_panel.view.header().restoreState(header)

    @Slot()
    def reset_layout(self) -> None:
        self.restore_dock_state(self._default_state)
        for dock in [self.data_dock, self.log_dock, self.variants_dock, *self.plot_docks]:
            dock.setVisible(True)
        self._apply_default_dock_sizes()

    def restore_dock_state(self, state) -> bool:
        """``restoreState`` that also hides the tab bars of the layout it replaces.

        Restoring gives every tab group a new tab bar; Qt retires the old ones with
        deleteLater. Until an event loop deletes them they are still drawn where the old
        layout had them: "Speed | Size" and "Accuracy | Per-layer error" strips over the
        layer tree in anything that drives the window with processEvents alone (the
        screenshot generator, scripted audits). They belong to the old layout: hide them.
        """
        old = self.findChildren(QTabBar, options=Qt.FindChildOption.FindDirectChildrenOnly)
        if not self.restoreState(state):
            return False
        for bar in old:
            bar.hide()
        return True

    def showEvent(self, event) -> None:
        """Overrides QWidget.showEvent: default dock sizes for the size the window shows at."""
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if not self._layout_restored:
                self._apply_default_dock_sizes()

    @Slot()
    def show_getting_started(self) -> None:
        dlg = GettingStartedDialog(self)
        dlg.exec()
        dlg.deleteLater()  # parented to the window: without this every F1 would keep one

    @Slot()
    def show_about(self) -> None:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.about(
            self, "About QuantStudio",
            f"<h3>QuantStudio {__version__}</h3><p>Point-and-click quantization of trained neural networks: "
            "INT8, FP16 and mixed precision, offline.</p><p>Licensed under Apache-2.0.</p>",
        )

    def save_settings(self) -> None:
        SETTINGS["window_geometry"] = self.saveGeometry()
        SETTINGS["window_state"] = self.saveState()
        SETTINGS["tree_header_state"] = self.layer_panel.view.header().saveState()
        self.data_panel.save_settings()
        SETTINGS.sync()

    def shutdown(self) -> None:
        """Cancel and join every thread this window started (close and tests call it)."""
        if self._closing:
            return
        self._closing = True
        self.autosave_timer.stop()
        self.runner.shutdown()
        self.data_panel.thumb_model.shutdown()
        self.changed_panel.shutdown()
        logging.getLogger("quantstudio").removeHandler(self.log_bridge)

    def closeEvent(self, event) -> None:
        """Overrides QWidget.closeEvent: offer to save, remember the layout, autosave, stop the worker."""
        if self.runner.busy and not ask_yes_no(self, "Quit QuantStudio", f"{self.runner.current_name} is still running.",
                                               "Stop it and quit?"):
            event.ignore()
            return
        if not self._closing and not self.maybe_save_changes("quitting"):
            event.ignore()
            return
        try:
            self.save_settings()
            self.autosave()
        finally:
            self.shutdown()
        event.accept()


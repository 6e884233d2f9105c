"""Opening a model in the window: the questions a file needs (architecture, input shape,
trust), remembered answers, and applying a loaded model (and a project's state) to the window.

:class:`ModelImportMixin` is part of :class:`~quantstudio.gui.main_window.MainWindow`; it
only starts jobs and shows dialogs (loading runs on the worker, see ``tasks.load_model_job``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer, Slot
from PySide6.QtWidgets import QDialog, QFileDialog

from quantstudio.core.errors import InputError, TrustRequired
from quantstudio.core.plan import PrecisionPlan
from quantstudio.gui import style, tasks
from quantstudio.gui.dialogs import ImportDialog, show_error
from quantstudio.gui.paths import demo_dir
from quantstudio.gui.project import PROJECT_SUFFIX
from quantstudio.gui.settings import SETTINGS
from quantstudio.gui.worker import Job

log = logging.getLogger("quantstudio.gui")

MODEL_FILTER = "Models (*.pth *.pt *.pt2 *.onnx *.pkl *.bin);;All files (*)"
# Kinds of file that do not record their input size: the core guesses it from the first layer.
SHAPE_NOT_IN_FILE = {"torchscript": "a TorchScript archive", "pickled_module": "a whole saved PyTorch model"}


def sidecar_metadata(model_path: str | Path) -> dict[str, Any]:
    """What a JSON file beside the model says about it: ``arch`` and ``input_shape``.

    Read from ``<stem>.json`` or a ``demo.json`` whose ``weights`` names the file (the
    bundled demo writes one). Only well-formed values are returned; {} when none.
    """
    path = Path(model_path)
    for candidate in (path.with_suffix(".json"), path.parent / "demo.json"):
        try:
            meta = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        if candidate.name == "demo.json" and meta.get("weights") != path.name:
            continue
        out: dict[str, Any] = {"source": candidate.name}
        shape = meta.get("input_shape")
        if isinstance(shape, list) and len(shape) >= 2 and all(isinstance(d, int) and d > 0 for d in shape):
            out["input_shape"] = tuple(shape)
        if isinstance(meta.get("arch"), str):
            out["arch"] = meta["arch"]
        if len(out) > 1:
            return out
    return {}


MAX_REMEMBERED_INPUTS = 50


def _file_key(path: str | Path) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def remembered_input(path: str | Path) -> tuple[tuple[int, ...], str | None] | None:
    """The input shape (and architecture) the user confirmed when last opening ``path``."""
    key = _file_key(path)
    for entry in SETTINGS["confirmed_inputs"]:
        try:
            p, shape, arch = entry
            if p == key and isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape):
                return tuple(shape), arch if isinstance(arch, str) else None
        except (TypeError, ValueError):
            continue
    return None


def remember_input(path: str | Path, shape: tuple[int, ...], arch: str | None) -> None:
    """Remember the shape the user confirmed for ``path``, so reopening it does not ask again."""
    key = _file_key(path)
    entries = [e for e in SETTINGS["confirmed_inputs"] if not (isinstance(e, list) and e and e[0] == key)]
    SETTINGS["confirmed_inputs"] = [[key, [int(d) for d in shape], arch]] + entries[: MAX_REMEMBERED_INPUTS - 1]


def shape_guessed(model: Any, requested: tuple[int, ...] | None) -> bool:
    """True when ``model.input_shape`` was neither given nor read from the file, but guessed."""
    if requested:
        return False
    flag = getattr(model, "input_shape_guessed", None)  # when the core says so itself
    if flag is not None:
        return bool(flag)
    if model.input_shape is None:
        return False
    if model.kind in SHAPE_NOT_IN_FILE:
        return True
    return any("input shape" in n and "assumed" in n for n in model.notes)


class ModelImportMixin:
    """MainWindow's model opening (a mixin: every attribute it uses is the window's)."""

    @Slot()
    def choose_model(self) -> None:
        start = SETTINGS["last_model_dir"] or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open model", start, MODEL_FILTER)
        if path:
            self.open_path(path)

    @Slot(str)
    def open_path(self, path: str) -> None:
        """A model or a project, decided by the extension of a project."""
        if Path(path).suffix == PROJECT_SUFFIX:
            self.open_project(path)
        else:
            self.open_model(path)

    def open_model(self, path: str | Path, *, arch: str | None = None, input_shape: tuple[int, ...] | None = None,
                   trust: bool = False, source_dir: str | None = None, ask: bool = True) -> bool:
        """Load a model on the worker; questions (architecture, shape, trust) come after.

        ``ask=False`` skips the confirmation of a guessed architecture (demo, projects, tests).
        Unsaved runs or plan edits of the model now open are offered for saving first.
        """
        if not self.runner.busy and not self.maybe_save_changes(f"opening {Path(path).name}"):
            self._after_load = None
            return False
        if input_shape is None:
            remembered = remembered_input(path)
            if remembered is not None:
                # Confirmed the last time this file was opened: not asked again.
                input_shape = remembered[0]
                arch = arch or remembered[1]
                ask = ask and arch is None
        data_hint = self.data_panel.data_spec() if self.data_panel.kind == "folder" else None
        request = tasks.LoadRequest(str(path), arch, tuple(input_shape) if input_shape else None, trust, source_dir,
                                    data_hint)
        self._ask_import = ask
        return self.start_job(Job(
            f"Opening {Path(path).name}", tasks.load_model_job, (request,),
            on_done=self._on_model_loaded, on_failed=self._on_model_failed, on_cancelled=self._on_cancelled,
        ))

    @Slot()
    def open_demo(self) -> None:
        folder = demo_dir()
        meta_path = folder / "demo.json"
        try:
            meta = json.loads(meta_path.read_text())
            weights = folder / meta.get("weights", "model.pth")
            if not weights.exists():
                raise FileNotFoundError(weights)
        except (OSError, ValueError) as exc:
            show_error(self, "Demo not available", message="The bundled demo model was not found.",
                       hint="Reinstall QuantStudio or open your own model.", details=f"{meta_path}\n{exc}")
            return
        self._after_load = {
            "data": {"data_kind": "folder", "data_path": str(folder / meta.get("data", "digits")),
                     "preprocess_preset": "default"},
        }
        self.open_model(weights, arch=meta.get("arch"), input_shape=tuple(meta.get("input_shape") or ()) or None, ask=False)

    def _on_model_loaded(self, outcome: tasks.LoadOutcome) -> None:
        req = outcome.request
        self._image_size_hint = outcome.image_size
        if outcome.problem is not None:
            log.info("Needs an answer: %s", outcome.problem.one_line())
            self._ask_and_reload(req, {outcome.needs} | ({"arch"} if outcome.architectures else set()),
                                 outcome, problem=outcome.problem.message)
            return
        model = outcome.model
        if self._ask_import and model.kind == "state_dict" and req.arch is None:
            self._ask_and_reload(req, {"arch"}, outcome)
            return
        if model.input_shape is None and self._ask_import:
            self._ask_and_reload(req, {"shape"}, outcome,
                                 problem="the input shape of this model is unknown; give the shape of one input")
            return
        if self._ask_import and shape_guessed(model, req.input_shape):
            # The model opened with a guessed size (224×224 for any image model): a model
            # trained at 32×32 would be calibrated and timed at the wrong size. Ask.
            self._ask_and_reload(req, {"shape"}, outcome)
            return
        self._set_model(outcome)

    def _shape_answer(self, req: tasks.LoadRequest, model: Any) -> tuple[tuple[int, ...] | None, str]:
        """The input shape to pre-fill in the import dialog, and a line saying where it comes from."""
        meta = sidecar_metadata(req.path)
        if req.input_shape:
            return tuple(req.input_shape), ""
        if meta.get("input_shape"):
            return meta["input_shape"], f"Read from {meta['source']} next to the model."
        if model is None or model.input_shape is None:
            return None, ""
        image_size = getattr(self, "_image_size_hint", None)
        if image_size is not None and len(model.input_shape) == 4 and shape_guessed(model, req.input_shape):
            h, w = image_size
            return (1, int(model.input_shape[1]), h, w), (
                f"Proposed from your images: every image in the chosen data folder is {h}×{w}. The file does not "
                "record the size the model was trained at; change it if yours differs.")
        shape = "×".join(str(d) for d in model.input_shape)
        if model.kind in SHAPE_NOT_IN_FILE:
            return tuple(model.input_shape), (
                f"Guessed: {SHAPE_NOT_IN_FILE[model.kind]} does not record its input size, so {shape} was "
                "assumed from the first layer. Check it: use the size the model was trained at.")
        if model.kind == "state_dict" and model.arch and tuple(model.input_shape) == getattr(model, "expected_shape", None):
            return tuple(model.input_shape), (
                f"Guessed: the usual input size of {model.arch}. A state_dict does not record the size it was "
                "trained at; change it if yours differs.")
        if shape_guessed(model, req.input_shape):
            return tuple(model.input_shape), f"Guessed: {shape} was assumed. Check it."
        return tuple(model.input_shape), ""

    def _ask_and_reload(self, req: tasks.LoadRequest, needs: set[str], outcome: tasks.LoadOutcome, problem: str = "") -> None:
        model = outcome.model
        shape, shape_note = self._shape_answer(req, model)
        arch = model.arch if model is not None else req.arch
        meta_arch = sidecar_metadata(req.path).get("arch")
        if "arch" in needs and meta_arch and (not outcome.architectures or meta_arch in outcome.architectures):
            arch = meta_arch
        dlg = ImportDialog(
            self, req.path, needs,
            architectures=outcome.architectures,
            arch=arch,
            confidence=(model.arch_confidence if model is not None and arch == model.arch else None),
            input_shape=shape,
            problem=problem,
            shape_note=shape_note,
        )
        if dlg.exec() != QDialog.DialogCode.Accepted:
            self._after_load = None
            log.info("Opening %s cancelled.", Path(req.path).name)
            return
        shape = dlg.input_shape
        if shape is not None:
            remember_input(req.path, tuple(shape), dlg.arch if "arch" in needs else req.arch)
        if "arch" in needs:
            arch = dlg.arch
        else:  # not asked: what was requested (the loaded model's own name is no --arch)
            arch = req.arch if model is None else (model.arch if model.kind == "state_dict" else None)
        same_arch = model is not None and (arch == model.arch or ("arch" not in needs and model.kind != "state_dict"))
        if same_arch and (shape is None or tuple(shape) == tuple(model.input_shape or ())):
            if shape is not None and shape_note:
                log.info("Input shape %s confirmed.", "×".join(str(d) for d in shape))
            self._set_model(outcome)  # the user confirmed what was loaded
            return
        self.open_model(req.path, arch=arch, input_shape=shape, trust=req.trust, source_dir=req.source_dir, ask=False)

    def _on_model_failed(self, exc: BaseException) -> None:
        if isinstance(exc, TrustRequired):
            from quantstudio.core.loading import TRUST_EXPLANATION

            path = str(exc.path) if exc.path else ""
            dlg = ImportDialog(self, path, {"trust"}, trust_text=TRUST_EXPLANATION)
            if dlg.exec() == QDialog.DialogCode.Accepted and dlg.trusted:
                self.open_model(path, trust=True, source_dir=dlg.source_dir, ask=self._ask_import)
            else:
                self._after_load = None
            return
        self._after_load = None
        show_error(self, "Could not open the model", exc, doing="opening the model")

    def _set_model(self, outcome: tasks.LoadOutcome) -> None:
        model, tree = outcome.model, outcome.tree
        self.loaded = model
        self.model_request = tasks.LoadRequest(
            str(model.path), model.arch if model.kind == "state_dict" else None,
            tuple(model.input_shape) if model.input_shape else None, outcome.request.trust, outcome.request.source_dir,
        )
        pending = self._after_load
        self._after_load = None
        self.plan = PrecisionPlan()
        if pending and pending.get("plan"):
            try:
                self.plan = PrecisionPlan.from_dict(pending["plan"])
            except InputError as exc:  # load_project checked its shape; this is a rule it cannot express
                log.warning("The project's plan could not be read: %s", exc.one_line())
        label = model.arch or Path(model.path).stem
        self.layer_model.set_tree(tree, self.plan, root_label=label)
        self.variants_panel.set_tree(tree)
        self.stack.setCurrentWidget(self.layer_panel)
        shape = "×".join(str(d) for d in model.input_shape) if model.input_shape else "?"
        self.model_label.setText(
            f"<b>{Path(model.path).name}</b> — {model.kind_label}, {label}, input {shape}, "
            f"{tree.count_layers()} layers, {style.human_count(tree.params)} parameters"
        )
        self.setWindowTitle(f"{Path(model.path).name} — QuantStudio")
        for note in model.notes:
            log.info("Note: %s", note)
        log.info("Opened %s (%s) in %.1f s.", model.path, model.kind_label, outcome.seconds)
        SETTINGS["last_model_dir"] = str(Path(model.path).parent)
        if Path(model.path).resolve().parent != demo_dir().resolve():
            SETTINGS.add_recent("recent_files", str(Path(model.path).resolve()))
        self._refresh_recent()
        self.variants_panel.model.set_runs([])
        self._shown_run = None
        self.warning_banner.set_warnings("", [])
        for panel in self.plot_panels + [self.changed_panel]:
            panel.clear()
        if pending and pending.get("variants"):
            runs = []
            for d in pending["variants"]:
                try:
                    runs.append(tasks.RunOutcome.from_dict(d))
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    # The schema checked the fields the app reads; one variant that still does
                    # not convert is left out rather than losing the project.
                    log.warning("A saved variant could not be read: %s", exc)
            self.variants_panel.model.set_runs(runs)
            if runs:
                self._show_run(runs[-1])
        self._dirty = bool(pending and pending.get("project_path") is None)
        if pending and pending.get("project_path"):
            self.project_path = Path(pending["project_path"])
        else:
            self.project_path = None
        self._update_actions()
        self.model_loaded.emit()
        if pending and pending.get("data"):
            self.data_panel.restore_state(pending["data"])
        self.data_panel.set_model(model)  # after the project's settings: it may turn the engine
        if self.data_panel.data_spec():
            QTimer.singleShot(0, self.scan_data)

    def _refresh_recent(self) -> None:
        """File ▸ Open recent: projects first (marked), then models; the welcome page lists both."""
        projects = SETTINGS["recent_projects"]
        models = []
        for p in SETTINGS["recent_files"]:
            # Before projects had their own list they were kept with the models: move them.
            if p.endswith(PROJECT_SUFFIX):
                if p not in projects:
                    projects.append(p)
            else:
                models.append(p)
        if len(models) != len(SETTINGS["recent_files"]):
            SETTINGS["recent_files"] = models
            SETTINGS["recent_projects"] = projects
        self.welcome.set_recent(projects + models)
        self.recent_menu.clear()
        for title, paths in (("Projects", projects), ("Models", models)):
            if not paths:
                continue
            self.recent_menu.addSection(title)
            for p in paths:
                text = f"{Path(p).name}   —   {Path(p).parent}"
                act = self.recent_menu.addAction(f"[project]  {text}" if title == "Projects" else text)
                act.setData(p)
                act.setToolTip(p)
                act.triggered.connect(self._on_recent_action)
        self.recent_menu.setEnabled(bool(projects or models))

    @Slot()
    def _on_recent_action(self) -> None:
        self.open_path(self.sender().data())

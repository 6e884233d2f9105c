"""The window's project session: save / open / autosave a ``.qsproj``, and "Save changes?".

:class:`ProjectSessionMixin` is part of :class:`~quantstudio.gui.main_window.MainWindow`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QFileDialog

from quantstudio.core.errors import InputError
from quantstudio.gui.dialogs import show_error
from quantstudio.gui.project import PROJECT_SUFFIX, load_project, make_project, save_project
from quantstudio.gui.settings import SETTINGS, data_dir

log = logging.getLogger("quantstudio.gui")


class ProjectSessionMixin:
    """MainWindow's projects (a mixin: every attribute it uses is the window's)."""

    def project_dict(self) -> dict[str, Any]:
        req = self.model_request
        model = {}
        if req is not None:
            model = {
                "path": req.path, "arch": req.arch,
                "input_shape": list(req.input_shape) if req.input_shape else None,
                "kind": self.loaded.kind if self.loaded is not None else None,
                "source_dir": req.source_dir,
            }
        return make_project(
            model, self.data_panel.state(), self.plan.to_dict(),
            [r.to_dict() for r in self.variants_panel.model.runs],
        )

    @Slot()
    def save_project(self) -> bool:
        if self.project_path is None:
            return self.save_project_as()
        return self._write_project(self.project_path)

    @Slot()
    def save_project_as(self) -> bool:
        if self.loaded is None:
            return False
        start = SETTINGS["last_project_dir"] or str(Path.home())
        default = str(Path(start) / (Path(self.loaded.path).stem + PROJECT_SUFFIX))
        path, _ = QFileDialog.getSaveFileName(self, "Save project", default, f"QuantStudio project (*{PROJECT_SUFFIX})")
        if not path:
            return False
        return self._write_project(Path(path))

    def _write_project(self, path: Path) -> bool:
        try:
            written = save_project(path, self.project_dict())
        except OSError as exc:
            show_error(self, "Could not save the project", message=f"{path.name} could not be written.",
                       hint="Choose another folder or free some disk space.", details=str(exc))
            return False
        self.project_path = written
        self._dirty = False
        SETTINGS["last_project_dir"] = str(written.parent)
        SETTINGS.add_recent("recent_projects", str(written.resolve()))
        self._refresh_recent()
        log.info("Saved project %s.", written)
        self.statusBar().showMessage(f"Saved {written.name}", 5000)
        return True

    @Slot()
    def choose_project(self) -> None:
        start = SETTINGS["last_project_dir"] or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open project", start, f"QuantStudio project (*{PROJECT_SUFFIX})")
        if path:
            self.open_project(path)

    def open_project(self, path: str | Path, *, is_autosave: bool = False) -> bool:
        if not self.runner.busy and not self.maybe_save_changes(f"opening {Path(path).name}"):
            return False
        try:
            project = load_project(path)
        except InputError as exc:
            show_error(self, "Could not open the project", exc)
            return False
        m = project["model"]
        if not m.get("path"):
            show_error(self, "Could not open the project",
                       InputError("the project names no model (field model.path is empty)", path=path,
                                  hint="Open the model itself, then save the project again."))
            return False
        self._after_load = {
            "plan": project.get("plan"), "data": project.get("data"), "variants": project.get("variants"),
            "project_path": None if is_autosave else str(path),
        }
        if not is_autosave:
            SETTINGS["last_project_dir"] = str(Path(path).parent)
            SETTINGS.add_recent("recent_projects", str(Path(path).resolve()))
            self._refresh_recent()
        log.info("Opening project %s…", path)
        return self.open_model(m["path"], arch=m.get("arch"), input_shape=tuple(m["input_shape"]) if m.get("input_shape") else None,
                               source_dir=m.get("source_dir"), ask=False)

    @Slot()
    def autosave(self) -> Path | None:
        if self.loaded is None or not self._dirty:
            return None
        path = data_dir() / f"autosave{PROJECT_SUFFIX}"
        project = self.project_dict()
        if project == self._autosaved:
            return path
        try:
            save_project(path, project)
        except OSError as exc:
            log.warning("Autosave failed: %s", exc)
            return None
        # The work stays unsaved (_dirty) until it is saved as a project: an autosave only
        # protects it against a crash, so closing still offers to save it.
        self._autosaved = project
        return path

    @Slot()
    def restore_autosave(self) -> None:
        path = data_dir() / f"autosave{PROJECT_SUFFIX}"
        if path.exists():
            self.open_project(path, is_autosave=True)

    def has_unsaved_work(self) -> bool:
        """Runs or precision edits made since the project was last saved (or opened)."""
        if self.loaded is None or not self._dirty:
            return False
        return bool(self.variants_panel.model.runs) or not self.layer_model.undo_stack.isClean()

    def maybe_save_changes(self, doing: str) -> bool:
        """Ask "Save changes?" when there is unsaved work; False when the user cancels.

        Save writes the project (asking where, the first time); Discard goes on without it
        (the autosave still holds it: File ▸ Restore autosave); Cancel stops ``doing``.
        """
        if not self.has_unsaved_work():
            return True
        from PySide6.QtWidgets import QMessageBox

        runs = len(self.variants_panel.model.runs)
        what = (f"{runs} quantization run{'s are' if runs != 1 else ' is'}" if runs else "Your precision changes are")
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Save changes?")
        box.setText(f"Save your work on {Path(self.loaded.path).name} as a project before {doing}?")
        box.setInformativeText(f"{what} not saved yet. If you discard them, File ▸ Restore autosave "
                               "still has your work until the next autosave.")
        buttons = QMessageBox.StandardButton
        box.setStandardButtons(buttons.Save | buttons.Discard | buttons.Cancel)
        box.setDefaultButton(buttons.Save)
        box.setEscapeButton(buttons.Cancel)
        answer = box.exec()
        box.deleteLater()
        if answer == buttons.Save:
            return self.save_project()
        if answer == buttons.Discard:
            self.autosave()
            self._dirty = False  # asked once: the reloads that follow an answer do not ask again
            return True
        return False

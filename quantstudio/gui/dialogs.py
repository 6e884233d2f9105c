"""Dialogs: errors (plain message, expandable details), the model import questions, and the
offline Getting-started guide."""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QImage, QTextDocument
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from quantstudio.core.errors import InputError
from quantstudio.gui import glossary
from quantstudio.gui.paths import readme_path

log = logging.getLogger("quantstudio.gui")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def error_texts(exc: BaseException, doing: str = "") -> tuple[str, str, str]:
    """(message, hint, details) for any exception, in plain words."""
    tb = getattr(exc, "__traceback_text__", None) or "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )
    if isinstance(exc, InputError):
        where = f"{exc.path.name}: " if exc.path is not None else ""
        message = where + _sentence(exc.message)
        details = "\n\n".join(d for d in (str(exc.path) if exc.path else "", exc.details, tb) if d)
        return message, _sentence(exc.hint_for_app()), details
    if isinstance(exc, MemoryError):
        return (
            f"Ran out of memory{' while ' + doing if doing else ''}.",
            "Use fewer samples or a smaller batch, or close other programs.",
            tb,
        )
    what = f"Something went wrong while {doing}" if doing else "Something went wrong"
    return (
        f"{what}: {type(exc).__name__}: {exc}".strip(),
        "Your work is still open. The details below help a developer find the cause.",
        tb,
    )


def show_error(parent: QWidget | None, title: str, exc: BaseException | None = None, *, message: str = "",
               hint: str = "", details: str = "", doing: str = "") -> None:
    """A modal error box: plain message, a hint, and the technical details folded away."""
    if exc is not None:
        message, hint, details = error_texts(exc, doing)
    log.warning("%s: %s %s", title, message, hint)
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(message)
    if hint:
        box.setInformativeText(hint)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.exec()


def ask_yes_no(parent: QWidget | None, title: str, text: str, informative: str = "") -> bool:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setText(text)
    if informative:
        box.setInformativeText(informative)
    box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box.exec() == QMessageBox.StandardButton.Yes


class ImportDialog(QDialog):
    """Asks what an import needs: architecture, input shape, or trust (only what applies).

    ``needs`` is a set of "arch", "shape", "trust". ``problem`` is shown on top when a
    previous attempt failed (e.g. "the weights do not fit resnet18"). ``shape_note`` says
    where a pre-filled input shape comes from ("Guessed: …", "Read from demo.json …"):
    a guessed shape is shown for the user to confirm or correct.
    """

    def __init__(
        self,
        parent: QWidget | None,
        path: str,
        needs: set[str],
        *,
        architectures: list[str] | None = None,
        arch: str | None = None,
        confidence: float | None = None,
        input_shape: tuple[int, ...] | None = None,
        problem: str = "",
        trust_text: str = "",
        source_dir: str | None = None,
        shape_note: str = "",
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Open {Path(path).name}")
        self.setMinimumWidth(520)
        self.needs = set(needs)
        layout = QVBoxLayout(self)
        head = QLabel(f"<b>{Path(path).name}</b><br><span style='color:#666'>{Path(path).parent}</span>")
        head.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(head)
        if problem:
            box = QLabel(_sentence(problem))
            box.setWordWrap(True)
            box.setStyleSheet("QLabel { background: #fbeaea; border: 1px solid #e0b4b4; padding: 6px; }")
            layout.addWidget(box)
        form = QFormLayout()
        layout.addLayout(form)

        self.arch_combo = QComboBox()
        self.arch_combo.setEditable(True)
        self.arch_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.arch_combo.addItems(architectures or [])
        self.arch_combo.completer().setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.arch_combo.completer().setFilterMode(Qt.MatchFlag.MatchContains)
        self.arch_label = QLabel()
        self.arch_label.setWordWrap(True)
        if "arch" in self.needs:
            if arch:
                self.arch_combo.setCurrentText(arch)
            else:
                self.arch_combo.setCurrentIndex(-1)
            if arch and confidence is not None:
                self.arch_label.setText(f"Best guess: <b>{arch}</b> — {confidence:.0%} of the weights match it.")
            elif not arch:
                self.arch_label.setText("QuantStudio could not tell; choose the architecture the weights were trained with.")
            self.arch_combo.setToolTip(glossary.STATE_DICT_HELP)
            form.addRow("Architecture:", self.arch_combo)
            form.addRow("", self.arch_label)

        self.shape_edit = QLineEdit()
        self.shape_edit.setPlaceholderText("e.g. 1,3,224,224")
        self.shape_edit.setToolTip(glossary.INPUT_SHAPE_HELP)
        if input_shape:
            self.shape_edit.setText(",".join(str(d) for d in input_shape))
        self.shape_label = QLabel(shape_note)
        self.shape_label.setWordWrap(True)
        if shape_note.startswith("Guessed"):
            self.shape_label.setStyleSheet("color: #a05000")
        if "shape" in self.needs or "arch" in self.needs:
            form.addRow("Input shape:", self.shape_edit)
            if shape_note:
                form.addRow("", self.shape_label)
            if "shape" in self.needs and shape_note.startswith("Guessed"):
                self.shape_edit.setFocus()
                self.shape_edit.selectAll()

        self.trust_check = QCheckBox("I trust this file and want to load it")
        self.source_edit = QLineEdit(source_dir or "")
        self.source_edit.setPlaceholderText("optional: folder with the model's Python code")
        if "trust" in self.needs:
            warn = QLabel(trust_text)
            warn.setWordWrap(True)
            warn.setStyleSheet("QLabel { background: #fff4e0; border: 1px solid #e8c88a; padding: 6px; }")
            layout.insertWidget(layout.count() - 1, warn)
            browse = QPushButton("Choose…")
            browse.clicked.connect(self._choose_source)
            row = QHBoxLayout()
            row.addWidget(self.source_edit, 1)
            row.addWidget(browse)
            holder = QWidget()
            holder.setLayout(row)
            row.setContentsMargins(0, 0, 0, 0)
            form.addRow("", self.trust_check)
            form.addRow("Model source:", holder)
            self.trust_check.toggled.connect(self._update_ok)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout.addWidget(line)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self._accept_if_valid)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color: #a02020")
        layout.addWidget(self.error_label)
        self._update_ok()

    def _choose_source(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with the model's Python source", self.source_edit.text())
        if folder:
            self.source_edit.setText(folder)

    def _update_ok(self) -> None:
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Open)
        ok.setEnabled("trust" not in self.needs or self.trust_check.isChecked())

    def _accept_if_valid(self) -> None:
        problem = self.validate()
        if problem:
            self.error_label.setText(problem)
            return
        self.accept()

    def validate(self) -> str:
        if "arch" in self.needs and not self.arch:
            return "Choose an architecture."
        if ("shape" in self.needs or self.shape_edit.text().strip()) and self.input_shape is None:
            return "Write the input shape as numbers separated by commas, e.g. 1,3,224,224."
        if "trust" in self.needs and not self.trust_check.isChecked():
            return "Tick the box to confirm that you trust the file."
        return ""

    # ------------------------------------------------------------------ answers
    @property
    def arch(self) -> str | None:
        text = self.arch_combo.currentText().strip()
        return text or None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        text = self.shape_edit.text().strip()
        if not text:
            return None
        try:
            shape = tuple(int(p) for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip())
        except ValueError:
            return None
        return shape if shape and all(s > 0 for s in shape) else None

    @property
    def trusted(self) -> bool:
        return self.trust_check.isChecked()

    @property
    def source_dir(self) -> str | None:
        return self.source_edit.text().strip() or None


# --------------------------------------------------------------------------- getting started

GUIDE_START = "#### First time with QuantStudio"
GUIDE_END = "\n## "
GUIDE_IMAGE_WIDTH = 640


def getting_started_markdown(readme: Path | None = None) -> str | None:
    """The README's "First time with QuantStudio" walk-through, or None without a README."""
    readme = readme or readme_path()
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    start = text.find(GUIDE_START)
    if start < 0:
        return text
    end = text.find(GUIDE_END, start + len(GUIDE_START))
    guide = text[start:end if end >= 0 else len(text)]
    # The walk-through's heading is a level below its steps in the README; here it is the title.
    return re.sub(r"^####\s+", "# ", guide, count=1)


class _GuideBrowser(QTextBrowser):
    """Shows the README's screenshots scaled to the window (they are 1200 px wide)."""

    def loadResource(self, kind: int, url: QUrl):  # noqa: N802 - Qt API
        """Overrides QTextBrowser.loadResource: images at most GUIDE_IMAGE_WIDTH wide."""
        resource = super().loadResource(kind, url)
        if kind == QTextDocument.ResourceType.ImageResource.value and resource is not None:
            image = resource if isinstance(resource, QImage) else QImage.fromData(resource)
            if not image.isNull() and image.width() > GUIDE_IMAGE_WIDTH:
                return image.scaledToWidth(GUIDE_IMAGE_WIDTH, Qt.TransformationMode.SmoothTransformation)
            return image if not image.isNull() else resource
        return resource


class GettingStartedDialog(QDialog):
    """Help ▸ Getting started: the README's walk-through, rendered offline."""

    def __init__(self, parent: QWidget | None = None, readme: Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Getting started with QuantStudio")
        self.resize(760, 680)
        readme = readme or readme_path()
        self.browser = _GuideBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setSearchPaths([str(readme.parent)])
        guide = getting_started_markdown(readme)
        if guide is None:
            self.browser.setMarkdown(
                "# Getting started\n\n"
                f"The guide is the README of QuantStudio, which this installation does not include "
                f"(looked for `{readme}`).\n\n"
                "Read README.md in QuantStudio's source (section *First time with QuantStudio*), or open "
                "the demo (File ▸ Open demo) and hover any option for an explanation."
            )
        else:
            self.browser.setMarkdown(guide)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

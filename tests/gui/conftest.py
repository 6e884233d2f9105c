"""GUI test set-up: private settings and data folders, tiny models, a window that is always shut down."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

# The offscreen platform warns once when a top-level window's size constraints change;
# it is a property of the headless platform, not of the app.
OFFSCREEN_NOISE = "This plugin does not support propagateSizeHints"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qt_log_ignore(OFFSCREEN_NOISE))


@pytest.fixture(autouse=True)
def private_settings(tmp_path, monkeypatch):
    from quantstudio.gui.settings import SETTINGS

    monkeypatch.setenv("QUANTSTUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    monkeypatch.setenv("QUANTSTUDIO_DATA_DIR", str(tmp_path / "appdata"))
    SETTINGS.reset_store()
    yield SETTINGS
    SETTINGS.reset_store()


@pytest.fixture
def no_dialogs(monkeypatch):
    """Replace modal boxes by a recorder (what would have been shown)."""
    from PySide6.QtWidgets import QMessageBox

    shown: list[dict] = []

    def fake_exec(box):
        if box.standardButtons() & QMessageBox.StandardButton.Discard:
            # "Save changes?" before closing or opening another model: go on without saving
            # (tests/gui/test_save_changes.py answers it itself).
            return QMessageBox.StandardButton.Discard
        shown.append({"title": box.windowTitle(), "text": box.text(), "hint": box.informativeText(),
                      "details": box.detailedText()})
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    return shown


@pytest.fixture
def window(qtbot, no_dialogs, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from quantstudio.gui.dialogs import ImportDialog
    from quantstudio.gui.main_window import MainWindow

    # Import questions (a guessed input shape to confirm) take their pre-filled answers;
    # tests about a question patch ImportDialog.exec themselves.
    monkeypatch.setattr(ImportDialog, "exec", lambda dlg: QDialog.DialogCode.Accepted)
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.shown_errors = no_dialogs
    yield w
    w.shutdown()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """A tiny conv net as TorchScript and state_dict, and a squeezenet1_1 state_dict (5 classes)."""
    import torch
    import torchvision

    from tests.core.models import tiny_net

    folder = tmp_path_factory.mktemp("models")
    m = tiny_net()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(m, x).save(str(folder / "tiny.ts.pt"))
        torch.save(m, folder / "tiny_whole.pth")
    torch.manual_seed(0)
    sq = torchvision.models.squeezenet1_1(num_classes=5).eval()
    torch.save(sq.state_dict(), folder / "squeeze.pth")
    (folder / "garbage.pth").write_bytes(b"this is not a model at all" * 10)
    return {
        "torchscript": folder / "tiny.ts.pt",
        "whole": folder / "tiny_whole.pth",
        "state_dict": folder / "squeeze.pth",
        "garbage": folder / "garbage.pth",
    }


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Three classes of small PNG images (and one damaged file)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / str(c)
        d.mkdir()
        for i in range(8):
            arr = (rng.random((32, 32, 3)) * 255).astype("uint8")
            arr[..., c] = 255
            Image.fromarray(arr).save(d / f"{i}.png")
    (root / "0" / "broken.png").write_bytes(b"not a png")
    return root


def wait_idle(qtbot, window, timeout_ms: int = 60000) -> None:
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=timeout_ms)

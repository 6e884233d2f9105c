"""The window: starts on the welcome page, opens models on the worker, asks what it needs, survives bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QDialog

from quantstudio.gui.dialogs import ImportDialog
from quantstudio.gui.layer_model import COL_PRECISION
from tests.gui.conftest import wait_idle

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


def test_gui_import_does_not_import_torch():
    code = ("import sys; import quantstudio.gui.main_window, quantstudio.__main__; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_starts_on_welcome_page(window):
    assert window.stack.currentWidget() is window.welcome
    assert window.welcome.open_button.isVisible()
    assert not window.quantize_action.isEnabled()
    assert window.loaded is None


def test_open_torchscript_populates_tree_and_recent_files(qtbot, window, tiny_files, private_settings):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    assert window.stack.currentWidget() is window.layer_panel
    model = window.layer_model
    root = model.index(0, 0)
    assert model.rowCount(root) == 8  # conv1 bn1 relu1 conv2 relu2 pool flatten fc
    assert model.data(model.index_for_name("conv1", COL_PRECISION)) == "INT8"
    assert window.quantize_action.isEnabled()
    assert str(tiny_files["torchscript"].resolve()) in private_settings["recent_files"]
    assert window.welcome.recent_list.count() == 1


def test_state_dict_asks_for_architecture(qtbot, window, tiny_files, monkeypatch):
    asked = {}

    def answer(dlg):
        asked["needs"] = set(dlg.needs)
        asked["arch"] = dlg.arch
        dlg.shape_edit.setText("1,3,64,64")  # a different size: reloads with it
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ImportDialog, "exec", answer)
    with qtbot.waitSignal(window.model_loaded, timeout=120000):
        window.open_model(tiny_files["state_dict"])
    assert asked == {"needs": {"arch"}, "arch": "squeezenet1_1"}  # pre-filled with the guess
    assert window.loaded.arch == "squeezenet1_1"
    assert window.loaded.input_shape == (1, 3, 64, 64)
    assert window.loaded.num_classes == 5


def test_whole_pickle_needs_trust(qtbot, window, tiny_files, monkeypatch):
    seen = []

    def answer(dlg):
        seen.append(set(dlg.needs))
        if "trust" in dlg.needs:
            dlg.trust_check.setChecked(True)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ImportDialog, "exec", answer)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["whole"])
    assert seen == [{"trust"}, {"shape"}]  # trust first; then the guessed input shape is confirmed
    assert window.loaded.kind == "pickled_module"


def test_refusing_trust_loads_nothing(qtbot, window, tiny_files, monkeypatch):
    monkeypatch.setattr(ImportDialog, "exec", lambda dlg: QDialog.DialogCode.Rejected)
    window.open_model(tiny_files["whole"])
    wait_idle(qtbot, window)
    assert window.loaded is None
    assert window.stack.currentWidget() is window.welcome


def test_bad_file_shows_error_and_app_stays_usable(qtbot, window, tiny_files, tmp_path):
    window.open_model(tiny_files["garbage"])
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: len(window.shown_errors) == 1)
    err = window.shown_errors[0]
    assert err["title"] == "Could not open the model"
    assert "garbage.pth" in err["text"] and err["hint"] and err["details"]
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    window.open_model(empty)
    wait_idle(qtbot, window)
    assert "empty" in window.shown_errors[1]["text"]
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    assert window.loaded is not None


def test_drop_a_file_opens_it(qtbot, window, tiny_files):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_files["torchscript"]))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.dropEvent(event)
    assert window.loaded.kind == "torchscript"


def test_all_buttons_and_undo_through_window(qtbot, window, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    window.layer_panel.all_buttons[list(window.layer_panel.all_buttons)[1]].click()  # FP16
    assert window.plan.default.value == "fp16"
    window.undo_action.trigger()
    assert window.plan.default.value == "int8"
    window.redo_action.trigger()
    assert window.plan.default.value == "fp16"
    menu = window.layer_panel.build_context_menu(window.layer_panel.proxy.mapFromSource(
        window.layer_model.index_for_name("conv1")))
    texts = [a.text() for a in menu.actions()]
    assert "Set all Conv2d layers to FP32" in texts


@pytest.mark.skipif(not (DEMO / "model.pth").exists(), reason="demo not generated")
def test_demo_opens_with_its_images(qtbot, window):
    with qtbot.waitSignal(window.model_loaded, timeout=120000):
        window.open_demo()
    qtbot.waitUntil(lambda: window.data_panel.summary is not None, timeout=60000)
    import json

    assert window.loaded.arch == json.loads((DEMO / "demo.json").read_text())["arch"]
    summary = window.data_panel.summary
    assert summary is not None and summary.labeled and len(summary.class_counts) == 10
    assert window.data_panel.thumb_model.rowCount() > 0

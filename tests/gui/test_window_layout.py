"""The window's layout and what it asks: dock tab bars, the Data panel's width, the toolbar,
the engine choice, the input-shape question, Help ▸ Getting started, recent projects."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect
from PySide6.QtWidgets import QApplication, QComboBox, QDialog, QTabBar

from quantstudio.gui.dialogs import GettingStartedDialog, ImportDialog, getting_started_markdown
from quantstudio.gui.main_window import MainWindow
from quantstudio.gui.model_import import sidecar_metadata
from quantstudio.gui.tasks import DataSummary
from tests.gui.conftest import wait_idle

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


def settle(qtbot, ms: int = 150) -> None:
    qtbot.wait(ms)
    QApplication.processEvents()


def visible_tab_bars(window) -> list[tuple[QRect, list[str]]]:
    out = []
    for bar in window.findChildren(QTabBar):
        if bar.isVisible():
            rect = QRect(bar.mapTo(window, QPoint(0, 0)), bar.size())
            out.append((rect, [bar.tabText(i) for i in range(bar.count())]))
    return out


def tab_groups(window) -> list[list[str]]:
    groups = []
    for dock in [window.data_dock, window.log_dock, window.variants_dock, *window.plot_docks]:
        buddies = window.tabifiedDockWidgets(dock)
        if buddies:
            titles = sorted([dock.windowTitle(), *(d.windowTitle() for d in buddies)])
            if titles not in groups:
                groups.append(titles)
    return groups


def assert_tab_bars_belong_to_docks(window) -> None:
    central = window.centralWidget().geometry()
    bars = visible_tab_bars(window)
    groups = tab_groups(window)
    assert len(bars) == len(groups) == 3, bars  # Log|Variants, the top and the bottom plot groups
    for rect, texts in bars:
        assert not rect.intersects(central), f"tab bar {texts} drawn over the central widget at {rect}"
        assert sorted(texts) in groups, f"tab bar {texts} shows no current tab group"


def pump(seconds: float = 0.2) -> None:
    """Process events the way the screenshot generator does: no event loop runs, so
    objects Qt retires with deleteLater (replaced dock tab bars) are never deleted."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


@pytest.mark.parametrize("size", [(1440, 900), (1280, 720)])
def test_no_stray_dock_tab_bars_before_and_after_a_layout_restore(qtbot, window, no_dialogs, size):
    window.resize(*size)
    pump()
    assert_tab_bars_belong_to_docks(window)
    window.save_settings()  # the next window restores this layout, as on the next start
    again = MainWindow()
    qtbot.addWidget(again)
    try:
        again.resize(*size)
        again.show()
        pump()
        assert_tab_bars_belong_to_docks(again)
        again.reset_layout()  # View ▸ Reset layout restores a state too
        pump()
        assert_tab_bars_belong_to_docks(again)
    finally:
        again.shutdown()


def test_data_panel_fits_its_dock(qtbot, window):
    window.resize(1280, 720)
    settle(qtbot)
    panel = window.data_panel
    panel.set_summary(DataSummary(
        spec="/data", kind="folder", description="540 images in 10 class folders", count=540, labeled=True,
        is_random=False, class_counts=[(str(c), 54) for c in range(10)],
        thumbnails=[(None, str(c), None) for c in range(10)],
    ))
    settle(qtbot)
    viewport = panel.viewport().width()
    assert panel.widget().width() <= viewport  # nothing cut off on the right
    for combo in panel.findChildren(QComboBox):
        right = combo.mapTo(panel.viewport(), QPoint(combo.width(), 0)).x()
        assert right <= viewport, f"{combo.currentText()} is cut off"
    counts = panel.counts_label
    assert counts.isVisible() and "9:\u00a054" in counts.text()
    assert counts.mapTo(panel.viewport(), QPoint(counts.width(), 0)).x() <= viewport
    assert counts.height() > counts.fontMetrics().height() * 1.5  # wrapped onto two lines, not cut
    # The dock cannot be made narrower than the panel's content.
    assert window.data_dock.minimumSizeHint().width() >= panel.widget().minimumSizeHint().width()


def open_torchscript(qtbot, window, path, shape=(1, 3, 32, 32)):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(path, input_shape=shape)


def test_toolbar_undo_stays_short_with_the_command_as_tip(qtbot, window, tiny_files):
    open_torchscript(qtbot, window, tiny_files["torchscript"])
    window.layer_model.set_precision("conv1", "fp32")
    button = window.toolbar.widgetForAction(window.undo_tool_action)
    assert button.text() == "Undo" and button.isEnabled()
    assert "conv1" in window.undo_tool_action.toolTip() and "conv1" in window.undo_tool_action.statusTip()
    button.click()
    assert window.plan.precision_for("conv1").value == "int8"
    assert not window.undo_tool_action.isEnabled()
    assert window.toolbar.widgetForAction(window.redo_tool_action).text() == "Redo"


def test_pytorch_engine_greyed_out_for_torchscript_and_switched(qtbot, window, tiny_files):
    panel = window.data_panel
    panel.engine_combo.setCurrentIndex(panel.engine_combo.findData("torch"))
    open_torchscript(qtbot, window, tiny_files["torchscript"])
    combo = panel.engine_combo
    torch_item = combo.model().item(combo.findData("torch"))
    assert not torch_item.isEnabled()
    assert "ONNX Runtime" in torch_item.toolTip() and "TorchScript" in torch_item.toolTip()
    assert combo.currentData() == "onnxruntime"
    assert "Engine set to ONNX Runtime" in window.log_view.toPlainText()
    # A project or saved setting asking for PyTorch cannot bring it back for this model.
    panel.restore_state({"engine": "torch"})
    assert combo.currentData() == "onnxruntime"


def test_pytorch_engine_offered_again_for_an_eager_model(qtbot, window, tiny_files, monkeypatch):
    open_torchscript(qtbot, window, tiny_files["torchscript"])
    monkeypatch.setattr(ImportDialog, "exec", lambda dlg: dlg.trust_check.setChecked(True) or QDialog.DialogCode.Accepted)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["whole"])
    combo = window.data_panel.engine_combo
    assert combo.model().item(combo.findData("torch")).isEnabled()


def answer_shape(monkeypatch, shape: str | None, seen: list):
    def answer(dlg):
        seen.append({"needs": set(dlg.needs), "shape": dlg.shape_edit.text(), "note": dlg.shape_label.text(),
                     "arch": dlg.arch})
        if "trust" in dlg.needs:
            dlg.trust_check.setChecked(True)
        elif shape is not None:
            dlg.shape_edit.setText(shape)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ImportDialog, "exec", answer)


def test_guessed_input_shape_of_torchscript_is_asked(qtbot, window, tiny_files, monkeypatch):
    seen = []
    answer_shape(monkeypatch, "1,3,32,32", seen)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    assert seen[0]["needs"] == {"shape"} and seen[0]["shape"] == "1,3,224,224"  # the guess, pre-filled
    assert seen[0]["note"].startswith("Guessed")
    assert window.loaded.input_shape == (1, 3, 32, 32)
    assert "1×3×32×32" in window.model_label.text()


def test_guessed_input_shape_of_whole_model_is_asked_after_trust(qtbot, window, tiny_files, monkeypatch):
    seen = []
    answer_shape(monkeypatch, "1,3,32,32", seen)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["whole"])
    assert [s["needs"] for s in seen] == [{"trust"}, {"shape"}]
    assert seen[1]["shape"] == "1,3,224,224"
    assert window.loaded.input_shape == (1, 3, 32, 32)


def test_confirming_the_guess_keeps_the_loaded_model(qtbot, window, tiny_files, monkeypatch):
    seen = []
    answer_shape(monkeypatch, None, seen)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"])
    assert len(seen) == 1 and window.loaded.input_shape == (1, 3, 224, 224)
    assert "Input shape 1×3×224×224 confirmed" in window.log_view.toPlainText()


def test_shape_read_from_the_file_is_not_asked(qtbot, window, tiny_files, monkeypatch):
    seen = []
    answer_shape(monkeypatch, None, seen)
    open_torchscript(qtbot, window, tiny_files["torchscript"], shape=(1, 3, 32, 32))
    assert seen == []


@pytest.mark.skipif(not (DEMO / "model.pth").exists(), reason="demo not generated")
def test_demo_weights_opened_as_a_file_prefill_its_size(qtbot, window, monkeypatch):
    seen = []
    answer_shape(monkeypatch, None, seen)
    with qtbot.waitSignal(window.model_loaded, timeout=120000):
        window.open_model(DEMO / "model.pth")  # File ▸ Open, not Open demo
    meta = json.loads((DEMO / "demo.json").read_text())
    assert seen[0]["shape"] == ",".join(str(d) for d in meta["input_shape"])
    assert "demo.json" in seen[0]["note"]
    assert window.loaded.input_shape == tuple(meta["input_shape"])


def test_sidecar_metadata(tmp_path):
    model = tmp_path / "net.pth"
    model.write_bytes(b"")
    assert sidecar_metadata(model) == {}
    (tmp_path / "demo.json").write_text(json.dumps({"weights": "other.pth", "input_shape": [1, 3, 8, 8]}))
    assert sidecar_metadata(model) == {}  # describes another file
    (tmp_path / "net.json").write_text(json.dumps({"arch": "resnet18", "input_shape": [1, 3, 96, 96]}))
    assert sidecar_metadata(model) == {"source": "net.json", "arch": "resnet18", "input_shape": (1, 3, 96, 96)}


def test_help_getting_started_shows_the_walkthrough(qtbot, window, tmp_path):
    help_menu = window.menuBar().actions()[-1].menu()
    assert [a.text().replace("&", "") for a in help_menu.actions() if a.text()] == [
        "Getting started", "About QuantStudio"]
    dlg = GettingStartedDialog(window)
    qtbot.addWidget(dlg)
    text = dlg.browser.toPlainText()
    assert text.startswith("First time with QuantStudio") and "Choose data and settings" in text
    assert "The bundled demo" not in text  # only the walk-through
    missing = GettingStartedDialog(window, readme=tmp_path / "README.md")
    qtbot.addWidget(missing)
    assert "README.md" in missing.browser.toPlainText() and str(tmp_path) in missing.browser.toPlainText()
    assert getting_started_markdown(tmp_path / "README.md") is None


def test_recent_menu_lists_projects_marked_and_models(qtbot, window, tiny_files, tmp_path, private_settings):
    open_torchscript(qtbot, window, tiny_files["torchscript"])
    assert window._write_project(tmp_path / "p.qsproj")
    assert private_settings["recent_projects"] == [str((tmp_path / "p.qsproj").resolve())]
    assert all(not p.endswith(".qsproj") for p in private_settings["recent_files"])
    texts = [a.text() for a in window.recent_menu.actions()]
    assert texts[0] == "Projects" and texts[1].startswith("[project]  p.qsproj")
    assert "Models" in texts and any(t.startswith("tiny.ts.pt") for t in texts)
    # Projects listed with the models by an older version move to their own list.
    private_settings["recent_files"] = [str(tmp_path / "old.qsproj"), *private_settings["recent_files"]]
    window._refresh_recent()
    assert str(tmp_path / "old.qsproj") in private_settings["recent_projects"]
    assert not any(p.endswith(".qsproj") for p in private_settings["recent_files"])
    wait_idle(qtbot, window)


def test_demo_combo_texts_elide_but_tooltips_say_all(qtbot, window):
    panel = window.data_panel
    panel.set_data("random")
    tip = re.sub("<[^>]+>", " ", panel.kind_combo.toolTip())
    assert panel.kind_combo.currentText() in tip

"""Settings declared once and typed; the exception hook keeps the app alive; the entry point."""

from __future__ import annotations

import subprocess
import sys

from PySide6.QtCore import QByteArray

from quantstudio.gui.settings import _DECLARED


def test_every_setting_declared_once_with_its_type(private_settings):
    keys = [s.key for s in _DECLARED]
    assert len(keys) == len(set(keys))
    for s in _DECLARED:
        value = private_settings[s.key]
        assert isinstance(value, s.type), s.key
    private_settings["calib_samples"] = 64
    private_settings["per_channel"] = False
    private_settings.add_recent("recent_files", "/a.pth")
    private_settings.add_recent("recent_files", "/b.pth")
    private_settings.add_recent("recent_files", "/a.pth")
    private_settings.sync()
    private_settings.reset_store()
    assert private_settings["calib_samples"] == 64 and private_settings["per_channel"] is False
    assert private_settings["recent_files"] == ["/a.pth", "/b.pth"]
    assert isinstance(private_settings["window_state"], QByteArray)


def test_data_panel_remembers_its_settings(qtbot, private_settings):
    from quantstudio.gui.data_panel import DataPanel

    p = DataPanel()
    qtbot.addWidget(p)
    p.engine_combo.setCurrentIndex(p.engine_combo.findData("torch"))
    p.eval_spin.setValue(123)
    assert p.sensitivity_check.isChecked() and p.memory_check.isChecked()  # measured by default
    p.sensitivity_check.setChecked(False)
    p.save_settings()
    q = DataPanel()
    qtbot.addWidget(q)
    assert q.quant_config()["engine"] == "torch" and q.eval_spin.value() == 123
    assert not q.sensitivity_check.isChecked() and q.memory_check.isChecked()
    assert "random" in q.kind_combo.itemText(q.kind_combo.findData("random")).lower()


def test_excepthook_shows_a_dialog_and_returns(window):
    from quantstudio.gui.app import excepthook

    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        excepthook(type(exc), exc, exc.__traceback__)
    assert window.shown_errors[-1]["title"] == "Unexpected error"
    assert "boom" in window.shown_errors[-1]["text"] and "Traceback" in window.shown_errors[-1]["details"]
    assert window.isVisible()


def test_closing_saves_layout_and_stops_the_worker(qtbot, no_dialogs, private_settings):
    from quantstudio.gui.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.close()
    assert not private_settings["window_state"].isEmpty()
    assert w.runner._thread.isFinished()


def test_entry_point_version():
    out = subprocess.run([sys.executable, "-m", "quantstudio", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("QuantStudio ")

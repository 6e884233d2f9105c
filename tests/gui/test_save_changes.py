""""Save changes?" before closing the window or opening another model or project."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox

from tests.gui.conftest import wait_idle
from tests.gui.test_variants_compare import fake_run, quantize_with

SAVE, DISCARD, CANCEL = (QMessageBox.StandardButton.Save, QMessageBox.StandardButton.Discard,
                         QMessageBox.StandardButton.Cancel)


@pytest.fixture
def answer(monkeypatch):
    """Answer every message box with ``answer.button``; what was asked is in ``answer.asked``."""

    class Answer:
        button = CANCEL
        asked: list[dict] = []

    def fake_exec(box):
        Answer.asked.append({"title": box.windowTitle(), "text": box.text(), "informative": box.informativeText(),
                             "buttons": box.standardButtons()})
        return Answer.button

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    Answer.asked = []
    return Answer


@pytest.fixture
def ran_window(qtbot, window, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    window.data_panel.set_data("random")
    wait_idle(qtbot, window)
    quantize_with(qtbot, window, fake_run)
    wait_idle(qtbot, window)
    return window


def test_close_with_a_new_run_asks_and_cancel_keeps_the_window(ran_window, answer):
    answer.button = CANCEL
    assert not ran_window.close()
    assert ran_window.isVisible()
    assert [a["title"] for a in answer.asked] == ["Save changes?"]
    assert answer.asked[0]["text"] == "Save your work on tiny.ts.pt as a project before quitting?"
    assert "1 quantization run is not saved" in answer.asked[0]["informative"]
    assert answer.asked[0]["buttons"] == SAVE | DISCARD | CANCEL


def test_close_discard_closes(ran_window, answer):
    answer.button = DISCARD
    assert ran_window.close()
    assert not ran_window.isVisible()


def test_close_save_writes_the_project_then_closes(ran_window, answer, monkeypatch, tmp_path):
    target = tmp_path / "work.qsproj"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    answer.button = SAVE
    assert ran_window.close()
    assert target.is_file()


def test_close_save_then_cancel_the_file_dialog_keeps_the_window(ran_window, answer, monkeypatch):
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: ("", ""))
    answer.button = SAVE
    assert not ran_window.close()
    assert ran_window.isVisible()


def test_opening_another_model_asks_first(qtbot, ran_window, answer, tiny_files):
    before = ran_window.loaded
    answer.button = CANCEL
    assert ran_window.open_model(tiny_files["whole"]) is False
    assert ran_window.loaded is before and not ran_window.runner.busy
    assert ran_window.has_unsaved_work()
    answer.button = DISCARD
    ran_window.open_demo()
    assert len(answer.asked) == 2
    wait_idle(qtbot, ran_window)


def test_an_autosave_does_not_count_as_saving(ran_window, answer):
    assert ran_window.autosave() is not None
    assert ran_window.has_unsaved_work()
    answer.button = CANCEL
    assert not ran_window.close()


def test_no_question_without_runs_or_edits(qtbot, window, answer, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    wait_idle(qtbot, window)
    assert not window.has_unsaved_work()
    assert window.close()
    assert answer.asked == []


def test_a_plan_edit_counts_as_unsaved(qtbot, window, answer, tiny_files):
    from quantstudio.core.plan import Precision

    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    wait_idle(qtbot, window)
    window.layer_model.set_all(Precision.FP32.value)
    assert window.has_unsaved_work()
    answer.button = CANCEL
    assert not window.close()
    assert "precision changes are not saved" in answer.asked[0]["informative"]

"""The first screen explains itself: sentences on empty panels, a prominent Quantize button
that shows the stage, the demo's hint bar, and a layer tree that fits a 1366x768 window."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QAction

from quantstudio.gui import glossary
from quantstudio.gui.guidance import QuantizeButton
from quantstudio.gui.layer_model import COL_NAME, COL_PRECISION, COL_SENSITIVITY, COL_SQNR, COL_TYPE
from tests.gui.conftest import wait_idle

PANEL_TEXT = {
    "latency_panel": "latency", "accuracy_panel": "accuracy", "size_panel": "size",
    "layer_error_panel": "layer_error", "confusion_panel": "confusion", "tradeoff_panel": "tradeoff",
}


def test_empty_panels_say_what_they_will_show(qtbot, window):
    for attr, key in PANEL_TEXT.items():
        panel = getattr(window, attr)
        qtbot.waitUntil(lambda p=panel: not p.empty_overlay.isHidden(), timeout=5000)
        assert panel.empty_overlay.text() == glossary.EMPTY_PANEL[key]
        assert "Quantize" in panel.empty_overlay.text()
    # The sentence lies over the plot, on top, where the user sees it.
    window.plot_docks[0].raise_()
    panel = window.latency_panel
    qtbot.waitUntil(lambda: panel.isVisible())
    panel.update_empty_hint()
    assert panel.empty_overlay.isVisible()
    assert panel.empty_overlay.geometry().intersects(panel.layout_widget.geometry())


def test_the_sentence_goes_once_there_is_data_and_comes_back_on_clear(qtbot, window):
    panel = window.accuracy_panel
    qtbot.waitUntil(lambda: not panel.empty_overlay.isHidden(), timeout=5000)
    panel.set_values("original", {"top-1": 90.0})
    panel.redraw()
    qtbot.waitUntil(lambda: panel.empty_overlay.isHidden(), timeout=5000)
    panel.clear()
    qtbot.waitUntil(lambda: not panel.empty_overlay.isHidden(), timeout=5000)

    # A panel in a tab behind another is checked again when it comes into sight.
    errors = window.layer_error_panel
    errors.set_layers({"conv1": 30.0}, {"conv1": "int8"})
    next(d for d in window.plot_docks if d.widget() is errors).raise_()
    qtbot.waitUntil(lambda: errors.empty_overlay.isHidden(), timeout=5000)


def test_result_panels_explain_sqnr_and_agreement_on_hover(qtbot, window):
    qtbot.waitUntil(lambda: window.accuracy_panel.plot_widget.toolTip() != "", timeout=5000)
    assert "Agreement" in window.accuracy_panel.plot_widget.toolTip()
    assert "SQNR" in window.layer_error_panel.plot_widget.toolTip()


def test_quantize_button_is_prominent_and_shows_the_stage(qtbot):
    action = QAction("&Quantize")
    action.setToolTip(glossary.QUANTIZE_HELP)
    button = QuantizeButton(action)
    qtbot.addWidget(button)
    clicked = []
    action.triggered.connect(lambda: clicked.append(True))
    assert button.text() == "▶  Quantize" and button.toolTip() == glossary.QUANTIZE_HELP
    button.click()
    assert clicked
    action.setEnabled(False)
    assert not button.isEnabled()
    button.show_stage("evaluate")
    button.show_fraction(0.456)
    assert button.text() == "Quantizing: evaluating 46%"
    action.setEnabled(True)  # the action changing does not overwrite the stage
    assert button.text().startswith("Quantizing")
    button.set_busy(False)
    assert button.text() == "▶  Quantize"


def test_quantize_button_sits_in_the_toolbar(window):
    assert window.quantize_button.parent() is window.toolbar
    assert window.quantize_button.isVisible()
    assert not window.quantize_button.isEnabled()  # no model yet


@pytest.mark.slow
def test_demo_hint_shows_until_dismissed_and_tree_fits_1366x768(qtbot, window, private_settings):
    window.resize(1366, 768)
    with qtbot.waitSignal(window.model_loaded, timeout=120000):
        window.open_demo()
    qtbot.waitUntil(lambda: window.data_panel.summary is not None, timeout=60000)  # the demo's images read
    wait_idle(qtbot, window)
    assert window.hint_bar.isVisible() and "Quantize" in window.hint_bar.label.text()

    # Results arrive: Layer, Precision, SQNR, Sensitivity and Type all in sight without scrolling.
    names = [n for n in window.layer_model._by_name if n][:40]
    window.layer_panel.set_layer_results(sqnr={n: 30.0 for n in names}, sensitivity={n: 1.0 for n in names})
    qtbot.wait(50)
    view = window.layer_panel.view
    width = view.viewport().width()
    assert width > 300
    for col in (COL_NAME, COL_PRECISION, COL_SQNR, COL_SENSITIVITY, COL_TYPE):
        assert not view.isColumnHidden(col)
        right = view.header().sectionViewportPosition(col) + view.columnWidth(col)
        assert right <= width, (col, right, width)
        assert view.columnWidth(col) >= 55
    type_width = view.columnWidth(COL_TYPE)
    assert type_width >= view.fontMetrics().horizontalAdvance("BatchNorm2d") + 8
    window.grab().save(str(Path(private_settings.store.fileName()).parent / "tree_1366x768.png"))

    window.hint_bar.close_button.click()
    assert window.hint_bar.isHidden() and private_settings["demo_hint_dismissed"] is True
    with qtbot.waitSignal(window.model_loaded, timeout=120000):
        window.open_demo()
    wait_idle(qtbot, window)
    assert window.hint_bar.isHidden()


def test_hint_bar_stays_hidden_for_other_models(qtbot, window, tiny_files):
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.open_model(tiny_files["torchscript"], input_shape=(1, 3, 32, 32))
    wait_idle(qtbot, window)
    assert window.hint_bar.isHidden()


def test_glossary_words_live_in_one_module():
    from quantstudio.gui import style

    for name in ("PRECISION_HELP", "ENGINE_HELP", "MODE_HELP", "CALIBRATION_HELP", "CALIBRATION_METHOD_HELP",
                 "BACKEND_HELP", "PER_CHANNEL_HELP", "SENSITIVITY_HELP", "MEMORY_HELP", "RANDOM_DATA_LABEL"):
        assert getattr(style, name) is getattr(glossary, name)
    # Every choice QuantStudio makes by default is marked as recommended in its explanation.
    assert "(recommended)" in glossary.ENGINE_HELP["onnxruntime"]
    assert "(recommended)" in glossary.MODE_HELP["static"]
    assert "(recommended)" in glossary.BACKEND_HELP["auto"]
    assert "recommended" in glossary.CALIBRATION_METHOD_HELP["minmax"]
    assert "(recommended)" in glossary.PER_CHANNEL_HELP


def test_readme_glossary_lists_every_term():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Glossary"):]
    for term in glossary.TERMS:
        assert f"**{term}**" in section, term


def test_getting_started_shows_the_glossary():
    from quantstudio.gui.dialogs import getting_started_markdown

    guide = getting_started_markdown()
    assert "### Glossary" in guide and "**SQNR (dB)**" in guide


def test_every_tree_column_explains_itself():
    from PySide6.QtCore import Qt

    from quantstudio.gui.layer_model import COLUMNS, LayerTreeModel

    model = LayerTreeModel()
    for i, title in enumerate(COLUMNS):
        tip = model.headerData(i, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
        assert tip == glossary.COLUMN_HELP[title] and len(tip) > 20

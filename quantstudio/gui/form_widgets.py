"""Small form helpers shared by the settings panels: combo boxes of (value, label) items."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox

COMBO_MIN_CHARS = 14  # combo boxes shrink to this and elide longer items (full text in the popup)


def _combo(items, tips: dict[str, str] | None = None) -> QComboBox:
    c = QComboBox()
    for value, label in items:
        c.addItem(label, value)
        if tips and value in tips:
            c.setItemData(c.count() - 1, tips[value], Qt.ItemDataRole.ToolTipRole)
    # Sized by its longest item the panel would be wider than its dock and be cut off.
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(COMBO_MIN_CHARS)
    c.view().setMinimumWidth(c.view().sizeHintForColumn(0) + 24)
    return c


def _select(combo: QComboBox, value: Any) -> None:
    i = combo.findData(value)
    if i >= 0:
        combo.setCurrentIndex(i)

"""Thumbnails in a list model, decoded lazily on a small thread pool (never the GUI thread).

Images are decoded into ``QImage`` (safe off the GUI thread) only when a view asks for
an item's icon; the pool's results come back through a queued signal.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap

THUMB = 64


class _Notifier(QObject):
    loaded = Signal(int, int, QImage)  # generation, row, image


class _LoadImage(QRunnable):
    def __init__(self, notifier: _Notifier, generation: int, row: int, path: str) -> None:
        super().__init__()
        self.notifier, self.generation, self.row, self.path = notifier, generation, row, path

    def run(self) -> None:
        img = QImage(self.path)
        if not img.isNull():
            mode = Qt.TransformationMode.FastTransformation if max(img.width(), img.height()) < THUMB else Qt.TransformationMode.SmoothTransformation
            img = img.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, mode)
        self.notifier.loaded.emit(self.generation, self.row, img)


def image_from_array(arr: Any) -> QImage:
    """A uint8 H×W or H×W×3 numpy array as a QImage (copied)."""
    import numpy as np

    a = np.ascontiguousarray(arr)
    h, w = a.shape[:2]
    if a.ndim == 2:
        img = QImage(a.data, w, h, w, QImage.Format.Format_Grayscale8)
    else:
        img = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    img = img.copy()
    mode = Qt.TransformationMode.FastTransformation if max(w, h) < THUMB else Qt.TransformationMode.SmoothTransformation
    return img.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, mode)


class ThumbnailModel(QAbstractListModel):
    """Items are (path or None, caption, numpy array or None, tooltip)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._items: list[tuple[str | None, str, Any, str]] = []
        self._images: dict[int, QImage] = {}
        self._pixmaps: dict[int, QIcon] = {}
        self._requested: set[int] = set()
        self._failed: set[int] = set()
        self._generation = 0
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._notifier = _Notifier(self)
        self._notifier.loaded.connect(self._on_loaded)

    def set_items(self, items: list[tuple[str | None, str, Any, str]]) -> None:
        self.beginResetModel()
        self._generation += 1
        self.pool.clear()
        self._items = list(items)
        self._images.clear()
        self._pixmaps.clear()
        self._requested.clear()
        self._failed.clear()
        for row, (_, _, arr, _) in enumerate(self._items):
            if arr is not None:
                self._images[row] = image_from_array(arr)
        self.endResetModel()

    def failed_paths(self) -> list[str]:
        return [self._items[r][0] for r in sorted(self._failed) if self._items[r][0]]

    def loaded_count(self) -> int:
        return len(self._images)

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        """Overrides QAbstractListModel.rowCount."""
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Overrides QAbstractListModel.data; asking for the icon starts its decoding."""
        if not index.isValid() or index.row() >= len(self._items):
            return None
        row = index.row()
        path, caption, _, tip = self._items[row]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip or path or caption
        if role == Qt.ItemDataRole.DecorationRole:
            if row in self._images:
                icon = self._pixmaps.get(row)
                if icon is None:
                    icon = QIcon(QPixmap.fromImage(self._images[row]))
                    self._pixmaps[row] = icon
                return icon
            if row in self._failed:
                return _placeholder(QColor(230, 180, 180))
            if path and row not in self._requested:
                self._requested.add(row)
                self.pool.start(_LoadImage(self._notifier, self._generation, row, path))
            return _placeholder(QColor(225, 225, 225))
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(THUMB + 16, THUMB + 22)
        return None

    @Slot(int, int, QImage)
    def _on_loaded(self, generation: int, row: int, image: QImage) -> None:
        if generation != self._generation or row >= len(self._items):
            return
        if image.isNull():
            self._failed.add(row)
        else:
            self._images[row] = image
        idx = self.index(row)
        self.dataChanged.emit(idx, idx)


_PLACEHOLDERS: dict[str, QIcon] = {}


def _placeholder(colour: QColor) -> QIcon:
    key = colour.name()
    if key not in _PLACEHOLDERS:
        pix = QPixmap(THUMB, THUMB)
        pix.fill(colour)
        _PLACEHOLDERS[key] = QIcon(pix)
    return _PLACEHOLDERS[key]

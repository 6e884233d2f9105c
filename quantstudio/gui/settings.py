"""Every persistent GUI setting, declared once with its type and default (Picard-style).

Widgets never call ``QSettings`` with a literal key: they read and write through
:data:`SETTINGS` (``SETTINGS["calib_samples"]``), so a key's type and default live in
exactly one place. ``QUANTSTUDIO_SETTINGS`` (an .ini path) and ``QUANTSTUDIO_DATA_DIR``
redirect storage, which the tests use to keep the user's real settings untouched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from quantstudio.core.data import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_EVALUATION_SAMPLES,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

ORGANIZATION = "QuantStudio"
APPLICATION = "QuantStudio"
MAX_RECENT = 10


@dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    doc: str = ""


_DECLARED = [
    # files and folders
    Setting("recent_files", list, [], "models opened recently, newest first (File ▸ Open recent, welcome page)"),
    Setting("recent_projects", list, [], "projects opened or saved recently, newest first (listed above the models)"),
    Setting("last_model_dir", str, "", "folder of the last model opened"),
    Setting("last_data_dir", str, "", "folder of the last data chosen"),
    Setting("last_export_dir", str, "", "folder of the last export"),
    Setting("last_project_dir", str, "", "folder of the last project saved or opened"),
    Setting("confirmed_inputs", list, [], "[model path, input shape, arch] the user confirmed, newest first"),
    # data
    Setting("data_kind", str, "folder", "folder | tensor | random"),
    Setting("data_path", str, "", "the image folder or tensor file last used"),
    Setting("eval_data_path", str, "", "a separate evaluation folder or file ('' = held-out samples of data_path)"),
    Setting("preprocess_preset", str, "default", "default | imagenet | custom"),
    Setting("preprocess_resize", str, "", "custom resize, e.g. 256 or 224,224 (empty: model size)"),
    Setting("preprocess_crop", str, "", "custom centre crop (empty: none)"),
    Setting("preprocess_mean", str, ",".join(map(str, IMAGENET_MEAN)), "custom mean per channel"),
    Setting("preprocess_std", str, ",".join(map(str, IMAGENET_STD)), "custom std per channel"),
    Setting("calib_samples", int, DEFAULT_CALIBRATION_SAMPLES, "samples used to calibrate"),
    Setting("eval_samples", int, DEFAULT_EVALUATION_SAMPLES, "samples used to evaluate"),
    # quantization
    Setting("engine", str, "onnxruntime", "torch | onnxruntime"),
    Setting("backend", str, "auto", "auto | x86 | qnnpack"),
    Setting("mode", str, "static", "static | dynamic | fp16"),
    Setting("calibration", str, "minmax", "minmax | entropy | percentile"),
    Setting("per_channel", bool, True, "per-channel weight scales"),
    Setting("equalize", bool, True, "equalize outlier channels before static INT8 (PyTorch models)"),
    Setting("sensitivity", bool, True, "measure per-layer sensitivity after a run (PyTorch models)"),
    Setting("measure_memory", bool, True, "measure peak memory of both models after a run"),
    Setting("benchmark_runs", int, 30, "timed runs per variant and batch size"),
    Setting("benchmark_batches", str, "1,8", "batch sizes to benchmark"),
    # automatic mixed precision (the Auto button's budget)
    Setting("budget_metric", str, "auto", "auto (follows the data: labeled -> drop, else agreement) | drop | agreement"),
    Setting("budget_max_drop", float, 1.0, "Auto: the most top-1 points below the original accepted"),
    Setting("budget_min_agreement", float, 99.0, "Auto: the least % of predictions equal to the original's"),
    # quantization-aware training (issue 14); defaults are QuantConfig's
    Setting("qat", bool, False, "fine-tune with fake quantization after calibration (PyTorch models)"),
    Setting("qat_epochs", int, 2, "QAT epochs"),
    Setting("qat_lr", float, 0.0, "QAT learning rate (0 = automatic)"),
    Setting("qat_batch_size", int, 32, "QAT batch size"),
    Setting("qat_signal", str, "auto", "auto | labels | distill"),
    # window
    Setting("window_geometry", QByteArray, QByteArray(), "main window geometry"),
    Setting("window_state", QByteArray, QByteArray(), "dock and toolbar layout"),
    Setting("tree_header_state", QByteArray, QByteArray(), "layer tree column widths"),
    # first-screen guidance
    Setting("demo_hint_dismissed", bool, False, "the user closed the hint bar shown over the demo"),
]


class Settings:
    """Typed access to the declared settings over one ``QSettings`` store."""

    def __init__(self) -> None:
        self.declared: dict[str, Setting] = {}
        for s in _DECLARED:
            assert s.key not in self.declared, f"setting {s.key} declared twice"
            self.declared[s.key] = s
        self._store: QSettings | None = None

    # The store is opened lazily so tests can set QUANTSTUDIO_SETTINGS first.
    @property
    def store(self) -> QSettings:
        if self._store is None:
            path = os.environ.get("QUANTSTUDIO_SETTINGS")
            if path:
                self._store = QSettings(path, QSettings.Format.IniFormat)
            else:
                self._store = QSettings(
                    QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
                )
        return self._store

    def reset_store(self) -> None:
        """Forget the open store (the tests point each test at a fresh file)."""
        if self._store is not None:
            self._store.sync()
        self._store = None

    def __getitem__(self, key: str) -> Any:
        s = self.declared[key]
        raw = self.store.value(key)
        if raw is None:
            return _copy(s.default)
        try:
            if s.type is list:
                value = json.loads(raw) if isinstance(raw, str) else list(raw)
                return value if isinstance(value, list) else _copy(s.default)
            if s.type is bool:
                return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            if s.type is QByteArray:
                return raw if isinstance(raw, QByteArray) else QByteArray(raw)
            return s.type(raw)
        except (TypeError, ValueError):
            return _copy(s.default)

    def __setitem__(self, key: str, value: Any) -> None:
        s = self.declared[key]
        if s.type is list:
            value = json.dumps(list(value))
        elif s.type is not QByteArray:
            value = s.type(value)
        self.store.setValue(key, value)

    def sync(self) -> None:
        self.store.sync()

    def add_recent(self, key: str, path: str | Path) -> list[str]:
        path = str(path)
        items = [p for p in self[key] if p != path]
        items.insert(0, path)
        self[key] = items[:MAX_RECENT]
        return self[key]


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def data_dir() -> Path:
    """Where autosaves live (the platform's app-data folder)."""
    override = os.environ.get("QUANTSTUDIO_DATA_DIR")
    if override:
        path = Path(override)
    else:
        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        path = Path(base or Path.home() / ".quantstudio")
    path.mkdir(parents=True, exist_ok=True)
    return path


SETTINGS = Settings()

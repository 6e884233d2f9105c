"""Work the ONNX Runtime engine reuses between candidates of one auto-precision search.

Candidates of a search quantize the same source model with the same calibration batches;
only the calibration method and the set of FP32 nodes differ. Exporting to ONNX, ONNX
Runtime's pre-processing and calibration (collecting the same tensor ranges again: 10 s
of a 11 s entropy candidate on a 64×64 ResNet-18) need doing once, not per candidate:

* the FP32 ONNX model, its layer trees and node origins, and the pre-processed model,
  once per source model;
* one helper process for ONNX Runtime's tools (a :class:`~quantstudio.core.engines.ort.tools.ToolWorker`),
  not two or three started per candidate;
* the calibrated tensor ranges (ONNX Runtime's calibration cache, the JSON that
  ``quantize_static(calibration_cache_path=...)`` reads instead of calibrating), once
  per set of calibration settings. The calibrator calibrates every tensor of the ops it
  can quantize whatever ``nodes_to_exclude`` says, so the ranges of a candidate with
  more FP32 nodes are those of one with fewer (tests/core/test_ort_search_cache.py
  checks that a cached candidate is byte-identical to one built from scratch).

A :class:`OrtReuse` lives as long as one search (``with OrtReuse() as reuse:``; its
folder goes with it) and is bound to the first source model it serves: another model
gets nothing from it. It is not shared between runs or threads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantstudio.core.engines.ort.tools import ToolWorker


@dataclass
class PreparedSource:
    """What the engine made of one source model before any plan applies."""

    fp32: Any  # the FP32 ModelProto (exported or the source's own)
    torch_tree: Any  # LayerNode of the PyTorch model, None for an ONNX source
    onnx_tree: Any  # LayerNode of ``fp32``
    origins: dict[str, Any]  # ONNX node → NodeOrigin
    input_name: str
    notes: list[str] = field(default_factory=list)  # export note
    pre_path: Path | None = None  # the pre-processed model, once made
    pre_notes: list[str] = field(default_factory=list)  # "pre-processing skipped (...)"


class OrtReuse:
    """Exported/pre-processed model and calibration ranges kept for one search."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._model: Any = None  # the source served (held, so its id cannot be reused)
        self._calib: Any = None
        self.prepared: PreparedSource | None = None
        self._ranges: dict[str, Path] = {}
        self.hits = {"prepare": 0, "pre_process": 0, "ranges": 0}  # for tests and profiling
        self._worker: ToolWorker | None = None
        self.helper_starts = 0  # helper processes started, known once closed (for tests)

    # -- lifetime
    def __enter__(self) -> "OrtReuse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self.helper_starts += self._worker.starts
            self._worker = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._model = self._calib = self.prepared = None
        self._ranges.clear()

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="quantstudio-ort-reuse-"))
        return self._dir

    def workdir(self) -> str:
        """Where a candidate's work folder goes: inside this cache's folder, which the
        helper process removes if the app dies (quantstudio.core.child)."""
        return str(self._folder())

    def worker(self) -> ToolWorker:
        """The helper process that runs every candidate's tools (started on first use)."""
        if self._worker is None:
            self._worker = ToolWorker(self._folder())
        return self._worker

    # -- binding
    def serves(self, model: Any, calib: Any) -> bool:
        """True when this cache is for ``model`` and ``calib`` (binding them on first use)."""
        if self._model is None:
            self._model, self._calib = model, calib
            return True
        return self._model is model and self._calib is calib

    # -- pre-processed model
    def keep_pre(self, path: Path, notes: list[str]) -> None:
        """Keep a copy of the pre-processed model at ``path`` (made without error)."""
        if self.prepared is None:
            return
        dst = self._folder() / "pre.onnx"
        shutil.copyfile(path, dst)
        self.prepared.pre_path, self.prepared.pre_notes = dst, list(notes)

    # -- calibration ranges
    @staticmethod
    def ranges_key(settings: dict[str, Any]) -> str:
        """The key of a static job's settings (method, extra options, types: all but the
        excluded nodes; the source and data are the same inside one cache)."""
        return json.dumps(settings, sort_keys=True)

    def ranges_for(self, key: str) -> Path | None:
        path = self._ranges.get(key)
        return path if path is not None and path.is_file() else None

    def keep_ranges(self, key: str, path: Path) -> None:
        """Keep a copy of the ranges file ``path`` a successful static job wrote."""
        if not Path(path).is_file():
            return
        dst = self._folder() / f"ranges-{len(self._ranges)}.json"
        shutil.copyfile(path, dst)
        self._ranges[key] = dst

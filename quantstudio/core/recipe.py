"""The recipe: everything needed to reproduce a quantized model, as JSON.

A recipe is written beside every export (``model.onnx`` → ``model.recipe.json``) and
re-applied with ``quantstudio-cli quantize --recipe R.json``. It holds the precision
plan, engine, mode and options, the preprocessing, the seed, where the model came from
(path + sha256, architecture, input shape), the data (absolute path, batch size, sample
counts) with a fingerprint of the calibration samples (each image file's bytes, or the
tensor file's), and the versions of the packages that made it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.errors import InputError
from quantstudio.core.plan import PrecisionPlan

RECIPE_VERSION = 1
RECIPE_SUFFIX = ".recipe.json"


def recipe_path_for(export_path: str | Path) -> Path:
    """``out/model.onnx`` → ``out/model.recipe.json``."""
    p = Path(export_path)
    return p.with_name(p.stem + RECIPE_SUFFIX)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    import quantstudio

    out: dict[str, str | None] = {"quantstudio": quantstudio.__version__}
    for name in ("torch", "torchvision", "onnx", "onnxruntime", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def data_fingerprint(data: Any, indices: Sequence[int] | None) -> dict[str, Any]:
    """A sha256 over what the calibration samples are made of.

    Image folders: each chosen file's path (relative to the folder) and sha256 of its
    bytes (an edited image changes it, a moved folder does not). Tensor files: the file's
    sha256 and the chosen rows. Random data: seed, count and shape.
    """
    import numpy as np

    idx = [int(i) for i in (np.arange(len(data)) if indices is None else np.asarray(indices).reshape(-1))]
    h = hashlib.sha256()
    kind = getattr(data, "kind", "")
    root = getattr(data, "path", None)
    if getattr(data, "is_random", False):
        method = "random"
        h.update(json.dumps({"seed": getattr(data, "seed", None), "shape": list(getattr(data, "shape", ()))}).encode())
        h.update(json.dumps(idx).encode())
    elif root is not None and Path(root).is_file():
        method = "tensor file sha256 + rows"
        h.update(sha256_file(root).encode())
        h.update(json.dumps(idx).encode())
    else:
        method = "file names + contents"
        for i in idx:
            p = data.sample_path(i)
            digest = sha256_file(p) if p and Path(p).is_file() else "missing"
            rel = os.path.relpath(p, root) if p and root is not None else str(p)
            h.update(f"{rel}\0{digest}\n".encode())
    return {"sha256": h.hexdigest(), "method": method, "samples": len(idx), "kind": kind}


@dataclass
class Recipe:
    engine: str
    mode: str
    config: dict[str, Any]
    plan: dict[str, Any]
    preprocessing: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)  # spec, kind, fingerprint, sample counts
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # path, sha256, kind, arch, input_shape
    versions: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = RECIPE_VERSION

    # -------------------------------------------------------------- views
    def quant_config(self) -> QuantConfig:
        # A recipe written before equalization existed reproduces what it made: without it.
        config = {"equalize": False, **self.config}
        return QuantConfig.from_dict({**config, "engine": self.engine, "mode": self.mode, "seed": self.seed})

    def precision_plan(self) -> PrecisionPlan:
        return PrecisionPlan.from_dict(self.plan)

    def preprocessing_obj(self):
        from quantstudio.core.data import Preprocessing

        return Preprocessing.from_dict(self.preprocessing) if self.preprocessing else None

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "engine": self.engine,
            "mode": self.mode,
            "config": dict(self.config),
            "plan": dict(self.plan),
            "preprocessing": self.preprocessing,
            "data": dict(self.data),
            "seed": self.seed,
            "model": dict(self.model),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> "Recipe":
        """A recipe from parsed JSON, checked against :func:`~quantstudio.core.schema.recipe_schema`.

        Everything a run will read is checked here, so a bad recipe fails before any work
        starts (not after an export was written) with the field and what is allowed.
        """
        from quantstudio.core.schema import recipe_schema, validate

        if not isinstance(d, dict):
            raise InputError("the recipe is not a JSON object", path=path, hint="Choose a .recipe.json written by QuantStudio.")
        if d.get("version") != RECIPE_VERSION:
            raise InputError(
                f"recipe version {d.get('version')!r} is not supported (expected {RECIPE_VERSION})",
                path=path,
                hint="Re-create the recipe with this version of QuantStudio.",
            )
        validate(d, recipe_schema(), path, "recipe")
        recipe = cls(
            engine=d["engine"],
            mode=d["mode"],
            config=dict(d.get("config") or {}),
            plan=dict(d["plan"]),
            preprocessing=d.get("preprocessing"),
            data=dict(d.get("data") or {}),
            seed=int(d.get("seed", 0)),
            model=dict(d.get("model") or {}),
            versions=dict(d.get("versions") or {}),
            created=str(d.get("created", "")),
        )
        try:  # the objects' own checks (cross-field rules the schema does not express)
            recipe.quant_config()
            recipe.precision_plan()
            recipe.preprocessing_obj()
        except InputError as exc:
            raise InputError(exc.message, path=path, hint=exc.hint, details=exc.details) from None
        return recipe

    def save(self, path: str | Path) -> Path:
        from quantstudio.core.export import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        from quantstudio.core.schema import load_json_file

        path = Path(path)
        return cls.from_dict(load_json_file(path, "recipe"), path)


def make_recipe(
    model: Any,
    plan: PrecisionPlan,
    config: QuantConfig,
    *,
    preprocessing: Any = None,
    data: Any = None,
    data_spec: str | None = None,
    calibration_indices: Sequence[int] | Any | None = None,  # a list or a numpy array
    evaluation_samples: int | None = None,
    batch_size: int | None = None,
) -> Recipe:
    """The recipe of one quantization run (model, plan, options, data fingerprint, versions)."""
    model_info: dict[str, Any] = {
        "path": str(Path(model.path).resolve()) if getattr(model, "path", None) else None,
        "sha256": None,
        "kind": getattr(model, "kind", None),
        "arch": getattr(model, "arch", None),
        "input_shape": list(model.input_shape) if getattr(model, "input_shape", None) else None,
    }
    if model_info["path"] and Path(model_info["path"]).is_file():
        model_info["sha256"] = sha256_file(model_info["path"])
    data_info: dict[str, Any] = {}
    if data is not None:
        spec = data_spec
        if spec is None:
            spec = "random" if getattr(data, "is_random", False) else (str(data.path) if data.path is not None else None)
        if spec and spec != "random" and Path(spec).exists():
            spec = str(Path(spec).resolve())  # the recipe must work from any folder
        calibrated = calibration_indices is None or len(calibration_indices) > 0
        data_info = {
            "spec": spec,
            "kind": getattr(data, "kind", None),
            "calibration_samples": len(calibration_indices) if calibration_indices is not None else len(data),
            "evaluation_samples": evaluation_samples,
            "batch_size": batch_size,  # calibration batches: entropy/percentile ranges depend on it
            "calibration_fingerprint": data_fingerprint(data, calibration_indices) if calibrated else None,
        }
    cfg = config.to_dict()
    return Recipe(
        engine=config.engine,
        mode=config.mode,
        config={k: v for k, v in cfg.items() if k not in ("engine", "mode", "seed")},
        plan=plan.to_dict(),
        preprocessing=preprocessing.to_dict() if preprocessing is not None else None,
        data=data_info,
        seed=config.seed,
        model=model_info,
        versions=package_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )

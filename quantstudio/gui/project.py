"""`.qsproj` project files: JSON with the model path, data settings, plan, variants. Versioned.

Written atomically (temporary file, then rename) so a crash never leaves half a project.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from quantstudio import __version__
from quantstudio.core.errors import InputError

PROJECT_FORMAT = "quantstudio-project"
PROJECT_VERSION = 1
PROJECT_SUFFIX = ".qsproj"


def write_json_atomic(path: Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_project(model: dict[str, Any], data: dict[str, Any], plan: dict[str, Any], variants: list[dict[str, Any]],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": PROJECT_FORMAT,
        "version": PROJECT_VERSION,
        "app_version": __version__,
        "saved": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": model,
        "data": data,
        "plan": plan,
        "variants": variants,
        **(extra or {}),
    }


def save_project(path: str | Path, project: dict[str, Any]) -> Path:
    path = Path(path)
    if path.suffix != PROJECT_SUFFIX:
        path = path.with_suffix(PROJECT_SUFFIX)
    return write_json_atomic(path, project)


def load_project(path: str | Path) -> dict[str, Any]:
    """Read and check a project; every problem is one :class:`InputError` naming the file and field.

    Projects saved before the schema (same version 1, all fields optional but ``model``)
    open unchanged; a missing ``version`` is read as the current one.
    """
    from quantstudio.core.schema import load_json_file, project_schema, validate

    path = Path(path)
    data = load_json_file(path, "project")
    if not isinstance(data, dict) or data.get("format") != PROJECT_FORMAT:
        raise InputError("this is not a QuantStudio project", path=path, hint="Open a .qsproj file saved by QuantStudio.")
    data.setdefault("version", PROJECT_VERSION)
    if data.get("version") != PROJECT_VERSION:
        raise InputError(f"project version {data.get('version')!r} is not supported (this app reads {PROJECT_VERSION})",
                         path=path, hint="Open it with the QuantStudio version that saved it.")
    validate(data, project_schema(), path, "project")
    for key in ("model", "data", "plan", "variants"):
        data.setdefault(key, {} if key != "variants" else [])
    model_path = data["model"].get("path")
    if model_path and not Path(model_path).is_absolute():
        data["model"]["path"] = str((path.parent / model_path).resolve())
    return data

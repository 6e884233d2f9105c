"""Where bundled resources live, from a source checkout or a PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def demo_dir() -> Path:
    return resources_dir() / "demo"


def icon_path() -> Path:
    return resources_dir() / "icons" / "quantstudio.png"

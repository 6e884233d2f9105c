"""Where bundled resources live, from a source checkout or a PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def app_root() -> Path:
    """The folder holding ``resources/`` and README.md: the checkout, or the PyInstaller bundle."""
    bundle = getattr(sys, "_MEIPASS", None)
    return Path(bundle) if bundle else Path(__file__).resolve().parents[2]


def resources_dir() -> Path:
    return app_root() / "resources"


def readme_path() -> Path:
    """README.md (Help ▸ Getting started shows its walkthrough, with the screenshots beside it)."""
    return app_root() / "README.md"


def demo_dir() -> Path:
    return resources_dir() / "demo"


def icon_path() -> Path:
    return resources_dir() / "icons" / "quantstudio.png"

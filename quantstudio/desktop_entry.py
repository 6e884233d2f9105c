"""Install (or remove) QuantStudio's desktop entry, icon and project file type, per user.

``quantstudio --install-desktop`` (``make install-desktop`` from source) writes, under
``$XDG_DATA_HOME`` (default ``~/.local/share``):

- ``applications/quantstudio.desktop`` — the menu entry, starting *this* launcher
  (the packaged app, or the ``quantstudio`` script of the environment it runs in);
- ``icons/hicolor/{64x64,256x256,scalable}/apps/quantstudio.*`` — the icon;
- ``mime/packages/quantstudio.xml`` — ``.qsproj`` files as ``application/x-quantstudio-project``,

then refreshes the desktop's caches and makes QuantStudio the default application for
projects (where ``update-mime-database``, ``update-desktop-database`` and ``xdg-mime``
exist). No root rights, nothing outside the user's data folder. Linux desktops only
(freedesktop.org); no Qt import.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

MIME_TYPE = "application/x-quantstudio-project"
DESKTOP_FILE = "quantstudio.desktop"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def launcher_command() -> list[str]:
    """How the menu entry starts this installation of QuantStudio."""
    if getattr(sys, "frozen", False):  # the PyInstaller launcher itself
        return [str(Path(sys.executable).resolve())]
    script = Path(sys.executable).with_name("quantstudio")
    if script.exists():
        return [str(script)]
    return [str(Path(sys.executable).resolve()), "-m", "quantstudio"]


def _sources() -> tuple[Path, Path, Path]:
    from quantstudio.gui.paths import app_root, resources_dir

    packaging = app_root() / "packaging"
    return packaging / DESKTOP_FILE, packaging / "quantstudio-mime.xml", resources_dir() / "icons"


def desktop_text(template: str, command: list[str]) -> str:
    """The .desktop template with Exec and TryExec pointing at ``command``."""
    exec_line = " ".join(shlex.quote(part) for part in command) + " %f"
    lines = []
    for line in template.splitlines():
        if line.startswith("Exec="):
            line = f"Exec={exec_line}"
        elif line.startswith("TryExec="):
            continue
        lines.append(line)
        if line.startswith("Exec="):
            lines.append(f"TryExec={command[0]}")
    return "\n".join(lines) + "\n"


def installed_paths(root: Path | None = None) -> dict[str, Path]:
    root = root or data_home()
    icons = root / "icons" / "hicolor"
    return {
        "desktop": root / "applications" / DESKTOP_FILE,
        "mime": root / "mime" / "packages" / "quantstudio.xml",
        "icon_256": icons / "256x256" / "apps" / "quantstudio.png",
        "icon_64": icons / "64x64" / "apps" / "quantstudio.png",
        "icon_svg": icons / "scalable" / "apps" / "quantstudio.svg",
    }


def install(root: Path | None = None, command: list[str] | None = None, refresh: bool = True) -> dict[str, Path]:
    root = root or data_home()
    desktop_src, mime_src, icons_src = _sources()
    paths = installed_paths(root)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["desktop"].write_text(desktop_text(desktop_src.read_text(encoding="utf-8"), command or launcher_command()),
                                encoding="utf-8")
    paths["desktop"].chmod(0o755)
    shutil.copyfile(mime_src, paths["mime"])
    shutil.copyfile(icons_src / "quantstudio.png", paths["icon_256"])
    shutil.copyfile(icons_src / "quantstudio-64.png", paths["icon_64"])
    shutil.copyfile(icons_src / "quantstudio.svg", paths["icon_svg"])
    if refresh:
        _refresh(root, default=True)
    return paths


def uninstall(root: Path | None = None, refresh: bool = True) -> list[Path]:
    root = root or data_home()
    removed = []
    for p in installed_paths(root).values():
        if p.exists():
            p.unlink()
            removed.append(p)
    if refresh:
        _refresh(root, default=False)
    return removed


def _refresh(root: Path, default: bool) -> None:
    """Let the desktop notice: MIME database, desktop database, icon cache, default app."""
    steps = [
        ["update-mime-database", str(root / "mime")],
        ["update-desktop-database", str(root / "applications")],
        ["gtk-update-icon-cache", "--ignore-theme-index", "--quiet", str(root / "icons" / "hicolor")],
    ]
    if default:
        steps.append(["xdg-mime", "default", DESKTOP_FILE, MIME_TYPE])
    for cmd in steps:
        if shutil.which(cmd[0]):
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def main(argv: list[str]) -> int:
    if not sys.platform.startswith("linux"):
        print("The desktop entry is for Linux desktops; on Windows and macOS the packaged app is "
              "started from its folder (see packaging/README.md).", file=sys.stderr)
        return 2
    if "--uninstall" in argv:
        for p in uninstall():
            print(f"removed {p}")
        return 0
    paths = install()
    print(f"QuantStudio is in your applications menu ({paths['desktop']}), starting: "
          f"{' '.join(launcher_command())}")
    print(f"Double-clicking a .qsproj project now opens it in QuantStudio ({paths['mime']}).")
    return 0

"""Check the system libraries Qt's X11 (xcb) platform plugin needs, before Qt starts.

Without them Qt aborts with "Could not load the Qt platform plugin xcb", which names
neither the missing library nor the package to install. The list is what ``ldd`` reports
for PySide6's ``plugins/platforms/libqxcb.so`` and ``lib/libQt6XcbQpa.so.6`` outside the
wheel (PySide6 6.11), with the Debian/Ubuntu package that ships each one.

No Qt import here: this runs before ``QApplication`` exists.
"""

from __future__ import annotations

import ctypes
import os
import sys

# soname -> Debian/Ubuntu package
XCB_LIBRARIES: dict[str, str] = {
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
}


def uses_xcb(environ: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """True when Qt will pick its X11 platform plugin: Linux, a DISPLAY, and
    QT_QPA_PLATFORM unset or xcb."""
    env = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return False
    qpa = env.get("QT_QPA_PLATFORM", "").strip().lower()
    return bool(env.get("DISPLAY")) and qpa in ("", "xcb")


def missing_libraries(libraries: dict[str, str] | None = None) -> dict[str, str]:
    """The sonames among ``libraries`` that cannot be loaded, with their packages."""
    missing = {}
    for soname, package in (XCB_LIBRARIES if libraries is None else libraries).items():
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing[soname] = package
    return missing


def missing_message(missing: dict[str, str]) -> str:
    packages = sorted(set(missing.values()))
    return (
        "QuantStudio cannot open its window: this computer lacks system libraries that the "
        f"window toolkit (Qt) needs on X11: {', '.join(sorted(missing))}.\n"
        "Install them (Debian/Ubuntu) with:\n\n"
        f"    sudo apt-get install {' '.join(packages)}\n\n"
        "then start QuantStudio again. (Other Linux distributions ship the same libraries "
        "under similar names.)"
    )


def check_xcb_or_explain() -> bool:
    """Return True when Qt can start; otherwise print (and show, where a desktop tool
    exists) which packages to install, and return False."""
    if not uses_xcb():
        return True
    missing = missing_libraries()
    if not missing:
        return True
    text = missing_message(missing)
    print(text, file=sys.stderr)
    _show_without_qt(text)
    return False


def _show_without_qt(text: str) -> None:
    """A desktop user started from a menu sees no terminal: try a small dialog tool."""
    import shutil
    import subprocess

    for tool, args in (("zenity", ["--error", "--no-wrap", "--title=QuantStudio", f"--text={text}"]),
                       ("kdialog", ["--title", "QuantStudio", "--error", text]),
                       ("xmessage", ["-center", text])):
        exe = shutil.which(tool)
        if exe:
            try:
                subprocess.run([exe, *args], timeout=600, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError):
                continue
            return

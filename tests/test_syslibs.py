"""The launcher names the system packages Qt's X11 plugin needs instead of Qt's abort."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from quantstudio.gui import syslibs


def test_only_checked_for_the_x11_platform():
    assert syslibs.uses_xcb({"DISPLAY": ":0"}, "linux")
    assert syslibs.uses_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not syslibs.uses_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert not syslibs.uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux")  # no X server to talk to
    assert not syslibs.uses_xcb({"DISPLAY": ":0"}, "darwin")


def test_a_missing_library_is_named_with_its_package():
    missing = syslibs.missing_libraries({"libc.so.6": "libc6", "libquantstudio-absent.so.4": "libqs-absent4"})
    assert missing == {"libquantstudio-absent.so.4": "libqs-absent4"}
    text = syslibs.missing_message({"libxcb-icccm.so.4": "libxcb-icccm4", "libxcb-keysyms.so.1": "libxcb-keysyms1"})
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in text
    assert "libxcb-icccm.so.4" in text


def test_launcher_stops_before_qt_and_says_what_to_install(monkeypatch, capsys):
    import quantstudio.__main__ as entry

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(syslibs, "missing_libraries", lambda libraries=None: {"libxcb-cursor.so.0": "libxcb-cursor0"})
    monkeypatch.setattr(syslibs, "_show_without_qt", lambda text: None)
    monkeypatch.setattr("sys.platform", "linux")
    assert entry.main([]) == entry.EXIT_NO_DISPLAY_LIBS
    assert "sudo apt-get install libxcb-cursor0" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_the_list_covers_what_the_xcb_plugin_links():
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    needed: set[str] = set()
    for lib in (qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"):
        if not lib.exists():
            pytest.skip(f"{lib} not in this PySide6")
        out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        needed |= {line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line}
    system = {n for n in needed if not n.startswith("libQt6")
              and n not in ("libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1")}
    assert system <= set(syslibs.XCB_LIBRARIES), system - set(syslibs.XCB_LIBRARIES)

"""``quantstudio --install-desktop``: menu entry, icon and the .qsproj file type, per user."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from quantstudio import desktop_entry


def test_install_writes_entry_icon_and_mime_type_then_uninstall_removes_them(tmp_path):
    paths = desktop_entry.install(tmp_path, command=["/opt/QuantStudio/QuantStudio"], refresh=False)
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(paths["desktop"])
    section = entry["Desktop Entry"]
    assert section["Exec"] == "/opt/QuantStudio/QuantStudio %f"
    assert section["TryExec"] == "/opt/QuantStudio/QuantStudio"
    assert section["Icon"] == "quantstudio"
    assert desktop_entry.MIME_TYPE in section["MimeType"]
    mime = paths["mime"].read_text()
    assert 'type="application/x-quantstudio-project"' in mime and 'pattern="*.qsproj"' in mime
    for key in ("icon_256", "icon_64", "icon_svg"):
        assert paths[key].stat().st_size > 0
    removed = desktop_entry.uninstall(tmp_path, refresh=False)
    assert set(removed) == set(paths.values()) and not any(p.exists() for p in paths.values())


def test_exec_line_quotes_paths_with_spaces():
    text = desktop_entry.desktop_text("[Desktop Entry]\nExec=quantstudio %f\n", ["/home/a b/QuantStudio"])
    assert "Exec='/home/a b/QuantStudio' %f" in text


@pytest.mark.skipif(shutil.which("update-mime-database") is None, reason="needs shared-mime-info")
def test_the_mime_database_maps_qsproj_to_the_project_type(tmp_path):
    desktop_entry.install(tmp_path, command=["/bin/true"], refresh=True)
    globs = (tmp_path / "mime" / "globs2").read_text()
    assert "application/x-quantstudio-project:*.qsproj" in globs

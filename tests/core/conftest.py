"""Core test set-up: exports remember their folders in the test's own data folder, not the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch):
    # quantstudio.core.transaction records every folder exported to (repaired at the next start).
    monkeypatch.setenv("QUANTSTUDIO_DATA_DIR", str(tmp_path_factory.mktemp("qs-data")))

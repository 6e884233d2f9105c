"""Every Qt item model of the app passes pytest-qt's model tester (as the layer tree does).

The tester is attached once and then watches every insert, remove and reset that follows
(attaching it twice would make one tester see each signal twice).
"""

from __future__ import annotations

import numpy as np

from quantstudio.gui.tasks import RunOutcome


def test_variant_table_model_passes_tester(qtmodeltester):
    from quantstudio.gui.variants import VariantTableModel

    model = VariantTableModel()
    model.add(RunOutcome(name="#1 run", config={"engine": "onnxruntime", "mode": "static"},
                         metrics={"quantized": {"top1": 0.9, "n": 10, "latency_ms": 1.0}}))
    qtmodeltester.check(model, force_py=True)
    for i in range(2):
        model.add(RunOutcome(name=f"#{i + 2} run", config={"engine": "torch", "mode": "dynamic"}))
    model.add(RunOutcome(name="#1 run"))  # a duplicate name is made unique
    assert model.names()[-1] == "#1 run (2)"
    model.remove(0)
    assert model.setData(model.index(0, 0), "renamed")
    model.set_runs([])
    assert model.rowCount() == 0


def test_thumbnail_model_passes_tester(qapp, qtmodeltester, tmp_path):
    from PIL import Image

    from quantstudio.gui.thumbnails import ThumbnailModel

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    model = ThumbnailModel()
    try:
        model.set_items([(str(path), "a", None, "a"), (None, "b", np.zeros((8, 8), np.uint8), "b")])
        qtmodeltester.check(model, force_py=True)
        model.set_items([])
        assert model.rowCount() == 0
    finally:
        model.shutdown()

"""The layer tree model: an adapter over LayerNode + PrecisionPlan; passes Qt's model tester."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from quantstudio.core.inventory import LayerNode
from quantstudio.core.plan import Precision, PrecisionPlan
from quantstudio.gui.layer_model import (
    COL_NAME,
    COL_PRECISION,
    COL_SENSITIVITY,
    COL_SQNR,
    LayerFilterProxy,
    LayerNameRole,
    LayerTreeModel,
    PrecisionRole,
)


def leaf(name, type_="Conv2d", quantizable=True, reason=""):
    return LayerNode(name=name, type=type_, output_shape=(1, 8, 4, 4), params=100, macs=1000,
                     quantizable=quantizable, reason=reason)


def make_tree() -> LayerNode:
    return LayerNode(name="", type="Net", params=300, macs=3000, children=[
        leaf("conv1"),
        LayerNode(name="block", type="Sequential", params=200, macs=2000, children=[
            leaf("block.conv"), leaf("block.relu", "ReLU"), leaf("block.odd", "Weird", False, "no INT8 kernel"),
        ]),
        leaf("fc", "Linear"),
    ])


@pytest.fixture
def model(qtbot):
    m = LayerTreeModel()
    m.set_tree(make_tree(), PrecisionPlan(), root_label="net")
    return m


def test_model_tester_passes(qtmodeltester, model):
    qtmodeltester.check(model)
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("conv")
    qtmodeltester.check(proxy)


def test_empty_model_passes_tester(qtmodeltester):
    qtmodeltester.check(LayerTreeModel())


def test_rows_show_layers_and_effective_precision(model):
    root = model.index(0, 0)
    assert model.data(root) == "net"
    assert model.rowCount(root) == 3
    block = model.index(1, 0, root)
    assert model.data(block, LayerNameRole) == "block"
    odd = model.index_for_name("block.odd", COL_PRECISION)
    # INT8 asked, but the layer cannot be quantized: it runs in FP32 and says why.
    assert model.data(odd) == "FP32 (INT8 asked)"
    assert "no INT8 kernel" in model.data(odd, Qt.ItemDataRole.ToolTipRole)
    assert model.data(odd, Qt.ItemDataRole.ForegroundRole) is not None  # greyed
    assert model.data(model.index_for_name("block", COL_PRECISION), PrecisionRole) == "mixed"


def test_set_data_edits_the_plan_and_undo_restores(qtbot, model):
    idx = model.index_for_name("fc", COL_PRECISION)
    with qtbot.waitSignal(model.dataChanged):
        assert model.setData(idx, "fp16", Qt.ItemDataRole.EditRole)
    assert model.plan.precision_for("fc") is Precision.FP16
    assert model.data(idx) == "FP16"
    model.undo_stack.undo()
    assert model.plan.precision_for("fc") is Precision.INT8
    assert model.data(idx) == "INT8"
    model.undo_stack.redo()
    assert model.data(idx) == "FP16"
    assert not model.setData(model.index_for_name("fc", COL_NAME), "fp16")  # only precision is editable


def test_parent_edit_applies_to_subtree_and_emits_only_changed_rows(qtbot, model):
    changed: list[str] = []
    model.dataChanged.connect(lambda a, b: changed.append(model.data(a, LayerNameRole)))
    model.setData(model.index_for_name("block", COL_PRECISION), Precision.FP32)
    for name in ("block.conv", "block.relu", "block.odd"):
        assert model.plan.precision_for(name) is Precision.FP32
    assert model.plan.precision_for("conv1") is Precision.INT8
    # block.odd already showed FP32, conv1/fc did not change, the root stays "mixed": no signal for them.
    assert set(changed) == {"block.conv", "block.relu", "block"}
    model.undo_stack.undo()
    assert model.plan.to_dict() == PrecisionPlan().to_dict()


def test_set_subtree_type_rule_and_all(model):
    model.set_precision("block", "fp16")
    model.set_type_precision("Conv2d", "fp32")
    assert model.plan.precision_for("conv1", "Conv2d") is Precision.FP32
    assert model.precision_of("block.conv") == "fp32"  # the type rule came later, so it wins
    model.set_all("fp16")
    assert all(model.precision_of(n) == "fp16" for n in ("conv1", "block.conv", "fc"))
    assert model.undo_stack.count() == 3
    model.undo_stack.setIndex(0)
    assert model.plan.to_dict() == PrecisionPlan().to_dict()


def test_plan_is_shared_not_copied(model):
    plan = model.plan
    model.set_precision("conv1", "fp16")
    assert plan.precision_for("conv1") is Precision.FP16  # the window's plan object changed in place
    model.replace_plan(PrecisionPlan(default=Precision.FP32), "apply")
    assert plan.default is Precision.FP32
    model.undo_stack.undo()
    assert plan.default is Precision.INT8


def test_filter_keeps_parents_of_matches(qtbot, model):
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("relu")
    root = proxy.index(0, 0)
    assert proxy.rowCount(root) == 1
    block = proxy.index(0, 0, root)
    assert proxy.data(block, LayerNameRole) == "block"
    assert proxy.data(proxy.index(0, 0, block), LayerNameRole) == "block.relu"
    proxy.set_filter_text("Linear")  # by type
    assert proxy.data(proxy.index(0, 0, proxy.index(0, 0)), LayerNameRole) == "fc"


def test_layer_results_and_fused_groups(model):
    model.set_layer_results({"conv1": 35.0, "fc": 12.5}, {"fc": 0.2}, [["conv1", "block.relu"]])
    assert model.data(model.index_for_name("fc", COL_SQNR)) == "12.5"
    assert "fused with relu" in model.data(model.index_for_name("conv1"), Qt.ItemDataRole.ToolTipRole)
    assert model.data(model.index_for_name("conv1"), Qt.ItemDataRole.DecorationRole) is not None


def test_sensitivity_column_and_keep_most_sensitive_in_fp32_is_one_undo_step(qtbot, model):
    model.set_layer_results(sensitivity={"conv1": 0.4, "block.conv": 3.25, "fc": 1.5})
    assert model.data(model.index_for_name("block.conv", COL_SENSITIVITY)) == "3.25%"
    assert model.data(model.index_for_name("block.relu", COL_SENSITIVITY)) == ""
    tip = model.data(model.index_for_name("block.conv", COL_SENSITIVITY), Qt.ItemDataRole.ToolTipRole)
    assert "only this layer in INT8" in tip and "3.25%" in tip
    assert model.most_sensitive(2) == ["block.conv", "fc"]
    with qtbot.waitSignal(model.plan_changed):
        assert model.keep_most_sensitive(2) == ["block.conv", "fc"]
    assert [model.precision_of(n) for n in ("block.conv", "fc", "conv1")] == ["fp32", "fp32", "int8"]
    assert model.precision_of("block") == "mixed"
    model.undo_stack.undo()
    assert [model.precision_of(n) for n in ("block.conv", "fc")] == ["int8", "int8"]
    assert model.keep_most_sensitive(0) == [] and model.undo_stack.count() == 1


def test_sorting_by_sensitivity_or_sqnr_ranks_a_block_by_its_worst_layer(qtbot, model):
    model.set_layer_results(sqnr={"conv1": 30.0, "block.conv": 12.0, "fc": 25.0},
                            sensitivity={"conv1": 0.4, "block.conv": 3.25, "fc": 1.5})
    proxy = LayerFilterProxy()
    proxy.setSourceModel(model)
    root = proxy.index(0, 0)

    def top_level():
        return [proxy.index(r, 0, root).data(LayerNameRole) for r in range(proxy.rowCount(root))]

    proxy.sort(COL_SENSITIVITY, Qt.SortOrder.DescendingOrder)
    assert top_level() == ["block", "fc", "conv1"]  # block holds the most sensitive layer (3.25 %)
    proxy.sort(COL_SQNR, Qt.SortOrder.AscendingOrder)
    assert top_level() == ["block", "fc", "conv1"]  # and the lowest SQNR (12 dB)
    proxy.sort(-1)
    assert top_level() == ["conv1", "block", "fc"]  # model order
    # A collapsed block shows its worst layer's figure, greyed, and names it.
    block_sens = model.index_for_name("block", COL_SENSITIVITY)
    assert model.data(block_sens) == "max 3.25%" and model.data(model.index_for_name("block", COL_SQNR)) == "min 12.0"
    assert "most sensitive layer inside: block.conv" in model.data(block_sens, Qt.ItemDataRole.ToolTipRole)
    assert model.data(block_sens, Qt.ItemDataRole.ForegroundRole) is not None


def test_delegate_commits_through_the_model(qtbot, model):
    from PySide6.QtWidgets import QStyleOptionViewItem, QWidget

    from quantstudio.gui.layer_model import PrecisionDelegate

    parent = QWidget()
    qtbot.addWidget(parent)
    delegate = PrecisionDelegate(parent)
    idx = model.index_for_name("conv1", COL_PRECISION)
    editor = delegate.createEditor(parent, QStyleOptionViewItem(), idx)
    delegate.setEditorData(editor, idx)
    assert editor.currentData() == "int8"
    editor.setCurrentIndex(editor.findData("fp32"))
    delegate.setModelData(editor, model, idx)
    assert model.precision_of("conv1") == "fp32"

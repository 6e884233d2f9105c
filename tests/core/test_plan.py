"""The precision plan: rule matching, subtree edits, resolution against a tree, JSON."""

from __future__ import annotations

import pytest

from quantstudio.core.errors import InputError
from quantstudio.core.inventory import LayerNode
from quantstudio.core.plan import PLAN_VERSION, Precision, PrecisionPlan


def tree() -> LayerNode:
    leaf = lambda name, typ, q=True, reason="": LayerNode(name=name, type=typ, quantizable=q, reason=reason)  # noqa: E731
    return LayerNode(
        name="",
        type="Net",
        children=[
            leaf("conv1", "Conv2d"),
            LayerNode(name="layer1", type="Sequential", children=[leaf("layer1.0", "Conv2d"), leaf("layer1.1", "ReLU")]),
            leaf("norm", "RMSNorm", q=False, reason="RMSNorm is not a layer type PyTorch can quantize"),
            leaf("fc", "Linear"),
        ],
    )


def test_default_applies_without_rules():
    plan = PrecisionPlan()
    assert plan.precision_for("anything", "Conv2d") is Precision.INT8
    assert PrecisionPlan(default=Precision.FP16).precision_for("x") is Precision.FP16


def test_exact_glob_regex_and_type_rules():
    plan = PrecisionPlan()
    plan.set("fc", "fp32")
    plan.set("layer1.*", "fp16", kind="glob")
    plan.set(r"conv\d", "fp32", kind="regex")
    plan.set("ReLU", "fp32", kind="type")
    assert plan.precision_for("fc", "Linear") is Precision.FP32
    assert plan.precision_for("fc2", "Linear") is Precision.INT8  # exact means exact
    assert plan.precision_for("layer1.0", "Conv2d") is Precision.FP16
    assert plan.precision_for("conv1", "Conv2d") is Precision.FP32
    assert plan.precision_for("conv12", "Conv2d") is Precision.INT8  # regex is a full match
    assert plan.precision_for("layer2.1", "ReLU") is Precision.FP32


def test_later_rules_win():
    plan = PrecisionPlan()
    plan.set("layer1.*", "fp32", kind="glob")
    plan.set("layer1.0", "fp16")
    assert plan.precision_for("layer1.0") is Precision.FP16
    plan.set("layer1.*", "int8", kind="glob")  # re-adding moves the rule to the end
    assert plan.precision_for("layer1.0") is Precision.INT8
    assert [r.pattern for r in plan.rules] == ["layer1.0", "layer1.*"]


def test_set_subtree_covers_the_layer_and_everything_inside():
    plan = PrecisionPlan()
    plan.set("layer1.1", "fp16")
    plan.set_subtree("layer1", "fp32")
    assert plan.precision_for("layer1") is Precision.FP32
    assert plan.precision_for("layer1.0") is Precision.FP32
    assert plan.precision_for("layer1.1") is Precision.FP32
    assert plan.precision_for("layer10") is Precision.INT8  # not inside layer1
    assert all(r.pattern != "layer1.1" for r in plan.rules)  # overridden rules dropped
    plan.set_all("fp16")
    assert plan.rules == [] and plan.default is Precision.FP16


def test_resolve_falls_back_to_fp32_for_unquantizable_int8_layers():
    decisions = PrecisionPlan().resolve(tree())
    assert set(decisions) == {"conv1", "layer1.0", "layer1.1", "norm", "fc"}  # leaves only
    norm = decisions["norm"]
    assert norm.requested is Precision.INT8 and norm.effective is Precision.FP32
    assert "RMSNorm" in norm.reason
    assert decisions["conv1"].effective is Precision.INT8 and decisions["conv1"].reason == ""
    plan = PrecisionPlan()
    plan.set("norm", "fp16")
    assert plan.resolve(tree())["norm"].effective is Precision.FP16  # only INT8 falls back
    assert PrecisionPlan().counts(tree()) == {Precision.INT8: 4, Precision.FP16: 0, Precision.FP32: 1}


def test_json_round_trip_keeps_version_default_and_rule_order():
    plan = PrecisionPlan(default=Precision.FP16)
    plan.set("fc", "fp32")
    plan.set("layer*", "int8", kind="glob")
    plan.set("^conv", "fp32", kind="regex")
    plan.set("Linear", "fp16", kind="type")
    d = plan.to_dict()
    assert d["version"] == PLAN_VERSION
    again = PrecisionPlan.from_dict(d)
    assert again == plan
    assert again.to_dict() == d


@pytest.mark.parametrize(
    "data",
    [
        {"version": 99, "default": "int8", "rules": []},
        {"default": "int8", "rules": []},
        {"version": PLAN_VERSION, "default": "int4", "rules": []},
        {"version": PLAN_VERSION, "default": "int8", "rules": [{"pattern": "x"}]},
    ],
)
def test_bad_plan_json_is_an_input_error(data):
    with pytest.raises(InputError):
        PrecisionPlan.from_dict(data)


def test_bad_regex_and_bad_precision_are_input_errors():
    plan = PrecisionPlan()
    with pytest.raises(InputError, match="regular expression"):
        plan.set("layer[", "fp32", kind="regex")
    with pytest.raises(InputError):
        plan.set("x", "fp32", kind="wildcard")
    with pytest.raises(InputError, match="precision"):
        plan.parse_assignment("fc=int4")
    with pytest.raises(InputError):
        plan.parse_assignment("fc")
    with pytest.raises(InputError):
        plan.parse_assignment("re:layer[=fp32")


def test_cli_assignments():
    plan = PrecisionPlan()
    plan.parse_assignment("layer4.*=fp32")
    plan.parse_assignment("fc=FP16")
    plan.parse_assignment("type:ReLU=fp32")
    plan.parse_assignment(r"re:conv\d=fp16")
    assert plan.precision_for("layer4.0.conv1") is Precision.FP32
    assert plan.precision_for("fc") is Precision.FP16
    assert plan.precision_for("r", "ReLU") is Precision.FP32
    assert plan.precision_for("conv3") is Precision.FP16
    plan.parse_assignment("*=fp16")
    assert plan.default is Precision.FP16


def test_a_block_name_covers_its_layers_and_unmatched_rules_are_found():
    from quantstudio.core.inventory import LayerNode

    tree = LayerNode(name="", type="Net", children=[
        LayerNode(name="features", type="Sequential", children=[
            LayerNode(name="features.0", type="Conv2d"), LayerNode(name="features.1", type="ReLU")]),
        LayerNode(name="features1", type="Linear"),
    ])
    plan = PrecisionPlan()
    for a in ("features=fp32", "nosuchlayer=fp16", "type:LSTM=fp32", "re:fea.*1=fp16"):
        plan.parse_assignment(a)
    decisions = plan.resolve(tree)
    assert decisions["features.0"].effective.value == "fp32" and decisions["features.1"].effective.value == "fp16"
    assert decisions["features1"].effective.value == "fp16"  # "features" is not a prefix of "features1"
    assert [(r.pattern, r.kind) for r in plan.unmatched_rules(tree)] == [("nosuchlayer", "exact"), ("LSTM", "type")]

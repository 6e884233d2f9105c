"""Layer inventory: names, shapes, params, MACs and quantizability, equal across forms."""

from __future__ import annotations

import pytest
import torch
import torchvision

from quantstudio.core.inventory import LayerNode, build_inventory
from quantstudio.core.loading import load_model
from tests.core.models import save_all_forms, tiny_net

# TinyNet at 3x32x32: conv1 8x32x32 out, 3*3*3 per output; conv2 16x16x16 out, 8*3*3 per output; fc 16*5
TINY_MACS = 8 * 32 * 32 * 27 + 16 * 16 * 16 * 72 + 16 * 5
TINY_PARAMS = 8 * 27 + 16 + 16 * 72 + 16 + 16 * 5 + 5


def test_eager_tree_has_shapes_params_macs(tmp_path):
    m = tiny_net()
    torch.save(m, tmp_path / "m.pth")
    tree = build_inventory(load_model(tmp_path / "m.pth", trust=True, input_shape=(1, 3, 32, 32)))
    assert tree.params == TINY_PARAMS
    assert tree.macs == TINY_MACS
    assert tree.output_shape == (1, 5)
    conv2 = tree.find("conv2")
    assert conv2.type == "Conv2d"
    assert conv2.output_shape == (1, 16, 16, 16)
    assert conv2.macs == 16 * 16 * 16 * 72
    assert conv2.params == 16 * 72 + 16
    assert conv2.quantizable
    assert [c.name for c in tree.children][:3] == ["conv1", "bn1", "relu1"]


def test_unquantizable_layer_says_why(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 2)).eval()
    torch.save(m, tmp_path / "m.pth")
    tree = build_inventory(load_model(tmp_path / "m.pth", trust=True, input_shape=(1, 4)))
    gelu = tree.find("1")
    assert not gelu.quantizable
    assert "GELU" in gelu.reason and "FP32" in gelu.reason
    assert tree.find("0").quantizable


@pytest.mark.parametrize("form", ["whole", "torchscript", "pt2", "onnx"])
def test_totals_agree_across_forms(tmp_path, form):
    m = tiny_net()
    x = torch.randn(1, 3, 32, 32)
    paths = save_all_forms(m, x, tmp_path, "tiny")
    tree = build_inventory(load_model(paths[form], trust=True, input_shape=(1, 3, 32, 32)))
    assert tree.params == TINY_PARAMS
    assert tree.macs == TINY_MACS
    assert tree.output_shape == (1, 5)


def test_onnx_nodes_grouped_by_module_scope(tmp_path):
    m = torchvision.models.squeezenet1_1(num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    paths = save_all_forms(m, x, tmp_path, "sq")
    tree = build_inventory(load_model(paths["onnx"]))
    features = tree.find("features")
    assert features is not None and features.children
    squeeze = tree.find("features.3.squeeze")
    assert squeeze.type == "Conv"
    assert squeeze.onnx_nodes == ["/features/features.3/squeeze/Conv"]
    eager = build_inventory(load_model(paths["whole"], trust=True, input_shape=(1, 3, 64, 64)))
    assert tree.find("features.3.squeeze").output_shape == eager.find("features.3.squeeze").output_shape
    assert tree.params == eager.params and tree.macs == eager.macs


def test_tree_json_round_trip(tmp_path):
    m = tiny_net()
    torch.save(m, tmp_path / "m.pth")
    tree = build_inventory(load_model(tmp_path / "m.pth", trust=True, input_shape=(1, 3, 32, 32)))
    again = LayerNode.from_dict(tree.to_dict())
    assert again == tree


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_agree_in_every_form(tmp_path, arch):
    torch.manual_seed(0)
    m = torchvision.models.get_model(arch).eval()
    x = torch.randn(1, 3, 224, 224)
    paths = save_all_forms(m, x, tmp_path, arch)
    torch.save(m.state_dict(), tmp_path / "sd.pth")
    paths["state_dict"] = tmp_path / "sd.pth"
    totals = {}
    for form, p in paths.items():
        model = load_model(p, trust=True)
        tree = build_inventory(model)
        totals[form] = (tree.params, tree.macs)
    expected = sum(p.numel() for p in m.parameters())
    assert set(totals.values()) == {(expected, totals["state_dict"][1])}, totals
    assert totals["state_dict"][1] > 0


def test_nested_sequential_scopes_map_to_pytorch_names(tmp_path):
    """resnet's downsample is a Sequential inside a block: ONNX scopes must not double it."""
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=3).eval()
    paths = save_all_forms(m, torch.randn(1, 3, 32, 32), tmp_path, "r18")
    tree = build_inventory(load_model(paths["onnx"]))
    node = tree.find("layer2.0.downsample.0")
    assert node is not None and node.type == "Conv"
    assert tree.find("layer2.0.downsample.downsample.0") is None
    torch_names = {n for n, _ in m.named_modules()}
    onnx_convs = [n.name for n, _ in tree.walk() if n.type == "Conv"]
    assert onnx_convs and all(name in torch_names for name in onnx_convs)

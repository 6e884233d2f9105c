"""The bundled demo (resources/demo/) is consistent and reproduces its accuracy.

Standalone on purpose: only torch, torchvision, PIL and numpy, so it does not depend
on the app's own loading/data modules. resources/demo/train_demo.py writes these files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads((DEMO / "demo.json").read_text())


@pytest.fixture(scope="module")
def model(info):
    m = torchvision.models.get_model(info["arch"], num_classes=info["num_classes"])
    state = torch.load(DEMO / "model.pth", map_location="cpu", weights_only=True)
    m.load_state_dict(state, strict=True)
    return m.eval()


def _image_files(root: Path, class_names):
    return {c: sorted((root / c).glob("*.png")) for c in class_names}


def test_demo_json_is_consistent(info):
    assert info["arch"] in torchvision.models.list_models(module=torchvision.models)
    assert info["num_classes"] == 10
    assert info["class_names"] == [str(i) for i in range(10)]
    n, c, h, w = info["input_shape"]
    assert (n, c) == (1, 3) and h > 0 and w > 0
    pre = info["preprocessing"]
    assert pre["resize"] == [h, w]
    assert pre["mean"] == IMAGENET_MEAN and pre["std"] == IMAGENET_STD
    assert 0.95 <= info["top1"] <= info["top5"] <= 1.0
    assert info["n"] > 0
    for key in ("torch", "torchvision", "epochs", "seed"):
        assert key in info["trained_with"]
    measured = info.get("measured")
    if measured is not None:
        for engine in ("pytorch_fx_x86", "onnxruntime_qdq"):
            r = measured[engine]
            assert r["fp32_ms"] > 0 and r["int8_ms"] > 0


def test_demo_folder_size_is_small():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()
                and "__pycache__" not in p.parts)
    assert total < 10 * 1024 * 1024
    assert (DEMO / "model.pth").stat().st_size < 6 * 1024 * 1024


def test_model_loads_strictly_and_matches_input_shape(info, model):
    state = torch.load(DEMO / "model.pth", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    with torch.no_grad():
        out = model(torch.zeros(info["input_shape"]))
    assert tuple(out.shape) == (1, info["num_classes"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_digits_folder_layout(info):
    root = DEMO / "digits"
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == info["class_names"]
    files = _image_files(root, info["class_names"])
    assert all(files[c] for c in dirs)
    assert sum(len(v) for v in files.values()) == info["n"]
    with Image.open(files["0"][0]) as im:
        assert im.mode == "L"
        assert im.size[0] <= 64 and im.size[1] <= 64


def test_accuracy_on_shipped_folder_reproduces_demo_json(info, model):
    h, w = info["preprocessing"]["resize"]
    tf = transforms.Compose([
        transforms.Resize((h, w)),  # the app's default: bilinear, antialias=True
        transforms.ToTensor(),
        transforms.Normalize(mean=info["preprocessing"]["mean"], std=info["preprocessing"]["std"]),
    ])
    # One thread: the result is the same, and it is far faster on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        top1, top5, n = _evaluate(model, tf, info)
    finally:
        torch.set_num_threads(threads)
    assert n == info["n"]
    assert abs(top1 / n - info["top1"]) < 1e-9
    assert abs(top5 / n - info["top5"]) < 1e-9


def _evaluate(model, tf, info):
    xs, ys = [], []
    for ci, (c, paths) in enumerate(_image_files(DEMO / "digits", info["class_names"]).items()):
        for p in paths:
            with Image.open(p) as im:
                xs.append(tf(im.convert("RGB")))
            ys.append(ci)
    x, y = torch.stack(xs), torch.tensor(ys)
    top1 = top5 = 0
    with torch.no_grad():
        for s in range(0, len(x), 64):
            t5 = model(x[s:s + 64]).topk(5, dim=1).indices
            yy = y[s:s + 64]
            top1 += int((t5[:, 0] == yy).sum())
            top5 += int((t5 == yy[:, None]).any(dim=1).sum())
    return top1, top5, len(y)

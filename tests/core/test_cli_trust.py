"""What the user chose is what runs (issue: trust).

Uses the bundled demo — a real mobilenet_v2 trained at 64×64 on the UCI digits, 98.52 %
top-1 on its 540 images — so a wrong geometry or a wrong data layout shows as a real
accuracy collapse, not as a difference between two random models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quantstudio.cli import main

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"
MODEL = str(DEMO / "model.pth")
DIGITS = DEMO / "digits"


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _copy_classes(dst: Path, mapping: dict[str, str], per_class: int) -> Path:
    """Copy ``per_class`` images of each demo class folder ``src`` into ``dst/mapping[src]``."""
    for src, name in mapping.items():
        (dst / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((DIGITS / src).iterdir())[:per_class]:
            shutil.copy(p, dst / name / p.name)
    return dst


def test_resize_without_input_shape_runs_the_model_at_the_resized_size(capsys):
    """A state_dict records no size: --resize 64 must not become 224 with zero padding."""
    base = ["evaluate", MODEL, "--arch", "mobilenet_v2", "--data", str(DIGITS), "--samples", "200", "--json"]
    resized = _json(capsys, base + ["--resize", "64"])
    given = _json(capsys, base + ["--input-shape", "1,3,64,64"])
    assert resized["input_shape"] == [1, 3, 64, 64]
    assert resized["top1"] == given["top1"] and resized["confusion"] == given["confusion"]
    assert resized["top1"] > 0.95  # the demo's real accuracy, not chance
    assert resized["preprocessing"]["steps"][:2] == ["resize shorter side to 64", "center crop 64x64"]
    assert any("follows the resize" in n for n in resized["notes"])
    assert not resized["warnings"]


def test_crop_larger_than_resize_is_refused_naming_both_sizes(capsys):
    argv = ["evaluate", MODEL, "--arch", "mobilenet_v2", "--data", str(DIGITS), "--resize", "64", "--crop", "96"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "96x96" in err and "shorter side 64" in err and "Traceback" not in err


def test_scrambled_class_folders_are_flagged_as_near_chance(tmp_path, capsys):
    shuffled = _copy_classes(tmp_path / "scrambled", {str(i): str((i + 3) % 10) for i in range(10)}, 6)
    out = _json(capsys, ["evaluate", MODEL, "--arch", "mobilenet_v2", "--input-shape", "1,3,64,64",
                         "--data", str(shuffled), "--json"])
    assert out["top1"] < 0.15
    assert any("near chance" in w and "class folder i holds the model's class i" in w for w in out["warnings"])


def test_eleven_class_folders_for_a_ten_output_model_are_flagged_before_the_run(tmp_path, capsys):
    mapping = {str(i): str(i) for i in range(10)}
    data = _copy_classes(tmp_path / "eleven", mapping, 3)
    _copy_classes(data, {"3": "10"}, 2)
    assert main(["evaluate", MODEL, "--arch", "mobilenet_v2", "--input-shape", "1,3,64,64", "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "the model has 10 outputs but the data has 11 classes" in err
    assert "class 10 has no model output (the model has 10: 0..9)" in err


def test_split_folders_are_refused_before_any_work(tmp_path, capsys):
    _copy_classes(tmp_path / "images" / "train", {"0": "0", "1": "1"}, 2)
    _copy_classes(tmp_path / "images" / "val", {"0": "0", "1": "1"}, 2)
    argv = ["quantize", MODEL, "--arch", "mobilenet_v2", "--data", str(tmp_path / "images"),
            "--out", str(tmp_path / "out.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train/, val/" in err and "look like dataset splits" in err and "--eval-data" in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine,suffix", [("onnxruntime", ".onnx"), ("torch", ".pth")])
def test_quantize_with_resize_only_exports_at_the_resized_size(tmp_path, capsys, engine, suffix):
    out = tmp_path / f"demo{suffix}"
    d = _json(capsys, ["quantize", MODEL, "--arch", "mobilenet_v2", "--data", str(DIGITS), "--resize", "64",
                       "--engine", engine, "--calib-samples", "32", "--eval-samples", "96", "--no-benchmark",
                       "--out", str(out), "--json"])
    assert d["input_shape"] == [1, 3, 64, 64]
    assert d["original"]["top1"] > 0.95 and d["quantized"]["top1"] > 0.9
    assert d["original"]["n"] == 96 and "96 samples of 540 images" in d["evaluation_data"]
    assert "not used for calibration" in d["evaluation_data"]
    recipe = json.loads(out.with_name("demo.recipe.json").read_text())
    assert recipe["model"]["input_shape"] == [1, 3, 64, 64]
    assert recipe["preprocessing"]["steps"][:2] == ["resize shorter side to 64", "center crop 64x64"]
    if engine == "onnxruntime":
        import onnx

        dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3, 64, 64]
    else:
        import torch

        loaded = torch.jit.load(str(out))
        assert loaded(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.slow
def test_separate_evaluation_folder(tmp_path, capsys):
    train = _copy_classes(tmp_path / "train", {str(i): str(i) for i in range(10)}, 8)
    val = _copy_classes(tmp_path / "val", {str(i): str(i) for i in range(10)}, 30)
    for folder in val.iterdir():  # disjoint from train: drop the 8 images train took
        for p in sorted(folder.iterdir())[:8]:
            p.unlink()
    out = tmp_path / "m.onnx"
    d = _json(capsys, ["quantize", MODEL, "--arch", "mobilenet_v2", "--input-shape", "1,3,64,64",
                       "--data", str(train), "--eval-data", str(val), "--no-benchmark", "--out", str(out), "--json"])
    n_val = sum(1 for _ in val.rglob("*.png"))
    assert d["calibration_samples"] == 80  # every train image; none held back
    assert d["original"]["n"] == d["quantized"]["n"] == n_val
    assert d["evaluation_data"].startswith(f"{n_val} samples of {n_val} images") and str(val) in d["evaluation_data"]
    recipe = json.loads(out.with_name("m.recipe.json").read_text())
    assert recipe["data"]["evaluation_spec"] == str(val.resolve())


def test_images_of_one_size_give_the_input_size_and_tiny_ones_do_not(tmp_path):
    from PIL import Image

    from quantstudio.core.data import Preprocessing
    from quantstudio.core.geometry import resolve_input_shape
    from quantstudio.core.loading import load_model

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((48, 40, 3), i * 50, np.uint8)).save(folder / f"{i}.png")
    model = load_model(MODEL, arch="mobilenet_v2")
    assert model.input_shape == (1, 3, 224, 224) and model.input_shape_guessed
    notes = resolve_input_shape(model, Preprocessing(), tmp_path / "imgs")
    assert model.input_shape == (1, 3, 48, 40) and "all 48x40" in notes[0]
    small = load_model(MODEL, arch="mobilenet_v2")
    notes = resolve_input_shape(small, Preprocessing(), DIGITS)  # the demo's 8x8 digits
    assert small.input_shape == (1, 3, 224, 224) and "too small" in notes[0]
    given = load_model(MODEL, arch="mobilenet_v2", input_shape=(1, 3, 64, 64))
    assert resolve_input_shape(given, Preprocessing(resize=32), None) == [] and given.input_shape == (1, 3, 64, 64)

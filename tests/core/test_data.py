"""Data sources, preprocessing, batching and splits (quantstudio.core.data)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from quantstudio.core import data as data_mod
from quantstudio.core.data import (
    IMAGE_EXTENSIONS,
    KIND_CLASS_FOLDERS,
    KIND_IMAGE_FOLDER,
    RANDOM_DATA_NOTE,
    Preprocessing,
    choose_samples,
    make_split,
    open_data,
    parse_floats,
    parse_size,
)
from quantstudio.core.data import image_folders
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import RecordingContext

SHAPE = (1, 3, 8, 8)


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def class_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, n in counts.items():
        for i in range(n):
            save_image(root / name / f"{i:03d}{ext}", seed=sum(map(ord, name)) * 100 + i)
    return root


# --------------------------------------------------------------------------- scanning


def test_class_folders_take_labels_from_sorted_folder_names(tmp_path):
    class_folder(tmp_path, {"dog": 2, "cat": 3, "bird": 1})
    src = open_data(tmp_path, input_shape=SHAPE)
    assert src.kind == KIND_CLASS_FOLDERS
    assert len(src) == 6
    assert src.class_names == {0: "bird", 1: "cat", 2: "dog"}
    assert src.targets.tolist() == [0, 1, 1, 1, 2, 2]
    assert src.sample_path(0).endswith("bird/000.png")
    assert src.num_classes == 3


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        save_image(tmp_path / f"img{i}.jpg")
    src = open_data(tmp_path, input_shape=SHAPE)
    assert src.kind == KIND_IMAGE_FOLDER
    assert not src.labeled and src.targets is None
    assert len(src) == 3
    x, kept, skipped = src.read(np.arange(3))
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32 and not skipped


def test_numeric_class_folders_map_to_outputs_by_value(tmp_path):
    class_folder(tmp_path, {str(i): 1 for i in range(12)})
    src = open_data(tmp_path, input_shape=SHAPE)
    # As text "10" sorts before "2"; the label must still be output 10.
    idx = next(i for i in range(len(src)) if "/10/" in src.sample_path(i).replace("\\", "/"))
    assert src.targets[idx] == 10
    assert src.class_names[10] == "10"
    assert sorted(src.targets.tolist()) == list(range(12))


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    class_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / "._000.png").write_bytes(b"\0\0")  # macOS resource fork
    (tmp_path / ".ipynb_checkpoints").mkdir()
    save_image(tmp_path / "loose.png")
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src) == 4 and set(src.class_names.values()) == {"a", "b"}
    assert any("not images" in n for n in src.notes)
    assert any("directly in" in n for n in src.notes)


def test_every_image_format_is_read(tmp_path):
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        save_image(tmp_path / "c" / f"img{i}{ext}", seed=i)
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src) == len(IMAGE_EXTENSIONS) == 7
    x, kept, skipped = src.read(np.arange(len(src)))
    assert skipped == []
    assert x.shape == (7, 3, 8, 8)
    assert np.isfinite(x).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_modes_are_converted_to_the_model_channels(tmp_path, mode, channels):
    save_image(tmp_path / f"img.png", mode=mode)
    src = open_data(tmp_path, input_shape=(1, channels, 8, 8))
    x, _, skipped = src.read(np.arange(1))
    assert not skipped
    assert x.shape == (1, channels, 8, 8)


def test_grayscale_image_gives_equal_rgb_channels(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    src = open_data(tmp_path, input_shape=SHAPE, preprocessing=Preprocessing(mean=(0,), std=(1,)))
    x, _, _ = src.read(np.arange(1))
    np.testing.assert_allclose(x, 128 / 255, rtol=1e-6)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "deep.png")
    src = open_data(tmp_path, input_shape=(1, 1, 8, 8), preprocessing=Preprocessing(mean=(0,), std=(1,)))
    x, _, _ = src.read(np.arange(1))
    assert 0.45 < float(x.mean()) < 0.55


def test_corrupt_and_empty_images_are_skipped_and_counted(tmp_path):
    class_folder(tmp_path, {"a": 3, "b": 3})
    good = (tmp_path / "a" / "000.png").read_bytes()
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src) == 9  # scanning looks at names only
    stream = src.batches(batch_size=4)
    batches = list(stream)
    assert sum(len(b) for b in batches) == 6
    skipped = {Path(s.path).name: s.reason for s in stream.skipped}
    assert set(skipped) == {"empty.png", "truncated.png", "garbage.jpg"}
    assert skipped["empty.png"] == "empty file (0 bytes)"
    for b in batches:
        assert b.x.shape[0] == len(b.indices) == len(b.targets) == len(b.paths)


def test_decoding_is_lazy_batch_by_batch(tmp_path, monkeypatch):
    class_folder(tmp_path, {"a": 5, "b": 5})
    opened: list[str] = []
    real = image_folders._open_image

    def counting(path, channels):
        opened.append(path)
        return real(path, channels)

    monkeypatch.setattr(image_folders, "_open_image", counting)
    src = open_data(tmp_path, input_shape=SHAPE)
    assert opened == []  # scanning decodes nothing
    for n, batch in enumerate(src.batches(batch_size=4), start=1):
        assert len(opened) == min(4 * n, 10)
    assert len(opened) == 10


def test_progress_and_cancel_between_batches(tmp_path):
    class_folder(tmp_path, {"a": 5, "b": 5})
    src = open_data(tmp_path, input_shape=SHAPE)
    ctx = RecordingContext()
    list(src.batches(batch_size=3, ctx=ctx))
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 4

    ctx = RecordingContext(cancel_after=2)
    seen = []
    with pytest.raises(Cancelled):
        for batch in src.batches(batch_size=3, ctx=ctx):
            seen.append(batch)
    assert len(seen) == 2


# --------------------------------------------------------------------------- bad input


def _raises_naming(path: Path, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        open_data(path, input_shape=SHAPE, **kw)
    assert str(path) in str(info.value)
    return info.value


def test_missing_folder(tmp_path):
    err = _raises_naming(tmp_path / "nope")
    assert "no such" in err.message


def test_empty_folder_and_folder_without_images(tmp_path):
    err = _raises_naming(tmp_path)
    assert "no images" in err.message
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("x")
    err = _raises_naming(tmp_path)
    assert "none of its 2 files is an image" in err.message


def test_empty_class_folder_is_skipped_with_a_warning_and_keeps_numbering(tmp_path):
    class_folder(tmp_path, {"a": 2, "c": 3})
    (tmp_path / "b").mkdir()
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src) == 5
    assert any("class folder b" in w and "no images" in w for w in src.warnings)
    # "c" stays output 2: dropping the empty "b" would have renumbered it to 1.
    assert src.class_names == {0: "a", 1: "b", 2: "c"}
    assert sorted(set(src.targets.tolist())) == [0, 2]


def test_split_folders_are_refused_naming_the_split(tmp_path):
    class_folder(tmp_path / "train", {"0": 2, "1": 2})
    class_folder(tmp_path / "val", {"0": 1, "1": 1})
    err = _raises_naming(tmp_path)
    assert "train/, val/" in err.message and "dataset splits" in err.message
    assert str(tmp_path / "train") in err.hint and "--eval-data" in err.hint


def test_symlink_loop_in_a_class_folder_is_not_followed(tmp_path):
    class_folder(tmp_path, {"3": 3, "4": 3})
    os.symlink("..", tmp_path / "4" / "loop")
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src) == 6  # not 1,230: the link back to the root is not entered
    assert any("symbolic link" in w and "not followed" in w for w in src.warnings)


def test_crop_larger_than_resize_is_refused_not_padded(tmp_path):
    class_folder(tmp_path, {"a": 1})
    with pytest.raises(InputError) as info:
        open_data(tmp_path, input_shape=SHAPE, preprocessing=Preprocessing(resize=8, crop=12)).read(np.arange(1))
    assert "12x12" in info.value.message and "shorter side 8" in info.value.message
    # An int resize smaller than the model's recorded input would be cropped up: refused too.
    with pytest.raises(InputError) as info:
        open_data(tmp_path, input_shape=(1, 3, 32, 32), preprocessing=Preprocessing(resize=16))
    assert "would pad" in info.value.message and "32x32" in info.value.message


def test_preprocessing_steps_list_what_runs():
    assert Preprocessing(resize=64).steps(None) == [
        "resize shorter side to 64", "center crop 64x64", "scale pixels to 0..1", "normalize with ImageNet mean/std"]
    assert Preprocessing().steps((32, 40))[:2] == ["resize to 32x40", "scale pixels to 0..1"]
    assert "center crop 224x224" in Preprocessing.imagenet().describe((224, 224))


def test_single_image_and_unknown_file(tmp_path):
    img = save_image(tmp_path / "one.png")
    assert "single image" in _raises_naming(img).message
    other = tmp_path / "data.csv"
    other.write_text("1,2")
    assert "not a data format" in _raises_naming(other).message


def test_model_with_four_channels_cannot_read_images(tmp_path):
    class_folder(tmp_path, {"a": 1})
    with pytest.raises(InputError, match="4 input channels"):
        open_data(tmp_path, input_shape=(1, 4, 8, 8))


# --------------------------------------------------------------------------- tensor files


def test_npy_nchw_float_without_labels(tmp_path):
    arr = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    src = open_data(tmp_path / "x.npy", input_shape=SHAPE)
    assert len(src) == 5 and not src.labeled
    x, kept, _ = src.read(np.array([1, 3]))
    np.testing.assert_array_equal(x, arr[[1, 3]])  # float tensors are used as they are
    assert kept.tolist() == [1, 3]


@pytest.mark.parametrize("label_key", ["labels", "y"])
def test_npz_nhwc_uint8_with_labels(tmp_path, label_key):
    arr = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=arr, **{label_key: np.array([0, 1, 2, 0, 1, 2])})
    prep = Preprocessing(mean=(0.0,), std=(1.0,))
    src = open_data(tmp_path / "d.npz", input_shape=SHAPE, preprocessing=prep)
    assert src.targets.tolist() == [0, 1, 2, 0, 1, 2]
    x, _, _ = src.read(np.arange(2))
    # uint8 are pixels: scaled to 0..1 and moved to channels-first.
    np.testing.assert_allclose(x, arr[:2].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)


def test_npz_uint8_pixels_are_resized_and_normalized(tmp_path):
    arr = np.full((2, 1, 4, 4), 255, np.uint8)
    np.savez(tmp_path / "d.npz", x=arr)
    src = open_data(tmp_path / "d.npz", input_shape=SHAPE)
    x, _, _ = src.read(np.arange(2))
    assert x.shape == (2, 3, 8, 8)
    expected = (1.0 - np.array(data_mod.IMAGENET_MEAN)) / np.array(data_mod.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-5)


def test_pt_dict_and_plain_tensor(tmp_path):
    import torch

    images = torch.randn(4, 3, 8, 8)
    torch.save({"images": images, "labels": torch.tensor([3, 1, 0, 2])}, tmp_path / "d.pt")
    src = open_data(tmp_path / "d.pt", input_shape=SHAPE)
    assert src.targets.tolist() == [3, 1, 0, 2]
    np.testing.assert_array_equal(src.read(np.arange(4))[0], images.numpy())

    torch.save({"x": images, "y": torch.tensor([0, 0, 1, 1])}, tmp_path / "xy.pt")
    assert open_data(tmp_path / "xy.pt", input_shape=SHAPE).targets.tolist() == [0, 0, 1, 1]

    torch.save(images, tmp_path / "t.pt")
    assert not open_data(tmp_path / "t.pt", input_shape=SHAPE).labeled


def test_pt_with_python_objects_is_refused(tmp_path):
    import torch

    torch.save({"images": torch.zeros(2, 3, 8, 8), "meta": argparse.Namespace(a=1)}, tmp_path / "bad.pt")
    err = _raises_naming(tmp_path / "bad.pt")
    assert "not loaded for safety" in err.message


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 8), np.float32)}, "rank 2"),
        ({"images": np.zeros((4, 5, 8, 7), np.float32)}, "neither axis 1 nor axis 3"),
        ({"images": np.zeros((4, 3, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "3 labels for 4 images"),
        ({"images": np.zeros((2, 3, 8, 8), np.float32), "labels": np.array([0, -1])}, "negative"),
        ({"images": np.zeros((2, 3, 8, 8), np.float32), "labels": np.array([0.5, 1])}, "whole numbers"),
        ({"a": np.zeros((2, 3, 8, 8)), "b": np.zeros((2, 3, 8, 8))}, "cannot tell which array"),
        ({"images": np.zeros((0, 3, 8, 8), np.float32)}, "no samples"),
    ],
)
def test_bad_tensor_files(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    err = _raises_naming(tmp_path / "bad.npz")
    assert message in err.message


def test_empty_and_damaged_tensor_files(tmp_path):
    (tmp_path / "e.npy").write_bytes(b"")
    assert "empty" in _raises_naming(tmp_path / "e.npy").message
    (tmp_path / "d.npy").write_bytes(b"\x93NUMPY garbage")
    assert "damaged" in _raises_naming(tmp_path / "d.npy").message
    (tmp_path / "g.pt").write_bytes(b"\x80\x02 not a torch file" * 4)
    assert "damaged" in _raises_naming(tmp_path / "g.pt").message


def test_channel_adaptation_of_tensor_files(tmp_path):
    np.save(tmp_path / "gray.npy", np.ones((2, 8, 8), np.float32))
    x, _, _ = open_data(tmp_path / "gray.npy", input_shape=SHAPE).read(np.arange(2))
    assert x.shape == (2, 3, 8, 8)
    np.save(tmp_path / "rgba.npy", np.ones((2, 4, 8, 8), np.float32))
    x, _, _ = open_data(tmp_path / "rgba.npy", input_shape=SHAPE).read(np.arange(2))
    assert x.shape == (2, 3, 8, 8)


# --------------------------------------------------------------------------- random


def test_random_data_is_flagged_and_deterministic():
    src = open_data("random", input_shape=SHAPE, random_samples=10, seed=3)
    assert src.is_random and RANDOM_DATA_NOTE in src.warnings
    assert "accuracy not meaningful" in src.describe()
    whole = np.concatenate([b.x for b in src.batches(batch_size=10)])
    pieces = np.concatenate([b.x for b in src.batches(batch_size=3)])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.shape == (10, 3, 8, 8)
    with pytest.raises(InputError, match="input shape"):
        open_data("random", input_shape=None)


# --------------------------------------------------------------------------- preprocessing


def test_default_preprocessing_is_exactly_resize_totensor_normalize(tmp_path):
    from PIL import Image
    from torchvision import transforms as T

    path = save_image(tmp_path / "img.png", size=(30, 17))
    src = open_data(tmp_path, input_shape=(1, 3, 12, 10))
    x, _, _ = src.read(np.arange(1))
    ref = T.Compose([T.Resize((12, 10)), T.ToTensor(), T.Normalize(data_mod.IMAGENET_MEAN, data_mod.IMAGENET_STD)])
    with Image.open(path) as im:
        expected = ref(im.convert("RGB")).numpy()
    np.testing.assert_array_equal(x[0], expected)


def test_imagenet_preset_and_custom_options(tmp_path):
    save_image(tmp_path / "img.png", size=(300, 260))
    src = open_data(tmp_path, input_shape=(1, 3, 224, 224), preprocessing=Preprocessing.from_preset("imagenet"))
    assert src.read(np.arange(1))[0].shape == (1, 3, 224, 224)
    assert Preprocessing.imagenet().preset_name == "imagenet"
    assert Preprocessing().preset_name == "default"

    prep = Preprocessing(resize=(20, 16), crop=8, mean=(0.0,), std=(1.0,))
    bgr = Preprocessing(resize=(20, 16), crop=8, mean=(0.0,), std=(1.0,), channel_order="bgr")
    rgb = open_data(tmp_path, input_shape=SHAPE, preprocessing=prep).read(np.arange(1))[0]
    flipped = open_data(tmp_path, input_shape=SHAPE, preprocessing=bgr).read(np.arange(1))[0]
    np.testing.assert_array_equal(rgb[:, ::-1], flipped)

    # An int resize alone is followed by a crop to the model's size, so batches stack.
    src = open_data(tmp_path, input_shape=SHAPE, preprocessing=Preprocessing(resize=10))
    assert src.read(np.arange(1))[0].shape == (1, 3, 8, 8)
    big = open_data(tmp_path, input_shape=SHAPE, preprocessing=Preprocessing.imagenet())
    assert any("224x224" in w for w in big.warnings)


def test_preprocessing_json_round_trip_and_validation():
    for prep in (Preprocessing(), Preprocessing.imagenet(), Preprocessing(resize=(32, 48), mean=(0.5,), std=(0.25,), channel_order="BGR")):
        d = json.loads(json.dumps(prep.to_dict()))
        assert Preprocessing.from_dict(d) == prep
    assert Preprocessing().mean_std(1) == ([pytest.approx(sum(data_mod.IMAGENET_MEAN) / 3)], [pytest.approx(sum(data_mod.IMAGENET_STD) / 3)])
    with pytest.raises(InputError):
        Preprocessing.from_dict({"resize": -3})
    with pytest.raises(InputError):
        Preprocessing.from_dict({"std": [0.0, 1, 1]})
    with pytest.raises(InputError):
        Preprocessing.from_dict({"colour": "RGB"})
    with pytest.raises(InputError):
        Preprocessing(mean=(0.1, 0.2)).mean_std(3)
    with pytest.raises(InputError):
        Preprocessing.from_preset("coco")
    assert parse_size("224") == 224 and parse_size("224,320") == (224, 320) and parse_size("7x9") == (7, 9)
    assert parse_floats("0.5, 0.25", "mean") == (0.5, 0.25)
    with pytest.raises(InputError):
        parse_size("big")
    with pytest.raises(InputError):
        parse_floats("a,b", "std")


# --------------------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_stratified():
    targets = np.repeat(np.arange(4), [40, 30, 20, 10])
    a = make_split(100, targets, calibration=20, evaluation=50, seed=1)
    b = make_split(100, targets, calibration=20, evaluation=50, seed=1)
    c = make_split(100, targets, calibration=20, evaluation=50, seed=2)
    assert a.calibration.tolist() == b.calibration.tolist() and a.evaluation.tolist() == b.evaluation.tolist()
    assert a.calibration.tolist() != c.calibration.tolist()
    assert len(a.calibration) == 20 and len(a.evaluation) == 50
    assert not set(a.calibration) & set(a.evaluation)
    assert np.bincount(targets[a.calibration]).tolist() == [8, 6, 4, 2]
    assert np.bincount(targets[a.evaluation]).tolist() == [20, 15, 10, 5]
    json.dumps(a.to_dict())


def test_split_evaluation_defaults_and_edge_cases():
    targets = np.repeat(np.arange(3), 10)
    rest = make_split(30, targets, calibration=6, evaluation=None)
    assert len(rest.evaluation) == 24
    assert make_split(30, targets, calibration=6).evaluation.size == 24  # cap 1000 > what is left
    small = make_split(30, targets, calibration=2, evaluation=2)
    assert len(small.calibration) == 2 and len(small.evaluation) == 2
    unlabeled = make_split(30, None, calibration=10, evaluation=5, seed=0)
    assert len(unlabeled.calibration) == 10 and len(unlabeled.evaluation) == 5
    everything = make_split(30, targets, calibration=50)
    assert len(everything.calibration) == 30 and len(everything.evaluation) == 0 and everything.notes
    # A capped subset keeps every class, even a rare one.
    rare = np.array([0] * 98 + [1, 2])
    assert set(targets_of(rare, make_split(100, rare, calibration=0, evaluation=5).evaluation)) == {0, 1, 2}


def targets_of(targets, idx):
    return targets[idx].tolist()


def test_choose_samples_all_or_stratified(tmp_path):
    targets = np.repeat(np.arange(2), 10)
    assert choose_samples(20, targets, None).tolist() == list(range(20))
    chosen = choose_samples(20, targets, 6, seed=4)
    assert np.bincount(targets[chosen]).tolist() == [3, 3]
    assert chosen.tolist() == choose_samples(20, targets, 6, seed=4).tolist()
    class_folder(tmp_path, {"a": 3, "b": 3})
    src = open_data(tmp_path, input_shape=SHAPE)
    assert len(src.choose(4)) == 4 and len(src.split(calibration=2, evaluation=None).evaluation) == 4


def test_non_finite_tensors_and_huge_sizes_are_refused_by_name(tmp_path):
    x = np.zeros((4, 3, 8, 8), np.float32)
    x[2, 0, 1, 1] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, x)
    src = open_data(path, input_shape=SHAPE)
    with pytest.raises(InputError) as info:
        src.read(np.arange(4))
    assert str(path) in str(info.value) and "NaN or infinite" in info.value.message and "sample 2" in info.value.message
    with pytest.raises(InputError, match="larger than 8192"):
        Preprocessing(resize=100000)
    with pytest.raises(InputError, match="larger than 8192"):
        Preprocessing(crop=(64, 100000))

"""Data for calibration and evaluation: image folders, tensor files, random input.

A :class:`DataSource` knows *which* samples exist (file names, array rows) and their
labels, but decodes nothing until a batch is asked for: a 50,000-image folder costs a
list of file names until :meth:`DataSource.batches` streams it, one batch at a time,
with progress and cancellation through a :class:`~quantstudio.core.jobs.JobContext`.

Sources (see :func:`open_data`):

* a folder with one sub-folder per class (labels = sorted sub-folder names, as
  torchvision's ``ImageFolder`` does; numeric names map to model outputs by value);
* a flat folder of images (no labels: calibration and agreement only);
* ``.npy`` / ``.npz`` / ``.pt`` tensor files, optionally with labels;
* synthetic random input for speed-only runs (``is_random``: accuracy means nothing).

Unreadable images are skipped and listed (:class:`SkippedFile`), never fatal.
Labels are kept as *model output indices* (``targets``), so evaluation never has to
know how a folder was named.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
TENSOR_EXTENSIONS = (".npy", ".npz", ".pt", ".pth")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_DATA_NOTE = "random data — accuracy not meaningful"
RANDOM_SPEC = "random"

# Larger sizes are refused: a resize of 100000 grew the process to 23.5 GB before the
# kernel killed it. The recipe schema uses the same limit.
MAX_IMAGE_SIDE = 8192

DEFAULT_CALIBRATION_SAMPLES = 256
DEFAULT_EVALUATION_SAMPLES = 1000
DEFAULT_BATCH_SIZE = 32

KIND_CLASS_FOLDERS = "class_folders"
KIND_IMAGE_FOLDER = "image_folder"
KIND_TENSOR_FILE = "tensor_file"
KIND_RANDOM = "random"

_IMAGE_KEYS = ("images", "x", "data", "inputs")
_LABEL_KEYS = ("labels", "y", "targets")
_EXTS_TEXT = ", ".join(IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Preprocessing:
    """How images become model input. ``resize=None`` means "the model's (H, W)".

    ``resize`` as an int scales the shorter side (torchvision semantics); as (h, w) it
    resizes exactly. An int resize without ``crop`` is followed by a center crop to the
    model's (H, W), because images of different aspect ratios would otherwise come out
    in different sizes and could not form a batch. ``mean``/``std`` are given in the
    model's channel order (after the optional RGB→BGR swap).
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        self.resize = _check_size(self.resize, "resize")
        self.crop = _check_size(self.crop, "crop")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.channel_order = str(self.channel_order).upper()
        if not self.mean or not self.std:
            raise InputError("the preprocessing mean and std must not be empty", hint="Give e.g. --mean 0.485,0.456,0.406.")
        if any(s <= 0 for s in self.std):
            raise InputError(f"the preprocessing std {list(self.std)} has a value <= 0", hint="Every std value must be positive.")
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"unknown channel order {self.channel_order!r}", hint="Use RGB or BGR.")

    # -- presets

    @classmethod
    def imagenet(cls) -> Preprocessing:
        """The classic ImageNet evaluation recipe: resize 256, center crop 224."""
        return cls(resize=256, crop=224)

    @classmethod
    def from_preset(cls, name: str) -> Preprocessing:
        presets = {"default": cls, "imagenet": cls.imagenet}
        if name not in presets:
            raise InputError(f"unknown preprocessing preset {name!r}", hint=f"Use one of: {', '.join(presets)}.")
        return presets[name]()

    @property
    def preset_name(self) -> str:
        """'default', 'imagenet' or 'custom' — what a preset picker should show."""
        if self == Preprocessing():
            return "default"
        if self == Preprocessing.imagenet():
            return "imagenet"
        return "custom"

    # -- JSON round trip (the recipe stores this)

    def to_dict(self) -> dict[str, Any]:
        def size(s):
            return list(s) if isinstance(s, tuple) else s

        return {
            "preset": self.preset_name,
            "resize": size(self.resize),
            "crop": size(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        if not isinstance(d, dict):
            raise InputError("the preprocessing settings are not a JSON object", hint="Fix or remove them in the recipe.")
        # "steps" is written for people (what ran), derived from the rest: not read back.
        unknown = set(d) - {"preset", "resize", "crop", "mean", "std", "channel_order", "steps"}
        if unknown:
            raise InputError(
                f"unknown preprocessing settings: {', '.join(sorted(unknown))}",
                hint="Allowed: resize, crop, mean, std, channel_order.",
            )
        base = cls()
        return cls(
            resize=d.get("resize", base.resize),
            crop=d.get("crop", base.crop),
            mean=d.get("mean", base.mean),
            std=d.get("std", base.std),
            channel_order=d.get("channel_order", base.channel_order),
        )

    def describe(self, model_hw: tuple[int, int] | None = None) -> str:
        """Every step applied, in order (see :meth:`steps`), as one line."""
        return ", ".join(self.steps(model_hw))

    def steps(self, model_hw: tuple[int, int] | None = None) -> list[str]:
        """The steps images really go through for a model of input ``model_hw``.

        The same geometry as :meth:`image_transform` (one code path), so what a summary
        says is what runs: e.g. ``["resize shorter side to 64", "center crop 64x64",
        "scale pixels to 0..1", "normalize with ImageNet mean/std"]``.
        """
        try:
            resize, crop = self._geometry(model_hw)
        except InputError:
            resize, crop = self.resize, self.crop
        out = []
        if resize is None:
            out.append("resize to the model's input size")
        elif isinstance(resize, int):
            out.append(f"resize shorter side to {resize}")
        else:
            out.append(f"resize to {_fmt_size(resize)}")
        if crop is not None:
            out.append(f"center crop {_fmt_size(_pair(crop))}")
        out.append("scale pixels to 0..1")
        if self.channel_order == "BGR":
            out.append("swap RGB to BGR")
        if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            out.append("normalize with ImageNet mean/std")
        else:
            out.append(f"normalize with mean {list(self.mean)} std {list(self.std)}")
        return out

    # -- building the transforms

    def output_size(self, model_hw: tuple[int, int] | None) -> tuple[int, int] | None:
        """(H, W) of the tensors this produces, or None when it depends on the image."""
        if self.crop is not None:
            return _pair(self.crop)
        if isinstance(self.resize, tuple):
            return self.resize
        return model_hw

    def _geometry(self, model_hw: tuple[int, int] | None) -> tuple[Any, Any]:
        resize = self.resize if self.resize is not None else model_hw
        crop = self.crop
        implicit_crop = False
        if isinstance(resize, int) and crop is None:
            # Images of other aspect ratios would come out in different sizes: crop to
            # the model's input, or to a square of the resized side when it is unknown.
            crop = model_hw if model_hw is not None else (resize, resize)
            implicit_crop = True
        if resize is None and crop is None:
            raise InputError(
                "the image size to feed the model is unknown",
                hint="Give the model's input shape (--input-shape 1,3,H,W) or a size (--resize H,W).",
            )
        _check_crop_fits(resize, crop, implicit_crop)
        return resize, crop

    def mean_std(self, channels: int) -> tuple[list[float], list[float]]:
        """Mean and std with one value per model channel."""

        def fit(values: tuple[float, ...], name: str) -> list[float]:
            if len(values) == channels:
                return list(values)
            if len(values) == 1:
                return list(values) * channels
            if channels == 1 and len(values) == 3:
                # A grayscale model with RGB statistics: the usual convention is their mean.
                return [sum(values) / 3]
            raise InputError(
                f"the preprocessing {name} has {len(values)} values but the model takes {channels} channels",
                hint=f"Give {channels} comma-separated values (--{name}).",
            )

        return fit(self.mean, "mean"), fit(self.std, "std")

    def image_transform(self, channels: int, model_hw: tuple[int, int] | None) -> Callable:
        """PIL image (already in the model's mode) → float tensor C×H×W.

        The default is exactly Resize((H, W)) (bilinear, antialias), ToTensor(),
        Normalize(mean, std): the bundled demo model is trained with that.
        """
        return self._compose(channels, model_hw, from_pil=True)

    def tensor_transform(self, channels: int, model_hw: tuple[int, int] | None) -> Callable:
        """Float tensor B×C×H×W in 0..1 (decoded pixels) → normalized model input."""
        return self._compose(channels, model_hw, from_pil=False)

    def _compose(self, channels: int, model_hw: tuple[int, int] | None, *, from_pil: bool) -> Callable:
        from torchvision import transforms as T

        resize, crop = self._geometry(model_hw)
        mean, std = self.mean_std(channels)
        steps: list[Any] = []
        if resize is not None:
            steps.append(T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
        if crop is not None:
            steps.append(T.CenterCrop(crop))
        if from_pil:
            steps.append(T.ToTensor())
        if self.channel_order == "BGR" and channels == 3:
            steps.append(T.Lambda(_flip_channels))
        steps.append(T.Normalize(mean, std))
        return T.Compose(steps)


def _check_crop_fits(resize: Any, crop: Any, implicit: bool) -> None:
    """Refuse a center crop larger than the resized image.

    Why: torchvision's CenterCrop pads a too-small image with zeros instead of failing,
    so a 64-pixel image cropped to 224 reaches the model as a small picture in a black
    frame and scores near chance with no error anywhere (found with a digits ResNet-18:
    11.6 % instead of 95.2 % top-1).
    """
    if resize is None or crop is None:
        return
    ch, cw = _pair(crop)
    if isinstance(resize, int):
        too_big = max(ch, cw) > resize
        resized = f"shorter side {resize}"
    else:
        too_big = ch > resize[0] or cw > resize[1]
        resized = _fmt_size(resize)
    if not too_big:
        return
    if implicit:
        raise InputError(
            f"resizing the images ({resized}) and then center-cropping them to the model's input {ch}x{cw} "
            "would pad them with zeros",
            hint=f"Give a resize of at least {max(ch, cw)} (--resize), or the size the model was trained at "
            f"(--input-shape 1,C,H,W).",
        )
    raise InputError(
        f"the center crop {ch}x{cw} is larger than the resized image ({resized}); it would be padded with zeros",
        hint="Give a crop no larger than the resize (--crop), or a larger --resize.",
    )


def _flip_channels(t):
    return t.flip(-3)


def _check_size(value: Any, name: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2:
            try:
                h, w = (int(v) for v in value)
            except (TypeError, ValueError):
                h = w = -1
            if h > 0 and w > 0 and all(float(v) == int(v) for v in value):
                _check_size(h, name)
                _check_size(w, name)
                return (h, w)
            raise InputError(f"the {name} size {list(value)} is not two positive integers", hint=f"Give --{name} N or H,W.")
        else:
            raise InputError(f"the {name} size {list(value)} must be N or H,W", hint=f"Give --{name} N or H,W.")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise InputError(f"the {name} size {value!r} is not a positive integer", hint=f"Give --{name} N or H,W.")
    if int(value) > MAX_IMAGE_SIDE:
        raise InputError(f"the {name} size {int(value)} is larger than {MAX_IMAGE_SIDE} pixels",
                         hint=f"Give --{name} of at most {MAX_IMAGE_SIDE}.")
    return int(value)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def _fmt_size(size: int | tuple[int, int]) -> str:
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def parse_size(text: str, name: str = "resize") -> int | tuple[int, int]:
    """'224' → 224, '224,320' or '224x320' → (224, 320); InputError otherwise."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise InputError(f"'{text}' is not a size", hint=f"Give --{name} as N or H,W (positive integers).")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' → (0.5, 0.5, 0.5); InputError otherwise."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(f"'{text}' is not a list of numbers", hint=f"Give --{name} as comma-separated numbers, e.g. 0.5,0.5,0.5.")
    return values


# --------------------------------------------------------------------------- batches


@dataclass
class SkippedFile:
    """A sample that could not be read; it is left out and reported."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Batch:
    """One decoded batch. ``indices`` are the source's sample numbers of the rows of ``x``."""

    x: np.ndarray  # float32, N×C×H×W
    indices: np.ndarray  # int64
    targets: np.ndarray | None  # model output index per row, when labeled
    paths: list[str] | None

    def __len__(self) -> int:
        return len(self.indices)


class BatchStream:
    """Iterates a subset of a source in batches; collects the files it had to skip.

    Cancellation is checked before each batch is decoded; progress is reported after
    the consumer has handled a batch, so it covers decoding *and* model time.
    """

    def __init__(
        self,
        source: DataSource,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        ctx: JobContext | None = None,
        message: str = "reading data",
    ) -> None:
        if int(batch_size) <= 0:
            raise InputError(f"the batch size must be positive, not {batch_size}", hint="Give --batch-size 1 or more.")
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise ValueError(f"sample indices out of range 0..{len(source) - 1}")
        self.batch_size = int(batch_size)
        self.ctx = ctx or NullContext()
        self.message = message
        self.skipped: list[SkippedFile] = []
        self.samples_read = 0

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        total = len(self.indices)
        for start in range(0, total, self.batch_size):
            self.ctx.check_cancelled()
            wanted = self.indices[start : start + self.batch_size]
            x, kept, skipped = self.source.read(wanted)
            self.skipped.extend(skipped)
            self.samples_read += len(kept)
            if len(kept):
                targets = self.source.targets[kept] if self.source.targets is not None else None
                paths = [p for p in (self.source.sample_path(int(i)) for i in kept) if p is not None] or None
                yield Batch(x=x, indices=kept, targets=targets, paths=paths)
            done = min(start + self.batch_size, total)
            # The message stays the same for the whole stream (the fraction moves), so a
            # log or the CLI shows one line, not one per batch.
            self.ctx.report(done / total, f"{self.message} {total} samples")


# --------------------------------------------------------------------------- sources


class DataSource:
    """Samples that can be read in batches. Subclasses implement :meth:`read`.

    ``targets`` holds, per sample, the model output index it should be classified as
    (None when unlabeled); ``class_names`` maps output index → class name.
    """

    kind: str = ""
    is_random: bool = False

    def __init__(self, path: Path | None, channels: int, model_hw: tuple[int, int] | None, preprocessing: Preprocessing) -> None:
        self.path = path
        self.channels = channels
        self.model_hw = model_hw
        self.preprocessing = preprocessing
        self.targets: np.ndarray | None = None
        self.class_names: dict[int, str] = {}
        self.notes: list[str] = []  # informative, e.g. how classes were mapped
        self.warnings: list[str] = []  # things that can make results wrong

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labeled(self) -> bool:
        return self.targets is not None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.labeled else None

    def sample_path(self, index: int) -> str | None:
        return None

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
        """Decode the given samples: (x float32 N×C×H×W, indices kept, files skipped)."""
        raise NotImplementedError

    def batches(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        ctx: JobContext | None = None,
        message: str = "reading data",
    ) -> BatchStream:
        return BatchStream(self, indices, batch_size=batch_size, ctx=ctx, message=message)

    def split(
        self,
        *,
        calibration: int = DEFAULT_CALIBRATION_SAMPLES,
        evaluation: int | None = DEFAULT_EVALUATION_SAMPLES,
        seed: int = 0,
    ) -> Split:
        return make_split(len(self), self.targets, calibration=calibration, evaluation=evaluation, seed=seed)

    def choose(self, n: int | None = None, *, seed: int = 0) -> np.ndarray:
        """``n`` samples (stratified by class, by ``seed``), or all of them when n is None."""
        return choose_samples(len(self), self.targets, n, seed=seed)

    def describe(self) -> str:
        raise NotImplementedError

    def preprocessing_steps(self) -> list[str]:
        """What each sample goes through before the model sees it, step by step."""
        return self.preprocessing.steps(self.model_hw)

    def _check_output_size(self) -> None:
        size = self.preprocessing.output_size(self.model_hw)
        if size is not None and self.model_hw is not None and tuple(size) != tuple(self.model_hw):
            self.warnings.append(
                f"preprocessing gives {size[0]}x{size[1]} images but the model's input is "
                f"{self.model_hw[0]}x{self.model_hw[1]}"
            )


class ImageFolderSource(DataSource):
    """Image files in a folder: one sub-folder per class, or flat (unlabeled).

    Only file names are scanned up front; images are decoded per batch.
    """

    def __init__(self, root: Path, channels: int, model_hw: tuple[int, int] | None, preprocessing: Preprocessing) -> None:
        super().__init__(root, channels, model_hw, preprocessing)
        if channels not in (1, 3):
            raise InputError(
                f"the model takes {channels} input channels; image files give 1 (grayscale) or 3 (RGB)",
                path=root,
                hint="Use a .npy/.npz/.pt tensor file with the right channel count.",
            )
        self.files: list[str] = []
        self.folder_names: list[str] = []
        try:
            self._scan(root)
        except OSError as exc:
            raise InputError(
                "the folder cannot be read",
                path=root,
                hint="Check that it exists and that you may read it.",
                details=str(exc),
            ) from exc
        preprocessing._geometry(model_hw)  # fail now, not at the first batch, if the size is unknown
        self._check_output_size()
        self._transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.files)

    def sample_path(self, index: int) -> str:
        return self.files[index]

    def describe(self) -> str:
        if self.kind == KIND_CLASS_FOLDERS:
            return f"{len(self.files)} images in {len(self.folder_names)} class folders"
        return f"{len(self.files)} unlabeled images"

    def _scan(self, root: Path) -> None:
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name))
        top_images = sorted(
            e.path for e in os.scandir(root) if e.is_file() and not _hidden(e.name) and _is_image_name(e.name)
        )
        ignored: list[str] = []

        def is_valid_file(p: str) -> bool:
            rel = os.path.relpath(p, root)
            if any(_hidden(part) for part in Path(rel).parts):
                return False
            if _is_image_name(p):
                return True
            ignored.append(rel)
            return False

        samples: list[tuple[str, int]] = []
        loops: list[str] = []
        seen = {_inode(root)} | {_inode(root / name) for name in subdirs}
        for i, name in enumerate(subdirs):
            for path in _walk_files(root / name, seen, loops):
                if is_valid_file(path):
                    samples.append((path, i))
        if loops:
            self.warnings.append(
                f"{len(loops)} symbolic link{'s' if len(loops) > 1 else ''} inside {root} lead{'' if len(loops) > 1 else 's'} "
                f"back into folders already read (e.g. {loops[0]}) and {'were' if len(loops) > 1 else 'was'} not followed, "
                "so no image is counted twice"
            )
        if samples:
            _refuse_split_folders(root, subdirs)
            counts = np.bincount([c for _, c in samples], minlength=len(subdirs))
            empty = [subdirs[i] for i in np.flatnonzero(counts == 0)]
            if empty:
                # Kept as classes: dropping one would renumber the folders after it, and
                # every later class would be scored against the wrong model output.
                shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
                self.warnings.append(
                    f"class folder{'s' if len(empty) > 1 else ''} {shown} in {root} hold{'' if len(empty) > 1 else 's'} "
                    "no images and {} skipped; {} still counted as a class so the other folders keep their numbers".format(
                        "were" if len(empty) > 1 else "was", "they are" if len(empty) > 1 else "it is")
                )
            self.kind = KIND_CLASS_FOLDERS
            self.folder_names = subdirs
            self.files = [p for p, _ in samples]
            self._map_classes(subdirs, np.asarray([c for _, c in samples], dtype=np.int64))
            if top_images:
                self.notes.append(
                    f"{len(top_images)} images directly in {root} were ignored: with class sub-folders "
                    "only the images inside them are used"
                )
        elif top_images:
            self.kind = KIND_IMAGE_FOLDER
            self.files = top_images
            self.notes.append("a flat folder of images has no labels: accuracy cannot be measured")
        else:
            found = sum(1 for e in os.scandir(root) if e.is_file()) + len(ignored)
            what = f"none of its {found} files is an image" if found else "it holds no files"
            raise InputError(
                f"no images found ({what})",
                path=root,
                hint=f"Choose a folder of images ({_EXTS_TEXT}), either flat or with one sub-folder per class.",
            )
        if ignored:
            self.notes.append(f"{len(ignored)} files that are not images were ignored (e.g. {ignored[0]})")

    def _map_classes(self, names: list[str], folder_idx: np.ndarray) -> None:
        values = [int(n) for n in names] if all(re.fullmatch(r"\d+", n) for n in names) else None
        if values is not None and len(set(values)) == len(values):
            # Folders named by number ("0".."9", "10", ...): the number is the output index,
            # whatever order the names sort in as text.
            lut = np.asarray(values, dtype=np.int64)
            self.class_names = {v: n for v, n in zip(values, names)}
            if values != list(range(len(values))):
                self.notes.append("class folders are named by number: each is mapped to the model output of that number")
        else:
            lut = np.arange(len(names), dtype=np.int64)
            self.class_names = dict(enumerate(names))
        self.targets = lut[folder_idx]

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
        if self._transform is None:
            self._transform = self.preprocessing.image_transform(self.channels, self.model_hw)
        tensors, kept, skipped = [], [], []
        for i in indices:
            path = self.files[int(i)]
            try:
                img = _open_image(path, self.channels)
                t = self._transform(img)
            except Exception as exc:  # noqa: BLE001 - a damaged file can raise anything; skip it
                skipped.append(SkippedFile(path, _skip_reason(path, exc)))
                continue
            tensors.append(t.numpy())
            kept.append(int(i))
        if not tensors:
            return _empty_batch(self.channels), np.zeros(0, np.int64), skipped
        return np.stack(tensors).astype(np.float32, copy=False), np.asarray(kept, np.int64), skipped


def _walk_files(folder: Path, seen: set[tuple[int, int]], loops: list[str]) -> list[str]:
    """Files under ``folder`` in sorted order, following symbolic links once.

    Written here rather than with torchvision's ``make_dataset`` because that follows
    links without remembering where it has been: a link back to a parent folder
    (``4/loop -> ..``) made 30 images count as 1,230. A folder already in ``seen`` (device
    and inode: the data root, every class folder, every folder walked) is not entered
    again, and its path is reported in ``loops``.
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            try:
                sd = os.stat(full)
            except OSError:  # a dangling link
                continue
            if (sd.st_dev, sd.st_ino) in seen:
                loops.append(full)
            else:
                seen.add((sd.st_dev, sd.st_ino))
                keep.append(d)
        dirnames[:] = keep
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "eval", "evaluation", "calib",
               "calibration", "dev"}


def _refuse_split_folders(root: Path, subdirs: list[str]) -> None:
    """Sub-folders that are all dataset splits (train/, val/) are not classes."""
    if subdirs and all(name.lower() in SPLIT_NAMES for name in subdirs):
        names = ", ".join(f"{n}/" for n in subdirs)
        first = root / subdirs[0]
        raise InputError(
            f"the sub-folders {names} look like dataset splits, not classes (each sub-folder would be "
            f"scored as one class, {len(subdirs)} in all)",
            path=root,
            hint=f"Choose the split itself, e.g. {first} (its sub-folders are the classes); with the CLI, "
            "calibrate on one split (--data) and evaluate on another (--eval-data).",
        )


def _hidden(name: str) -> bool:
    # ".DS_Store", "._x.png" (macOS), ".ipynb_checkpoints", "__MACOSX": never data.
    return name.startswith(".") or name.startswith("__")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _open_image(path: str, channels: int):
    """Decode one image into mode 'L' (1 channel) or 'RGB' (3 channels)."""
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns about palette transparency and large images; the pixels are fine.
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                # 16-bit grayscale: Pillow's convert("L") would clip at 255 (all white).
                arr = np.asarray(im, dtype=np.float32) / 257.0
                im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
            if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
                # Through RGBA first: Pillow's direct path for transparent palettes warns
                # and may pick a different color. Alpha is then dropped, as for RGBA.
                im = im.convert("RGBA")
            return im.convert("L" if channels == 1 else "RGB")


def _skip_reason(path: str, exc: BaseException) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    name = type(exc).__name__
    if name == "UnidentifiedImageError":
        return "not a readable image (unknown format or damaged)"
    if isinstance(exc, OSError) and "truncated" in str(exc):
        return "truncated image"
    return f"could not be decoded ({name}: {str(exc)[:200]})"


def _empty_batch(channels: int) -> np.ndarray:
    return np.zeros((0, channels, 1, 1), np.float32)


class TensorFileSource(DataSource):
    """Samples stored as an array: .npy, .npz (key images/x, labels/y) or .pt.

    Layout N×C×H×W or N×H×W×C (N×H×W for one channel). uint8 arrays are pixels and go
    through the preprocessing (scaled to 0..1, resized, normalized); float arrays are
    taken as model input as they are. ``.npy`` files are memory-mapped and ``.pt``
    files loaded with ``mmap=True`` where possible, so a batch reads only its rows.
    """

    kind = KIND_TENSOR_FILE

    def __init__(self, path: Path, channels: int | None, model_hw: tuple[int, int] | None, preprocessing: Preprocessing) -> None:
        images, labels = _load_tensor_file(path)
        images = _as_numpy(images, path, "images")
        if images.ndim not in (3, 4):
            raise InputError(
                f"the images array has shape {_shape_text(images.shape)} (rank {images.ndim}); expected N,C,H,W or N,H,W,C",
                path=path,
                hint="Save a 4-D array of images (N,C,H,W or N,H,W,C).",
            )
        if images.shape[0] == 0:
            raise InputError("the images array holds no samples (N = 0)", path=path, hint="Save at least one image.")
        if images.dtype.kind not in "fui" or images.dtype == np.bool_:
            raise InputError(
                f"the images array has type {images.dtype}; expected float or uint8",
                path=path,
                hint="Save the images as float32 (model input) or uint8 (pixels).",
            )
        self.layout, file_channels = _layout(images.shape, channels, path)
        channels = channels or file_channels
        super().__init__(path, channels, model_hw, preprocessing)
        self._images = images
        self._file_channels = file_channels
        self.is_pixels = images.dtype.kind in "ui"
        if file_channels != channels and not (file_channels == 1 or (channels in (1, 3) and file_channels in (3, 4))):
            raise InputError(
                f"the images have {file_channels} channels but the model takes {channels}",
                path=path,
                hint=f"Save the images with {channels} channels.",
            )
        hw = images.shape[1:3] if self.layout == "NHWC" else images.shape[-2:]
        self._file_hw = (int(hw[0]), int(hw[1]))
        if self.is_pixels:
            preprocessing._geometry(model_hw or tuple(int(d) for d in hw))
            self._check_output_size()
        else:
            self.notes.append("float tensors are fed to the model as they are (no resize or normalization)")
            if model_hw is not None and tuple(hw) != tuple(model_hw):
                self.warnings.append(
                    f"the tensors are {hw[0]}x{hw[1]} but the model's input is {model_hw[0]}x{model_hw[1]}"
                )
        self._transform: Callable | None = None
        if labels is not None:
            self._set_labels(_as_numpy(labels, path, "labels"), path)

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def preprocessing_steps(self) -> list[str]:
        if not self.is_pixels:
            return ["float tensors fed to the model as they are (no resize or normalization)"]
        return self.preprocessing.steps(self.model_hw or self._file_hw)

    def describe(self) -> str:
        kind = "pixel" if self.is_pixels else "tensor"
        return f"{len(self)} {kind} samples{' with labels' if self.labeled else ''}"

    def _set_labels(self, labels: np.ndarray, path: Path) -> None:
        if labels.ndim == 2 and labels.shape[0] == len(self) and labels.shape[1] > 1:
            labels = labels.argmax(axis=1)
            self.notes.append("one-hot labels were converted to class indices")
        labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
        if labels.ndim != 1:
            raise InputError(
                f"the labels array has shape {_shape_text(labels.shape)}; expected one label per sample (N,)",
                path=path,
                hint="Save the labels as a 1-D array of class indices.",
            )
        if len(labels) != len(self):
            raise InputError(
                f"{len(labels)} labels for {len(self)} images",
                path=path,
                hint="Save exactly one label per image.",
            )
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise InputError("the labels are not whole numbers", path=path, hint="Save class indices (0, 1, 2, ...).")
        elif labels.dtype.kind not in "ui":
            raise InputError(f"the labels have type {labels.dtype}", path=path, hint="Save class indices (0, 1, 2, ...).")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise InputError("the labels include negative numbers", path=path, hint="Save class indices (0, 1, 2, ...).")
        self.targets = labels
        self.class_names = {int(v): str(int(v)) for v in np.unique(labels)}

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
        import torch

        indices = np.asarray(indices, np.int64)
        rows = np.asarray(self._images[indices])
        if self.layout == "NHW":
            rows = rows[:, None]
        elif self.layout == "NHWC":
            rows = rows.transpose(0, 3, 1, 2)
        x = rows.astype(np.float32)
        if self.is_pixels:
            x /= 255.0
        x = _adapt_channels(x, self.channels)
        if not self.is_pixels and not np.all(np.isfinite(x)):
            bad = sorted(int(indices[r]) for r in np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
            raise InputError(
                f"the tensors hold NaN or infinite values (sample{'s' if len(bad) > 1 else ''} "
                f"{', '.join(map(str, bad[:5]))}{' …' if len(bad) > 5 else ''})",
                path=self.path,
                hint="Save finite numbers: fix or drop those samples.",
            )
        if self.is_pixels:
            if self._transform is None:
                self._transform = self.preprocessing.tensor_transform(self.channels, self.model_hw or x.shape[-2:])
            x = self._transform(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return np.ascontiguousarray(x, np.float32), indices, []


def _load_tensor_file(path: Path) -> tuple[Any, Any]:
    """(images, labels or None) from .npy / .npz / .pt, as numpy arrays or tensors."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise InputError("the file is empty (0 bytes)", path=path, hint="Save the data again.")
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return _npz_arrays(npz, path)
        return _load_pt(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/zip/torch raise many kinds on bad files
        raise InputError(
            "the file is damaged or not a readable array file",
            path=path,
            hint="Save the data again with numpy.save / numpy.savez / torch.save.",
            details=f"{type(exc).__name__}: {exc}",
        ) from exc


def _npz_arrays(npz: Any, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    # An .npz member is decompressed whole on access: fine for the sizes people save this way.
    keys = list(npz.files)
    label_key = next((k for k in _LABEL_KEYS if k in keys), None)
    image_key = next((k for k in _IMAGE_KEYS if k in keys), None)
    if image_key is None:
        rest = [k for k in keys if k != label_key]
        if len(rest) != 1:
            raise InputError(
                f"cannot tell which array holds the images (keys: {', '.join(keys) or 'none'})",
                path=path,
                hint="Save the images under the key 'images' (or 'x') and the labels under 'labels' (or 'y').",
            )
        image_key = rest[0]
    return npz[image_key], (npz[label_key] if label_key else None)


def _load_pt(path: Path) -> tuple[Any, Any]:
    import pickle

    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a class reference: the bytes are bad
            raise
        raise InputError(
            "the file holds Python objects other than tensors, which are not loaded for safety",
            path=path,
            hint='Save a tensor or a dict {"images": tensor, "labels": tensor} with torch.save.',
            details=str(exc),
        ) from exc
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return obj[0], obj[1]
    if isinstance(obj, dict):
        image_key = next((k for k in _IMAGE_KEYS if k in obj), None)
        label_key = next((k for k in _LABEL_KEYS if k in obj), None)
        if image_key is not None:
            return obj[image_key], (obj[label_key] if label_key else None)
        keys = ", ".join(map(str, obj)) or "none"
        raise InputError(
            f"the dict has no 'images' or 'x' entry (keys: {keys})",
            path=path,
            hint='Save {"images": tensor, "labels": tensor} with torch.save.',
        )
    raise InputError(
        f"the file holds a {type(obj).__name__}, not a tensor",
        path=path,
        hint='Save a tensor or a dict {"images": tensor, "labels": tensor} with torch.save.',
    )


def _as_numpy(a: Any, path: Path, what: str) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch tensor; mmap'd storage stays lazy through .numpy()
        import torch

        t = a.detach().cpu()
        if t.layout != torch.strided:  # sparse (COO, CSR, ...): numpy has no such layout
            dense_bytes = t.numel() * t.element_size()
            if dense_bytes > 4 * 2**30:  # made dense, it must stay well inside RAM
                raise InputError(
                    f"the {what} are a sparse tensor of shape {list(t.shape)}, {dense_bytes / 2**30:.0f} GiB once dense",
                    path=path,
                    hint="Save the samples as an ordinary (dense) tensor of a size that fits in memory.",
                )
            t = t.to_dense()
        if t.is_quantized:
            t = t.dequantize()
        if t.dtype.is_floating_point and t.dtype not in _numpy_float_dtypes():
            t = t.float()  # bfloat16 has no numpy dtype
        return t.numpy()
    raise InputError(f"the {what} are a {type(a).__name__}, not an array", path=path, hint="Save tensors or numpy arrays.")


def _numpy_float_dtypes():
    import torch

    return (torch.float16, torch.float32, torch.float64)


def _layout(shape: tuple[int, ...], channels: int | None, path: Path) -> tuple[str, int]:
    if len(shape) == 3:
        return "NHW", 1
    c_first, c_last = shape[1], shape[3]
    plausible = (1, 3, 4)
    if channels is not None:
        if c_first == channels:
            return "NCHW", c_first
        if c_last == channels:
            return "NHWC", c_last
    if c_first in plausible and c_last not in plausible:
        return "NCHW", c_first
    if c_last in plausible and c_first not in plausible:
        return "NHWC", c_last
    if c_first in plausible:
        return "NCHW", c_first
    want = f"{channels} channels" if channels else "1 or 3 channels"
    raise InputError(
        f"the images array has shape {_shape_text(shape)}; neither axis 1 nor axis 3 has {want}",
        path=path,
        hint="Save the images as N,C,H,W or N,H,W,C with the model's channel count.",
    )


def _adapt_channels(x: np.ndarray, channels: int) -> np.ndarray:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return np.repeat(x, channels, axis=1)
    if c == 4 and channels == 3:
        return x[:, :3]
    if c in (3, 4) and channels == 1:
        # ITU-R 601 luma, the weights Pillow uses for convert("L").
        w = np.asarray([0.299, 0.587, 0.114], np.float32).reshape(1, 3, 1, 1)
        return (x[:, :3] * w).sum(axis=1, keepdims=True)
    raise ValueError(f"cannot turn {c} channels into {channels}")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


class RandomSource(DataSource):
    """Standard-normal input for speed-only runs. Every result says accuracy means nothing.

    Each sample is drawn from its own seed, so sample i is the same whatever the batch.
    """

    kind = KIND_RANDOM
    is_random = True

    def __init__(self, n: int, shape: tuple[int, int, int], seed: int = 0) -> None:
        super().__init__(None, int(shape[0]), (int(shape[1]), int(shape[2])), Preprocessing())
        if int(n) <= 0:
            raise InputError(f"the number of random samples must be positive, not {n}", hint="Give --samples 1 or more.")
        self.n = int(n)
        self.shape = tuple(int(s) for s in shape)
        self.seed = int(seed)
        self.warnings.append(RANDOM_DATA_NOTE)

    def __len__(self) -> int:
        return self.n

    def describe(self) -> str:
        return f"{self.n} random samples ({RANDOM_DATA_NOTE})"

    def preprocessing_steps(self) -> list[str]:
        return ["standard-normal random tensors (no preprocessing)"]

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
        indices = np.asarray(indices, np.int64)
        x = np.empty((len(indices), *self.shape), np.float32)
        for row, i in enumerate(indices):
            x[row] = np.random.default_rng((self.seed, int(i))).standard_normal(self.shape, dtype=np.float32)
        return x, indices, []


def model_fit_warnings(data: DataSource, num_outputs: int | None) -> list[str]:
    """What makes labeled ``data`` unfit for a model with ``num_outputs`` outputs.

    Checked when the data is chosen (data panel, CLI), before any run, so a wrong folder
    is seen before the run reports a near-chance accuracy.
    """
    if not data.labeled or not num_outputs:
        return []
    out = []
    where = f" in {data.path}" if data.path is not None else ""
    n_classes = len(data.class_names)
    if n_classes != num_outputs:
        out.append(
            f"the model has {num_outputs} outputs but the data has {n_classes} classes{where}; "
            "check that the data belongs to this model (class i must be output i)"
        )
    assert data.targets is not None
    beyond = sorted({int(t) for t in np.unique(data.targets) if t >= num_outputs})
    if beyond:
        names = ", ".join(data.class_names.get(t, str(t)) for t in beyond[:5])
        more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
        out.append(
            f"class{'es' if len(beyond) > 1 else ''} {names}{more} ha{'ve' if len(beyond) > 1 else 's'} no model output "
            f"(the model has {num_outputs}: 0..{num_outputs - 1}); {'their' if len(beyond) > 1 else 'its'} samples count as wrong"
        )
    return out


@dataclass
class ImageSizes:
    """Pixel sizes found in a folder (image headers only), and files that are no images."""

    sizes: dict[tuple[int, int], int]  # (height, width) -> how many images
    checked: int
    unreadable: list[SkippedFile] = field(default_factory=list)

    @property
    def common(self) -> tuple[int, int] | None:
        """The one size every readable image has, else None."""
        return next(iter(self.sizes)) if len(self.sizes) == 1 else None


def image_sizes(paths: Sequence[str], ctx: JobContext | None = None) -> ImageSizes:
    """Read the size of each image from its header (cheap: no pixels are decoded)."""
    from PIL import Image

    ctx = ctx or NullContext()
    sizes: dict[tuple[int, int], int] = {}
    unreadable: list[SkippedFile] = []
    for k, path in enumerate(paths):
        if k % 256 == 0:
            ctx.check_cancelled()
            ctx.report(k / max(len(paths), 1), f"checking {len(paths)} images")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    w, h = im.size
        except Exception as exc:  # noqa: BLE001 - a damaged file can raise anything; count it
            unreadable.append(SkippedFile(path, _skip_reason(path, exc)))
            continue
        sizes[(h, w)] = sizes.get((h, w), 0) + 1
    return ImageSizes(sizes=sizes, checked=len(paths), unreadable=unreadable)


def folder_image_sizes(folder: str | Path, limit: int = 200) -> ImageSizes:
    """:func:`image_sizes` of up to ``limit`` images found in ``folder`` and its sub-folders."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not _hidden(f) and _is_image_name(f))
        if len(found) >= limit:
            break
    return image_sizes(found[:limit])


def open_data(
    spec: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    preprocessing: Preprocessing | None = None,
    random_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = 0,
) -> DataSource:
    """Open a folder, a tensor file, or ``"random"`` (when no such path exists).

    ``input_shape`` is the model's (1, C, H, W): it gives the channel count images are
    converted to and the default resize. Raises :class:`InputError` on bad input.
    """
    prep = preprocessing or Preprocessing()
    channels, model_hw = _model_geometry(input_shape)
    path = Path(spec).expanduser()
    if str(spec) == RANDOM_SPEC and not path.exists():
        if channels is None or model_hw is None:
            raise InputError(
                "random data needs the model's input shape",
                hint="Give it with --input-shape 1,C,H,W.",
            )
        return RandomSource(random_samples, (channels, *model_hw), seed=seed)
    if not path.exists():
        raise InputError(
            "no such file or folder",
            path=path,
            hint="Choose a folder of images (one sub-folder per class, or flat) or a .npy/.npz/.pt file.",
        )
    if path.is_dir():
        return ImageFolderSource(path, channels or 3, model_hw, prep)
    suffix = path.suffix.lower()
    if suffix in TENSOR_EXTENSIONS:
        return TensorFileSource(path, channels, model_hw, prep)
    if suffix in IMAGE_EXTENSIONS:
        raise InputError(
            "this is a single image, not a data set",
            path=path,
            hint="Choose the folder that holds the images.",
        )
    raise InputError(
        f"'{path.suffix or path.name}' is not a data format QuantStudio reads",
        path=path,
        hint="Choose a folder of images or a .npy/.npz/.pt tensor file.",
    )


def _model_geometry(input_shape: Sequence[int] | None) -> tuple[int | None, tuple[int, int] | None]:
    if input_shape is None:
        return None, None
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise InputError(
            f"the model's input shape {list(shape)} is not an image shape (N,C,H,W)",
            hint="Image data needs a model with a 4-D input; give --input-shape 1,C,H,W.",
        )
    return shape[1], (shape[2], shape[3])


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Which samples calibrate and which evaluate; disjoint, deterministic by ``seed``."""

    calibration: np.ndarray
    evaluation: np.ndarray
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration": [int(i) for i in self.calibration],
            "evaluation": [int(i) for i in self.evaluation],
            "seed": self.seed,
            "notes": list(self.notes),
        }


def make_split(
    n: int,
    targets: np.ndarray | None = None,
    *,
    calibration: int = DEFAULT_CALIBRATION_SAMPLES,
    evaluation: int | None = DEFAULT_EVALUATION_SAMPLES,
    seed: int = 0,
) -> Split:
    """Calibration subset, then an evaluation subset (capped) from the samples left.

    Both are stratified by class when ``targets`` are given. ``evaluation=None`` means
    every sample not used for calibration.
    """
    if calibration < 0 or (evaluation is not None and evaluation < 0):
        raise InputError("sample counts must not be negative", hint="Give 0 or more samples.")
    rng = np.random.default_rng(seed)
    everything = np.arange(n, dtype=np.int64)
    calib = _stratified_choice(everything, targets, calibration, rng)
    rest = np.setdiff1d(everything, calib, assume_unique=True)
    cap = len(rest) if evaluation is None else evaluation
    evaluate = _stratified_choice(rest, targets, cap, rng)
    notes = []
    if calibration > n:
        notes.append(f"only {n} samples: all of them are used for calibration")
    if len(evaluate) == 0 and cap > 0:
        notes.append("no samples are left for evaluation; lower the number of calibration samples")
    return Split(calibration=calib, evaluation=evaluate, seed=seed, notes=notes)


def choose_samples(n: int, targets: np.ndarray | None, k: int | None, *, seed: int = 0) -> np.ndarray:
    """All ``n`` samples when ``k`` is None (or ≥ n), else ``k`` of them, stratified."""
    everything = np.arange(n, dtype=np.int64)
    if k is None or k >= n:
        return everything
    if k <= 0:
        raise InputError(f"the number of samples must be positive, not {k}", hint="Give --samples 1 or more.")
    return _stratified_choice(everything, targets, k, np.random.default_rng(seed))


def _stratified_choice(candidates: np.ndarray, targets: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``candidates`` (sorted), in proportion to class sizes when labeled."""
    k = min(int(k), len(candidates))
    if k == len(candidates):
        return np.sort(candidates)
    if k <= 0:
        return np.zeros(0, np.int64)
    if targets is None:
        return np.sort(rng.choice(candidates, size=k, replace=False))
    labels = targets[candidates]
    classes, counts = np.unique(labels, return_counts=True)
    if k < len(classes):
        # Too few samples for one per class: one each from the largest classes.
        alloc = np.zeros_like(counts)
        alloc[np.argsort(-counts, kind="stable")[:k]] = 1
    else:
        # One of each class first, so a capped subset still has every class; then the
        # rest in proportion to what is left, by largest remainder.
        left = counts - 1
        extra = k - len(classes)
        quota = extra * left / max(int(left.sum()), 1)
        alloc = np.floor(quota).astype(np.int64)
        short = extra - int(alloc.sum())
        if short > 0:
            order = np.argsort(-(quota - alloc), kind="stable")
            alloc[order[:short]] += 1
        alloc = np.minimum(alloc + 1, counts)
    chosen = [rng.choice(candidates[labels == c], size=int(a), replace=False) for c, a in zip(classes, alloc) if a > 0]
    return np.sort(np.concatenate(chosen)).astype(np.int64)

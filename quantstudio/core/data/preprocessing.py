"""How images become model input: :class:`Preprocessing` and its checks.

One object describes resize, center crop, channel order and normalization; the same
geometry gives the torchvision transforms that run (:meth:`Preprocessing.image_transform`
for decoded images, :meth:`Preprocessing.tensor_transform` for pixel arrays) and the
steps a summary shows (:meth:`Preprocessing.steps`), so what is shown is what runs.
Sizes are checked here too (whole numbers from 1 to :data:`MAX_IMAGE_SIDE`), and a crop
that would pad an image with zeros is refused. torchvision is imported only when a
transform is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from quantstudio.core.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Larger sizes are refused: a resize of 100000 grew the process to 23.5 GB before the
# kernel killed it. The recipe schema uses the same limit.
MAX_IMAGE_SIDE = 8192


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
        presets: dict[str, Callable[[], Preprocessing]] = {"default": cls, "imagenet": cls.imagenet}
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

"""Samples saved as arrays: :class:`TensorFileSource` over ``.npy`` / ``.npz`` / ``.pt`` files.

Images and optional labels are found by key (``images``/``x``, ``labels``/``y``), the
layout (N×C×H×W or N×H×W×C) and channel count are inferred, and rows are read lazily
(memory-mapped where the format allows). ``.pt`` files are loaded with
``weights_only=True``: a file holding other Python objects is refused, not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantstudio.core.data.batches import DataSource, SkippedFile
from quantstudio.core.data.preprocessing import Preprocessing
from quantstudio.core.errors import InputError

TENSOR_EXTENSIONS = (".npy", ".npz", ".pt", ".pth")

KIND_TENSOR_FILE = "tensor_file"

_IMAGE_KEYS = ("images", "x", "data", "inputs")
_LABEL_KEYS = ("labels", "y", "targets")


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
            preprocessing._geometry(model_hw or self._file_hw)
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

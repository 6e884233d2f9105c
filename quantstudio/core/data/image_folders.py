"""Folders of image files: :class:`ImageFolderSource` and image size probing.

A folder holds one sub-folder per class (labels = sorted sub-folder names, as
torchvision's ``ImageFolder`` does; numeric names map to model outputs by value) or
images directly (no labels: calibration and agreement only). Folders walked are
remembered, so a symbolic link back up the tree counts no image twice; sub-folders
that are dataset splits (train/, val/) are refused, not taken as classes. Unreadable
images are skipped and listed (:class:`~quantstudio.core.data.batches.SkippedFile`),
never fatal. :func:`image_sizes` reads only image headers.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from quantstudio.core.data.batches import DataSource, SkippedFile
from quantstudio.core.data.preprocessing import Preprocessing
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

KIND_CLASS_FOLDERS = "class_folders"
KIND_IMAGE_FOLDER = "image_folder"

_EXTS_TEXT = ", ".join(IMAGE_EXTENSIONS)


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
        with Image.open(path) as opened:
            opened.load()
            im: Image.Image = opened
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

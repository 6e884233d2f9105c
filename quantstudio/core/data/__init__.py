"""Data for calibration and evaluation: image folders, tensor files, random input.

The modules, by concern:

* :mod:`~quantstudio.core.data.sources` — :func:`open_data` (a folder, a tensor file
  or ``"random"``), :class:`RandomSource`, :func:`model_fit_warnings`;
* :mod:`~quantstudio.core.data.batches` — :class:`DataSource`, the lazy source every
  kind implements, and the :class:`BatchStream` that reads it with progress and
  cancellation;
* :mod:`~quantstudio.core.data.image_folders` — :class:`ImageFolderSource` and image
  size probing; :mod:`~quantstudio.core.data.tensor_files` — :class:`TensorFileSource`;
* :mod:`~quantstudio.core.data.preprocessing` — :class:`Preprocessing` (resize, crop,
  normalize) and size parsing;
* :mod:`~quantstudio.core.data.splits` — calibration/evaluation subsets.

Importing this package costs numpy, not torch: torch and torchvision are imported only
when tensors are decoded or transforms built (the GUI's settings read the defaults
below at start-up).
"""

from __future__ import annotations

from quantstudio.core.data.batches import DEFAULT_BATCH_SIZE, Batch, BatchStream, DataSource, SkippedFile
from quantstudio.core.data.image_folders import (
    IMAGE_EXTENSIONS,
    KIND_CLASS_FOLDERS,
    KIND_IMAGE_FOLDER,
    SPLIT_NAMES,
    ImageFolderSource,
    ImageSizes,
    folder_image_sizes,
    image_sizes,
)
from quantstudio.core.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_SIDE,
    Preprocessing,
    parse_floats,
    parse_size,
)
from quantstudio.core.data.sources import (
    KIND_RANDOM,
    RANDOM_DATA_NOTE,
    RANDOM_SPEC,
    RandomSource,
    model_fit_warnings,
    open_data,
)
from quantstudio.core.data.splits import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_EVALUATION_SAMPLES,
    Split,
    choose_samples,
    make_split,
)
from quantstudio.core.data.tensor_files import KIND_TENSOR_FILE, TENSOR_EXTENSIONS, TensorFileSource

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CALIBRATION_SAMPLES",
    "DEFAULT_EVALUATION_SAMPLES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "KIND_CLASS_FOLDERS",
    "KIND_IMAGE_FOLDER",
    "KIND_RANDOM",
    "KIND_TENSOR_FILE",
    "MAX_IMAGE_SIDE",
    "RANDOM_DATA_NOTE",
    "RANDOM_SPEC",
    "SPLIT_NAMES",
    "TENSOR_EXTENSIONS",
    "Batch",
    "BatchStream",
    "DataSource",
    "ImageFolderSource",
    "ImageSizes",
    "Preprocessing",
    "RandomSource",
    "SkippedFile",
    "Split",
    "TensorFileSource",
    "choose_samples",
    "folder_image_sizes",
    "image_sizes",
    "make_split",
    "model_fit_warnings",
    "open_data",
    "parse_floats",
    "parse_size",
]

"""Opening data for calibration and evaluation: :func:`open_data`, random input, fit checks.

Sources (see :func:`open_data`):

* a folder with one sub-folder per class, or a flat folder of images
  (:class:`~quantstudio.core.data.image_folders.ImageFolderSource`);
* ``.npy`` / ``.npz`` / ``.pt`` tensor files, optionally with labels
  (:class:`~quantstudio.core.data.tensor_files.TensorFileSource`);
* synthetic random input for speed-only runs (:class:`RandomSource`, ``is_random``:
  accuracy means nothing).

:func:`model_fit_warnings` says when labeled data cannot belong to a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from quantstudio.core.data.batches import DataSource, SkippedFile
from quantstudio.core.data.image_folders import IMAGE_EXTENSIONS, ImageFolderSource
from quantstudio.core.data.preprocessing import Preprocessing
from quantstudio.core.data.splits import DEFAULT_CALIBRATION_SAMPLES
from quantstudio.core.data.tensor_files import TENSOR_EXTENSIONS, TensorFileSource
from quantstudio.core.errors import InputError

RANDOM_DATA_NOTE = "random data — accuracy not meaningful"
RANDOM_SPEC = "random"

KIND_RANDOM = "random"


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

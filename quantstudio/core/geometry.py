"""Which input size a model runs at when its file does not record one.

A state_dict (or a whole pickled model, or TorchScript) does not say what size it was
trained at; torchvision's classifiers take any size. Taking torchvision's published
size (224) silently ran a digits ResNet-18 trained at 64×64 on 224×224 inputs (padded
64-pixel images: 11.6 % top-1 instead of 95.2 %). So a guessed size gives way to what
the user said about the images (``--resize`` / ``--crop``) or, failing that, to the
size the images in the data folder share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantstudio.core.data import Preprocessing, folder_image_sizes
from quantstudio.core.data.preprocessing import _pair

# Torchvision classifiers downsample 32x; a smaller common image size is not taken as
# the model's input size (the images were upsampled in training).
MIN_IMAGE_SIDE = 32


def preprocessing_size(prep: Preprocessing) -> tuple[tuple[int, int] | None, str]:
    """(H, W) the preprocessing produces by itself, and which option says so (None: it does not)."""
    if prep.crop is not None:
        return _pair(prep.crop), "the center crop"
    if isinstance(prep.resize, tuple):
        return prep.resize, "the resize"
    if isinstance(prep.resize, int):
        return (prep.resize, prep.resize), "the resize (shorter side, then a square center crop)"
    return None, ""


def resolve_input_shape(model: Any, prep: Preprocessing, data_spec: str | Path | None = None) -> list[str]:
    """Set ``model``'s input size from the preprocessing or the images when the file has none.

    Only a guessed size (``model.input_shape_guessed``) is replaced; a size the file
    records or the user gave stays. Returns notes that say which size is used and why.
    Raises InputError when the model does not accept the size.
    """
    shape = getattr(model, "input_shape", None)
    if not shape or len(shape) != 4 or not getattr(model, "input_shape_guessed", False):
        return []
    hw, why = preprocessing_size(prep)
    label = getattr(model, "kind_label", "model file")
    current = f"{shape[2]}x{shape[3]}"
    tiny = ""
    if hw is None and data_spec is not None and Path(data_spec).is_dir():
        sizes = folder_image_sizes(data_spec)
        common = sizes.common
        if common is not None and min(common) >= MIN_IMAGE_SIDE:
            hw = common
            why = f"the images in {data_spec} (all {hw[0]}x{hw[1]})"
        elif common is not None:
            # Tiny images (the 8x8 UCI digits) are upsampled in training; their own size
            # would collapse a network that downsamples 32 times.
            tiny = f" (the images are {common[0]}x{common[1]}, too small to be the model's own input)"
    if hw is None:
        return [f"the {label} does not record its input size; {current} is assumed{tiny}. If the model was trained "
                "at another size, give it (--resize N, or --input-shape 1,C,H,W; in the app, when opening)"]
    new = (int(shape[0]), int(shape[1]), int(hw[0]), int(hw[1]))
    if new != tuple(shape):
        model.set_input_shape(new)
    else:
        model.input_shape_guessed = False
    return [f"model input {new[2]}x{new[3]}: the {label} does not record its input size, so it follows {why} "
            "(--input-shape overrides it)"]

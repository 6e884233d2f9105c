"""torchvision classification architectures: list, guess from a state_dict, build.

A state_dict holds weights but not the code of the network, so the user names the
architecture, or we guess it by comparing key names and shapes with each torchvision
model built on the ``meta`` device (no memory, no weights, no download).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from quantstudio.core.errors import ErrorKind, InputError

# Key substrings that point at a family: those candidates are tried first, so a
# typical guess builds a handful of meta models instead of all ~80.
_FAMILY_HINTS: list[tuple[str, tuple[str, ...]]] = [
    ("trunk_output.", ("regnet",)),
    ("conv_proj.", ("vit_",)),
    ("denseblock", ("densenet",)),
    ("Conv2d_1a_3x3", ("inception",)),
    ("inception3a", ("googlenet",)),
    ("stage2.", ("shufflenet",)),
    ("layers.0.", ("mnasnet",)),
    ("relative_position_bias", ("swin", "maxvit")),
    ("layer_scale", ("convnext",)),
    ("squeeze.", ("squeezenet",)),
    (".block.", ("efficientnet", "mobilenet_v3")),
    (".conv.0.0.", ("mobilenet_v2",)),
    ("layer1.0.", ("resnet", "resnext", "wide_resnet")),
    ("classifier.6.", ("vgg", "alexnet")),
]


@dataclass
class ArchGuess:
    arch: str | None
    confidence: float  # 0..1: share of keys that match by name and shape
    num_classes: int | None
    ranking: list[tuple[str, float]] = field(default_factory=list)


def list_architectures() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _no_weight_init():
    """Skip torch.nn.init during construction: the weights are overwritten anyway.

    Used where the meta device cannot build a model (regnet computes its widths with
    tensor ops that meta tensors cannot turn into Python numbers).
    """
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _build(arch: str, num_classes: int | None, device: str):
    import torch
    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if arch.startswith(("inception", "googlenet")):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    with _quiet():
        if device == "meta":
            try:
                with torch.device("meta"):
                    return torchvision.models.get_model(arch, **kwargs)
            except (NotImplementedError, RuntimeError):
                pass
        with _no_weight_init():
            return torchvision.models.get_model(arch, **kwargs)


def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    model = _build(arch, None, "meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _score(sd_shapes: dict[str, tuple[int, ...]], sig: dict[str, tuple[int, ...]]):
    """Share of keys present in both with equal shape (classifier rows may differ)."""
    keys = set(sd_shapes) | set(sig)
    if not keys:
        return 0.0, None
    good = 0
    num_classes = None
    for k in set(sd_shapes) & set(sig):
        a, b = sd_shapes[k], sig[k]
        if a == b:
            good += 1
        elif len(a) == len(b) and a[1:] == b[1:] and b[:1] == (1000,):
            good += 1
            num_classes = a[0]
    return good / len(keys), num_classes


def guess_architecture(state_dict: dict) -> ArchGuess:
    """Best torchvision match for a state_dict, with how sure we are."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    names = list_architectures()
    keys = "\n".join(shapes)
    first: list[str] = []
    for needle, prefixes in _FAMILY_HINTS:
        if needle in keys:
            first += [n for n in names if n.startswith(prefixes) and n not in first]
    ranking: list[tuple[str, float]] = []
    best: tuple[str | None, float, int | None] = (None, 0.0, None)
    for pool in (first, [n for n in names if n not in first]):
        for arch in pool:
            score, nc = _score(shapes, _signature(arch))
            ranking.append((arch, score))
            if score > best[1]:
                best = (arch, score, nc)
        if best[1] >= 0.999:
            break
    ranking.sort(key=lambda t: -t[1])
    found, score, nc = best
    if found is not None and nc is None:
        nc = _classifier_rows(shapes, found)
    return ArchGuess(arch=found if score > 0.5 else None, confidence=score, num_classes=nc, ranking=ranking[:5])


def _classifier_rows(shapes, arch) -> int | None:
    sig = _signature(arch)
    for k, s in sig.items():
        if s[:1] == (1000,) and k in shapes:
            return shapes[k][0]
    return None


def default_input_shape(arch: str) -> tuple[int, int, int, int]:
    """The input size torchvision's published weights use for this architecture."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch)
        first = list(weights)[0]
        crop = first.transforms.keywords.get("crop_size", 224)
        crop = crop[0] if isinstance(crop, (list, tuple)) else crop
    except (ValueError, KeyError, AttributeError, IndexError, TypeError):
        crop = 224
    return (1, 3, int(crop), int(crop))


def build_from_state_dict(path: Path, state_dict: dict, arch: str | None, input_shape):
    """Build ``arch`` (or the best guess) and load ``state_dict`` into it, strictly."""
    from quantstudio.core.loading import KIND_STATE_DICT, LoadedModel, format_shape

    known = list_architectures()
    notes = []
    confidence = None
    if arch is not None:
        if arch not in known:
            import difflib

            close = difflib.get_close_matches(arch, known, n=3)
            suggestion = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(
                f"unknown architecture '{arch}'",
                path=path,
                hint=f"Use one of torchvision's models (quantstudio-cli archs lists them).{suggestion}",
                app_hint=f"Choose one of torchvision's models from the list.{suggestion}",
                kind=ErrorKind.NEEDS_ARCHITECTURE,
            )
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        _, num_classes = _score(shapes, _signature(arch))
        if num_classes is None:
            num_classes = _classifier_rows(shapes, arch)
    else:
        guess = guess_architecture(state_dict)
        if guess.arch is None:
            details = "best matches: " + ", ".join(f"{a} {s:.0%}" for a, s in guess.ranking)
            if not guess.ranking or guess.ranking[0][1] == 0:
                # Nothing matched at all (an MLP, a custom network): "name it with --arch"
                # would send the user looking for a name that does not exist.
                raise InputError(
                    "these weights match none of the torchvision architectures QuantStudio can rebuild "
                    "(a state_dict holds only weights, not the network's code)",
                    path=path,
                    hint="Save the whole model (torch.save(model, path)), a TorchScript archive "
                         "(torch.jit.trace(model, x).save(path)) or an ONNX file, and open that.",
                    details=details,
                )
            raise InputError(
                "could not tell which architecture these weights belong to",
                path=path,
                hint="Name it with --arch (quantstudio-cli archs lists them).",
                app_hint="Choose the network these weights were trained with from the list.",
                details=details,
                kind=ErrorKind.NEEDS_ARCHITECTURE,
            )
        arch, num_classes, confidence = guess.arch, guess.num_classes, guess.confidence
        notes.append(f"architecture guessed as {arch} ({confidence:.0%} of keys match)")
    module = _build(arch, num_classes, "cpu")
    _load_strict(path, module, state_dict, arch)
    module.eval()
    expected = default_input_shape(arch)
    model = LoadedModel(
        path=path,
        kind=KIND_STATE_DICT,
        module=module,
        input_shape=tuple(input_shape) if input_shape else expected,
        arch=arch,
        arch_confidence=confidence,
        num_classes=num_classes or 1000,
    )
    model.expected_shape = expected  # type: ignore[attr-defined]
    # A state_dict records no input size: the published size is only a starting point,
    # which the preprocessing or the images replace (core.geometry.resolve_input_shape).
    model.input_shape_guessed = input_shape is None
    if input_shape is not None and (len(input_shape) != 4 or input_shape[1] != expected[1]):
        raise InputError(
            f"wrong input shape {format_shape(input_shape)}; {arch} expects {format_shape(expected)}",
            path=path,
            hint=f"Use --input-shape {format_shape(expected)} (height and width may differ).",
            app_hint=f"Give an input shape like {format_shape(expected)} (height and width may differ).",
            kind=ErrorKind.NEEDS_INPUT_SHAPE,
        )
    model.notes.extend(notes)
    return model


def _load_strict(path: Path, module, state_dict: dict, arch: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:

        def few(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped: {few(misshaped)}")
        raise InputError(
            f"the weights do not fit {arch} ({'; '.join(parts)})",
            path=path,
            hint="Choose the architecture these weights were trained with (--arch), or omit it to let QuantStudio guess.",
            app_hint="Choose the network these weights were trained with from the list.",
            kind=ErrorKind.NEEDS_ARCHITECTURE,
            details="\n".join(
                ["missing: " + k for k in missing]
                + ["unexpected: " + k for k in unexpected]
                + ["mis-shaped: " + k for k in misshaped]
            ),
        )
    module.load_state_dict(state_dict, strict=True)

"""Model import: one :class:`LoadedModel` whatever the file holds.

The kind of file is read from its content, never its extension:

* a ZIP written by ``torch.save`` holding a state_dict (or a checkpoint dict around one),
  or a whole pickled ``nn.Module``;
* a TorchScript archive (ZIP with ``code/`` and ``constants.pkl``);
* a ``torch.export`` program (``.pt2`` ZIP);
* a legacy (non-ZIP) ``torch.save`` pickle;
* an ONNX protobuf.

Safety: ``torch.load`` is always tried with ``weights_only=True`` first. Only a whole
pickled model needs ``trust=True``, because unpickling it runs code from the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantstudio.core.errors import ErrorKind, InputError, TrustRequired
from quantstudio.core.quiet import quiet_loggers

KIND_STATE_DICT = "state_dict"
KIND_PICKLED = "pickled_module"
KIND_TORCHSCRIPT = "torchscript"
KIND_EXPORTED = "exported_program"
KIND_ONNX = "onnx"

DEFAULT_IMAGE_SIDE = 224  # torchvision's usual size, where nothing says otherwise

KIND_LABELS = {
    KIND_STATE_DICT: "PyTorch state_dict",
    KIND_PICKLED: "pickled PyTorch model",
    KIND_TORCHSCRIPT: "TorchScript archive",
    KIND_EXPORTED: "torch.export program",
    KIND_ONNX: "ONNX model",
}

TRUST_EXPLANATION = (
    "This file holds a whole pickled PyTorch model. Loading it runs Python code stored "
    "in the file, which can do anything your user account can (delete or send files). "
    "Only load it if you made it or trust who did."
)

# What Python's zipfile raises on a damaged ZIP directory (measured by flipping single
# bytes of TorchScript, .pt2 and state_dict archives): a bad CRC or deflate stream
# (zlib.error), a non-UTF-8 member name (UnicodeDecodeError), an "encrypted" flag
# (RuntimeError), an unknown compression method or zip version (NotImplementedError),
# "multi-disk" (BadZipFile), sizes that overflow (struct.error, OverflowError, ValueError).
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error, UnicodeDecodeError,
    NotImplementedError, RuntimeError, ValueError, struct.error, OverflowError, KeyError,
)
# What torch.load / torch.jit.load / torch.export.load raise on bytes that got past the
# ZIP check: torch's own reader reports damage as RuntimeError; the unpickler as the rest.
# MemoryError: a flipped size field can ask for terabytes before anything is read.
_TORCH_READ_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, RuntimeError, ValueError, OSError, KeyError, IndexError, AttributeError, TypeError,
    zlib.error, NotImplementedError, struct.error, OverflowError, MemoryError, zipfile.BadZipFile,
)
# ONNX operator domains ONNX Runtime implements; any other needs a custom-op library.
_ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")
_MAX_NAMED = 5  # layers named in a message before "and N more"


def with_article(label: str) -> str:
    """``label`` with its article, for sentences: "an ONNX model", "a TorchScript archive"."""
    return f"{'an' if label[:1].lower() in 'aeiou' else 'a'} {label}"


@dataclass
class LoadedModel:
    """A model ready to inspect, evaluate and quantize.

    ``module`` is a callable ``torch.nn.Module`` for every PyTorch kind (an eager module
    for state_dicts and pickles, a ``ScriptModule`` for TorchScript, the unflattened
    module of a ``torch.export`` program). ``onnx_model`` is set for ONNX files.
    """

    path: Path
    kind: str
    input_shape: tuple[int, ...] | None
    module: Any = None
    onnx_model: Any = None
    arch: str | None = None
    arch_confidence: float | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None  # output index -> name, when the file says
    notes: list[str] = field(default_factory=list)
    fixed_batch: int | None = None  # an ONNX input whose batch dimension is a fixed number
    input_shape_guessed: bool = False  # not given, not in the file: guessed from the first layer

    def set_input_shape(self, shape: tuple[int, ...]) -> None:
        """Run the model at ``shape`` from now on (checked with one forward pass).

        Raises InputError, leaving the old shape, when the model does not accept it.
        """
        old, old_guessed = self.input_shape, self.input_shape_guessed
        self.input_shape = tuple(int(d) for d in shape)
        self.input_shape_guessed = False
        try:
            check_input_shape(self)
        except InputError:
            self.input_shape, self.input_shape_guessed = old, old_guessed
            raise

    def batch_size_for(self, requested: int) -> int:
        """The batch size to run this model with: its fixed batch when it has one."""
        return self.fixed_batch or requested

    @property
    def framework(self) -> str:
        return "onnx" if self.kind == KIND_ONNX else "torch"

    @property
    def is_eager(self) -> bool:
        """True when ``module`` is a plain eager ``nn.Module`` (FX/eager quantization works)."""
        return self.kind in (KIND_STATE_DICT, KIND_PICKLED)

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]

    @property
    def onnx_input_name(self) -> str | None:
        if self.onnx_model is None:
            return None
        inits = {i.name for i in self.onnx_model.graph.initializer}
        return next(i.name for i in self.onnx_model.graph.input if i.name not in inits)

    def example_input(self, batch: int | None = None):
        import torch

        if self.input_shape is None:
            raise InputError(
                "the input shape of this model is unknown",
                path=self.path,
                hint="Give it with --input-shape 1,C,H,W.",
                app_hint="Give the shape of one input when opening the model, e.g. 1,3,224,224.",
                kind=ErrorKind.NEEDS_INPUT_SHAPE,
            )
        shape = list(self.input_shape)
        if batch is not None:
            shape[0] = batch
        gen = torch.Generator().manual_seed(0)
        return torch.randn(*shape, generator=gen)

    def forward_numpy(self, x):
        """Run one batch (numpy float32, NCHW) and return the output as numpy."""
        import numpy as np

        if self.kind == KIND_ONNX:
            sess = self.onnx_session()
            return sess.run(None, {self.onnx_input_name: np.ascontiguousarray(x, np.float32)})[0]
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().numpy()

    def onnx_session(self):
        sess = getattr(self, "_session", None)
        if sess is None:
            import onnxruntime as ort

            sess = ort.InferenceSession(
                self.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            self._session = sess
        return sess


# --------------------------------------------------------------------------- sniffing


def sniff_kind(path: Path) -> str:
    """Return the file's kind from its content; raise :class:`InputError` if unreadable."""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        names = _zip_names(path)
        base = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in base or "models/model.json" in base:
            return KIND_EXPORTED
        if any(n.startswith("code/") for n in base):
            return KIND_TORCHSCRIPT
        if "data.pkl" in base:
            return "torch_pickle"
        raise InputError(
            "this ZIP archive is not a PyTorch model",
            path=path,
            hint="Open a .pth/.pt saved with torch.save, a TorchScript/.pt2 archive or an .onnx file.",
        )
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (non-ZIP) torch.save
        return "torch_pickle"
    return KIND_ONNX  # confirmed (or rejected) when parsed


def _zip_names(path: Path) -> list[str]:
    """The member names of a ZIP archive, after checking every member's CRC."""
    damaged: dict[str, Any] = {"path": path, "hint": "Copy or save the model again."}
    try:
        if not zipfile.is_zipfile(path):
            raise InputError("the file is truncated or damaged (incomplete ZIP archive)", **damaged)
        with zipfile.ZipFile(path) as zf:
            if any(info.flag_bits & 0x1 for info in zf.infolist()):
                # torch never encrypts; the flag here means a damaged directory entry.
                raise InputError("the archive is damaged (a member is marked as encrypted)", **damaged)
            names = zf.namelist()
            bad = zf.testzip()
    except InputError:
        raise
    except _ZIP_ERRORS as exc:
        raise InputError(
            "the file is truncated or damaged (its ZIP directory cannot be read)",
            details=f"{type(exc).__name__}: {exc}",
            **damaged,
        ) from exc
    if bad is not None:
        raise InputError(f"the archive member {bad!r} is damaged", **damaged)
    return names


def _check_file(path: Path) -> None:
    try:
        st = path.stat()  # follows symlinks: a loop or a dangling link fails here
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                "the path is a symbolic link that points back to itself (a link loop)",
                path=path,
                hint="Open the model file itself, or fix the link.",
                details=str(exc),
            ) from exc
        if path.is_symlink():
            raise InputError(
                f"the path is a symbolic link to {os.readlink(path)!r}, which does not exist",
                path=path,
                hint="Open the model file itself, or fix the link.",
                details=str(exc),
            ) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError("no such file", path=path, hint="Check the path and try again.") from exc
        raise InputError(
            "the file cannot be read",
            path=path,
            hint="Check that you may read it (permissions) and that its disk is attached.",
            details=str(exc),
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(
            "this is a folder, not a model file",
            path=path,
            hint="Choose the .pth, .pt, .pt2 or .onnx file inside it.",
        )
    if not stat.S_ISREG(st.st_mode):
        # A FIFO, a device such as /dev/zero or a socket reports size 0 (or reads forever):
        # it is not "empty", it is not a file at all.
        raise InputError(
            "this is not a regular file (a device, pipe or socket)",
            path=path,
            hint="Choose the .pth, .pt, .pt2 or .onnx model file.",
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(
            "the file cannot be read",
            path=path,
            hint="Check that you may read it (permissions).",
            details=str(exc),
        ) from exc
    if st.st_size == 0:
        raise InputError(
            "the file is empty (0 bytes)",
            path=path,
            hint="It was probably not saved completely; save or copy the model again.",
        )


# --------------------------------------------------------------------------- loading


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust: bool = False,
    source_dir: str | Path | None = None,
) -> LoadedModel:
    """Load any supported model file. Raises :class:`InputError` with a hint on bad input."""
    path = Path(path)
    kind = sniff_kind(path)
    if kind == KIND_ONNX:
        model = _load_onnx(path, input_shape)
    elif kind == KIND_TORCHSCRIPT:
        model = _load_torchscript(path, input_shape)
    elif kind == KIND_EXPORTED:
        model = _load_exported(path, input_shape)
    else:
        model = _load_torch_pickle(path, arch, input_shape, trust, source_dir)
    if arch is not None and model.kind not in (KIND_STATE_DICT,):
        model.notes.append(f"--arch {arch} ignored: the {model.kind_label} holds its own architecture")
    from quantstudio.core.weight_checks import check_finite_weights  # here: it imports this module

    check_finite_weights(model)
    check_input_shape(model)
    return model


def _load_torch_pickle(path, arch, input_shape, trust, source_dir) -> LoadedModel:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            if not trust:
                raise TrustRequired(
                    "this file holds a whole pickled model; loading it runs code from the file",
                    path=path,
                    hint="Load it only if you trust its source: pass --trust (CLI) or confirm in the app.",
                    details=TRUST_EXPLANATION,
                ) from exc
            return _load_pickled_module(path, input_shape, source_dir)
        raise _damaged(path, exc) from exc
    except _TORCH_READ_ERRORS as exc:
        raise _damaged(path, exc) from exc
    state_dict, note = extract_state_dict(obj, path)
    if isinstance(obj, torch.nn.Module):  # weights_only allowed it (rare): treat as module
        return LoadedModel(path=path, kind=KIND_PICKLED, module=obj.eval(), input_shape=input_shape)
    from quantstudio.core import archs

    # A checkpoint may say what it is: {"state_dict": ..., "arch": "resnet18",
    # "input_shape": [1, 3, 96, 96], "class_names": [...]} (the demo and QuantStudio's
    # own checkpoints do). The caller's --arch / --input-shape still win.
    meta = obj if isinstance(obj, dict) and state_dict is not obj else {}
    if arch is None and isinstance(meta.get("arch"), str):
        arch = meta["arch"]
        note = (note + "; " if note else "") + f"architecture {arch} read from the checkpoint"
    if input_shape is None and _is_shape(meta.get("input_shape")):
        input_shape = tuple(int(d) for d in meta["input_shape"])
    model = archs.build_from_state_dict(path, state_dict, arch, input_shape)
    if isinstance(meta.get("class_names"), (list, tuple)) and all(isinstance(c, str) for c in meta["class_names"]):
        model.class_names = list(meta["class_names"])
    if note:
        model.notes.append(note)
    return model


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) >= 2 and all(
        isinstance(d, int) and d > 0 for d in value
    )


_SAVE_AGAIN = {
    KIND_STATE_DICT: "Save or copy the model again (torch.save(model.state_dict(), path)).",
    KIND_TORCHSCRIPT: "Save or copy the model again (torch.jit.trace(model, x).save(path)).",
    KIND_EXPORTED: "Save or copy the model again (torch.export.save(torch.export.export(model, (x,)), path)).",
}


def _damaged(path: Path, exc: BaseException, kind: str = KIND_STATE_DICT) -> InputError:
    what = {KIND_TORCHSCRIPT: "TorchScript archive", KIND_EXPORTED: "torch.export program"}.get(kind, "PyTorch file")
    return InputError(
        f"the file is truncated, damaged or not a {what}",
        path=path,
        hint=_SAVE_AGAIN.get(kind, _SAVE_AGAIN[KIND_STATE_DICT]),
        details=f"{type(exc).__name__}: {exc}",
    )


@contextlib.contextmanager
def _quiet_torch_log():
    """Keep torch's loaders from logging a traceback the user cannot act on.

    ``torch.export.load`` logs "Ran into the following error when deserializing" with a
    full traceback before raising; the raised error becomes an InputError with that text
    in ``details``, so the log adds only a frightening block on the terminal.
    """
    with quiet_loggers(("torch.export", "torch._export", "torch.jit"), level=logging.CRITICAL, ignore_warnings=False):
        yield


def extract_state_dict(obj: Any, path: Path) -> tuple[dict, str]:
    """Find the tensor dict in a state_dict or a training checkpoint around one."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), ""
    if not isinstance(obj, dict):
        raise InputError(
            f"the file holds a {type(obj).__name__}, not a model or a state_dict",
            path=path,
            hint="Save the model with torch.save(model.state_dict(), path).",
        )

    def tensor_dict(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()
        )

    note = ""
    sd = obj
    if not tensor_dict(obj):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            if tensor_dict(obj.get(key)):
                sd, note = obj[key], f"state_dict taken from the checkpoint's {key!r} entry"
                break
        else:
            raise InputError(
                "the file holds a dict but no state_dict of tensors",
                path=path,
                hint="Save the model with torch.save(model.state_dict(), path).",
            )
    prefixes = ("module.", "_orig_mod.")
    for p in prefixes:
        if all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
            note = (note + "; " if note else "") + f"removed the {p!r} prefix from every key"
    return sd, note


def _load_pickled_module(path: Path, input_shape, source_dir) -> LoadedModel:
    import torch

    extra = str(Path(source_dir).resolve()) if source_dir else None
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_suppress_warnings())
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise InputError(
            f"the model's Python class could not be found ({exc})",
            path=path,
            hint="Add the folder that holds the model's source code (--source DIR).",
            details=str(exc),
        ) from exc
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything
        raise _damaged(path, exc) from exc
    if isinstance(obj, torch.nn.Module):
        module = obj
    else:
        raise InputError(
            f"the pickle holds a {type(obj).__name__}, not a torch.nn.Module",
            path=path,
            hint="Save the whole model (torch.save(model, path)) or its state_dict.",
        )
    module.eval()
    shape = input_shape or _guess_input_shape_from_module(module)
    model = LoadedModel(path=path, kind=KIND_PICKLED, module=module, input_shape=shape)
    model.arch = type(module).__name__
    model.num_classes = _num_classes_from_module(module)
    _note_guessed_shape(model, input_shape)
    return model


def _note_guessed_shape(model: LoadedModel, requested) -> None:
    if requested is None and model.input_shape is not None:
        model.input_shape_guessed = True
        model.notes.append(f"input shape {format_shape(model.input_shape)} assumed from the first layer; "
                           "give the size the model was trained at if it differs")


@contextlib.contextmanager
def _suppress_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _load_torchscript(path: Path, input_shape) -> LoadedModel:
    import torch

    try:
        with _suppress_warnings(), _quiet_torch_log():
            module = torch.jit.load(str(path), map_location="cpu")
    except _TORCH_READ_ERRORS as exc:
        raise _damaged(path, exc, KIND_TORCHSCRIPT) from exc
    module.eval()
    shape = input_shape or _guess_input_shape_from_module(module)
    model = LoadedModel(path=path, kind=KIND_TORCHSCRIPT, module=module, input_shape=shape)
    model.arch = getattr(module, "original_name", None)
    model.num_classes = _num_classes_from_module(module)
    _note_guessed_shape(model, input_shape)
    return model


def _load_exported(path: Path, input_shape) -> LoadedModel:
    import torch

    try:
        with _suppress_warnings(), _quiet_torch_log():
            ep = torch.export.load(str(path))
    except _TORCH_READ_ERRORS as exc:
        raise _damaged(path, exc, KIND_EXPORTED) from exc
    shape = None
    fixed = None
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user_inputs) != 1:
        raise InputError(
            f"the program takes {len(user_inputs)} inputs; QuantStudio quantizes models with one input tensor",
            path=path,
            hint="Export the model with a single input (one batch of images or features).",
        )
    node = next(n for n in ep.graph.nodes if n.name == user_inputs[0].arg.name)
    val = node.meta.get("val")
    if val is not None:
        # A dimension exported as dynamic is a SymInt; int() gives its example value.
        shape = tuple(int(d) for d in val.shape)
        if shape and isinstance(val.shape[0], int):
            fixed = shape[0]  # exported without a dynamic batch: it runs only this batch
    with _suppress_warnings():
        # unflatten keeps the original module hierarchy, so hooks and names work.
        module = torch.export.unflatten(ep)
    model = LoadedModel(path=path, kind=KIND_EXPORTED, module=module, input_shape=shape, fixed_batch=fixed)
    model.exported_program = ep  # type: ignore[attr-defined]
    if fixed is not None:
        model.notes.append(
            f"the program was exported with a fixed batch of {fixed} (no dynamic batch axis): it is calibrated, "
            f"evaluated and timed {fixed} sample{'s' if fixed != 1 else ''} at a time (--batch-size {fixed})")
    if input_shape is not None and shape is not None and tuple(input_shape) != shape:
        raise InputError(
            f"the program was exported for input {format_shape(shape)}, not {format_shape(input_shape)}",
            path=path,
            hint=f"Use --input-shape {format_shape(shape)} or export the model again.",
            app_hint=f"Use the input shape {format_shape(shape)}, or export the model again.",
            kind=ErrorKind.NEEDS_INPUT_SHAPE,
        )
    model.num_classes = _num_classes_from_module(module)
    return model


def _load_onnx(path: Path, input_shape) -> LoadedModel:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise InputError(
            "the file is not a model QuantStudio can read (not ONNX, PyTorch, TorchScript or .pt2)",
            path=path,
            hint="Check that the file was saved completely and is a model file.",
            details=f"{type(exc).__name__}: {exc}",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise InputError(
            "the file is not a readable ONNX model",
            path=path,
            hint="Check that the file was saved completely and is a model file.",
            details=f"{type(exc).__name__}: {exc}",
        ) from exc
    if proto.ir_version <= 0 or len(proto.graph.node) == 0 or len(proto.graph.input) == 0:
        raise InputError(
            "the file is not a model QuantStudio can read (not ONNX, PyTorch, TorchScript or .pt2)",
            path=path,
            hint="Check that the file was saved completely and is a model file.",
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            "the ONNX model is invalid",
            path=path,
            hint="Export it again from its framework.",
            details=str(exc),
        ) from exc
    _check_onnx_supported(proto, path)
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
    declared = tuple(dims)
    shape: tuple[int, ...] | None
    if input_shape is not None:
        if len(input_shape) != len(declared) or any(
            d is not None and d != s for d, s in zip(declared[1:], input_shape[1:])
        ):
            raise InputError(
                f"wrong input shape {format_shape(input_shape)}; the model expects {_fmt_dims(declared)}",
                path=path,
                hint=f"Use --input-shape {_fmt_dims(declared, fill=1)}.",
                app_hint=f"Use the input shape {_fmt_dims(declared, fill=1)}.",
                kind=ErrorKind.NEEDS_INPUT_SHAPE,
            )
        shape = tuple(input_shape)
    elif all(d is not None for d in declared[1:]) and declared:
        shape = (1,) + tuple(int(d) for d in declared[1:])  # type: ignore[arg-type]
    else:
        shape = None
    guessed = False
    if shape is None and input_shape is None and len(declared) == 4 and declared[1] is not None:
        # An image model exported with a free height and width: a starting size that the
        # preprocessing or the images replace (core.geometry.resolve_input_shape).
        shape = (1, int(declared[1]), DEFAULT_IMAGE_SIDE, DEFAULT_IMAGE_SIDE)
        guessed = True
    fixed = declared[0] if declared and declared[0] is not None else None
    if shape is not None and fixed is not None:
        shape = (fixed,) + tuple(shape[1:])
    model = LoadedModel(path=path, kind=KIND_ONNX, onnx_model=proto, input_shape=shape, fixed_batch=fixed,
                        input_shape_guessed=guessed)
    if guessed:
        model.notes.append(f"the model takes images of any height and width; {DEFAULT_IMAGE_SIDE}x{DEFAULT_IMAGE_SIDE} "
                           "is assumed unless the preprocessing, the images or --input-shape say otherwise")
    if fixed is not None:
        model.notes.append(
            f"the model's input has a fixed batch of {fixed} (exported without a dynamic batch axis): it is "
            f"calibrated, evaluated and timed {fixed} sample{'s' if fixed != 1 else ''} at a time")
    out = proto.graph.output[0].type.tensor_type.shape.dim
    if len(out) == 2 and out[1].HasField("dim_value"):
        model.num_classes = out[1].dim_value
    return model


def _check_onnx_supported(proto: Any, path: Path) -> None:
    """Refuse, by name, what the ONNX engine cannot run: custom operators, several inputs."""
    custom = sorted({f"{n.domain}:{n.op_type}" for n in proto.graph.node if n.domain not in _ORT_DOMAINS})
    if custom:
        raise InputError(
            f"the model uses custom operators ONNX Runtime does not have: {_name_some(custom)}",
            path=path,
            hint="Export the model with standard ONNX operators only (no custom-op library).",
        )
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(
            f"the model takes {len(inputs)} inputs ({_name_some(inputs)}); "
            "QuantStudio quantizes models with one input tensor" if inputs else "the model takes no input",
            path=path,
            hint="Export the model with a single input (one batch of images or features).",
        )


def _name_some(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


# --------------------------------------------------------------------------- shapes


def format_shape(shape) -> str:
    return ",".join(str(int(s)) for s in shape)


def _fmt_dims(dims, fill=None) -> str:
    return ",".join(str(d) if d is not None else (str(fill) if fill else "?") for d in dims)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise InputError(
            f"'{text}' is not an input shape",
            hint="Write it as comma-separated positive numbers, e.g. 1,3,224,224.",
        )
    return shape


def _guess_input_shape_from_module(module) -> tuple[int, ...] | None:
    """A 224x224 image with the first conv's channel count, when the model starts with a conv."""
    import torch

    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 4:
            return (1, int(w.shape[1]), 224, 224)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            return (1, int(w.shape[1]))
    return None


def _num_classes_from_module(module) -> int | None:
    import torch

    last = None
    for _, p in module.named_parameters():
        if p.dim() == 2:
            last = p
    return int(last.shape[0]) if isinstance(last, torch.Tensor) else None


def check_input_shape(model: LoadedModel) -> None:
    """Run one forward pass with the input shape; explain a mismatch plainly."""
    if model.input_shape is None or model.kind == KIND_ONNX:
        return
    if tuple(model.input_shape) == getattr(model, "expected_shape", None):
        return  # a torchvision architecture at its published input size: nothing to check
    import torch

    x = model.example_input()
    try:
        with torch.inference_mode(), _suppress_warnings():
            model.module(x)
    except Exception as exc:  # noqa: BLE001 - any failure here means "wrong shape"
        expected = getattr(model, "expected_shape", None)
        hint = (
            f"The model expects {format_shape(expected)}; use --input-shape {format_shape(expected)}."
            if expected
            else "Give the shape the model was trained with, e.g. --input-shape 1,3,224,224."
        )
        raise InputError(
            f"the model does not accept input of shape {format_shape(model.input_shape)}",
            path=model.path,
            hint=hint,
            app_hint=hint.replace("use --input-shape ", "use the input shape ").replace("e.g. --input-shape ", "e.g. "),
            kind=ErrorKind.NEEDS_INPUT_SHAPE,
            details=f"{type(exc).__name__}: {exc}",
        ) from exc

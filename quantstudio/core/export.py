"""Exports that are checked before they are called done, written atomically.

The engine that made a result writes it (``Engine.write``; the file suffixes it writes
are its ``formats``) and loads it back afresh (``Engine.reload``): ``.onnx`` (ONNX
Runtime engine) must pass ``onnx.checker.check_model`` and run in a *fresh*
InferenceSession; ``.pth`` (PyTorch engine) is a traced and frozen TorchScript archive —
DESIGN: ``torch.save`` of a converted FX INT8 model does not load back in torch 2.14,
the TorchScript archive does and needs only ``torch.jit.load``. Either file is checked
here by comparing the reloaded outputs with the in-app ones on the given samples.

Every file goes to a temporary name in the destination folder, is fsynced and checked;
then the model(s), the recipe (``X.recipe.json``, which records each model file's
sha256) and any report are committed as one transaction
(:mod:`quantstudio.core.transaction`, which says why that holds): a failure, a cancel
or a kill leaves the earlier set of files or the complete new one, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from quantstudio.core.engines.base import engine_writing, get_engine
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext
from quantstudio.core.recipe import recipe_path_for
from quantstudio.core.transaction import (  # noqa: F401 - temp_path_beside is used by other modules
    TEMP_RE,
    ExportTransaction,
    check_targets,
    fsync_dir,
    fsync_file,
    sha256_of,
    temp_path_beside,
)


def __getattr__(name: str) -> Any:
    # FORMATS (engine name → {suffix: format}) is derived from the engines' own ``formats``
    # for gui/pipeline_adapter.py, which still reads it; new code asks the engine.
    if name == "FORMATS":
        from quantstudio.core.engines.base import available_engines

        return {e.name: dict(e.formats) for e in available_engines()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ExportCheck:
    """The reloaded file against the in-app quantized model, on the same samples."""

    samples: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    passed: bool
    reloaded_with: str
    random_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "reloaded_with": self.reloaded_with,
            "random_input": self.random_input,
        }


@dataclass
class ExportResult:
    path: Path
    format: str
    size_bytes: int
    check: ExportCheck
    recipe_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    # The checked temporary, until the commit renames it: what ``export_set``'s ``extra``
    # may read (e.g. to measure the file's memory before it is committed).
    temp: Path | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "size_bytes": self.size_bytes,
            "check": self.check.to_dict(),
            "recipe": str(self.recipe_path) if self.recipe_path else None,
            "notes": list(self.notes),
        }


def export_format(engine: str, path: str | Path) -> str:
    """The format ``path``'s extension asks for; InputError if ``engine`` cannot write it."""
    suffix = Path(path).suffix.lower()
    allowed = get_engine(engine).formats
    if suffix not in allowed:
        other = engine_writing(suffix)
        hint = (
            f"The {engine} engine writes {', '.join(allowed)}"
            + (f"; {suffix} files come from the {other.name} engine (--engine {other.name})" if other else "")
            + "."
        )
        raise InputError(f"cannot export a {engine} result as '{suffix or Path(path).name}'", path=path, hint=hint)
    return allowed[suffix]


@dataclass
class ExportItem:
    """One model file of an export: the quantized model, where it goes, what it is checked on."""

    result: Any  # QuantizedModel
    path: Path
    samples: np.ndarray | None = None


def export_model(
    result: Any,
    path: str | Path,
    *,
    samples: np.ndarray | None = None,
    recipe: Any = None,
    ctx: JobContext | None = None,
    protect: Sequence[str | Path | None] = (),
) -> ExportResult:
    """Write ``result`` (a QuantizedModel) to ``path``, reload it, compare, commit with its recipe.

    ``samples`` (float32 N×C×H×W) are what the reload is compared on; without them a
    few random inputs of the model's shape are used (and the check says so).
    Raises InputError when the reloaded file does not match; Cancelled on cancel.
    """
    return export_set([ExportItem(result, Path(path), samples)], recipe=recipe, ctx=ctx, protect=protect)[0]


def export_set(
    items: Sequence[ExportItem],
    *,
    recipe: Any = None,
    extra: Callable[[list[ExportResult]], dict[Path, str | bytes]] | None = None,
    extra_targets: Sequence[Path] = (),
    ctx: JobContext | None = None,
    protect: Sequence[str | Path | None] = (),
) -> list[ExportResult]:
    """Export model files, the recipe (beside the first) and ``extra`` files as one transaction.

    Every target is checked before any work (``protect``: files that must not be
    overwritten, e.g. the recipe being read; the recipe's source model always is).
    Each model is written to a temporary, reloaded and compared; the recipe records
    the sha256 of every model file; ``extra(results)`` returns the contents of
    ``extra_targets`` (a report that quotes the checks). Then all are committed
    together (:class:`~quantstudio.core.transaction.ExportTransaction`): a failure,
    a cancel or a kill leaves the earlier files or the complete new set.
    """
    ctx = ctx or NullContext()
    items = [ExportItem(i.result, Path(i.path), i.samples) for i in items]
    fmts = [export_format(i.result.engine, i.path) for i in items]
    recipe_path = recipe_path_for(items[0].path) if recipe is not None else None
    targets = [i.path for i in items] + ([recipe_path] if recipe_path else []) + [Path(t) for t in extra_targets]
    if len({t.name for t in targets}) != len(targets):
        raise InputError("two of the files to export have the same name", path=items[0].path,
                         hint="Choose another file name.")
    if recipe is not None and (recipe.model or {}).get("path"):
        protect = [*protect, recipe.model["path"]]  # never replace the model being quantized
    try:
        txn = ExportTransaction(targets, protect=protect)  # checks every path, repairs the folder
    except OSError as exc:
        raise _write_error(exc, items[0].path) from exc
    results: list[ExportResult] = []
    with txn:  # leaving without commit deletes the temporaries
        try:
            for n, (item, fmt) in enumerate(zip(items, fmts)):
                results.append(_write_and_check(item, fmt, txn, ScaledContext(ctx, n / len(items), 0.9 / len(items))))
            ctx.check_cancelled()
            if recipe is not None:
                doc = recipe.to_dict()
                # Which files this recipe made, byte for byte: a model and recipe that do not
                # belong together (copied separately, edited) can be told apart by sha256.
                doc["exports"] = {
                    r.path.name: {"format": r.format, "bytes": r.size_bytes, "sha256": sha256_of(txn.temp_for(r.path))}
                    for r in results
                }
                assert recipe_path is not None  # set whenever a recipe is written
                txn.write_text(recipe_path, json.dumps(doc, indent=2) + "\n")
                for r in results:
                    r.recipe_path = recipe_path
            if extra is not None:
                for target, content in extra(results).items():
                    txn.write_bytes(target, content.encode("utf-8") if isinstance(content, str) else content)
            ctx.report(0.95, f"saving {', '.join(t.name for t in targets)}")
            ctx.check_cancelled()  # the last point a cancel is honoured: nothing is replaced yet
            txn.commit()
        except OSError as exc:  # the disk, not the model: full, read-only, removed under us
            raise _write_error(exc, items[0].path) from exc
    for r in results:
        r.notes[:0] = txn.notes
    ctx.report(1.0, f"exported {', '.join(r.path.name for r in results)}")
    return results


class ScaledContext:
    """A job context whose report() maps 0..1 into [start, start + span] of the caller's."""

    def __init__(self, ctx: JobContext, start: float, span: float, *, partials: bool = True) -> None:
        self._ctx, self._start, self._span, self._partials = ctx, start, span, partials

    def report(self, fraction: float, message: str = "") -> None:
        self._ctx.report(self._start + self._span * fraction, message)

    def partial(self, payload: Any) -> None:
        if self._partials:  # off where live results of a side job would overwrite the shown ones
            self._ctx.partial(payload)

    def check_cancelled(self) -> None:
        self._ctx.check_cancelled()


def _write_error(exc: OSError, path: Path) -> InputError:
    where = Path(exc.filename) if getattr(exc, "filename", None) else path
    if TEMP_RE.match(where.name):
        where = path  # the user knows their file, not our temporary's name
    return InputError(
        f"the file could not be written ({exc.strerror or exc}); nothing was changed",
        path=where,
        hint="Choose another folder (one you can write to, with free space) and export again.",
        details=f"{type(exc).__name__}: {exc}",
    )


def _write_and_check(item: ExportItem, fmt: str, txn: ExportTransaction, ctx: Any) -> ExportResult:
    result, path = item.result, item.path
    samples = item.samples
    random_input = samples is None
    if samples is None:
        if not result.input_shape:
            raise InputError("the model's input shape is unknown, so the export cannot be checked", hint="Give --input-shape.")
        samples = np.random.default_rng(0).standard_normal((4, *result.input_shape[1:]), dtype=np.float32)
    samples = np.ascontiguousarray(getattr(samples, "x", samples), dtype=np.float32)
    ctx.check_cancelled()
    ctx.report(0.05, f"writing {path.name}")
    tmp = txn.temp_for(path)
    engine = get_engine(result.engine)
    engine.write(result, tmp, samples[:1])
    fsync_file(tmp)
    ctx.check_cancelled()
    ctx.report(0.4, f"checking {path.name}: reloading it")
    expected = np.asarray(result.runner(samples), dtype=np.float32)
    got, how = engine.reload(result, tmp, samples)
    check = compare_outputs(expected, got, how, random_input)
    if not check.passed:
        raise InputError(
            f"the exported file does not reproduce the quantized model (max difference {check.max_abs_diff:.3g}, "
            f"top-1 agreement {check.top1_agreement:.1%})",
            path=path,
            hint="Nothing was written. Report this; meanwhile try the other engine.",
        )
    return ExportResult(
        path=path,
        format=fmt,
        size_bytes=tmp.stat().st_size,
        check=check,
        temp=tmp,
        notes=["checked on random input: give evaluation samples for a real check"] if random_input else [],
    )


def check_writable(path: str | Path) -> None:
    """InputError now, before any work, when ``path`` clearly cannot be written.

    Missing folders are fine (they are created); a folder given as the file, a file in
    the way of a folder, a read-only file or a folder without write permission are not.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("this is a folder, not a file name", path=path,
                         hint=f"Add a file name, e.g. {path / ('model_int8' + (path.suffix or '.onnx'))}.")
    check_targets([path])


def compare_outputs(expected: np.ndarray, got: np.ndarray, how: str, random_input: bool = False) -> ExportCheck:
    """Max abs difference and top-1 agreement of two output batches.

    Passing needs the same top-1 on every sample and outputs equal up to float
    round-off (1e-4 of the output range): the file holds the very same model.
    """
    e = expected.reshape(len(expected), -1).astype(np.float64)
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    if e.shape != g.shape:
        return ExportCheck(len(e), float("inf"), 0.0, 0.0, False, how, random_input)
    diff = float(np.max(np.abs(e - g))) if e.size else 0.0
    agree = float(np.mean(np.argmax(e, 1) == np.argmax(g, 1))) if e.size else 1.0
    tol = 1e-4 * max(1.0, float(np.max(np.abs(e))) if e.size else 1.0)
    return ExportCheck(len(e), diff, agree, tol, diff <= tol and agree == 1.0, how, random_input)


def commit(tmp: Path, path: Path) -> Path:
    """fsync ``tmp`` and rename it over ``path`` (atomic on one file system): one file alone."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        return commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))

"""The jobs the window runs on the worker thread: thin compositions of core calls.

Each function takes the job context first (see :mod:`quantstudio.gui.worker`) and only
calls the core; it never touches a widget. Results are plain dataclasses the GUI thread
turns into widgets. Core modules are imported inside the functions so that importing
the GUI never imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantstudio.core.errors import ErrorKind, InputError, TrustRequired

THUMBNAIL_COUNT = 48


# --------------------------------------------------------------------------- model


@dataclass
class LoadRequest:
    path: str
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    trust: bool = False
    source_dir: str | None = None
    data_hint: str | None = None  # the data folder chosen: its images' common size can propose the input size


@dataclass
class LoadOutcome:
    """A loaded model and its layer tree, or a problem the import dialog can fix."""

    request: LoadRequest
    model: Any = None  # quantstudio.core.loading.LoadedModel
    tree: Any = None  # quantstudio.core.inventory.LayerNode
    architectures: list[str] = field(default_factory=list)
    problem: InputError | None = None
    needs: str = ""  # "arch" or "shape" when ``problem`` can be fixed by answering a question
    seconds: float = 0.0
    image_size: tuple[int, int] | None = None  # the size every image of ``request.data_hint`` has


def _fixable(exc: InputError, kind: str) -> str:
    """Which question to ask the user to get past ``exc`` ("" when none helps), from its kind."""
    if exc.kind is ErrorKind.NEEDS_ARCHITECTURE and kind == "torch_pickle":
        return "arch"
    if exc.kind is ErrorKind.NEEDS_INPUT_SHAPE:
        return "shape"
    return ""


def load_model_job(ctx, request: LoadRequest) -> LoadOutcome:
    from quantstudio.core.archs import list_architectures
    from quantstudio.core.inventory import build_inventory
    from quantstudio.core.loading import KIND_STATE_DICT, load_model, sniff_kind

    t0 = time.perf_counter()
    path = Path(request.path)
    ctx.report(0.02, f"Reading {path.name}")
    kind = sniff_kind(path)
    ctx.check_cancelled()
    ctx.report(0.1, f"Loading {path.name}")
    try:
        model = load_model(
            path,
            arch=request.arch,
            input_shape=request.input_shape,
            trust=request.trust,
            source_dir=request.source_dir,
        )
    except TrustRequired:
        raise
    except InputError as exc:
        needs = _fixable(exc, kind)
        if not needs:
            raise
        ctx.check_cancelled()
        archs = list_architectures() if kind == "torch_pickle" else []
        return LoadOutcome(request, architectures=archs, problem=exc, needs=needs, seconds=time.perf_counter() - t0)
    ctx.check_cancelled()
    ctx.report(0.6, "Building the layer tree")
    tree = build_inventory(model)
    archs = list_architectures() if model.kind == KIND_STATE_DICT else []
    image_size = None
    if model.input_shape_guessed and request.data_hint and Path(request.data_hint).is_dir():
        from quantstudio.core.data import folder_image_sizes
        from quantstudio.core.geometry import MIN_IMAGE_SIDE

        ctx.report(0.9, "Reading the size of your images")
        common = folder_image_sizes(request.data_hint).common
        if common is not None and min(common) >= MIN_IMAGE_SIDE:
            image_size = common
    ctx.report(1.0, "Model loaded")
    return LoadOutcome(request, model=model, tree=tree, architectures=archs, seconds=time.perf_counter() - t0,
                       image_size=image_size)


# --------------------------------------------------------------------------- data


@dataclass
class DataSummary:
    """What a data source holds, for the data panel (no decoded images but thumbnails)."""

    spec: str
    kind: str
    description: str
    count: int
    labeled: bool
    is_random: bool
    class_counts: list[tuple[str, int]] = field(default_factory=list)
    thumbnails: list[tuple[str | None, str, Any]] = field(default_factory=list)  # (path, label, array or None)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    eval_count: int | None = None  # samples in a separate evaluation data set (None: held out of this one)
    steps: list[str] = field(default_factory=list)  # the preprocessing every sample goes through
    unreadable: int = 0  # files whose image header could not be read


def scan_data_job(
    ctx,
    spec: str,
    input_shape: tuple[int, ...] | None,
    preprocessing: dict | None = None,
    random_samples: int = 256,
    eval_spec: str | None = None,
    num_outputs: int | None = None,
) -> DataSummary:
    """What the data holds and what is wrong with it, before any run.

    Every image's header is read (not its pixels), so unreadable files are counted now;
    the class folders are checked against the model's ``num_outputs``; a separate
    evaluation set (``eval_spec``) is opened and checked the same way.
    """
    import numpy as np

    from quantstudio.core.data import Preprocessing, image_sizes, model_fit_warnings, open_data
    from quantstudio.core.geometry import MIN_IMAGE_SIDE

    ctx.report(0.05, "Reading the data")
    prep = Preprocessing.from_dict(preprocessing) if preprocessing else None
    src = open_data(spec, input_shape=input_shape, preprocessing=prep, random_samples=random_samples)
    ctx.check_cancelled()
    warnings = list(src.warnings) + model_fit_warnings(src, num_outputs)
    eval_count = None
    sources = [src]
    if eval_spec and Path(eval_spec).resolve() != Path(spec).resolve():
        ev = open_data(eval_spec, input_shape=input_shape, preprocessing=prep, random_samples=random_samples)
        eval_count = len(ev)
        sources.append(ev)
        warnings += [f"evaluation data: {w}" for w in list(ev.warnings) + model_fit_warnings(ev, num_outputs)]
        if src.labeled and ev.labeled and src.class_names != ev.class_names:
            warnings.append(f"the evaluation data's classes ({len(ev.class_names)}) are not the calibration data's "
                            f"({len(src.class_names)}): check that both folders hold the same class sub-folders")
    unreadable = 0
    notes = list(src.notes)
    for source in sources:
        files = getattr(source, "files", None)
        if files:
            found = image_sizes(files, ctx)
            unreadable += len(found.unreadable)
            common = found.common
            if (common is not None and min(common) >= MIN_IMAGE_SIDE and input_shape and len(input_shape) == 4
                    and tuple(common) != tuple(input_shape[2:])):
                notes.append(f"every image in {source.path} is {common[0]}×{common[1]}; the model runs at "
                             f"{input_shape[2]}×{input_shape[3]}, so each image is resized. If the model was trained "
                             "at the images' size, open it again and give that input shape.")
            if found.unreadable:
                warnings.append(f"{len(found.unreadable)} of {found.checked} images in {source.path} cannot be read "
                                f"(e.g. {Path(found.unreadable[0].path).name}: {found.unreadable[0].reason}); they will be skipped")
    counts: list[tuple[str, int]] = []
    if src.targets is not None:
        values, n = np.unique(src.targets, return_counts=True)
        counts = [(src.class_names.get(int(v), str(int(v))), int(c)) for v, c in zip(values, n)]
    summary = DataSummary(
        spec=str(spec),
        kind=src.kind,
        description=src.describe(),
        count=len(src),
        labeled=src.labeled,
        is_random=src.is_random,
        class_counts=counts,
        notes=notes,
        warnings=warnings,
        eval_count=eval_count,
        unreadable=unreadable,
        steps=src.preprocessing_steps(),
    )
    if src.is_random:
        return summary
    chosen = src.choose(min(THUMBNAIL_COUNT, len(src)), seed=0)
    paths = [src.sample_path(int(i)) for i in chosen]
    labels = [
        src.class_names.get(int(src.targets[int(i)]), "") if src.targets is not None else "" for i in chosen
    ]
    if all(p is not None for p in paths):
        summary.thumbnails = [(p, lab, None) for p, lab in zip(paths, labels)]
    else:
        # Tensor files have no image files: show the (preprocessed) arrays, rescaled to 0..255.
        ctx.report(0.5, "Making previews")
        x, kept, _ = src.read(np.asarray(chosen[:24]))
        for row, i in zip(x, kept):
            img = np.transpose(row, (1, 2, 0)) if row.ndim == 3 else row
            lo, hi = float(img.min()), float(img.max())
            img = ((img - lo) / (hi - lo + 1e-12) * 255).astype(np.uint8)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            label = src.class_names.get(int(src.targets[int(i)]), "") if src.targets is not None else ""
            summary.thumbnails.append((None, label, np.ascontiguousarray(img)))
    ctx.report(1.0, summary.description)
    return summary


# --------------------------------------------------------------------------- quantize


@dataclass
class RunOutcome:
    """One finished run, reduced to what the GUI shows and a project stores.

    Built from the core's ``RunSummary`` (:meth:`from_summary`), so its figures are the
    CLI's; its stored form (``to_dict``) is the project format of release 1, unchanged.
    ``metrics`` maps a variant name ("original", the quantized name) to plain numbers:
    top1, top5, precision, recall, f1, agreement, sqnr_db, cosine (fractions / dB),
    latency_ms (median at the smallest batch), size_bytes, param_bytes, peak_rss_bytes
    (the whole process running the model), model_peak_bytes (what the model adds to it).
    ``sensitivity`` maps a layer to the % change of the model's output with only that
    layer in INT8.
    ``raw`` is the core's result object (kept in memory for export, never saved).
    """

    name: str
    reference: str = "original"
    quantized: str = ""
    plan: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    data: str = ""
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    throughput: dict[str, dict[int, float]] = field(default_factory=dict)
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    layer_precisions: dict[str, str] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    fused: list[list[str]] = field(default_factory=list)
    confusion: dict[str, tuple[list[list[int]], list[str]]] = field(default_factory=dict)
    changed: list[dict[str, Any]] = field(default_factory=list)
    n_evaluated: int = 0
    n_calibrated: int = 0
    calibration_data: str = ""  # where calibration samples came from
    evaluation_data: str = ""  # "141 samples of 397 images in 10 class folders (…) not used for calibration"
    preprocessing_steps: list[str] = field(default_factory=list)
    input_shape: list[int] | None = None
    timing_warnings: list[str] = field(default_factory=list)  # why the speed figures are unreliable
    skipped: list[tuple[str, str]] = field(default_factory=list)
    is_random: bool = False
    labeled: bool = False
    data_note: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Automatic mixed precision (issue 13): why each FP32 layer is FP32, the search (budget, candidates,
    # chosen; {} for a plain run), and what the sensitivity stage adds when the core sends it.
    fp32_reasons: dict[str, str] = field(default_factory=dict)
    auto_precision: dict[str, Any] = field(default_factory=dict)
    sensitivity_fix: dict[str, list[str]] = field(default_factory=dict)  # entry -> layers whose FP32 removes its error
    layer_sqnr_isolated: dict[str, float] = field(default_factory=dict)  # layer -> SQNR with only it quantized
    # Quantization-aware training: the summary's ``training`` (settings, per-epoch history); {} when not fine-tuned.
    training: dict[str, Any] = field(default_factory=dict)
    raw: Any = None

    @classmethod
    def from_summary(cls, summary: Any, name: str, **extra: Any) -> "RunOutcome":
        """The GUI's view of a core ``RunSummary``: every figure is the summary's, none recomputed.

        ``extra`` sets what only the GUI knows (data description, class-named changed
        predictions, skipped files, ``raw``).
        """
        from quantstudio.core.results import VariantRole

        original, quantized = VariantRole.ORIGINAL.value, VariantRole.QUANTIZED.value
        # Throughput lives in its own field (a project's metrics hold plain numbers only).
        metrics = {role: {k: v for k, v in m.to_dict(drop_none=True).items() if k != "throughput"}
                   for role, m in summary.variants.items()}
        for role in (original, quantized):
            metrics.setdefault(role, {})
        evaluation = {role: ev for role, ev in summary.evaluation.items() if ev}
        confusion = {role: (ev["confusion"], list(ev.get("confusion_labels") or []))
                     for role, ev in evaluation.items() if ev.get("confusion") is not None}
        q = summary.variants.get(quantized)
        labeled = bool(q is not None and q.top1 is not None)
        fields_ = dict(
            name=name, reference=original, quantized=quantized, plan=dict(summary.plan), config=dict(summary.config),
            metrics=metrics,
            latency_samples={v: {int(b): list(xs) for b, xs in per.items()} for v, per in summary.latency_samples.items()},
            throughput={role: dict(m.throughput) for role, m in summary.variants.items() if m.throughput},
            layer_sqnr={k: float(v) for k, v in summary.layer_sqnr.items() if v is not None},
            layer_precisions=dict(summary.layer_precisions),
            sensitivity={k: float(v) for k, v in summary.sensitivity.items() if v is not None},
            fused=[list(g) for g in summary.fused], confusion=confusion,
            n_evaluated=int(summary.evaluation_samples), n_calibrated=int(summary.calibration_samples),
            calibration_data=summary.calibration_data, evaluation_data=summary.evaluation_data,
            preprocessing_steps=list(summary.preprocessing.get("steps") or []),
            input_shape=list(summary.input_shape) if summary.input_shape else None,
            timing_warnings=summary.timing_warnings, is_random=bool(summary.random_data), labeled=labeled,
            data_note="random data — accuracy not meaningful" if summary.random_data else (
                "" if (q is None or q.n is None or labeled) else "no labels: only agreement with the original is measured"),
            warnings=list(summary.warnings), notes=list(summary.notes),
            training=dict(getattr(summary, "training", None) or {}),
        )
        fields_.update(_auto_precision_fields(summary))
        fields_.update(extra)
        return cls(**fields_)

    @property
    def speedup(self) -> float | None:
        """Quantized vs FP32 speed, by the core's one rule (:func:`quantstudio.core.results.speedup`)."""
        from quantstudio.core.results import VariantRole, speedup

        latency = {name: m.get("latency_ms") for name, m in self.metrics.items()}
        latency[VariantRole.QUANTIZED.value] = (self.metrics.get(self.quantized) or {}).get("latency_ms")
        return speedup(latency)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("raw",)}
        out["latency_samples"] = {
            v: {str(b): [round(float(x), 4) for x in xs] for b, xs in per.items()} for v, per in self.latency_samples.items()
        }
        out["throughput"] = {v: {str(b): x for b, x in per.items()} for v, per in self.throughput.items()}
        out["confusion"] = {v: [m, labels] for v, (m, labels) in self.confusion.items()}
        out["skipped"] = [list(s) for s in self.skipped]
        return _jsonable(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunOutcome":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "raw"}
        run = cls(**known)
        run.latency_samples = {v: {int(b): list(xs) for b, xs in per.items()} for v, per in run.latency_samples.items()}
        run.throughput = {v: {int(b): float(x) for b, x in per.items()} for v, per in run.throughput.items()}
        run.confusion = {v: (m, list(labels)) for v, (m, labels) in run.confusion.items()}
        run.skipped = [tuple(s) for s in run.skipped]
        for m in run.metrics.values():
            for k, v in list(m.items()):
                if v in ("inf", "-inf"):
                    m[k] = float(v)
        run.layer_sqnr = {k: float(v) for k, v in run.layer_sqnr.items() if v is not None}  # NaN is saved as null
        run.sensitivity = {k: float(v) for k, v in run.sensitivity.items() if v is not None}
        run.layer_sqnr_isolated = {k: float(v) for k, v in run.layer_sqnr_isolated.items() if v is not None}
        return run


def _auto_precision_fields(summary: Any) -> dict[str, Any]:
    """The summary's FP32 reasons, auto-precision search and sensitivity extras, read only where present
    (older cores have no ``sensitivity_fix`` / ``layer_sqnr_isolated``)."""
    fix = getattr(summary, "sensitivity_fix", None) or {}
    isolated = getattr(summary, "layer_sqnr_isolated", None) or {}
    return dict(
        fp32_reasons={str(k): str(v) for k, v in (getattr(summary, "fp32_reasons", None) or {}).items()},
        auto_precision=_jsonable(dict(getattr(summary, "auto_precision", None) or {})),
        sensitivity_fix={str(k): [str(n) for n in v] for k, v in fix.items()},
        layer_sqnr_isolated={str(k): float(v) for k, v in isolated.items() if v is not None},
    )


def _jsonable(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        if math.isnan(obj):
            return None
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


@dataclass
class QuantizeRequest:
    name: str
    model: Any  # LoadedModel
    tree: Any  # LayerNode
    plan: dict
    config: dict
    data_spec: str
    preprocessing: dict | None
    calib_samples: int
    eval_samples: int
    eval_data_spec: str | None = None  # evaluate on this data instead of samples held back from data_spec
    benchmark_runs: int = 30
    benchmark_batches: list[int] = field(default_factory=lambda: [1])
    sensitivity: bool = True  # per-layer sensitivity stage (PyTorch models)
    measure_memory: bool = True  # peak memory of both models, each in a fresh process
    budget: Any = None  # a core auto_precision.Budget: search for the fastest plan within it (the Auto button)


def quantize_job(ctx, request: QuantizeRequest) -> RunOutcome:
    """Runs core.pipeline.run_quantize and reduces its result to a :class:`RunOutcome`."""
    from quantstudio.gui import pipeline_adapter

    return pipeline_adapter.run(ctx, request)


# --------------------------------------------------------------------------- fine-tuning estimate


def qat_estimate_job(ctx, model: Any, input_shape: Any, train_samples: int, epochs: int,
                     batch_size: int) -> tuple[float, int] | None:
    """(seconds, bytes) fine-tuning will take (a couple of timed training steps, core/qat.py)."""
    from quantstudio.core.qat import estimate_qat

    ctx.report(0.1, "Estimating the cost of fine-tuning")
    seconds, memory = estimate_qat(model, tuple(input_shape), int(train_samples), int(epochs), int(batch_size))
    return float(seconds), int(memory)

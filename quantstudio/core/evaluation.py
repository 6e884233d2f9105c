"""Accuracy and agreement of model variants, measured on exactly the same tensors.

A *variant* is anything that turns a numpy batch (float32, N×C×H×W) into numpy logits:
an object with ``forward_numpy(x)`` (a :class:`~quantstudio.core.loading.LoadedModel`),
a ``torch.nn.Module``, an ONNX Runtime ``InferenceSession``, or a plain callable. So the
original model, a quantized PyTorch model and an ONNX Runtime session compare alike.

:func:`evaluate` decodes each batch once and runs it through every variant; the
reference variant's (the original's) outputs are computed once per batch and reused
for every comparison. Metrics accumulate per batch (top-k indices and sums, not all the
logits), so a long run does not grow memory with the number of classes.

All metrics are fractions in 0..1. Label metrics are absent (None) for unlabeled or
random data; random data always carries :data:`~quantstudio.core.data.RANDOM_DATA_NOTE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from quantstudio.core.data import RANDOM_DATA_NOTE, DataSource, SkippedFile, model_fit_warnings
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext, NullContext
from quantstudio.core.metrics import ErrorAccumulator
from quantstudio.core.results import EvaluationProgress, json_float

TOP_K = 5
NO_LABELS_NOTE = "the data has no labels: accuracy cannot be measured, only agreement between variants"


@dataclass
class ChangedPrediction:
    """A sample whose top-1 class differs from the reference variant's."""

    index: int
    path: str | None
    reference: int
    prediction: int
    label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "reference": self.reference,
            "prediction": self.prediction,
            "label": self.label,
        }


@dataclass
class EvaluationResult:
    """Metrics of one variant. Fractions in 0..1; None where not meaningful."""

    name: str
    n: int
    num_outputs: int
    is_random: bool = False
    top1: float | None = None
    top5: float | None = None
    precision: float | None = None  # macro average over the classes present in the labels
    recall: float | None = None
    f1: float | None = None  # mean of per-class F1
    per_class_accuracy: dict[str, float] | None = None
    confusion: list[list[int]] | None = None  # rows: true class, columns: predicted
    confusion_labels: list[str] | None = None
    reference: str | None = None  # name of the variant compared against
    agreement: float | None = None  # share of samples with the reference's top-1
    sqnr_db: float | None = None  # inf when the outputs are identical
    cosine: float | None = None  # mean per-sample cosine similarity of the outputs
    changed: list[ChangedPrediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return self.top1 is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": int(self.n),
            "num_outputs": int(self.num_outputs),
            "random_data": bool(self.is_random),
            "top1": json_float(self.top1),
            "top5": json_float(self.top5),
            "precision": json_float(self.precision),
            "recall": json_float(self.recall),
            "f1": json_float(self.f1),
            "per_class_accuracy": (
                {k: json_float(v) for k, v in self.per_class_accuracy.items()}
                if self.per_class_accuracy is not None
                else None
            ),
            "confusion": self.confusion,
            "confusion_labels": self.confusion_labels,
            "reference": self.reference,
            "agreement": json_float(self.agreement),
            "sqnr_db": json_float(self.sqnr_db),
            "cosine": json_float(self.cosine),
            "changed": [c.to_dict() for c in self.changed],
            "skipped": {"count": len(self.skipped), "files": [s.to_dict() for s in self.skipped]},
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.is_random:
            head = f"{self.name}: {RANDOM_DATA_NOTE}"
        elif self.labeled:
            top5 = f", top-5 {self.top5:.2%}" if self.top5 is not None else ""
            head = (
                f"{self.name}: top-1 {self.top1:.2%}{top5}, precision {self.precision:.3f}, "
                f"recall {self.recall:.3f}, F1 {self.f1:.3f}"
            )
        else:
            head = f"{self.name}: no labels"
        if self.agreement is not None:
            sqnr = "inf" if self.sqnr_db is not None and math.isinf(self.sqnr_db) else f"{self.sqnr_db:.1f}"
            head += (
                f"; vs {self.reference}: agreement {self.agreement:.2%}, SQNR {sqnr} dB, "
                f"cosine {self.cosine:.4f}, {len(self.changed)} changed"
            )
        return head + f" (n={self.n})"


@dataclass
class Evaluation:
    """Every variant's result on the same samples."""

    results: dict[str, EvaluationResult]
    reference: str | None
    n: int
    is_random: bool = False
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> EvaluationResult:
        return self.results[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "n": int(self.n),
            "random_data": bool(self.is_random),
            "variants": {k: r.to_dict() for k, r in self.results.items()},
            "skipped": {"count": len(self.skipped), "files": [s.to_dict() for s in self.skipped]},
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- variants


def as_forward(variant: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function numpy batch → numpy 2-D logits for any kind of variant."""
    if hasattr(variant, "forward_numpy"):
        fn = variant.forward_numpy
    elif hasattr(variant, "get_inputs") and hasattr(variant, "run"):  # onnxruntime.InferenceSession
        name = variant.get_inputs()[0].name

        def fn(x):
            return variant.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    elif _is_torch_module(variant):

        def fn(x):
            import torch

            with torch.inference_mode():
                return variant(torch.from_numpy(np.ascontiguousarray(x, np.float32)))

    elif callable(variant):
        fn = variant
    else:
        raise TypeError(f"{type(variant).__name__} is not a model variant (no forward_numpy, not callable)")

    def forward(x: np.ndarray) -> np.ndarray:
        return _to_logits(fn(x), len(x))

    return forward


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a torch module exists only if torch was imported
    return torch is not None and isinstance(obj, torch.nn.Module)


def _to_logits(out: Any, batch: int) -> np.ndarray:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 0 or out.shape[0] != batch:
        raise ValueError(f"the output has shape {tuple(out.shape)}; expected one row per sample ({batch})")
    return out.reshape(batch, -1)  # e.g. N×K×1×1 from a conv head


# --------------------------------------------------------------------------- metrics


class MetricAccumulator:
    """Collects one variant's outputs batch by batch; :meth:`result` computes metrics."""

    def __init__(self, name: str, *, class_names: Mapping[int, str] | None = None, is_random: bool = False, reference: str | None = None) -> None:
        self.name = name
        self.class_names = dict(class_names or {})
        self.is_random = is_random
        self.reference = reference
        self.num_outputs: int | None = None
        self._topk: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._paths: list[str | None] = []
        self._ref_top1: list[np.ndarray] = []
        self._cos: list[np.ndarray] = []
        self._error = ErrorAccumulator()  # output SQNR vs the reference
        self._compare = reference is not None
        self.warnings: list[str] = []

    def update(
        self,
        logits: np.ndarray,
        *,
        targets: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        paths: Sequence[str | None] | None = None,
        reference_logits: np.ndarray | None = None,
    ) -> None:
        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2:
            logits = logits.reshape(len(logits), -1)
        n, k = logits.shape
        if self.num_outputs is None:
            self.num_outputs = k
        elif self.num_outputs != k:
            raise ValueError(f"{self.name}: {k} outputs in this batch, {self.num_outputs} before")
        start = sum(len(t) for t in self._topk)
        self._topk.append(_topk(logits, min(TOP_K, k)))
        if targets is not None:
            self._targets.append(np.asarray(targets, np.int64))
        self._indices.append(np.arange(start, start + n) if indices is None else np.asarray(indices, np.int64))
        self._paths.extend(paths if paths is not None else [None] * n)
        if self._compare and reference_logits is not None:
            ref = np.asarray(reference_logits, np.float32).reshape(n, -1)
            if ref.shape != logits.shape:
                self.warnings.append(
                    f"{self.name} has {k} outputs but the reference {self.reference} has {ref.shape[1]}: "
                    "they cannot be compared"
                )
                self._compare = False
                return
            ref64, out64 = ref.astype(np.float64), logits.astype(np.float64)
            self._error.add(ref64, out64)
            self._ref_top1.append(_topk(ref, 1)[:, 0])
            self._cos.append(_cosine(ref64, out64))

    def result(self) -> EvaluationResult:
        n = sum(len(t) for t in self._topk)
        res = EvaluationResult(
            name=self.name,
            n=n,
            num_outputs=int(self.num_outputs or 0),
            is_random=self.is_random,
            warnings=list(self.warnings),
        )
        if n == 0:
            return res
        topk = np.concatenate(self._topk)
        pred = topk[:, 0]
        indices = np.concatenate(self._indices)
        labels = np.concatenate(self._targets) if self._targets and not self.is_random else None
        if labels is not None and len(labels) == n:
            _label_metrics(res, pred, topk, labels, self.class_names)
        else:
            labels = None
        if self._compare and self._ref_top1:
            ref_pred = np.concatenate(self._ref_top1)
            res.reference = self.reference
            res.agreement = float(np.mean(ref_pred == pred))
            res.sqnr_db = self._error.sqnr_db()
            res.cosine = float(np.mean(np.concatenate(self._cos)))
            for row in np.flatnonzero(ref_pred != pred):
                res.changed.append(
                    ChangedPrediction(
                        index=int(indices[row]),
                        path=self._paths[row],
                        reference=int(ref_pred[row]),
                        prediction=int(pred[row]),
                        label=int(labels[row]) if labels is not None else None,
                    )
                )
        return res


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    # Stable sort of the negated logits: ties go to the lower class index, like argmax.
    return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int64)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def _label_metrics(res: EvaluationResult, pred: np.ndarray, topk: np.ndarray, labels: np.ndarray, names: Mapping[int, str]) -> None:
    res.top1 = float(np.mean(pred == labels))
    if res.num_outputs >= TOP_K:
        res.top5 = float(np.mean(np.any(topk[:, :TOP_K] == labels[:, None], axis=1)))
    # Macro averages over the classes in the labels: predictions of other classes count
    # as errors (lower recall) but add no class of their own to the average.
    classes = np.unique(labels)
    precision, recall, f1 = [], [], []
    per_class: dict[str, float] = {}
    for c in classes:
        tp = int(np.sum((pred == c) & (labels == c)))
        predicted = int(np.sum(pred == c))
        support = int(np.sum(labels == c))
        p = tp / predicted if predicted else 0.0
        r = tp / support
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
        per_class[names.get(int(c), str(int(c)))] = r
    res.precision = float(np.mean(precision))
    res.recall = float(np.mean(recall))
    res.f1 = float(np.mean(f1))
    res.per_class_accuracy = per_class
    extra = np.setdiff1d(np.unique(pred), classes)
    order = np.concatenate([classes, extra]).astype(np.int64)
    pos = {int(c): i for i, c in enumerate(order)}
    matrix = np.zeros((len(order), len(order)), np.int64)
    np.add.at(matrix, ([pos[int(t)] for t in labels], [pos[int(p)] for p in pred]), 1)
    res.confusion = matrix.tolist()
    res.confusion_labels = [names.get(int(c), str(int(c))) for c in order]


def compute_metrics(
    logits: np.ndarray,
    targets: np.ndarray | None = None,
    *,
    reference_logits: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
    paths: Sequence[str | None] | None = None,
    name: str = "model",
    reference_name: str = "reference",
) -> EvaluationResult:
    """Metrics of logits already in hand (N×K), optionally against a reference's logits."""
    acc = MetricAccumulator(name, class_names=class_names, reference=reference_name if reference_logits is not None else None)
    acc.update(logits, targets=targets, paths=paths, reference_logits=reference_logits)
    return acc.result()


# --------------------------------------------------------------------------- evaluate


def evaluate(
    variants: Mapping[str, Any] | Any,
    data: DataSource,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    reference: str | None = None,
    batch_size: int = 32,
    ctx: JobContext | None = None,
) -> Evaluation:
    """Run every variant on the same decoded batches of ``data`` and measure them.

    ``variants`` maps names to variants (or is one variant, named "model"); the
    ``reference`` (default: the first) is what agreement/SQNR/cosine compare against.
    ``indices`` selects samples (default: all). Raises :class:`InputError` when no
    sample could be read or a variant fails on the data, :class:`Cancelled` on cancel.
    """
    if not isinstance(variants, Mapping):
        variants = {"model": variants}
    if not variants:
        raise ValueError("no variants to evaluate")
    names = list(variants)
    reference = names[0] if reference is None else reference
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of the variants {names}")
    forwards = {name: as_forward(v) for name, v in variants.items()}
    ctx = ctx or NullContext()
    accumulators = {
        name: MetricAccumulator(
            name,
            class_names=data.class_names,
            is_random=data.is_random,
            reference=None if name == reference else reference,
        )
        for name in names
    }
    stream = data.batches(indices, batch_size=batch_size, ctx=ctx, message="evaluating")
    if len(stream.indices) == 0:
        raise InputError("there are no samples to evaluate", path=data.path, hint="Choose more samples or other data.")
    order = [reference] + [n for n in names if n != reference]
    for batch in stream:
        ref_out = None
        for name in order:
            out = _run(name, forwards[name], batch.x, variants[name])
            if name == reference:
                ref_out = out
            accumulators[name].update(
                out,
                targets=batch.targets,
                indices=batch.indices,
                paths=batch.paths,
                reference_logits=None if name == reference else ref_out,
            )
        ctx.partial(EvaluationProgress(
            done=int(stream.samples_read),
            total=int(len(stream.indices)),
            top1={n: _running_top1(a) for n, a in accumulators.items()},
        ))
    if stream.samples_read == 0:
        raise InputError(
            f"none of the {len(stream.indices)} samples could be read",
            path=data.path,
            hint="Check the files: every one was damaged or not an image.",
            details="\n".join(f"{s.path}: {s.reason}" for s in stream.skipped[:20]),
        )
    results = {name: accumulators[name].result() for name in names}
    warnings, notes = _data_warnings(data, results[reference], stream.skipped), list(data.notes)
    for r in results.values():
        r.skipped = list(stream.skipped)
        r.warnings = warnings + r.warnings
        r.notes = notes
    return Evaluation(
        results=results,
        reference=reference if len(names) > 1 else None,
        n=stream.samples_read,
        is_random=data.is_random,
        skipped=list(stream.skipped),
        warnings=warnings + [w for r in results.values() for w in r.warnings if w not in warnings],
        notes=notes,
    )


def _run(name: str, forward: Callable, x: np.ndarray, variant: Any) -> np.ndarray:
    try:
        return forward(x)
    except (Cancelled, InputError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - user models fail in many ways; name the model and the shape
        raise InputError(
            f"the model {name!r} failed on a batch of shape {tuple(x.shape)}",
            path=getattr(variant, "path", None),
            hint="Check the model's input shape (--input-shape) and the preprocessing size (--resize/--crop).",
            details=f"{type(exc).__name__}: {exc}",
        ) from exc


def _running_top1(acc: MetricAccumulator) -> float | None:
    if acc.is_random or not acc._targets:
        return None
    pred = np.concatenate([t[:, 0] for t in acc._topk])
    return float(np.mean(pred == np.concatenate(acc._targets)))


def _data_warnings(data: DataSource, ref: EvaluationResult, skipped: list[SkippedFile]) -> list[str]:
    warnings = list(data.warnings)
    if data.is_random:
        if RANDOM_DATA_NOTE not in warnings:
            warnings.insert(0, RANDOM_DATA_NOTE)
        return warnings
    if skipped:
        warnings.append(f"{len(skipped)} file{'s' if len(skipped) > 1 else ''} could not be read and {'were' if len(skipped) > 1 else 'was'} skipped")
    if not data.labeled:
        warnings.append(NO_LABELS_NOTE)
        return warnings
    return warnings + [w for w in model_fit_warnings(data, ref.num_outputs) if w not in warnings]

"""Which samples calibrate and which evaluate: :class:`Split`, :func:`make_split`, :func:`choose_samples`.

Subsets are drawn by a seed, so a run is repeatable, and stratified by class when the
samples are labeled, so a capped subset still holds every class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantstudio.core.errors import InputError

DEFAULT_CALIBRATION_SAMPLES = 256
DEFAULT_EVALUATION_SAMPLES = 1000


@dataclass
class Split:
    """Which samples calibrate and which evaluate; disjoint, deterministic by ``seed``."""

    calibration: np.ndarray
    evaluation: np.ndarray
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration": [int(i) for i in self.calibration],
            "evaluation": [int(i) for i in self.evaluation],
            "seed": self.seed,
            "notes": list(self.notes),
        }


def make_split(
    n: int,
    targets: np.ndarray | None = None,
    *,
    calibration: int = DEFAULT_CALIBRATION_SAMPLES,
    evaluation: int | None = DEFAULT_EVALUATION_SAMPLES,
    seed: int = 0,
) -> Split:
    """Calibration subset, then an evaluation subset (capped) from the samples left.

    Both are stratified by class when ``targets`` are given. ``evaluation=None`` means
    every sample not used for calibration.
    """
    if calibration < 0 or (evaluation is not None and evaluation < 0):
        raise InputError("sample counts must not be negative", hint="Give 0 or more samples.")
    rng = np.random.default_rng(seed)
    everything = np.arange(n, dtype=np.int64)
    calib = _stratified_choice(everything, targets, calibration, rng)
    rest = np.setdiff1d(everything, calib, assume_unique=True)
    cap = len(rest) if evaluation is None else evaluation
    evaluate = _stratified_choice(rest, targets, cap, rng)
    notes = []
    if calibration > n:
        notes.append(f"only {n} samples: all of them are used for calibration")
    if len(evaluate) == 0 and cap > 0:
        notes.append("no samples are left for evaluation; lower the number of calibration samples")
    return Split(calibration=calib, evaluation=evaluate, seed=seed, notes=notes)


def choose_samples(n: int, targets: np.ndarray | None, k: int | None, *, seed: int = 0) -> np.ndarray:
    """All ``n`` samples when ``k`` is None (or ≥ n), else ``k`` of them, stratified."""
    everything = np.arange(n, dtype=np.int64)
    if k is None or k >= n:
        return everything
    if k <= 0:
        raise InputError(f"the number of samples must be positive, not {k}", hint="Give --samples 1 or more.")
    return _stratified_choice(everything, targets, k, np.random.default_rng(seed))


def _stratified_choice(candidates: np.ndarray, targets: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``candidates`` (sorted), in proportion to class sizes when labeled."""
    k = min(int(k), len(candidates))
    if k == len(candidates):
        return np.sort(candidates)
    if k <= 0:
        return np.zeros(0, np.int64)
    if targets is None:
        return np.sort(rng.choice(candidates, size=k, replace=False))
    labels = targets[candidates]
    classes, counts = np.unique(labels, return_counts=True)
    if k < len(classes):
        # Too few samples for one per class: one each from the largest classes.
        alloc = np.zeros_like(counts)
        alloc[np.argsort(-counts, kind="stable")[:k]] = 1
    else:
        # One of each class first, so a capped subset still has every class; then the
        # rest in proportion to what is left, by largest remainder.
        left = counts - 1
        extra = k - len(classes)
        quota = extra * left / max(int(left.sum()), 1)
        alloc = np.floor(quota).astype(np.int64)
        short = extra - int(alloc.sum())
        if short > 0:
            order = np.argsort(-(quota - alloc), kind="stable")
            alloc[order[:short]] += 1
        alloc = np.minimum(alloc + 1, counts)
    chosen = [rng.choice(candidates[labels == c], size=int(a), replace=False) for c, a in zip(classes, alloc) if a > 0]
    return np.sort(np.concatenate(chosen)).astype(np.int64)

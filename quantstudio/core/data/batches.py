"""What every data source is, and how it is read: :class:`DataSource` and :class:`BatchStream`.

A :class:`DataSource` knows *which* samples exist (file names, array rows) and their
labels, but decodes nothing until a batch is asked for: a 50,000-image folder costs a
list of file names until :meth:`DataSource.batches` streams it, one batch at a time,
with progress and cancellation through a :class:`~quantstudio.core.jobs.JobContext`.
Samples that cannot be read are left out of a batch and listed (:class:`SkippedFile`).
Labels are kept as *model output indices* (``targets``), so evaluation never has to
know how a folder was named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from quantstudio.core.data.preprocessing import Preprocessing
from quantstudio.core.data.splits import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_EVALUATION_SAMPLES,
    Split,
    choose_samples,
    make_split,
)
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext, NullContext

DEFAULT_BATCH_SIZE = 32


@dataclass
class SkippedFile:
    """A sample that could not be read; it is left out and reported."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Batch:
    """One decoded batch. ``indices`` are the source's sample numbers of the rows of ``x``."""

    x: np.ndarray  # float32, N×C×H×W
    indices: np.ndarray  # int64
    targets: np.ndarray | None  # model output index per row, when labeled
    paths: list[str] | None

    def __len__(self) -> int:
        return len(self.indices)


class BatchStream:
    """Iterates a subset of a source in batches; collects the files it had to skip.

    Cancellation is checked before each batch is decoded; progress is reported after
    the consumer has handled a batch, so it covers decoding *and* model time.
    """

    def __init__(
        self,
        source: DataSource,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        ctx: JobContext | None = None,
        message: str = "reading data",
    ) -> None:
        if int(batch_size) <= 0:
            raise InputError(f"the batch size must be positive, not {batch_size}", hint="Give --batch-size 1 or more.")
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise ValueError(f"sample indices out of range 0..{len(source) - 1}")
        self.batch_size = int(batch_size)
        self.ctx = ctx or NullContext()
        self.message = message
        self.skipped: list[SkippedFile] = []
        self.samples_read = 0

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        total = len(self.indices)
        for start in range(0, total, self.batch_size):
            self.ctx.check_cancelled()
            wanted = self.indices[start : start + self.batch_size]
            x, kept, skipped = self.source.read(wanted)
            self.skipped.extend(skipped)
            self.samples_read += len(kept)
            if len(kept):
                targets = self.source.targets[kept] if self.source.targets is not None else None
                paths = [p for p in (self.source.sample_path(int(i)) for i in kept) if p is not None] or None
                yield Batch(x=x, indices=kept, targets=targets, paths=paths)
            done = min(start + self.batch_size, total)
            # The message stays the same for the whole stream (the fraction moves), so a
            # log or the CLI shows one line, not one per batch.
            self.ctx.report(done / total, f"{self.message} {total} samples")


class DataSource:
    """Samples that can be read in batches. Subclasses implement :meth:`read`.

    ``targets`` holds, per sample, the model output index it should be classified as
    (None when unlabeled); ``class_names`` maps output index → class name.
    """

    kind: str = ""
    is_random: bool = False

    def __init__(self, path: Path | None, channels: int, model_hw: tuple[int, int] | None, preprocessing: Preprocessing) -> None:
        self.path = path
        self.channels = channels
        self.model_hw = model_hw
        self.preprocessing = preprocessing
        self.targets: np.ndarray | None = None
        self.class_names: dict[int, str] = {}
        self.notes: list[str] = []  # informative, e.g. how classes were mapped
        self.warnings: list[str] = []  # things that can make results wrong

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labeled(self) -> bool:
        return self.targets is not None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.labeled else None

    def sample_path(self, index: int) -> str | None:
        return None

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
        """Decode the given samples: (x float32 N×C×H×W, indices kept, files skipped)."""
        raise NotImplementedError

    def batches(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        ctx: JobContext | None = None,
        message: str = "reading data",
    ) -> BatchStream:
        return BatchStream(self, indices, batch_size=batch_size, ctx=ctx, message=message)

    def split(
        self,
        *,
        calibration: int = DEFAULT_CALIBRATION_SAMPLES,
        evaluation: int | None = DEFAULT_EVALUATION_SAMPLES,
        seed: int = 0,
    ) -> Split:
        return make_split(len(self), self.targets, calibration=calibration, evaluation=evaluation, seed=seed)

    def choose(self, n: int | None = None, *, seed: int = 0) -> np.ndarray:
        """``n`` samples (stratified by class, by ``seed``), or all of them when n is None."""
        return choose_samples(len(self), self.targets, n, seed=seed)

    def describe(self) -> str:
        raise NotImplementedError

    def preprocessing_steps(self) -> list[str]:
        """What each sample goes through before the model sees it, step by step."""
        return self.preprocessing.steps(self.model_hw)

    def _check_output_size(self) -> None:
        size = self.preprocessing.output_size(self.model_hw)
        if size is not None and self.model_hw is not None and tuple(size) != tuple(self.model_hw):
            self.warnings.append(
                f"preprocessing gives {size[0]}x{size[1]} images but the model's input is "
                f"{self.model_hw[0]}x{self.model_hw[1]}"
            )

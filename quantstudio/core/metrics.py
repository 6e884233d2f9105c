"""How far one output is from a reference: the one SQNR accumulator of the app.

The per-layer error of both engines and the evaluation's output SQNR sum signal and
noise power over batches the same way, so their dB figures are comparable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _float64(x: Any) -> Any:
    # torch tensors stay tensors (no copy through numpy per layer and batch); anything
    # else becomes a float64 array. Sums in float64 either way: float32 sums of squares
    # over a whole batch of activations lose the small noise term.
    return x.double() if hasattr(x, "double") and not isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float64)


class ErrorAccumulator:
    """Signal power of a reference and the power of its difference to another output,
    summed over every :meth:`add`; :meth:`sqnr_db` is their ratio in dB."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, reference: Any, other: Any) -> None:
        """Add one batch; ``reference`` and ``other`` are arrays (or torch tensors) of one shape."""
        a, b = _float64(reference), _float64(other)
        self.signal += float((a * a).sum())
        self.noise += float(((a - b) ** 2).sum())

    def sqnr_db(self) -> float:
        """10·log10(signal / noise): inf when the outputs are identical, -inf for a zero reference."""
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

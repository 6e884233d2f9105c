"""Automatic mixed precision to an accuracy budget (issue 13).

The search tries calibration methods first, then layers back to FP32 in sensitivity
order (bisection), judging every candidate on a held-out split that calibration never
saw and timing it, and keeps the fastest plan that meets the budget. It runs inside
:func:`quantstudio.core.pipeline.run_quantize` (``budget=``), sends one
:class:`~quantstudio.core.results.CandidateTried` per candidate through ``ctx.partial``
and records the search in ``RunSummary.auto_precision``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from quantstudio.core.errors import InputError


@dataclass(frozen=True)
class Budget:
    """What the user accepts: at most ``max_drop`` points of top-1 below the original
    (labeled data) or at least ``min_agreement`` % of predictions equal to the original's
    (unlabeled data, or when the user prefers it). Exactly one is set."""

    max_drop: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.min_agreement is None):
            raise InputError("an accuracy budget needs exactly one of a maximum drop or a minimum agreement",
                             hint="Give --max-drop POINTS (labeled data) or --min-agreement PCT.")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise InputError(f"the maximum accuracy drop must be between 0 and 100 points, not {self.max_drop}",
                             hint="For example --max-drop 1 accepts one point of top-1 below the original.")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise InputError(f"the minimum agreement must be between 0 and 100 %, not {self.min_agreement}",
                             hint="For example --min-agreement 99 keeps 99 % of predictions equal to the original's.")

    @property
    def metric(self) -> str:
        return "top1" if self.max_drop is not None else "agreement"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

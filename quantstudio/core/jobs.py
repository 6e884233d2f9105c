"""The job context every long operation reports through.

A job is a plain function that takes a :class:`JobContext`. It calls
``report(fraction, message)`` for progress, ``partial(payload)`` for live plot data and
``check_cancelled()`` between units of work. The GUI's worker turns these calls into Qt
signals; the CLI prints them; tests use :class:`RecordingContext`.

:class:`Stages` splits one job's progress into weighted stages (weights ~ expected
time), the way Orange's runners do, so a long stage moves the bar in proportion.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from quantstudio.core.errors import Cancelled


class JobContext(Protocol):
    def report(self, fraction: float, message: str = "") -> None: ...
    def partial(self, payload: Any) -> None: ...
    def check_cancelled(self) -> None: ...


class NullContext:
    """A context that ignores progress and is never cancelled."""

    def report(self, fraction: float, message: str = "") -> None:
        pass

    def partial(self, payload: Any) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


@dataclass
class RecordingContext:
    """Records every call; cancels once ``cancel_after`` progress reports were made.

    Thread-safe ``cancel()`` so a test (or the CLI's Ctrl+C handler) can stop a job.
    """

    cancel_after: int | None = None
    reports: list[tuple[float, str]] = field(default_factory=list)
    partials: list[Any] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def report(self, fraction: float, message: str = "") -> None:
        self.reports.append((float(fraction), message))
        if self.cancel_after is not None and len(self.reports) >= self.cancel_after:
            self._cancel.set()

    def partial(self, payload: Any) -> None:
        self.partials.append(payload)

    def cancel(self) -> None:
        self._cancel.set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")


class Stages:
    """Maps progress inside named, weighted stages onto one overall fraction.

    >>> st = Stages(ctx, [("calibrate", 3), ("evaluate", 1)])
    >>> sub = st.stage("calibrate")     # a JobContext whose 0..1 covers 0..0.75
    """

    def __init__(self, ctx: JobContext, weights: list[tuple[str, float]]) -> None:
        self.ctx = ctx
        total = sum(w for _, w in weights) or 1.0
        self._spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, w in weights:
            self._spans[name] = (start, start + w / total)
            start += w / total

    def stage(self, name: str) -> "StageContext":
        lo, hi = self._spans[name]
        return StageContext(self.ctx, name, lo, hi)


@dataclass
class StageContext:
    parent: JobContext
    name: str
    lo: float
    hi: float

    def report(self, fraction: float, message: str = "") -> None:
        f = min(max(fraction, 0.0), 1.0)
        self.parent.report(self.lo + (self.hi - self.lo) * f, message or self.name)

    def partial(self, payload: Any) -> None:
        self.parent.partial(payload)

    def check_cancelled(self) -> None:
        self.parent.check_cancelled()

"""Cancel points inside torch.ao's prepare/calibrate/convert calls."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any

from quantstudio.core.jobs import JobContext

# The job's check_cancelled while this thread runs torch.ao's prepare/calibrate/convert
# (see cancel_points); None elsewhere.
_CANCEL = threading.local()


@contextlib.contextmanager
def cancel_points(ctx: JobContext | None):
    """Let the observers this engine builds honour ``ctx``'s cancel from inside torch.ao.

    Why: ``prepare_fx``, a calibration forward and ``convert_fx`` are single calls that
    took several seconds each on the demo MobileNetV2 under load (a cancel waited up to
    2.3 s). torch.ao calls our observers at every observed tensor: it builds them in
    prepare (after tracing), runs them in calibration, and asks their ranges in convert,
    so a check there is a cancel point every few milliseconds. Raising there only ever
    abandons the engine's private copies of the model.
    """
    previous = getattr(_CANCEL, "check", None)
    _CANCEL.check = ctx.check_cancelled if ctx is not None else None
    try:
        yield
    finally:
        _CANCEL.check = previous


def _check_cancel() -> None:
    check = getattr(_CANCEL, "check", None)
    if check is not None:
        check()


# Python calls between two cancel checks inside convert_fx (~1 ms of its work here).
_CALLS_PER_CHECK = 512


@contextlib.contextmanager
def cancel_inside_calls():
    """Check for cancel every :data:`_CALLS_PER_CHECK` Python calls made in the block.

    Why: ``convert_fx`` spends most of its time where no observer of ours is called:
    ``lower_to_fbgemm`` packs every weight and the new GraphModule is compiled (1.5 s
    and 0.65 s of 3.9 s for the demo MobileNetV2 under load). A profile function sees
    every call there; raising from it ends convert_fx like any exception, and the
    half-converted model is the engine's private copy. Only around convert_fx: tracing
    (prepare_fx, the inventory) patches torch globally and restores it in ``finally``
    blocks that an exception raised at an arbitrary call could skip. Does nothing when
    a profiler or debugger already uses the hook.
    """
    import sys

    if sys.getprofile() is not None or getattr(_CANCEL, "check", None) is None:
        yield
        return
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1
            if calls % _CALLS_PER_CHECK == 0:
                _check_cancel()

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


@functools.cache
def _cancellable(base: type) -> Any:
    """``base`` (an observer class) with a cancel point in construction, forward and
    calculate_qparams; same name, so messages and tests still say "MinMaxObserver"."""

    class Cancellable(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            _check_cancel()
            super().__init__(*args, **kwargs)

        def forward(self, x_orig):
            _check_cancel()
            return super().forward(x_orig)

        def calculate_qparams(self):  # type: ignore[override]
            _check_cancel()
            return super().calculate_qparams()

    Cancellable.__name__ = base.__name__
    Cancellable.__qualname__ = base.__qualname__
    return Cancellable

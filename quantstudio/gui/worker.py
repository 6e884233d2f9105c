"""Runs core job functions on one worker thread and turns their context into Qt signals.

A job is a plain function ``fn(ctx, *args)``; ``ctx`` implements the core's
:class:`~quantstudio.core.jobs.JobContext`. :class:`JobRunner` (GUI thread) owns one
``QThread`` with one :class:`_Worker` in it, so at most one job runs at a time. The
worker's signals are queued to the runner's methods, which call the job's callbacks in
the GUI thread. Cancelling sets an event; the job stops at its next
``check_cancelled()`` and ends through the ``cancelled`` path. Stopping one *stage*
(:meth:`JobRunner.stop_stage`, e.g. fine-tuning: "keep the best epoch") raises
``Cancelled`` once, inside that stage only; a job that catches it goes on and ends normally. The worker thread runs
below the GUI thread's CPU priority, and can run a warm-up (the heavy imports, see
:mod:`quantstudio.gui.warmup`) before its first job.

Signals of :class:`JobRunner`: ``started(str)``, ``progress(float, str)``,
``partial(object)``, ``finished(str, object)``, ``failed(str, object)``,
``cancelled(str)``, ``busy_changed(bool)``, ``log(str)``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from quantstudio.core.errors import Cancelled

PROGRESS_INTERVAL_S = 0.05  # at most ~20 progress updates a second reach the GUI
WORKER_NICE = 5  # how much lower the worker's CPU priority is than the GUI thread's (Linux nice steps)


def lower_thread_priority() -> None:
    """Run the calling thread below normal priority: called on the worker thread.

    Jobs keep every core busy (inference thread pools, child processes measuring
    memory); on a 2-core machine the GUI thread then waited tens of ms for a CPU before
    it could paint. Thread pools and child processes started from this thread inherit
    its priority, so the GUI thread is served first and the jobs lose next to nothing
    (the GUI thread is idle most of the time). Linux: the thread's nice value; other
    systems: QThread's priority.
    """
    if sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE, 19))
        except (OSError, AttributeError):
            pass
    else:
        QThread.currentThread().setPriority(QThread.Priority.LowPriority)


@dataclass
class Job:
    """What to run and whom to tell. Callbacks are called in the GUI thread."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    on_done: Callable[[Any], None] | None = None
    on_failed: Callable[[BaseException], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    on_partial: Callable[[Any], None] | None = None
    id: int = 0
    interrupt: "StageInterrupt | None" = None  # set by JobRunner.start


class StageInterrupt:
    """A one-shot request to stop one named stage of a job, not the job (thread-safe).

    Why not the cancel event: a job that stops a stage on ``Cancelled`` and carries on
    (quantization-aware training keeps its best epoch, then evaluates) would meet the
    still-set event at its next check and be cancelled after all. This request is used
    up by the one ``Cancelled`` it raises, and dropped once the job has left the stage
    (a click that arrived just after training ended must not cancel the evaluation).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stage: str | None = None

    def request(self, stage: str) -> None:
        with self._lock:
            self._stage = stage

    def pending(self, current: str) -> bool:
        with self._lock:
            return self._stage is not None and self._stage == current

    def take(self, current: str) -> bool:
        """True once when a stop of stage ``current`` was requested; a request for another stage is dropped."""
        with self._lock:
            asked, self._stage = self._stage, None
            return asked is not None and asked == current


class JobFailure:
    """An exception from a job, with the traceback text taken in the worker thread."""

    def __init__(self, exc: BaseException, details: str) -> None:
        self.exc = exc
        self.details = details


class QtJobContext:
    """The core job context, backed by the worker's signals (called in the worker thread)."""

    def __init__(self, worker: "_Worker", job_id: int, cancel: threading.Event,
                 interrupt: StageInterrupt | None = None) -> None:
        self._worker = worker
        self._job_id = job_id
        self._cancel = cancel
        self._interrupt = interrupt
        self._stage = ""  # the job's current stage, from the events it sends (for stop_stage)
        self._last_emit = 0.0
        self._last_message = None

    def report(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if message != self._last_message or fraction >= 1.0 or now - self._last_emit >= PROGRESS_INTERVAL_S:
            self._last_emit = now
            self._last_message = message
            self._worker.progress.emit(self._job_id, float(fraction), str(message))

    def partial(self, payload: Any) -> None:
        if self._interrupt is not None:
            self._note_stage(payload)
        self._worker.partial.emit(self._job_id, payload)

    def _note_stage(self, payload: Any) -> None:
        from quantstudio.core.results import StageStarted, TrainingEpoch, TrainingStep, as_event

        event = as_event(payload)
        if isinstance(event, StageStarted):
            self._stage = event.name
        elif isinstance(event, (TrainingStep, TrainingEpoch)):
            self._stage = "train"

    def log(self, message: str) -> None:
        self._worker.log.emit(self._job_id, str(message))

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")
        if self._interrupt is not None and self._interrupt.take(self._stage):
            raise Cancelled(f"{self._stage} stopped by the user")

    def reset_cancel(self) -> None:
        """Forget a cancel the job has honoured without ending (a cancelled auto-precision search
        keeps its best plan and the run goes on): the next Cancel stops the run."""
        self._cancel.clear()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set() or (self._interrupt is not None and self._interrupt.pending(self._stage))


class _Worker(QObject):
    """Lives in the worker thread; runs one job per ``run`` call."""

    progress = Signal(int, float, str)
    partial = Signal(int, object)
    log = Signal(int, str)
    done = Signal(int, object)
    failed = Signal(int, object)
    cancelled = Signal(int)

    def __init__(self, before_first_job: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._before_first_job = before_first_job
        self._started = False

    @Slot(object, object)
    def run(self, job: Job, cancel: threading.Event) -> None:
        ctx = QtJobContext(self, job.id, cancel, job.interrupt)
        if not self._started:
            self._started = True
            lower_thread_priority()
        if self._before_first_job is not None:
            warm_up, self._before_first_job = self._before_first_job, None
            ctx.report(0.0, "Loading libraries")
            try:
                warm_up()
            except Exception:  # noqa: BLE001 - best effort: the job imports what it needs itself
                pass
        try:
            ctx.check_cancelled()
            result = job.fn(ctx, *job.args, **job.kwargs)
            ctx.check_cancelled()
        except Cancelled:
            self.cancelled.emit(job.id)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the GUI
            self.failed.emit(job.id, JobFailure(exc, traceback.format_exc()))
        else:
            self.done.emit(job.id, result)


class JobRunner(QObject):
    """One worker thread, one job at a time (GUI-thread object)."""

    started = Signal(str)
    progress = Signal(float, str)
    partial = Signal(object)
    log = Signal(str)
    finished = Signal(str, object)
    failed = Signal(str, object)
    cancelled = Signal(str)
    busy_changed = Signal(bool)
    _submit = Signal(object, object)

    def __init__(self, parent: QObject | None = None, before_first_job: Callable[[], None] | None = None) -> None:
        """``before_first_job`` runs on the worker thread before the first job (e.g. heavy imports)."""
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("quantstudio-worker")
        self._worker = _Worker(before_first_job)
        self._worker.moveToThread(self._thread)
        self._submit.connect(self._worker.run)
        self._worker.progress.connect(self._on_progress)
        self._worker.partial.connect(self._on_partial)
        self._worker.log.connect(self._on_log)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._thread.finished.connect(self._worker.deleteLater)
        self._thread.start()
        self._current: Job | None = None
        self._cancel = threading.Event()
        self._next_id = 1
        self._shut_down = False

    # ------------------------------------------------------------------ API
    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current_name(self) -> str | None:
        return self._current.name if self._current else None

    def start(self, job: Job) -> bool:
        """Start ``job``; False (and nothing started) while another job runs."""
        if self._current is not None or self._shut_down:
            return False
        job.id = self._next_id
        self._next_id += 1
        self._current = job
        self._cancel = threading.Event()
        job.interrupt = StageInterrupt()
        self.started.emit(job.name)
        self.busy_changed.emit(True)
        self._submit.emit(job, self._cancel)
        return True

    def cancel(self) -> None:
        """Ask the running job to stop at its next ``check_cancelled()``."""
        if self._current is not None:
            self._cancel.set()

    def stop_stage(self, stage: str) -> bool:
        """Ask the running job to stop its stage ``stage`` only (see :class:`StageInterrupt`)."""
        if self._current is None or self._current.interrupt is None:
            return False
        self._current.interrupt.request(stage)
        return True

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Process events until no job runs (tests and shutdown use it)."""
        from PySide6.QtCore import QCoreApplication, QEventLoop

        deadline = time.monotonic() + timeout_s
        while self._current is not None and time.monotonic() < deadline:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.005)
        return self._current is None

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel the running job, then stop and join the thread."""
        if self._shut_down:
            return
        self._shut_down = True
        self.cancel()
        self._thread.quit()
        if not self._thread.wait(int(timeout_s * 1000)):
            # A job that never checks for cancellation: nothing safe can be done but wait.
            self._thread.wait()
        self._current = None

    # ------------------------------------------------------------------ worker → GUI
    def _is_current(self, job_id: int) -> bool:
        return self._current is not None and self._current.id == job_id

    @Slot(int, float, str)
    def _on_progress(self, job_id: int, fraction: float, message: str) -> None:
        if self._is_current(job_id):
            self.progress.emit(fraction, message)

    @Slot(int, object)
    def _on_partial(self, job_id: int, payload: Any) -> None:
        if self._is_current(job_id):
            if self._current.on_partial is not None:
                self._current.on_partial(payload)
            self.partial.emit(payload)

    @Slot(int, str)
    def _on_log(self, job_id: int, message: str) -> None:
        if self._is_current(job_id):
            self.log.emit(message)

    def _finish(self) -> Job:
        job = self._current
        self._current = None
        self.busy_changed.emit(False)
        return job

    @Slot(int, object)
    def _on_done(self, job_id: int, result: Any) -> None:
        if not self._is_current(job_id):
            return
        job = self._finish()
        self.finished.emit(job.name, result)
        if job.on_done is not None:
            job.on_done(result)

    @Slot(int, object)
    def _on_failed(self, job_id: int, failure: JobFailure) -> None:
        if not self._is_current(job_id):
            return
        job = self._finish()
        failure.exc.__traceback_text__ = failure.details  # type: ignore[attr-defined]
        self.failed.emit(job.name, failure.exc)
        if job.on_failed is not None:
            job.on_failed(failure.exc)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        if not self._is_current(job_id):
            return
        job = self._finish()
        self.cancelled.emit(job.name)
        if job.on_cancelled is not None:
            job.on_cancelled()

"""The job runner: one worker thread, context calls become signals, cancel works, threads end."""

from __future__ import annotations

import threading
import time

import pytest

from quantstudio.core.errors import InputError
from quantstudio.gui.worker import Job, JobRunner


def fake_job(ctx, n: int, delay: float = 0.0):
    assert threading.current_thread() is not threading.main_thread()
    for i in range(n):
        ctx.check_cancelled()
        time.sleep(delay)
        ctx.partial({"type": "latency", "variant": "a", "batch": 1, "ms": float(i)})
        ctx.report((i + 1) / n, f"step {i + 1}")
    return {"steps": n}


def failing_job(ctx):
    raise InputError("the file is bad", hint="Use another.")


class Recorder:
    """GUI-thread receiver: plain methods, as the window uses."""

    def __init__(self):
        self.done, self.failed, self.cancelled, self.partials = [], [], [], []

    def on_done(self, r):
        self.done.append(r)

    def on_failed(self, e):
        self.failed.append(e)

    def on_cancelled(self):
        self.cancelled.append(True)

    def on_partial(self, p):
        self.partials.append(p)


@pytest.fixture
def runner(qtbot):
    r = JobRunner()
    yield r
    r.shutdown()


def job(rec, fn, *args):
    return Job("test", fn, args, on_done=rec.on_done, on_failed=rec.on_failed,
               on_cancelled=rec.on_cancelled, on_partial=rec.on_partial)


def test_job_reports_progress_partials_and_result(qtbot, runner):
    rec = Recorder()
    progress = []
    runner.progress.connect(lambda f, m: progress.append((f, m)))
    with qtbot.waitSignal(runner.finished, timeout=10000):
        assert runner.start(job(rec, fake_job, 5))
    assert rec.done == [{"steps": 5}]
    assert len(rec.partials) == 5 and rec.partials[-1]["ms"] == 4.0
    assert progress[-1] == (1.0, "step 5")
    assert not runner.busy


def test_only_one_job_at_a_time(qtbot, runner):
    rec = Recorder()
    assert runner.start(job(rec, fake_job, 20, 0.01))
    assert not runner.start(job(rec, fake_job, 1))
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    assert len(rec.done) == 1


def test_cancel_ends_through_cancelled_path(qtbot, runner):
    rec = Recorder()
    runner.start(job(rec, fake_job, 1000, 0.005))
    qtbot.waitUntil(lambda: len(rec.partials) >= 3, timeout=10000)
    with qtbot.waitSignal(runner.cancelled, timeout=10000):
        runner.cancel()
    assert rec.cancelled == [True] and not rec.done and not rec.failed
    assert not runner.busy


def test_failure_carries_the_exception_and_traceback(qtbot, runner):
    rec = Recorder()
    with qtbot.waitSignal(runner.failed, timeout=10000):
        runner.start(job(rec, failing_job))
    assert isinstance(rec.failed[0], InputError)
    assert "failing_job" in rec.failed[0].__traceback_text__


def test_shutdown_while_running_joins_the_thread(qtbot):
    r = JobRunner()
    rec = Recorder()
    r.start(job(rec, fake_job, 10000, 0.001))
    qtbot.waitUntil(lambda: len(rec.partials) >= 1, timeout=10000)
    r.shutdown()
    assert r._thread.isFinished()
    assert not r.start(job(rec, fake_job, 1))

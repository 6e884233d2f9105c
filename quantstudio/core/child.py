"""Helper processes: how the app starts them, and what runs inside them.

Every helper process starts through the app's own entry point, never
``sys.executable -c CODE``: in a PyInstaller bundle ``sys.executable`` is the app
itself, which has no ``-c`` (DESIGN "Facts measured here"). From a Python install a
helper is ``python -m quantstudio.core.child TASK ARGS``; in a bundle it is
``APP --child TASK ARGS``, which the app's ``__main__`` hands to :func:`main`.

Tasks:

* ``ort-tool JOB.json`` - one of ONNX Runtime's tools (pre-processing, quantizers, the
  session check) on files, see :func:`quantstudio.core.engines.ort.tools._tool_main`.
* ``memory MODEL SHAPE_JSON THREADS`` - the peak-memory probe of
  :func:`quantstudio.core.benchmark.memory_probe_main`.

A helper dies with the app: killed with ``kill -9``, the app cannot stop its children,
and an ONNX Runtime child used to outlive it by ~2 s and leave its ~109 MB work folder
behind. Each helper therefore asks Linux to send it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``) and, on every OS, watches its parent from a thread; either way
it removes the work folder it was given and exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

TASKS = ("ort-tool", "memory")
# How often the watchdog looks at the parent: a dead parent's helper is gone within it.
WATCH_INTERVAL_S = 0.2
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_command(task: str, *args: str) -> list[str]:
    """The command line that runs helper ``task`` with ``args`` (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"unknown helper task {task!r}")
    if getattr(sys, "frozen", False):
        return [sys.executable, "--child", task, *args]
    return [sys.executable, "-m", "quantstudio.core.child", task, *args]


def child_env() -> dict[str, str]:
    """The environment for a helper: this one, with this quantstudio first on the path
    (a helper started from a source checkout imports the same package as the app)."""
    env = dict(os.environ)
    if not getattr(sys, "frozen", False):
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return env


def die_with_parent(cleanup: Path | None = None, parent: int | None = None) -> None:
    """Exit (removing ``cleanup``) as soon as the parent process is gone.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so the kernel signals this process when
    the thread that started it dies (the app's job thread, which waits for the helper,
    so it outlives it in normal use). Everywhere: a daemon thread compares
    ``os.getppid()`` with the parent every :data:`WATCH_INTERVAL_S` (a reparented
    process gets another parent id), which also covers a parent that died before the
    ``prctl`` call.
    """
    parent = os.getppid() if parent is None else parent

    def leave(*_: object) -> None:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        os._exit(1)  # no interpreter shutdown: threads and ONNX Runtime may be mid-call

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            signal.signal(signal.SIGTERM, leave)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError, ValueError):  # no prctl, or not the main thread: the watchdog stays
            pass

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(WATCH_INTERVAL_S)
        leave()

    if os.getppid() != parent:
        leave()
    threading.Thread(target=watch, name="quantstudio-parent-watch", daemon=True).start()


def _ort_tool(args: list[str]) -> int:
    from quantstudio.core.engines.ort.tools import _tool_main

    return _tool_main(args[0])


def _memory(args: list[str]) -> int:
    from quantstudio.core.benchmark import memory_probe_main

    return memory_probe_main(args)


def _workdir(task: str, args: list[str]) -> Path | None:
    """The folder a helper removes when the app dies: an ONNX Runtime job's work folder
    (the app's temporary folder, which the dead app can no longer remove)."""
    if task == "ort-tool" and args:
        return Path(args[0]).resolve().parent
    return None


_RUNNERS: dict[str, Callable[[list[str]], int]] = {"ort-tool": _ort_tool, "memory": _memory}


def main(argv: list[str]) -> int:
    """Run helper ``argv[0]`` with ``argv[1:]``; returns the exit status."""
    if not argv or argv[0] not in _RUNNERS:
        print(f"usage: quantstudio --child {{{','.join(TASKS)}}} ARGS...", file=sys.stderr)
        return 2
    task, args = argv[0], list(argv[1:])
    die_with_parent(cleanup=_workdir(task, args))
    return _RUNNERS[task](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""ONNX Runtime's tools (pre-processing, static/dynamic quantizers, a session check) run
in a child process, and the calibration data readers they use."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Iterator, Sized

import numpy as np

from quantstudio.core.engines.entropy import ENTROPY_BINS, ENTROPY_QUANTIZED_BINS, entropy_threshold
from quantstudio.core.engines.ort.runtime import make_session, quiet
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext

PERCENTILE = 99.99  # percentile calibration keeps this share of |x| (as the PyTorch engine)


# Dynamic INT8: only ops ONNX Runtime runs faster that way. ConvInteger is slower than
# FP32 Conv on CPUs, so Conv is left to static INT8.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "Gather"]


# --------------------------------------------------------------------------- calibration


class _Reader:
    """ONNX Runtime's CalibrationDataReader interface over ``get_next`` (also iterable)."""

    def get_next(self):  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def rewind(self):  # part of ORT's reader interface; calibration reads once
        pass

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


class ProgressReader(_Reader):
    """A CalibrationDataReader that reports progress and honours cancellation."""

    def __init__(self, batches: Iterable[Any], input_name: str, ctx: JobContext, lo: float, hi: float,
                 label: str = "calibrating") -> None:
        self._it: Iterator[Any] = iter(batches)
        self.label = label
        self.total = len(batches) if isinstance(batches, Sized) else None
        self.input_name = input_name
        self.ctx = ctx
        self.lo, self.hi = lo, hi
        self.count = 0

    def get_next(self):
        self.ctx.check_cancelled()
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += 1
        frac = self.count / self.total if self.total else 1 - 1 / (self.count + 1)
        self.ctx.report(self.lo + (self.hi - self.lo) * min(frac, 1.0),
                        f"{self.label}: batch {self.count}" + (f"/{self.total}" if self.total else ""))
        x = np.ascontiguousarray(getattr(batch, "x", batch), dtype=np.float32)
        return {self.input_name: x}


# --------------------------------------------------------------------------- ORT's tools, out of process

# ONNX Runtime's pre-processing and quantizers are Python loops over small numpy and
# protobuf calls, many of which release the GIL for a few microseconds and take it
# straight back. CPython wakes a waiting thread at each release, the releasing thread
# wins the GIL back before the woken one runs, and the woken thread starts its wait
# over without ever asking for a switch: in the app the GUI thread got no turn for
# 100-700 ms at a time, whatever sys.setswitchinterval says. The tools read and write
# files only, so they run in a helper process started through the app's own entry
# point (quantstudio.core.child; about 0.4 s to start), a bundled app included. Only
# where no process can be started at all do they run in this one.


class ToolFailed(Exception):
    """ONNX Runtime's tool raised: ``str()`` is its message, ``details`` its traceback."""

    def __init__(self, message: str, kind: str = "Exception", details: str = "", signal: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details
        self.signal = signal  # the signal that killed the child ("Crash"), else 0


class ToolWorker:
    """One helper process that runs the tool jobs of several quantizes in turn (the
    candidates of one auto-precision search: one process start and one import of ONNX
    Runtime's quantization tools, not two per candidate; ~0.3-0.6 s each here).

    Jobs are queued as ``queue-N.txt`` files (the job file's path) in ``folder``; the
    helper writes each job's result file as the one-shot helper does. A cancel or a crash
    ends the process; the next job starts another. ``folder`` must hold the jobs' work
    folders: a helper whose app died removes it (quantstudio.core.child)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.proc: subprocess.Popen | None = None
        self._next = 0
        self.starts = 0  # processes started (for tests)

    def submit(self, job_path: Path) -> subprocess.Popen | None:
        """Queue the job at ``job_path``; returns the helper process running it (None:
        no process can be started here)."""
        from quantstudio.core.child import child_command, child_env

        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None
        if self.proc is None:
            serve = self.folder / "worker.json"
            serve.write_text(json.dumps({"tool": "serve", "queue": str(self.folder), "first": self._next}))
            try:
                with open(self.folder / "worker-stderr.txt", "wb") as err:
                    self.proc = subprocess.Popen(child_command("ort-tool", str(serve)), env=child_env(),
                                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            except OSError:
                return None
            self.starts += 1
        _write_atomic(self.folder / f"queue-{self._next}.txt", str(job_path))
        self._next += 1
        return self.proc

    def stderr(self) -> str:
        try:
            return (self.folder / "worker-stderr.txt").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    close = kill


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader polling for ``path`` never sees it half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_ort_tool(job: dict[str, Any], ctx: JobContext, message: str | None = None, fraction: float = 0.0,
                 until: float | None = None, worker: ToolWorker | None = None) -> None:
    """Run one of ONNX Runtime's tools (see :func:`_run_tool`) in a helper process
    (:mod:`quantstudio.core.child`; in this process only where none can be started).

    Reports ``message`` at ``fraction`` first (when given) and honours cancel (the child
    is killed). A static job with ``until`` also reports calibration progress from the
    child (batches read, of ``job["batches"]``) between ``fraction`` and ``until``.
    ``worker``: run it in that long-lived helper instead of a new one (same results).
    Raises :class:`ToolFailed` when the tool fails.
    """
    if message:
        ctx.report(fraction, message)
    workdir = Path(job["dst"]).parent
    job_path = workdir / f"{job['tool']}-job.json"
    result_path = workdir / f"{job['tool']}-result.json"
    job = {**job, "result": str(result_path)}
    progress_path = workdir / f"{job['tool']}-progress.txt"
    if until is not None and job.get("batches"):
        job["progress"] = str(progress_path)
    seen = 0
    job_path.write_text(json.dumps(job))
    from quantstudio.core.child import child_command, child_env

    proc = None
    if worker is not None:
        proc = worker.submit(job_path)
    else:
        try:
            with open(workdir / f"{job['tool']}-stderr.txt", "wb") as err:
                proc = subprocess.Popen(child_command("ort-tool", str(job_path)), env=child_env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        except OSError:  # no process can be started here at all: run the tool in this one
            proc = None
    if proc is not None:
        finished = False
        try:
            while True:
                if worker is not None:  # the helper lives on: its result file says the job is done
                    if result_path.exists() or proc.poll() is not None:
                        break
                    time.sleep(0.01)
                else:
                    try:
                        proc.wait(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                ctx.check_cancelled()
                if "progress" in job and until is not None:
                    seen = _report_tool_progress(progress_path, seen, job["batches"], ctx, fraction, until)
            if "progress" in job and until is not None:  # the child may have ended between two polls
                _report_tool_progress(progress_path, seen, job["batches"], ctx, fraction, until)
            finished = True
            ctx.check_cancelled()  # a cancel asked for while the child was finishing still counts
        finally:
            if worker is not None:
                if not finished:  # cancelled mid-job: the helper's work is for nothing
                    worker.kill()
            elif proc.poll() is None:
                proc.kill()
                proc.wait()
        if result_path.exists():
            result = json.loads(result_path.read_text())
            if result["ok"]:
                return
            raise ToolFailed(result["error"], result["kind"], result["details"])
        if worker is not None:
            stderr = worker.stderr()
            worker.proc = None
        else:
            stderr = (workdir / f"{job['tool']}-stderr.txt").read_text(errors="replace")[-4000:]
        if proc.returncode < 0:  # killed by a signal (a crash): running it here would crash the app
            raise ToolFailed(f"ONNX Runtime's {job['tool']} tool crashed (signal {-proc.returncode})", "Crash", stderr,
                             signal=-proc.returncode)
        # It exited without a result: the helper could not start its work (an app
        # whose entry point does not know --child, a broken install).
        raise ToolFailed(f"the helper process for ONNX Runtime's {job['tool']} tool did not start its work "
                         f"(exit code {proc.returncode})", "HelperFailed", stderr)
    if job.get("child_only"):  # a check that only means something out of process
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _run_tool(job)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - reported like the child's failures
        raise ToolFailed(str(exc), type(exc).__name__, traceback.format_exc()) from exc


def _report_tool_progress(path: Path, seen: int, total: int, ctx: JobContext, lo: float, hi: float) -> int:
    """Report the child's calibration progress when it moved; returns the batches seen."""
    try:
        done = int(path.read_text() or 0)
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return seen
    if done > seen:
        ctx.report(lo + (hi - lo) * min(done / total, 1.0),
                   f"calibrating: batch {done}/{total}" if done < total else "computing ranges and quantizing")
    return max(done, seen)


def _tool_main(job_path: str) -> int:
    """The child process: run the job, write {"ok": ...} to the job's result file."""
    # onnxruntime.tools imports torch when it can find it (2 s here) and the tools never
    # use it: a None entry makes it unfindable.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    job = json.loads(Path(job_path).read_text())
    if job["tool"] == "serve":
        return _serve(Path(job["queue"]), int(job.get("first", 0)))
    _run_job(job, Path(job_path))
    return 0


def _run_job(job: dict[str, Any], job_path: Path) -> None:
    # ONNX Runtime's quantizers write their own temporary files (the calibrator's
    # augmented model, 43 MB for a ResNet-18) under tempfile's folder; a cancel kills
    # this process before they are removed. Inside the job's work folder they go
    # with it.
    tempfile.tempdir = str(Path(job_path).resolve().parent)
    try:
        # Calibrators print their progress to stdout; ORT's quantizer logs advice.
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            _run_tool(job)
        result: dict[str, Any] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - everything goes back to the parent
        result = {"ok": False, "error": str(exc), "kind": type(exc).__name__, "details": traceback.format_exc()[-8000:]}
    _write_atomic(Path(job["result"]), json.dumps(result))


def _serve(queue: Path, n: int) -> int:
    """A :class:`ToolWorker`'s helper: run queued jobs in order until the queue folder is
    gone (the parent also kills it when done, and child.py ends it with the app)."""
    while queue.is_dir():
        entry = queue / f"queue-{n}.txt"
        if not entry.exists():
            time.sleep(0.005)
            continue
        job_path = Path(entry.read_text())
        _run_job(json.loads(job_path.read_text()), job_path)
        n += 1
    return 0


def _equal_batches(path: Path, sizes: list[int]) -> int:
    """Rewrite the calibration file at ``path`` so every batch has the same size.

    ONNX Runtime's histogram calibrators (Entropy, Percentile) stack the outputs of all
    batches into one array and fail on a last batch that is smaller ("inhomogeneous
    shape"), which happens whenever the calibration count is not a multiple of the batch
    size. Splitting every batch into chunks of the sizes' greatest common divisor keeps
    every sample and changes no statistic. Returns the number of batches in the file.
    """
    import math

    chunk = math.gcd(*sizes)
    if len(set(sizes)) <= 1:
        return len(sizes)
    fixed = path.with_name(path.stem + "-equal.npy")
    with open(path, "rb") as src, open(fixed, "wb") as dst:
        for _ in sizes:
            x = np.load(src, allow_pickle=False)
            for start in range(0, len(x), chunk):
                np.save(dst, x[start:start + chunk], allow_pickle=False)
    os.replace(fixed, path)
    return sum(size // chunk for size in sizes)


class _FileReader(_Reader):
    """Calibration batches from the file :meth:`OrtEngine._static` wrote (one np.save each)."""

    def __init__(self, path: str, input_name: str, progress: str | None = None) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed at the end of the data
        self.input_name = input_name
        self._progress = Path(progress) if progress else None  # the parent polls it (see run_ort_tool)
        self.count = 0

    def get_next(self):
        if self._f.closed:
            return None
        try:
            x = np.load(self._f, allow_pickle=False)
        except (EOFError, ValueError):
            self._f.close()
            return None
        self.count += 1
        if self._progress is not None:
            self._progress.write_text(str(self.count))
        return {self.input_name: x}


def _run_tool(job: dict[str, Any]) -> None:
    """Run one tool: "pre_process", "static" or "dynamic" (file in, file out)."""
    if job["tool"] == "pre_process":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(job["src"], job["dst"])
    elif job["tool"] == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        # "ranges": ONNX Runtime's calibration cache. Present: an earlier candidate of an
        # auto-precision search measured the ranges, nothing is calibrated. Absent: the
        # ranges measured here are written there (quantize_static saves them).
        ranges = Path(job["ranges"]) if job.get("ranges") else None
        reader: _FileReader | None = None
        cache = ranges
        if ranges is None or not ranges.is_file():
            reader = _FileReader(job["calibration"], job["input_name"], job.get("progress"))
            if job["method"] == "Entropy":
                cache = ranges or Path(job["dst"]).with_name("entropy-ranges.json")
                _entropy_ranges(job["src"], reader, cache, bool(job["extra"].get("CalibTensorRangeSymmetric", False)))
                reader = None  # quantize_static reads the ranges from the cache
        quantize_static(
            job["src"],
            job["dst"],
            reader,
            calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ,
            per_channel=job["per_channel"],
            reduce_range=job["reduce_range"],
            activation_type=QuantType[job["activation_type"]],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=job["exclude"],
            calibrate_method=CalibrationMethod[job["method"]],
            extra_options=job["extra"],
        )
    elif job["tool"] == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            job["src"],
            job["dst"],
            op_types_to_quantize=DYNAMIC_OPS,
            per_channel=job["per_channel"],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=job["exclude"],
        )
    elif job["tool"] == "check":
        session = make_session(job["src"])
        if job.get("input"):
            x = np.load(job["input"], allow_pickle=False)
            session.run(None, {session.get_inputs()[0].name: x})
    else:
        raise ValueError(f"unknown tool {job['tool']!r}")


def _entropy_collector(symmetric: bool):
    """ORT's histogram collector with :func:`entropy_threshold` for its KL search."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class EntropyCollector(HistogramCollector):
        def get_entropy_threshold(self, histogram, num_quantized_bins):
            return entropy_threshold(histogram[0], histogram[1], histogram[2], histogram[3], num_quantized_bins)

    return EntropyCollector(method="entropy", symmetric=symmetric, num_bins=ENTROPY_BINS,
                            num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=PERCENTILE, scenario="same")


def _entropy_ranges(src: str, reader: Any, cache: Path, symmetric: bool) -> None:
    """Calibrate ``src`` with ORT's EntropyCalibrater (2048 bins) and write the ranges to
    ``cache``, the calibration cache quantize_static reads (same tensors it would calibrate)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        Path(src),
        list(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates
        augmented_model_path=str(cache.with_name("augmented_model.onnx")),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"symmetric": symmetric, "num_bins": ENTROPY_BINS,
                       "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collector = _entropy_collector(symmetric)
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator


def sample_input(model: Any, input_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """A float32 batch for ``model``'s only input: its fixed dimensions, ``input_shape``'s
    (else 1) for symbolic ones. None when the model takes several inputs, a non-float
    one or one of unknown rank (a check then only creates the session)."""
    from onnx import TensorProto

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    dims = list(inputs[0].type.tensor_type.shape.dim)
    if not dims:
        return None
    shape = list(input_shape) if input_shape and len(input_shape) == len(dims) else [1] * len(dims)
    sizes = [int(d.dim_value) if d.HasField("dim_value") else int(v) for d, v in zip(dims, shape)]
    return np.random.default_rng(0).standard_normal(sizes, dtype=np.float32)


def check_in_child(model: Any, workdir: Path, ctx: JobContext, sample: np.ndarray | None = None,
                   hint: str = "Keep more layers in FP32, or try another mode.", path: Any = None,
                   worker: ToolWorker | None = None) -> None:
    """Create an ONNX Runtime session for ``model`` and run ``sample`` in a child process.

    ONNX Runtime can die natively on a graph it accepts (a segfault in a graph
    optimizer); in this process that would end the app with it. A crash becomes an
    :class:`InputError` naming the signal; a Python-level failure one with ONNX Runtime's
    message. Costs one child start (~0.4 s) and one batch; where no process can be
    started at all it checks nothing.
    """
    import signal

    import onnx

    src = workdir / "check.onnx"
    onnx.save(model, str(src))
    job: dict[str, Any] = {"tool": "check", "src": str(src), "dst": str(workdir / "check.done"), "child_only": True}
    if sample is not None:
        np.save(workdir / "check-input.npy", sample, allow_pickle=False)
        job["input"] = str(workdir / "check-input.npy")
    try:
        run_ort_tool(job, ctx, worker=worker)
    except ToolFailed as exc:
        if exc.kind == "Crash":
            try:
                name = signal.Signals(exc.signal).name
            except ValueError:
                name = f"signal {exc.signal}"
            raise InputError(
                f"ONNX Runtime crashed ({name}) creating a session for the quantized model "
                "(in a separate process: nothing else was affected)",
                path=path,
                hint=hint,
                details=(str(exc) + "\n\n" + exc.details)[-4000:],
            ) from exc
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.kind
        raise InputError(
            f"ONNX Runtime cannot run the quantized model: {first}",
            path=path,
            hint=hint,
            details=(str(exc) + "\n\n" + exc.details)[-4000:],
        ) from exc
    finally:
        src.unlink(missing_ok=True)


def _crash_hint(mode: str, fp16_nodes: set[str]) -> str:
    if fp16_nodes:
        other = "static or dynamic INT8" if mode == "fp16" else "fewer FP16 layers"
        return ("Keep the layers ONNX Runtime cannot run in FP16 in FP32 (--precision 'NAME=fp32' sets a layer "
                f"or a whole block, e.g. an attention module), or use {other}.")
    return "Keep the failing layers in FP32 (--precision 'PATTERN=fp32'), or try another mode."

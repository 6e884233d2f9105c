"""Benchmarks a user can trust: interleaved latency, throughput, size and memory.

A shared machine drifts (DESIGN: the same FP32 run varied 2-3x between minutes), so
variants are timed interleaved, in a new shuffled order every round, within one process, never one after
the other; every sample is streamed through ``ctx.partial`` so plots fill in live, and
cancellation is checked between single runs.

Peak memory is measured in a fresh process per variant (load the file, run inference,
read the peak resident set), so one variant's memory never counts against another's.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from quantstudio.core.jobs import JobContext, NullContext
from quantstudio.core.results import LatencySample, MemoryMeasured, ThroughputMeasured

DEFAULT_BATCH_SIZES = (1, 8, 32)
# Stop growing the batch when one input batch alone would take this much memory.
MAX_BATCH_BYTES = 1 << 30


@dataclass
class Variant:
    """Something to time: a name and a callable taking a float32 NCHW numpy batch."""

    name: str
    runner: Callable[[Any], Any]
    file: Path | None = None  # exported/original file: size on disk and memory subprocess
    param_bytes: int | None = None
    kind: str = ""  # e.g. "pytorch fp32", "onnxruntime int8"


@dataclass
class LatencyStats:
    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    p25_ms: float = 0.0  # defaults: results saved before these were measured still load
    p75_ms: float = 0.0

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        if not samples_ms:
            raise ValueError("no samples")
        xs = sorted(samples_ms)
        n = len(xs)
        mean = sum(xs) / n
        var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
        return cls(
            n=n,
            mean_ms=mean,
            std_ms=math.sqrt(var),
            p50_ms=percentile(xs, 50),
            p90_ms=percentile(xs, 90),
            p25_ms=percentile(xs, 25),
            p75_ms=percentile(xs, 75),
            p99_ms=percentile(xs, 99),
            min_ms=xs[0],
        )


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted data."""
    if not sorted_xs:
        raise ValueError("no samples")
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


@dataclass
class VariantResult:
    name: str
    kind: str = ""
    latency: dict[int, LatencyStats] = field(default_factory=dict)  # per batch size
    throughput: dict[int, float] = field(default_factory=dict)  # samples / second
    samples_ms: dict[int, list[float]] = field(default_factory=dict)
    size_bytes: int | None = None
    param_bytes: int | None = None
    peak_rss_bytes: int | None = None
    inference_rss_bytes: int | None = None  # growth of the resident set from loading + running
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {str(b): asdict(s) for b, s in self.latency.items()}
        d["throughput"] = {str(b): t for b, t in self.throughput.items()}
        d["samples_ms"] = {str(b): s for b, s in self.samples_ms.items()}
        return d


# A timing is flagged when the middle half of one variant's runs spreads this widely (as
# a share of the median), or when other programs kept this much of a core busy while it
# was measured. Why the middle half and not p90: on a quiet 2-core machine a few of 20
# eager-PyTorch runs in the app still take 3x the median (p90/p50 = 3.8 on the demo, the
# middle half spanning 31 %: the window draws while it times) while the median stays
# steady; with other CPU-bound programs the same FP32 model read 7 ms and 459 ms in two
# runs, and then the middle half spreads far more.
MAX_IQR_OVER_MEDIAN = 0.5
MAX_OTHER_CORES = 0.5


@dataclass
class CpuLoad:
    """CPU time used by other programs while a benchmark ran (Linux /proc; None elsewhere)."""

    other_cores: float | None  # average cores busy with other processes
    cores: int

    def to_dict(self) -> dict[str, Any]:
        return {"other_cores": self.other_cores, "cores": self.cores}


class CpuLoadMeter:
    """Measures how busy *other* programs keep the CPU between :meth:`start` and :meth:`stop`.

    /proc/stat counts every CPU's busy time; /proc/self/stat this process's. What other
    programs used is the difference, so the benchmark's own threads do not count.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)  # minus idle and iowait
        mine = float(own[11]) + float(own[12])  # utime + stime of this process, in clock ticks
        return time.monotonic(), busy, mine

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuLoad:
        cores = os.cpu_count() or 1
        end = self._read()
        if self._start is None or end is None:
            return CpuLoad(None, cores)
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        seconds = end[0] - self._start[0]
        if seconds <= 0:
            return CpuLoad(None, cores)
        other = ((end[1] - self._start[1]) - (end[2] - self._start[2])) / ticks / seconds
        return CpuLoad(max(0.0, other), cores)


def timing_warnings(variants: list[VariantResult], load: CpuLoad | None) -> list[str]:
    """Why these timings should not be trusted, if they should not (empty when they look steady)."""
    out = []
    busy = load is not None and load.other_cores is not None and load.other_cores > MAX_OTHER_CORES
    for v in variants:
        for batch, st in sorted(v.latency.items()):
            # Percentiles, not the standard deviation: one slow first run (a cache warming)
            # inflates the deviation of a steady series, the middle half not.
            spread = (st.p75_ms - st.p25_ms) / st.p50_ms if st.p50_ms > 0 else 0.0
            if spread > MAX_IQR_OVER_MEDIAN:
                out.append(
                    f"timing of {v.name} at batch {batch} is unreliable: repeated runs spread widely "
                    f"(the middle half of the runs spans {spread:.0%} of the median)"
                )
                break
    if busy:
        assert load is not None and load.other_cores is not None
        out.append(
            f"the computer was busy: other programs used {load.other_cores:.1f} of {load.cores} CPU cores while "
            "timing, so the speed figures are unreliable; close them and measure again"
        )
    return out


@dataclass
class BenchmarkResult:
    variants: list[VariantResult]
    threads: int
    batch_sizes: list[int]
    runs: int
    cpu: str = ""
    load: CpuLoad | None = None
    warnings: list[str] = field(default_factory=list)  # why the timings are unreliable, if they are

    @property
    def reliable(self) -> bool:
        return not self.warnings

    def by_name(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def speedup(self, baseline: str, other: str, batch: int = 1) -> float:
        """p50 latency ratio baseline / other (> 1 means ``other`` is faster)."""
        return self.by_name(baseline).latency[batch].p50_ms / self.by_name(other).latency[batch].p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "batch_sizes": self.batch_sizes,
            "runs": self.runs,
            "cpu": self.cpu,
            "load": self.load.to_dict() if self.load is not None else None,
            "reliable": self.reliable,
            "warnings": list(self.warnings),
            "variants": [v.to_dict() for v in self.variants],
        }


def run_benchmark(
    variants: list[Variant],
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1,),
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    memory: bool = False,
    ctx: JobContext | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchmarkResult:
    """Time every variant interleaved at each batch size; see the module docstring."""
    import numpy as np

    ctx = ctx or NullContext()
    threads = threads or os.cpu_count() or 1
    _set_torch_threads(threads)
    results = {v.name: VariantResult(name=v.name, kind=v.kind) for v in variants}
    alive = {v.name for v in variants}
    rng = np.random.default_rng(0)
    order_rng = random.Random(0)
    total_steps = max(1, len(batch_sizes) * (warmup + runs))
    step = 0
    meter = CpuLoadMeter()
    meter.start()
    for batch in batch_sizes:
        shape = (batch, *input_shape[1:])
        if 4 * math.prod(shape) > MAX_BATCH_BYTES:
            for r in results.values():
                r.notes.append(f"batch {batch} skipped: one input batch would need over 1 GiB")
            continue
        x = rng.standard_normal(shape, dtype=np.float32)
        current = [v for v in variants if v.name in alive]
        for i in range(warmup):
            ctx.check_cancelled()
            for v in list(current):
                if not _guarded_call(v, x, results[v.name], batch):
                    current.remove(v)
            step += 1
            ctx.report(step / total_steps, f"warming up, batch {batch}")
        samples: dict[str, list[float]] = {v.name: [] for v in current}
        for i in range(runs):
            ctx.check_cancelled()
            # A new order every round: a plain rotation keeps neighbours together, and a
            # variant that always follows a PyTorch one pays for OpenMP threads still spinning.
            for v in order_rng.sample(current, len(current)):
                t0 = clock()
                v.runner(x)
                ms = (clock() - t0) * 1000.0
                samples[v.name].append(ms)
                ctx.partial(LatencySample(v.name, batch, ms))
            step += 1
            ctx.report(step / total_steps, f"timing batch {batch}: run {i + 1}/{runs}")
        for v in current:
            r = results[v.name]
            stats = LatencyStats.from_samples(samples[v.name])
            r.samples_ms[batch] = samples[v.name]
            r.latency[batch] = stats
            r.throughput[batch] = batch / (stats.p50_ms / 1000.0) if stats.p50_ms > 0 else float("inf")
            ctx.partial(ThroughputMeasured(v.name, batch, r.throughput[batch]))
    load = meter.stop()
    for v in variants:
        r = results[v.name]
        if v.file is not None and Path(v.file).exists():
            r.size_bytes = Path(v.file).stat().st_size
        r.param_bytes = v.param_bytes
        if memory and v.file is not None:
            ctx.check_cancelled()
            ctx.report(1.0, f"measuring memory of {v.name}")
            mem = measure_memory(Path(v.file), input_shape)
            if mem is not None:
                r.peak_rss_bytes, r.inference_rss_bytes = mem
            ctx.partial(MemoryMeasured(v.name, r.peak_rss_bytes, size_bytes=r.size_bytes))
    return BenchmarkResult(
        variants=list(results.values()),
        threads=threads,
        batch_sizes=list(batch_sizes),
        runs=runs,
        cpu=cpu_name(),
        load=load,
        warnings=timing_warnings(list(results.values()), load),
    )


def _guarded_call(v: Variant, x, result: VariantResult, batch: int) -> bool:
    """Run once; a batch the variant cannot take (memory, fixed batch) ends its sweep."""
    try:
        v.runner(x)
        return True
    except (MemoryError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        result.notes.append(f"batch {batch} not run: {first}")
        return False
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        if type(exc).__module__.startswith("onnxruntime"):
            result.notes.append(f"batch {batch} not run: {str(exc).splitlines()[0][:200]}")
            return False
        raise


def _set_torch_threads(threads: int) -> None:
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- variants from files


def variant_from_file(path: str | Path, name: str | None = None, *, threads: int | None = None,
                      trust: bool = False, arch: str | None = None, input_shape=None) -> tuple[Variant, Any]:
    """A timed variant for an exported or original model file (any kind load_model reads).

    ONNX files run in an ONNX Runtime session with ``threads`` intra-op threads.
    Returns the variant and the LoadedModel it came from.
    """
    from quantstudio.core.loading import KIND_ONNX, load_model

    path = Path(path)
    model = load_model(path, arch=arch, input_shape=input_shape, trust=trust)
    if model.kind == KIND_ONNX:
        sess = make_ort_session(model.onnx_model.SerializeToString(), threads)
        input_name = model.onnx_input_name

        def onnx_runner(x: Any, _s: Any = sess, _n: Any = input_name) -> Any:
            return _s.run(None, {_n: x})

        runner: Callable[[Any], Any] = onnx_runner

        kind = "onnxruntime"
        param_bytes = sum(_tensor_bytes(i) for i in model.onnx_model.graph.initializer)
    else:
        import torch

        module = model.module

        def torch_runner(x: Any, _m: Any = module) -> Any:
            with torch.inference_mode():
                return _m(torch.from_numpy(x))

        runner = torch_runner

        kind = "pytorch"
        param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        param_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    return Variant(name=name or path.name, runner=runner, file=path, param_bytes=param_bytes, kind=kind), model


def make_ort_session(model_bytes: bytes, threads: int | None = None, optimized_path: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.log_severity_level = 3
    # ONNX Runtime's idle worker threads spin-wait by default; in an interleaved benchmark
    # (and in the app, beside PyTorch) they would steal the cores the next variant runs on.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _tensor_bytes(t) -> int:
    from onnx import helper

    n = math.prod(t.dims) if len(t.dims) else 1
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError):
        itemsize = 4
    return int(n * itemsize)


# --------------------------------------------------------------------------- memory

def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_probe_main(argv: list[str]) -> int:
    """The peak-memory probe (helper task "memory": MODEL SHAPE_JSON THREADS): load the
    model, run it three times, print {"peak", "growth", "base"} in bytes as JSON."""
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np
    import onnxruntime  # noqa: F401 - imported first, so the baseline includes the libraries
    import torch  # noqa: F401

    # VmHWM, not getrusage's ru_maxrss: on Linux a child's ru_maxrss starts at its
    # parent's size at fork time, so it would report the app's memory, not this process's.
    base = _status_bytes("VmRSS")
    path, shape, threads = argv[0], tuple(json.loads(argv[1])), int(argv[2])
    v, _ = variant_from_file(path, threads=threads, trust=False, input_shape=shape)
    x = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        v.runner(x)
    print(json.dumps({"peak": _status_bytes("VmHWM"), "growth": max(0, _status_bytes("VmRSS") - base), "base": base}))
    return 0


def _memory_command(path: Path, input_shape: Sequence[int], threads: int | None) -> list[str]:
    from quantstudio.core.child import child_command

    threads = threads or os.cpu_count() or 1
    return child_command("memory", str(path), json.dumps(list(input_shape)), str(threads))


def _child_env() -> dict[str, str]:
    from quantstudio.core.child import child_env

    return child_env()


def _parse_memory(stdout: str) -> dict[str, int]:
    data = json.loads(stdout.strip().splitlines()[-1])
    return {
        "peak_rss_bytes": int(data["peak"]),
        # What the model itself adds on top of the runtime's libraries (both imported
        # before the baseline is read): the figure that differs between models.
        "model_peak_bytes": max(0, int(data["peak"]) - int(data["base"])),
        "growth_bytes": int(data["growth"]),
    }


def measure_memory(path: Path, input_shape: Sequence[int], threads: int | None = None,
                   timeout: float = 300.0) -> tuple[int, int] | None:
    """Peak resident memory of a fresh process that loads ``path`` and runs inference.

    Returns (peak RSS of the process, RSS growth from loading + inference), or None when
    the file cannot be run this way (e.g. a pickled model that needs consent).
    """
    try:
        res = subprocess.run(_memory_command(path, input_shape, threads), capture_output=True, text=True,
                             timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        return None
    m = _parse_memory(res.stdout)
    return m["peak_rss_bytes"], m["growth_bytes"]


def measure_memory_many(files: dict[str, Path], input_shape: Sequence[int], threads: int | None = None,
                        ctx: Any = None, timeout: float = 300.0,
                        errors: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """:func:`measure_memory` for several files at once (one fresh process each, side by
    side: memory does not depend on the neighbour's timing), honouring cancel.

    Returns name → {peak_rss_bytes, model_peak_bytes, growth_bytes}; a file that could
    not be run is left out, with the last line its process printed in ``errors``.
    """
    import tempfile

    procs: dict[str, tuple[subprocess.Popen, Any]] = {}
    out: dict[str, dict[str, int]] = {}
    deadline = time.monotonic() + timeout
    try:
        for name, p in files.items():
            err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child never blocks
            procs[name] = (subprocess.Popen(_memory_command(p, input_shape, threads), stdout=subprocess.PIPE,
                                            stderr=err, text=True, env=_child_env()), err)
        for name, (proc, err) in procs.items():
            while proc.poll() is None:
                if ctx is not None:
                    ctx.check_cancelled()
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            reason = "timed out" if proc.returncode is None else ""
            if proc.returncode == 0:
                try:
                    out[name] = _parse_memory(proc.stdout.read() if proc.stdout is not None else "")
                except (ValueError, KeyError, IndexError):
                    reason = "its output could not be read"
            elif proc.returncode is not None:
                err.seek(0)
                lines = [line.strip() for line in err.read().splitlines() if line.strip()]
                reason = lines[-1][:300] if lines else f"exit code {proc.returncode}"
            if reason and errors is not None:
                errors[name] = reason
    finally:
        for proc, err in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            err.close()
    return out

"""Benchmark statistics, interleaving, streaming and cancellation, with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from quantstudio.core.benchmark import LatencyStats, Variant, percentile, run_benchmark
from quantstudio.core.errors import Cancelled
from quantstudio.core.jobs import RecordingContext


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_latency_stats_match_numpy():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    s = LatencyStats.from_samples(xs)
    assert s.n == 7
    assert s.p50_ms == pytest.approx(np.percentile(xs, 50))
    assert s.p90_ms == pytest.approx(np.percentile(xs, 90))
    assert s.p99_ms == pytest.approx(np.percentile(xs, 99))
    assert s.mean_ms == pytest.approx(np.mean(xs))
    assert s.std_ms == pytest.approx(np.std(xs, ddof=1))
    assert s.min_ms == 1.0
    assert percentile([2.0], 90) == 2.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def _variants(clock, order, costs):
    def make(name, ms):
        def run(x):
            order.append(name)
            clock.t += ms / 1000.0
            return x
        return Variant(name=name, runner=run)
    return [make(n, ms) for n, ms in costs.items()]


def test_runs_are_interleaved_in_varying_order():
    clock, order = FakeClock(), []
    vs = _variants(clock, order, {"A": 10, "B": 5, "C": 1})
    run_benchmark(vs, (1, 3, 4, 4), runs=30, warmup=0, clock=clock)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == ["A", "B", "C"] for r in rounds)  # every round runs each once
    assert len({tuple(r) for r in rounds}) > 3  # and the order changes between rounds
    followers = {(a, b) for r in rounds for a, b in zip(r, r[1:])}
    assert ("A", "B") in followers and ("B", "A") in followers  # no fixed neighbours


def test_stats_throughput_and_speedup_from_fake_timings():
    clock, order = FakeClock(), []
    vs = _variants(clock, order, {"fp32": 8.0, "int8": 2.0})
    ctx = RecordingContext()
    res = run_benchmark(vs, (1, 3, 4, 4), batch_sizes=(1, 4), runs=5, warmup=1, clock=clock, ctx=ctx)
    fp32, int8 = res.by_name("fp32"), res.by_name("int8")
    assert fp32.latency[1].p50_ms == pytest.approx(8.0)
    assert int8.latency[4].p90_ms == pytest.approx(2.0)
    assert int8.throughput[4] == pytest.approx(4 / 0.002)
    assert res.speedup("fp32", "int8") == pytest.approx(4.0)
    from quantstudio.core.results import LatencySample, ThroughputMeasured

    lat = [p for p in ctx.partials if isinstance(p, LatencySample)]
    assert len(lat) == 2 * 2 * 5  # every timed sample is streamed for live plots
    assert {p.variant for p in lat} == {"fp32", "int8"}
    assert [p.batch for p in ctx.partials if isinstance(p, ThroughputMeasured)] == [1, 1, 4, 4]
    assert ctx.reports[-1][0] == pytest.approx(1.0)
    assert res.to_dict()["variants"][0]["latency"]["1"]["p50_ms"] == pytest.approx(8.0)


def test_cancel_stops_between_runs():
    clock, order = FakeClock(), []
    vs = _variants(clock, order, {"A": 1, "B": 1})
    ctx = RecordingContext(cancel_after=3)
    with pytest.raises(Cancelled):
        run_benchmark(vs, (1, 3, 4, 4), runs=100, warmup=1, clock=clock, ctx=ctx)
    assert len(order) < 10


def test_a_batch_a_variant_cannot_take_ends_its_sweep_with_a_note():
    def fixed_batch(x):
        if x.shape[0] != 1:
            raise RuntimeError("Got invalid dimensions for input")
        return x

    res = run_benchmark([Variant("fixed", fixed_batch), Variant("any", lambda x: x)], (1, 2),
                        batch_sizes=(1, 8), runs=3, warmup=1)
    fixed, other = res.by_name("fixed"), res.by_name("any")
    assert set(fixed.latency) == {1}
    assert set(other.latency) == {1, 8}
    assert "batch 8 not run" in fixed.notes[0]


def test_size_on_disk_is_reported(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x" * 1234)
    res = run_benchmark([Variant("m", lambda x: x, file=f)], (1, 2), runs=2, warmup=0)
    assert res.variants[0].size_bytes == 1234


def test_timings_that_spread_or_a_busy_cpu_are_flagged():
    from quantstudio.core.benchmark import CpuLoad, LatencyStats, VariantResult, timing_warnings

    steady = VariantResult("original", latency={1: LatencyStats.from_samples([10.0, 10.2, 9.9, 10.1, 10.0])})
    assert timing_warnings([steady], CpuLoad(0.1, 2)) == []
    noisy = VariantResult("quantized", latency={1: LatencyStats.from_samples([7.0, 7.1, 7.2, 30.0, 459.0, 7.0])})
    warnings = timing_warnings([steady, noisy], CpuLoad(0.1, 2))
    assert any("timing of quantized at batch 1 is unreliable" in w for w in warnings)
    busy = timing_warnings([steady], CpuLoad(1.4, 2))
    assert busy and "other programs used 1.4 of 2 CPU cores" in busy[0]


def test_cpu_load_meter_sees_another_busy_process():
    import subprocess
    import sys
    import time

    from quantstudio.core.benchmark import CpuLoadMeter

    meter = CpuLoadMeter()
    meter.start()
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    try:
        time.sleep(1.2)  # this process sleeps: only the spinner uses the CPU
    finally:
        spinner.wait()
    load = meter.stop()
    assert load.other_cores is not None and load.other_cores > 0.5

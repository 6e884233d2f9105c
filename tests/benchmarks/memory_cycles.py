"""Resident memory over repeated quantize cycles in one process (issue 17 items 7-8).

The app quantizes many variants in one process; whatever a cycle leaves behind adds
up. This script quantizes the demo MobileNetV2 (64x64) ``--cycles`` times with one
engine, after ``--warmup`` cycles (first-use caches: imports, kernels, FX codegen),
and prints VmRSS after ``gc.collect()`` following each cycle, then the growth from the
first measured cycle to the last. Target: < 10 MB over 15 cycles.

Run: ``PYTHONPATH=. python -m tests.benchmarks.memory_cycles --engine torch --cycles 15``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

from quantstudio.core.benchmark import cpu_name  # the one CPU-name reader

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    """VmRSS of this process in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")




def one_cycle(engine, model, config, batches) -> None:
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.plan import PrecisionPlan

    result = engine.quantize(model, PrecisionPlan(), config, batches, NullContext())
    result.runner(batches[0])  # what the app does next: evaluate it
    del result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--cycles", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration", default="minmax")
    args = parser.parse_args(argv)

    from quantstudio.core.engines.base import QuantConfig, get_engine
    from quantstudio.core.loading import load_model

    model = load_model(ROOT / "resources" / "demo" / "model.pth", arch="mobilenet_v2", input_shape=(1, 3, 64, 64))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((16, 3, 64, 64), dtype=np.float32) for _ in range(4)]
    engine = get_engine(args.engine)
    config = QuantConfig(calibration=args.calibration)
    print(f"{cpu_name()}; engine {args.engine}; {args.warmup} warm-up + {args.cycles} cycles", flush=True)
    for _ in range(args.warmup):
        one_cycle(engine, model, config, batches)
    gc.collect()
    start = rss_mb()
    figures = []
    for i in range(args.cycles):
        t = time.perf_counter()
        one_cycle(engine, model, config, batches)
        gc.collect()
        figures.append(rss_mb())
        print(f"cycle {i + 1:2d}: {figures[-1]:7.1f} MB ({time.perf_counter() - t:.1f} s)", flush=True)
    growth = figures[-1] - start
    print(f"growth over {args.cycles} cycles: {growth:+.1f} MB ({growth / args.cycles:+.2f} MB/cycle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark for issue 13: default INT8 and automatic mixed precision on damaged models.

On the damaged models of :mod:`tests.benchmarks.outlier_models` (trained digit classifiers
with outlier channels, FP32 function unchanged), through the product's own
:func:`quantstudio.core.pipeline.run_quantize`:

1. **default INT8** (equalization on, min-max): top-1 on the 540 test images vs FP32, per engine;
2. **auto precision** with ``--calibration minmax`` and equalization **off** (the worst start), a
   1-point budget: the plan chosen (calibration, FP32 layers), its top-1 on the test images
   (never seen by the search: candidates are judged on training images held out from
   calibration), candidates tried, search seconds;
3. **search time vs one plain quantize** on a 64×64 ResNet-18 (the 32×32-trained weights fed
   64×64 digits: timing only), per engine.

Data: calibration + held-out from the digits *training* split (one .npz), evaluation = the 540
test images (``eval_data``). Results are cached in ``/tmp/outliers/auto_bench.json`` (one
entry per model × engine × measurement) and rendered into RESULTS.md between the
``AUTO-PRECISION`` markers.

    PYTHONPATH=$PWD nice -n 5 python -m tests.benchmarks.auto_precision_bench [--models NAME ...] [--engines ...]
    PYTHONPATH=$PWD python -m tests.benchmarks.auto_precision_bench --render
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.outlier_models import WORK, _log, damaged_models, digits_split

# QS_AUTO_BENCH_CACHE: another cache file (two measurements running side by side must not share one).
CACHE = Path(os.environ.get("QS_AUTO_BENCH_CACHE", str(WORK / "auto_bench.json")))
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MODELS = ["resnet18 3 blocks s300", "resnet18 layer2.1 s300 4ch", "resnet18 early layer1.0 s100",
          "resnet18 late layer4.0 s100", "mobilenet_v2 early features.1 s100", "mobilenet_v2 late features.17 s100",
          "mobilenet_v2 stage 7-10 s30", "mobilenet_v2 3 sites s300", "resnet18 stream layer3 s100"]
ENGINES = ["onnxruntime", "torch"]
BUDGET = 1.0
TIMING_AGREEMENT = 97.0


def _load() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def _save(cache: dict) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(CACHE)


def _data_files(size: int) -> tuple[Path, Path]:
    """(train .npz: calibration + held-out, test .npz: the 540 evaluation images) at ``size``."""
    train, test = WORK / f"digits_train_{size}.npz", WORK / f"digits_test_{size}.npz"
    if not train.exists() or not test.exists():
        cx, cy, tx, ty = digits_split(size)
        np.savez(train, x=cx.numpy(), y=cy.numpy())
        np.savez(test, x=tx.numpy(), y=ty.numpy())
    return train, test


def _loaded(module, size: int):
    from quantstudio.core.loading import LoadedModel

    return LoadedModel(path=Path("model.pth"), kind="state_dict", input_shape=(1, 3, size, size), module=module.eval(),
                       num_classes=10)


def _run(variant, engine: str, size: int, *, budget=None, calibration="minmax", equalize=True) -> dict:
    from quantstudio.core.data import open_data
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.pipeline import run_quantize
    from quantstudio.core.plan import PrecisionPlan

    train, test = _data_files(size)
    model = _loaded(variant.module, size)
    data = open_data(str(train), input_shape=model.input_shape)
    eval_data = open_data(str(test), input_shape=model.input_shape)
    cfg = QuantConfig(engine=engine, calibration=calibration, equalize=equalize, calib_samples=256)
    t0 = time.perf_counter()
    r = run_quantize(model, data, None, PrecisionPlan(), cfg, NullContext(), eval_samples=100_000, benchmark=False,
                     eval_data=eval_data, budget=budget)
    s = r.summary()
    return {"seconds": time.perf_counter() - t0, "fp32_top1": r.original_metrics.top1,
            "int8_top1": r.quantized_metrics.top1, "n": r.quantized_metrics.n, "auto": s.auto_precision,
            "calibration": r.config.calibration, "fp32_reasons": s.fp32_reasons,
            "fp32_layers": sorted(k for k, v in s.layer_precisions.items() if v == "fp32")}


def _plain_quantize_seconds(variant, engine: str, size: int, repeats: int = 2) -> float:
    """One plain quantize (default settings) of the model, engine only: the minimum of ``repeats``."""
    from quantstudio.core.engines.base import QuantConfig, get_engine
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.plan import PrecisionPlan

    train, _ = _data_files(size)
    x = np.load(train)["x"][:256]
    calib = [x[i:i + 32] for i in range(0, 256, 32)]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        get_engine(engine).quantize(_loaded(variant.module, size), PrecisionPlan(), QuantConfig(engine=engine), calib,
                                    NullContext())
        best = min(best, time.perf_counter() - t0)
    return best


def _load_avg() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def measure(models: list[str], engines: list[str], what: list[str], force: bool = False) -> None:
    from quantstudio.core.auto_precision import Budget

    cache = _load()
    archs = sorted({m.split()[0] for m in models})
    for arch in archs:
        variants = {v.name: v for v in damaged_models(arch)}
        for name in [m for m in models if m.split()[0] == arch]:
            v = variants[name]
            for engine in engines:
                for kind in what:
                    key = f"{name} | {engine} | {kind}"
                    if key in cache and not force:
                        continue
                    load_before = _load_avg()
                    if kind == "default":
                        r = _run(v, engine, v.size)
                    elif kind == "auto":
                        r = _run(v, engine, v.size, budget=Budget(max_drop=BUDGET), equalize=False)
                    elif kind == "auto-eq":  # what a user gets: the search from today's defaults (equalization on)
                        r = _run(v, engine, v.size, budget=Budget(max_drop=BUDGET))
                    elif kind == "auto-layers":  # the FP32-layer half of the search alone (min-max only)
                        from quantstudio.core import auto_precision

                        saved, auto_precision.CALIBRATIONS = auto_precision.CALIBRATIONS, ("minmax",)
                        try:
                            r = _run(v, engine, v.size, budget=Budget(max_drop=BUDGET), equalize=False)
                        finally:
                            auto_precision.CALIBRATIONS = saved
                    elif kind == "timing64":
                        if not name.startswith("resnet18"):
                            continue
                        plain = _plain_quantize_seconds(v, engine, 64)
                        # Weights trained at 32x32 score near chance at 64x64, so a top-1 budget would
                        # be met by the first candidate: judge agreement with the FP32 model instead.
                        # 97 %: both phases run (three calibrations, then FP32 layers); at 99 % this
                        # near-chance model (tiny logit margins) needed 15 of 21 layers FP32.
                        r = _run(v, engine, 64, budget=Budget(min_agreement=TIMING_AGREEMENT), equalize=False)
                        r["plain_quantize_s"] = plain
                    else:
                        raise SystemExit(f"unknown measurement {kind}")
                    r["load"] = f"{load_before} → {_load_avg()}"
                    cache[key] = r
                    _save(cache)
                    auto = r.get("auto") or {}
                    _log(f"{key}: FP32 {r['fp32_top1']:.2%} INT8 {r['int8_top1']:.2%} {r['calibration']} "
                         f"fp32 layers {len(auto.get('candidates') and r['fp32_layers'] or [])} "
                         f"search {auto.get('seconds', 0):.0f} s run {r['seconds']:.0f} s load {r['load']}")


def _cpu() -> str:
    from quantstudio.core.benchmark import cpu_name

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu_name()}, {os.cpu_count()} cores, AVX-512 VNNI {'yes' if 'avx512_vnni' in flags else 'no'}"


def render(cache: dict) -> list[str]:
    lines = ["<!-- AUTO-PRECISION -->", "## Outlier channels: default INT8 and auto precision (tests/benchmarks/auto_precision_bench.py)", "",
             f"CPU: {_cpu()}; shared machine, load average (1/5/15 min) before → after each row in the JSON "
             f"(`{CACHE}`). Digits, 256 calibration images from the training split; top-1 on the 540 test images "
             "(1 image = 0.19 pt). Auto precision: `--calibration minmax --no-equalize --auto-precision --max-drop 1` (the *auto from the defaults* rows: without `--no-equalize`), "
             "candidates judged on training images held out from calibration (never the test images).", "",
             "| model | engine | FP32 | default INT8 (equalize, minmax) | auto: chosen | auto: FP32 layers | auto: test top-1 | candidates | held-out n | search s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for key in sorted({k.rsplit(" | ", 1)[0] for k in cache}):
        rows.append((key, cache.get(f"{key} | default"), cache.get(f"{key} | auto"), ""))
        if f"{key} | auto-layers" in cache:
            rows.append((key, None, cache[f"{key} | auto-layers"], " (min-max only: FP32 layers)"))
        if f"{key} | auto-eq" in cache:
            rows.append((key, None, cache[f"{key} | auto-eq"], " (auto from the defaults: equalization on)"))
    for key, d, a, suffix in rows:
        if d is None and a is None:
            continue
        name, engine = key.split(" | ")
        name += suffix
        fp32 = (d or a)["fp32_top1"]
        default = f"{d['int8_top1']:.2%} ({100 * (d['int8_top1'] - fp32):+.1f})" if d else "-"
        if a:
            auto = a["auto"]
            c = auto["candidates"][auto["chosen"] - 1]
            chosen = f"{c['label']}{'' if c['meets_budget'] else ' (misses budget)'}"
            layers = f"{len(c['fp32_layers'])}: {', '.join(c['fp32_layers'])}" if c["fp32_layers"] else "0"
            cells = [chosen, layers, f"{a['int8_top1']:.2%} ({100 * (a['int8_top1'] - fp32):+.1f})",
                     str(len(auto["candidates"])), str(auto["heldout_samples"]), f"{auto['seconds']:.0f}"]
        else:
            cells = ["-"] * 6
        lines.append(f"| {name} | {engine} | {fp32:.2%} | {default} | " + " | ".join(cells) + " |")
    timing = [(k, v) for k, v in cache.items() if " | timing64" in k]
    if timing:
        lines += ["", f"Search time on a 64×64 ResNet-18 (the 3-blocks damaged model, 32×32-trained weights fed 64×64 "
                  f"digits: timing only; budget: {TIMING_AGREEMENT:g} % agreement with the FP32 model on the held-out split, so both phases run), against one plain quantize of the same model (engine only, default settings, "
                  "min of 2). NNCF 3.4's accuracy control on the 32×32 model here took 155–194 s, 5–7× its own "
                  "plain quantize (29–41 s) (OUTLIERS.md).", "",
                  "| engine | plain quantize s | search s | ratio | candidates | whole run s | load |", "|---|---|---|---|---|---|---|"]
        for k, v in sorted(timing):
            auto = v["auto"]
            lines.append(f"| {k.split(' | ')[1]}{k.split(' | ')[2][len('timing64'):]} | {v['plain_quantize_s']:.1f} | {auto['seconds']:.0f} | "
                         f"{auto['seconds'] / v['plain_quantize_s']:.1f}× | {len(auto['candidates'])} | {v['seconds']:.0f} | {v['load']} |")
    lines += ["", "Reading it: the *default INT8* column is today's default: pairwise cross-layer equalization, then "
              "gated residual-stream equalization (core/equalize.py), then min-max. Every damaged model is within 1 point "
              "of FP32 on both engines, the residual-stream models included (MobileNetV2 `3 sites s300` was 9.6 % on both engines "
              "and `stage 7-10 s30` 94.4 % on torch before stream equalization; ResNet-18 `stream layer3 s100` "
              "45.4 % torch / 96.7 % ORT before the stream was followed through the ReLUs after its adds); the *normal* rows show that models "
              "without outliers are quantized as before. *auto* starts from the worst settings (min-max, no "
              "equalization), so it has to find FP32 layers; the *min-max only* rows force the FP32-layer half of the "
              "search; the *auto from the defaults* rows are what a user gets with equalization on. Search seconds and "
              "latencies were measured on a machine shared with other work (load in the JSON): ratios within one row "
              "are meaningful, absolute seconds are not.",
              "<!-- /AUTO-PRECISION -->"]
    return lines


def write_results(cache: dict, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else ""
    block = "\n".join(render(cache)) + "\n"
    if "<!-- AUTO-PRECISION -->" in text:
        head, rest = text.split("<!-- AUTO-PRECISION -->", 1)
        tail = rest.split("<!-- /AUTO-PRECISION -->", 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--engines", nargs="*", default=ENGINES)
    p.add_argument("--what", nargs="*", default=["default", "auto"], help="default | auto | auto-eq | auto-layers | timing64")
    p.add_argument("--force", action="store_true")
    p.add_argument("--render", action="store_true", help="only write RESULTS.md from the cache")
    args = p.parse_args(argv)
    if not args.render:
        measure(args.models, args.engines, args.what, args.force)
    write_results(_load())
    print("\n".join(render(_load())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

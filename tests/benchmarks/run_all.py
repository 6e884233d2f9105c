"""`make bench`: the peer comparison, written to tests/benchmarks/RESULTS.md.

In one process, interleaved (so a shared machine's drift favours no one), on
torchvision resnet18 and mobilenet_v2 at 224x224 (random weights: speed only) and on
the bundled demo model (trained: accuracy too):

* PyTorch eager FP32 and ONNX Runtime FP32 (the baselines);
* ONNX Runtime's own ``quantize_static`` with its plain defaults (int8 activations),
  and with the best documented x86 settings (uint8 activations, int8 per-channel
  weights, QDQ);
* ``torch.ao.quantization`` FX with its default x86 config;
* QuantStudio's INT8 results from both engines, with their default settings.

Then a *trained* ResNet-18 (trained here on scikit-learn's bundled digits, see
tests/benchmarks/digits_resnet.py): FP32 vs static INT8 top-1 on 540 held-out images for
both engines and every calibration method (issue #4: INT8 may lose at most 0.3 points).

It reports p50 latency and ratios, size, output SQNR against FP32 and top-1 where
labels exist, and the doctor's verdict on the slowest INT8 variant. Nothing here is a
timed assert: numbers are written down, not judged.

Run: ``make bench`` (or ``python -m tests.benchmarks.run_all [--quick] [--only NAME]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SECTIONS = ("resnet18", "mobilenet_v2", "demo", "trained-resnet18", "qat", "gui")
ROOT = HERE.parent.parent
DEMO = ROOT / "resources" / "demo"


@dataclass
class Row:
    name: str
    runner: object
    file: Path | None = None
    outputs: np.ndarray | None = None
    top1: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


# --------------------------------------------------------------------------- peers


def export_onnx(module, x, path: Path) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def ort_quantize_static(fp32: Path, out: Path, calib: list[np.ndarray], *, best_x86: bool) -> Path:
    """ONNX Runtime's own static quantization: plain defaults or the documented x86 recipe."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = [{"input": c} for c in calib]

        def get_next(self):
            return self.items.pop() if self.items else None

    if best_x86:
        pre = out.with_suffix(".pre.onnx")
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        pre.unlink()
    else:
        quantize_static(str(fp32), str(out), Reader())  # every option at its default
    return out


def fx_default_x86(module, calib: list[np.ndarray], example):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import copy

        prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping("x86"), (example,))
        with torch.inference_mode():
            for c in calib:
                prepared(torch.from_numpy(c))
        return convert_fx(prepared)


def torch_runner(module):
    import torch

    def run(x, _m=module):
        with torch.inference_mode():
            return _m(torch.from_numpy(x))

    return run


def ort_runner(path: Path):
    from quantstudio.core.benchmark import make_ort_session

    sess = make_ort_session(path.read_bytes())
    name = sess.get_inputs()[0].name

    def run(x, _s=sess, _n=name):
        return _s.run(None, {_n: x})[0]

    return run


def to_numpy(out) -> np.ndarray:
    if isinstance(out, (list, tuple)):
        out = out[0]
    if hasattr(out, "detach"):
        out = out.detach().float().numpy()
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- QuantStudio


def quantstudio_variants(loaded, calib: list[np.ndarray], work: Path) -> list[Row]:
    """QuantStudio's INT8 results from both engines with default settings."""
    from quantstudio.core.engines import QuantConfig, get_engine
    from quantstudio.core.export import export_model
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.plan import PrecisionPlan

    rows = []
    for engine_name, suffix in (("onnxruntime", ".onnx"), ("torch", ".pth")):
        cfg = QuantConfig(engine=engine_name, calib_samples=sum(len(c) for c in calib))
        engine = get_engine(engine_name)
        t0 = time.perf_counter()
        try:
            result = engine.quantize(loaded, PrecisionPlan(), cfg, iter(calib), NullContext())
            out = export_model(result, work / f"qs_{engine_name}{suffix}", ctx=NullContext())
        except Exception as exc:  # noqa: BLE001 - a failing engine is a result to report
            log(f"QuantStudio {engine_name} failed: {exc}")
            continue
        # Time the exported file, as a user will run it, through the same session code as the peers.
        runner = ort_runner(Path(out.path)) if engine_name == "onnxruntime" else torch_runner(
            _jit_load(Path(out.path)))
        rows.append(Row(f"QuantStudio INT8 ({engine_name})", runner, file=Path(out.path),
                        note=f"quantized in {time.perf_counter() - t0:.0f} s; " + "; ".join(result.notes[:2])))
    return rows


def _jit_load(path: Path):
    import torch

    return torch.jit.load(str(path))


# --------------------------------------------------------------------------- one model


def compare(title: str, loaded, module, calib: list[np.ndarray], test_x: np.ndarray,
            labels: np.ndarray | None, batch_sizes, runs: int, work: Path) -> dict:
    import torch

    from quantstudio.core.benchmark import Variant, run_benchmark
    from quantstudio.core.doctor import DoctorInput, cpu_features, diagnose, onnx_facts

    shape = tuple(loaded.input_shape)
    example = torch.from_numpy(calib[0][:1])
    log(f"{title}: exporting and quantizing peers")
    fp32_onnx = export_onnx(module, example, work / f"{title}_fp32.onnx")
    sd_path = work / f"{title}_fp32.pth"
    torch.save(module.state_dict(), sd_path)
    rows = [
        Row("PyTorch FP32 (eager)", torch_runner(module), file=sd_path),
        Row("ONNX Runtime FP32", ort_runner(fp32_onnx), file=fp32_onnx),
    ]
    s8 = ort_quantize_static(fp32_onnx, work / f"{title}_ort_default.onnx", calib, best_x86=False)
    rows.append(Row("ORT quantize_static, defaults (S8S8)", ort_runner(s8), file=s8))
    u8 = ort_quantize_static(fp32_onnx, work / f"{title}_ort_u8s8.onnx", calib, best_x86=True)
    rows.append(Row("ORT quantize_static, best x86 (U8S8 per-channel)", ort_runner(u8), file=u8))
    fx = fx_default_x86(module, calib, example)
    rows.append(Row("torch.ao FX, default x86 config", torch_runner(fx)))
    log(f"{title}: QuantStudio engines")
    rows += quantstudio_variants(loaded, calib, work)

    log(f"{title}: accuracy and SQNR")
    ref = None
    for r in rows:
        outs = np.concatenate([to_numpy(r.runner(test_x[i:i + 16])) for i in range(0, len(test_x), 16)])
        r.outputs = outs
        if ref is None:
            ref = outs
        if labels is not None:
            r.top1 = float(np.mean(outs.argmax(1) == labels))
    log(f"{title}: timing {len(rows)} variants interleaved, batch sizes {batch_sizes}, {runs} runs")
    variants = [Variant(r.name, r.runner, file=r.file) for r in rows]
    bench = run_benchmark(variants, shape, batch_sizes=batch_sizes, runs=runs, warmup=5)
    base = bench.by_name("PyTorch FP32 (eager)")
    ort_base = bench.by_name("ONNX Runtime FP32")
    table = []
    for r in rows:
        v = bench.by_name(r.name)
        lat = v.latency.get(1)
        table.append({
            "variant": r.name,
            "p50_ms": lat.p50_ms if lat else None,
            "p90_ms": lat.p90_ms if lat else None,
            "vs_torch_fp32": base.latency[1].p50_ms / lat.p50_ms if lat else None,
            "vs_ort_fp32": ort_base.latency[1].p50_ms / lat.p50_ms if lat else None,
            "throughput": {b: v.throughput.get(b) for b in batch_sizes},
            "size_mb": v.size_bytes / 1e6 if v.size_bytes else None,
            "sqnr_db": sqnr_db(ref, r.outputs),
            "top1": r.top1,
            "note": r.note,
        })
    import onnx

    s8_row = bench.by_name("ORT quantize_static, defaults (S8S8)")
    doctor = diagnose(DoctorInput(cpu_features(), onnx_facts(onnx.load(str(s8))),
                                  baseline_ms=ort_base.latency[1].p50_ms, quantized_ms=s8_row.latency[1].p50_ms,
                                  baseline_name="ONNX Runtime FP32", quantized_name="ORT default S8S8"))
    caveats = []
    scale = float(np.abs(ref).max())
    if scale < 1e-4:
        # Untrained torchvision models with BatchNorm at its initial statistics can shrink the
        # signal layer by layer: an INT8 output step is then larger than every logit.
        caveats.append(f"The FP32 logits of these random weights are at most {scale:.1e}. torch.ao's observers "
                       "never use a scale below float32's eps (1.2e-7), so the PyTorch INT8 logits all round to one "
                       "value (SQNR 0 dB); ONNX Runtime has no such floor. This says nothing about trained models "
                       "(see the demo and the trained ResNet-18 below).")
    return {"title": title, "rows": table, "doctor": [f.text() for f in doctor], "batch_sizes": list(batch_sizes),
            "caveats": caveats}


# --------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("quantstudio", "torch", "torchvision", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    return out


def write_results(sections: list[dict], path: Path, started: float, stall: dict | None = None,
                  extra: list[list[str]] | None = None) -> None:
    from quantstudio.core.benchmark import cpu_name
    from quantstudio.core.doctor import cpu_features

    cpu = cpu_features()
    lines = [
        "# Benchmark results (generated by `make bench`; do not edit by hand)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU: {cpu_name()} ({cpu.summary()}), {os.cpu_count()} cores, all used for inference",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- Wall time of the whole run: {time.time() - started:.0f} s",
        "",
        "Latency is the median of interleaved runs at batch 1 in a new random order every round in one process;",
        "ratios > 1 mean faster than the baseline. SQNR compares each variant's logits with the",
        "PyTorch FP32 logits on the same inputs (higher is closer; inf = identical).",
        "This machine is shared and noisy: compare ratios within one table, not across runs.",
        "",
    ]
    for s in sections:
        bs = s["batch_sizes"]
        lines += [f"## {s['title']}", ""]
        head = ["variant", "p50 ms", "vs torch FP32", "vs ORT FP32"] + [f"img/s @{b}" for b in bs] + ["size MB", "SQNR dB", "top-1"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in s["rows"]:
            def f(x, fmt):
                return "-" if x is None else format(x, fmt)
            cells = [r["variant"], f(r["p50_ms"], ".2f"), f(r["vs_torch_fp32"], ".2f") + "x",
                     f(r["vs_ort_fp32"], ".2f") + "x"]
            cells += [f(r["throughput"].get(b), ".1f") for b in bs]
            cells += [f(r["size_mb"], ".1f"), f(r["sqnr_db"], ".1f"), "-" if r["top1"] is None else f"{r['top1']:.2%}"]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- {r['variant']}: {r['note']}" for r in s["rows"] if r["note"]]
        if notes:
            lines += ["", *notes]
        lines += [f"\n{c}" for c in s.get("caveats", [])]
        lines += ["", "Doctor on ONNX Runtime's default (S8S8) model:", ""]
        lines += [f"- {d}" for d in s["doctor"]] + [""]
    for block in extra or []:
        lines += block
    if stall:
        lines += ["## Window responsiveness (tests/benchmarks/gui_stall.py)", "",
                  "A 10 ms GUI-thread timer during the app's own runs on the demo; a stall is the time a "
                  "tick came late (target: under 100 ms).", "",
                  "```", json.dumps(stall, indent=2), "```", ""]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main(argv=None) -> int:
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and one batch size (a smoke run)")
    parser.add_argument("--out", help="where to write the results (default RESULTS.md; with --only, RESULTS.partial.md)")
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only these sections (repeatable); default: all")
    args = parser.parse_args(argv)
    only = set(args.only or SECTIONS)
    if args.out is None:  # a partial run never replaces the full RESULTS.md
        args.out = str(HERE / ("RESULTS.partial.md" if args.only else "RESULTS.md"))
    warnings.simplefilter("ignore")
    started = time.time()
    runs = 10 if args.quick else 30
    batch_sizes = (1,) if args.quick else (1, 8)
    sections = []
    rng = np.random.default_rng(0)
    from quantstudio.core.loading import load_model

    extra = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch in [a for a in ("resnet18", "mobilenet_v2") if a in only]:
            torch.manual_seed(0)
            module = torchvision.models.get_model(arch).eval()
            sd = work / f"{arch}.pth"
            torch.save(module.state_dict(), sd)
            loaded = load_model(sd, arch=arch)
            calib = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(8 if args.quick else 32)]
            test_x = rng.standard_normal((16, 3, 224, 224), dtype=np.float32)
            sections.append(compare(f"{arch} 224x224 (random weights: speed only)", loaded, module, calib,
                                    test_x, None, batch_sizes, runs, work))
        if "demo" in only:
            meta = json.loads((DEMO / "demo.json").read_text())
            loaded = load_model(DEMO / meta["weights"], arch=meta["arch"], input_shape=tuple(meta["input_shape"]))
            from quantstudio.core.data import Preprocessing, open_data

            source = open_data(DEMO / meta["data"], input_shape=loaded.input_shape, preprocessing=Preprocessing())
            idx = np.arange(len(source))
            x, kept, _ = source.read(idx)
            y = np.asarray(source.targets)[kept]
            calib = [x[i:i + 1] for i in rng.choice(len(x), size=min(64, len(x)), replace=False)]
            sections.append(compare(f"demo: {meta['arch']} on handwritten digits ({len(x)} labeled test images)",
                                    loaded, loaded.module, calib, x, y, batch_sizes, runs, work))
        if "trained-resnet18" in only:
            from tests.benchmarks import digits_resnet

            extra.append(digits_resnet.render(digits_resnet.measure(work / "digits", quick=args.quick, log=log)))
        if "qat" in only:  # quantization-aware training: recovery of an outlier model, cost at 64x64
            from tests.benchmarks import qat_bench

            extra.append(qat_bench.render(qat_bench.measure("recovery" if args.quick else "all")))
    stall = None
    if "gui" in only:
        log("GUI responsiveness during a Quantize run on the demo")
        import subprocess

        res = subprocess.run([sys.executable, "-m", "tests.benchmarks.gui_stall"], cwd=ROOT, capture_output=True,
                             text=True, timeout=900, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
        stall = json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr.strip().splitlines()[-1:]}
    write_results(sections, Path(args.out), started, stall, extra)
    log(f"wrote {args.out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

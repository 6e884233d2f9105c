"""Quantization-aware training (issue 14): does QAT recover a model PTQ wrecks, and what does it cost?

1. **Recovery.** ``resnet18 3 blocks s300`` (tests/benchmarks/outlier_models.py: the digits
   ResNet-18 at 32x32 with one ~300x outlier channel in three blocks; FP32 98.9 %). Min-max
   PTQ with every layer INT8 and equalization off collapses it (~10-15 % top-1, both
   engines). QAT from that min-max start, 2 epochs, default settings, on the digits'
   training split (1257 images: calibration + training/validation), evaluated on the 540
   held-out images, through ``run_quantize`` for both engines (``.pth`` torch export and
   ``.onnx`` ONNX Runtime export, each reloaded and checked). ``--ranges both`` also
   runs learned ranges (LSQ), the alternative to the default moving-average observers.
2. **Cost.** A 64x64 ResNet-18 with ~1,400 training images (all 1797 digits, 200 held
   back for evaluation), 2 epochs, torch engine: wall time of the training and peak RSS.

Nothing is asserted: figures go to ``--out`` (JSON) and into RESULTS.md by hand. Run niced:
``nice -n 5 python -m tests.benchmarks.qat_bench [--part recovery|cost|all] [--ranges learned|both]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path("/tmp/qat_bench")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _machine() -> dict:
    from quantstudio.core.benchmark import cpu_name
    from quantstudio.core.doctor import cpu_features

    cpu = cpu_features()
    return {"cpu": cpu_name(), "vnni": bool(cpu.vnni), "cores": os.cpu_count(),
            "load_before": os.getloadavg()[0]}


def _loaded(module, size: int):
    from quantstudio.core.loading import LoadedModel

    return LoadedModel(path=Path("resnet18_outliers.pth"), kind="pickled_module", input_shape=(1, 3, size, size),
                       module=module.eval())


class _Log:
    """A job context that logs each validated epoch."""

    def report(self, fraction: float, message: str = "") -> None:
        pass

    def partial(self, payload) -> None:
        from quantstudio.core.results import TrainingEpoch

        if isinstance(payload, TrainingEpoch):
            _log(f"  epoch {payload.epoch}/{payload.epochs}: loss {payload.train_loss}, validation {payload.metric} "
                 f"{payload.val_metric:.2f}%")

    def check_cancelled(self) -> None:
        pass


def _run(model, train_file: Path, eval_file: Path | None, engine: str, qat: bool, eval_samples: int, **qat_kw) -> dict:
    from quantstudio.core.data import open_data
    from quantstudio.core.engines.base import QuantConfig
    from quantstudio.core.pipeline import export_result, run_quantize
    from quantstudio.core.plan import PrecisionPlan

    cfg = QuantConfig(engine=engine, calibration="minmax", equalize=False, calib_samples=256, qat=qat, **qat_kw)
    data = open_data(str(train_file), input_shape=model.input_shape)
    ev = open_data(str(eval_file), input_shape=model.input_shape) if eval_file else None
    t0 = time.perf_counter()
    r = run_quantize(model, data, None, PrecisionPlan(), cfg, _Log(), eval_samples=eval_samples,
                     benchmark=False, eval_data=ev)
    wall = time.perf_counter() - t0
    out = WORK / f"{engine}_{'qat' if qat else 'ptq'}.{'pth' if engine == 'torch' else 'onnx'}"
    exported = export_result(r, out)
    row = {"engine": engine, "qat": qat, "fp32_top1": 100 * r.original_metrics.top1,
           "int8_top1": 100 * r.quantized_metrics.top1, "n": r.quantized_metrics.n, "wall_s": round(wall, 1),
           "export": {"file": out.name, "bytes": out.stat().st_size, "max_abs_diff": exported.check.max_abs_diff,
                      "top1_agreement": exported.check.top1_agreement},
           "load_after": os.getloadavg()[0]}
    if qat:
        row["training"] = r.training
    _log(json.dumps({k: v for k, v in row.items() if k != "training"}))
    if qat:
        _log(json.dumps(r.training["history"]))
    return row


def recovery(ranges: str, engines: list[str], lr: float = 0.0, ptq: bool = True) -> list[dict]:
    import torch

    import quantstudio.core.engines.pytorch.qat as qat_mod
    from tests.benchmarks import outlier_models as om

    base = om.load_resnet18()
    variant = om.damage(base, "resnet18", "resnet18 3 blocks s300",
                        [om.resnet_site(1, 1), om.resnet_site(2, 1), om.resnet_site(3, 0)], 300)
    cx, cy, tx, ty = om.digits_split(om.RESNET_SIZE)
    WORK.mkdir(parents=True, exist_ok=True)
    train_file, eval_file = WORK / "digits32_train.npz", WORK / "digits32_test.npz"
    for path, xs, ys in ((train_file, cx, cy), (eval_file, tx, ty)):
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.npz")  # parallel runs (one per engine) share the files
        np.savez(tmp, x=xs.numpy(), y=ys.numpy())
        os.replace(tmp, path)
    model = _loaded(variant.module, om.RESNET_SIZE)
    rows = []
    torch.manual_seed(0)
    for engine in engines:
        if ptq:
            rows.append({"model": variant.name, "ranges": "-", **_run(model, train_file, eval_file, engine, False, len(tx))})
        for mode in (["learned", "moving-average"] if ranges == "both" else [ranges]):
            default, qat_mod.LEARNABLE_RANGES = qat_mod.LEARNABLE_RANGES, mode == "learned"
            try:
                rows.append({"model": variant.name, "ranges": mode, **_run(model, train_file, eval_file, engine, True, len(tx), qat_lr=lr)})
            finally:
                qat_mod.LEARNABLE_RANGES = default
    return rows


def cost() -> dict:
    import torch
    import torchvision

    from quantstudio.core.qat import estimate_qat
    from tests.benchmarks import outlier_models as om

    from tests.benchmarks import digits_resnet
    from torchvision import transforms

    td = digits_resnet.load_train_demo()
    images, labels, _, _ = td.load_split()
    tf = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor(), transforms.Normalize(mean=td.MEAN, std=td.STD)])
    x = torch.stack([tf(td.pil_like_png(im)) for im in images]).numpy()
    WORK.mkdir(parents=True, exist_ok=True)
    data_file = WORK / "digits64_all.npz"
    np.savez(data_file, x=x, y=labels)
    module = torchvision.models.resnet18(num_classes=10)
    module.load_state_dict(torch.load(om.resnet18_weights(), weights_only=True))  # trained at 32x32; speed only
    model = _loaded(module, 64)
    est_s, est_b = estimate_qat(model, (1, 3, 64, 64), 1357, 2, 32)
    _log(f"estimate: {est_s:.0f} s, {est_b / 1e6:.0f} MB")
    row = _run(model, data_file, None, "torch", True, 200)
    t = row["training"]
    return {"model": "resnet18 64x64 (digits, 1797 images, 200 evaluated)", "train_samples": t["settings"]["train_samples"],
            "val_samples": t["settings"]["val_samples"], "epochs": t["settings"]["epochs"], "training_s": t["seconds"],
            "peak_rss_bytes": t["peak_memory_bytes"], "estimate_s": round(est_s, 1), "estimate_bytes": est_b,
            "run_wall_s": row["wall_s"], "load_after": row["load_after"]}


def render(out: dict) -> list[str]:
    """The RESULTS.md section for one run's JSON."""
    m = out.get("machine", {})
    lines = ["## Quantization-aware training (tests/benchmarks/qat_bench.py)", "",
             f"CPU {m.get('cpu')} ({'AVX-512 VNNI' if m.get('vnni') else 'no VNNI'}), {m.get('cores')} cores, shared: "
             f"load average {m.get('load_before', 0):.1f} at the start, {out.get('load_after', 0):.1f} at the end; run niced.", ""]
    rows = out.get("recovery") or []
    if rows:
        lines += [f"**Recovery**: {rows[0]['model']} (digits ResNet-18 32x32 with three ×300 outlier channels), every layer "
                  "INT8, min-max, equalization off; QAT from that min-max start with the default settings (2 epochs, "
                  "batch 32, automatic lr) on the 1257 training images (calibration 256 of them; validation 189, "
                  "training 1068), top-1 on the 540 held-out images; each export reloaded and checked.", "",
                  "| engine (export) | run | ranges | lr | top-1 | vs FP32 | validation per epoch (0 = PTQ start) | training s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            t = r.get("training") or {}
            hist = " → ".join(f"{h['val_metric']:.1f}" for h in t.get("history", []))
            lr = t.get("settings", {}).get("lr")
            peak = t.get("peak_memory_bytes")
            lines.append(f"| {r['engine']} ({r['export']['file'].rsplit('.', 1)[-1]}) | {'QAT' if r['qat'] else 'PTQ'} | "
                         f"{r.get('ranges', '-')} | {'-' if lr is None else format(lr, '.3g')} | {r['int8_top1']:.2f}% | "
                         f"{r['int8_top1'] - r['fp32_top1']:+.2f} | {hist or '-'} | {t.get('seconds', '-')} | "
                         f"{'-' if not peak else round(peak / 1e6)} |")
        lines.append("")
    c = out.get("cost")
    if c:
        lines += [f"**Cost**: {c['model']}: {c['train_samples']} training + {c['val_samples']} validation images, "
                  f"{c['epochs']} epochs (torch engine): training {c['training_s']:.0f} s "
                  f"(whole run with calibration, evaluation and export {c['run_wall_s']:.0f} s), peak RSS "
                  f"{c['peak_rss_bytes'] / 1e6:.0f} MB; estimate shown before starting: {c['estimate_s']:.0f} s, "
                  f"{c['estimate_bytes'] / 1e6:.0f} MB. Load average at the end {c['load_after']:.1f}.", ""]
    return lines


def measure(part: str = "all", ranges: str = "moving-average", engines: tuple[str, ...] | list[str] = ("torch", "onnxruntime"),
            lr: float = 0.0, ptq: bool = True) -> dict:
    """Run the parts asked for; the JSON-safe results ``render`` reads (``make bench`` calls this)."""
    out: dict = {"machine": _machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if part in ("recovery", "all"):
        out["recovery"] = recovery(ranges, list(engines), lr, ptq=ptq)
    if part in ("cost", "all"):
        out["cost"] = cost()
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["recovery", "cost", "all"], default="all")
    p.add_argument("--ranges", choices=["learned", "moving-average", "both"], default="moving-average")
    p.add_argument("--engines", default="torch,onnxruntime")
    p.add_argument("--lr", type=float, default=0.0, help="QAT learning rate (default 0: automatic)")
    p.add_argument("--no-ptq", action="store_true", help="skip the PTQ rows")
    p.add_argument("--out", default=str(WORK / "qat_bench.json"))
    args = p.parse_args(argv)
    out = measure(args.part, args.ranges, args.engines.split(","), args.lr, ptq=not args.no_ptq)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

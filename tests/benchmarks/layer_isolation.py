"""Prototype: an *isolated* per-layer INT8 error, and the producers a "keep FP32" must cover.

Issue 13: on a model with outlier channels, the product's sensitivity named each damaged
block's ``conv2`` and keeping ``conv2`` in FP32 did not help, because what hurts is the
quantization of the tensor *entering* ``conv2``, which the INT8 producer still writes as INT8.

**Isolated error** (this file): one FP32 forward pass over a few samples with a hook on
every Conv/Linear layer. In the hook the layer's FP32 input ``x`` and output ``y`` are at
hand; the layer is re-run on (a) fake-quantized input and weights, (b) quantized input only,
(c) quantized weights only, with the engines' own ranges (per-tensor affine uint8 min-max for
inputs, taken over the calibration samples, ``reduce_range`` as torch's x86 qconfig does;
per-channel symmetric int8 weights). SQNR of each against ``y``. Every layer sees FP32 inputs,
so nothing accumulates: the figure is the layer's own damage, and (b) vs (c) says whether it
is the *input tensor* (then its producer must give a float output: keep the producer FP32
too) or the weights. Cost: one calibration pass + one evaluation pass, whatever the number of
layers (the product's sensitivity costs one forward pass per layer).

:func:`input_producers` finds, with ``torch.fx``, the weighted layers whose outputs reach a
layer's input through weight-free ops (ReLU, BN, add, cat, pooling...): the layers to keep
in FP32 together with it.

Compared here, on the damaged models, with the accumulated per-layer SQNR the product
reports (``quantstudio.core.pipeline.layer_sqnr`` on the ONNX Runtime min-max model) and
the product's sensitivity (``quantstudio.core.sensitivity.layer_sensitivity``).

    PYTHONPATH=$PWD nice -n 15 python -m tests.benchmarks.layer_isolation
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from tests.benchmarks.outlier_models import WORK, _log, damaged_models, digits_split

WEIGHTED = ("Conv2d", "Linear")


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def isolated_errors(module, calib: list, evals: list, *, reduce_range: bool = True) -> dict[str, dict[str, float]]:
    """layer -> {"both", "input", "weight"}: SQNR (dB) of the layer's output with its input and
    weights quantized / input only / weights only, every layer fed its FP32 input."""
    import torch
    import torch.nn.functional as F

    mods = {n: m for n, m in module.named_modules() if type(m).__name__ in WEIGHTED}
    lo = {n: float("inf") for n in mods}
    hi = {n: float("-inf") for n in mods}
    qmax = 127 if reduce_range else 255

    def observe(name):
        def hook(mod, args):
            x = args[0]
            lo[name] = min(lo[name], float(x.min()))
            hi[name] = max(hi[name], float(x.max()))
        return hook

    module.eval()
    handles = [m.register_forward_pre_hook(observe(n)) for n, m in mods.items()]
    with torch.no_grad():
        for x in calib:
            module(torch.as_tensor(x))
    for h in handles:
        h.remove()

    def fq_input(name, x):
        a, b = min(lo[name], 0.0), max(hi[name], 0.0)  # the range includes 0 (affine uint8)
        scale = max((b - a) / qmax, 1e-12)
        zp = int(min(max(round(-a / scale), 0), qmax))
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, qmax)

    def fq_weight(w):
        amax = w.abs().amax(dim=tuple(range(1, w.ndim))).clamp(min=1e-12)
        scale = (amax / 127.0).float()
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -127, 127)

    def run(mod, x, w):
        if isinstance(mod, torch.nn.Conv2d):
            return mod._conv_forward(x, w, mod.bias)
        return F.linear(x, w, mod.bias)

    acc = {n: {"signal": 0.0, "both": 0.0, "input": 0.0, "weight": 0.0} for n in mods}

    def measure(name):
        def hook(mod, args, out):
            x, y = args[0], out
            xq, wq = fq_input(name, x), fq_weight(mod.weight)
            a = acc[name]
            a["signal"] += float((y.double() ** 2).sum())
            a["both"] += float(((run(mod, xq, wq) - y).double() ** 2).sum())
            a["input"] += float(((run(mod, xq, mod.weight) - y).double() ** 2).sum())
            a["weight"] += float(((run(mod, x, wq) - y).double() ** 2).sum())
        return hook

    handles = [m.register_forward_hook(measure(n)) for n, m in mods.items()]
    with torch.no_grad():
        for x in evals:
            module(torch.as_tensor(x))
    for h in handles:
        h.remove()
    return {n: {k: _db(a["signal"], a[k]) for k in ("both", "input", "weight")} for n, a in acc.items()}


def bias_corrected(module, calib: list, *, reduce_range: bool = True):
    """A copy of ``module`` with *isolated empirical bias correction* on every Conv/Linear layer:
    bias += E[y_fp32 - y_int8] per output channel, where y_int8 is the layer on min-max
    fake-quantized input and per-channel int8 weights, fed its FP32 input (the isolation pass
    above, on the calibration samples). Layers without a bias get one (zero-initialised). One
    calibration pass + one correction pass; the corrected FP32 model then goes to either engine."""
    import copy

    import torch
    import torch.nn.functional as F

    m = copy.deepcopy(module).eval()
    mods = {n: x for n, x in m.named_modules() if type(x).__name__ in WEIGHTED}
    lo = {n: float("inf") for n in mods}
    hi = {n: float("-inf") for n in mods}
    qmax = 127 if reduce_range else 255

    def observe(name):
        def hook(mod, args):
            lo[name] = min(lo[name], float(args[0].min()))
            hi[name] = max(hi[name], float(args[0].max()))
        return hook

    hs = [x.register_forward_pre_hook(observe(n)) for n, x in mods.items()]
    with torch.no_grad():
        for x in calib:
            m(torch.as_tensor(x))
    for h in hs:
        h.remove()
    sums = {n: None for n in mods}
    counts = {n: 0 for n in mods}

    def measure(name):
        def hook(mod, args, out):
            x = args[0]
            a, b = min(lo[name], 0.0), max(hi[name], 0.0)
            scale = max((b - a) / qmax, 1e-12)
            zp = int(min(max(round(-a / scale), 0), qmax))
            xq = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, qmax)
            w = mod.weight
            amax = w.abs().amax(dim=tuple(range(1, w.ndim))).clamp(min=1e-12)
            sc = (amax / 127.0).float()
            wq = torch.fake_quantize_per_channel_affine(w, sc, torch.zeros_like(sc, dtype=torch.int32), 0, -127, 127)
            yq = mod._conv_forward(xq, wq, mod.bias) if isinstance(mod, torch.nn.Conv2d) else F.linear(xq, wq, mod.bias)
            d = (out - yq).double()
            d = d.sum(dim=(0, 2, 3)) if d.ndim == 4 else d.sum(dim=0)
            sums[name] = d if sums[name] is None else sums[name] + d
            counts[name] += out.numel() // out.shape[1]
        return hook

    hs = [x.register_forward_hook(measure(n)) for n, x in mods.items()]
    with torch.no_grad():
        for x in calib:
            m(torch.as_tensor(x))
    for h in hs:
        h.remove()
    with torch.no_grad():
        for n, mod in mods.items():
            if sums[n] is None:
                continue
            delta = (sums[n] / counts[n]).float()
            if mod.bias is None:
                mod.bias = torch.nn.Parameter(delta.clone())
            else:
                mod.bias += delta
    return m


def input_producers(module) -> dict[str, list[str]]:
    """layer -> the weighted layers whose outputs reach its input through weight-free ops
    (the prototype this began as now ships as quantstudio.core.sensitivity.input_producers)."""
    from quantstudio.core.sensitivity import input_producers as shipped

    return shipped(module)


def rank_of(order: list[str], names: list[str]) -> list[int]:
    return [order.index(n) + 1 if n in order else -1 for n in names]


def study(variant, calib, evals) -> dict:
    """Rankings of the damaged consumers by isolated error, accumulated SQNR and sensitivity."""
    from quantstudio.core.engines import QuantConfig, get_engine
    from quantstudio.core.jobs import NullContext
    from quantstudio.core.pipeline import layer_sqnr
    from quantstudio.core.plan import PrecisionPlan
    from quantstudio.core.sensitivity import layer_sensitivity
    from tests.benchmarks.outlier_study import loaded

    lm = loaded(variant.module, variant.size)
    t0 = time.time()
    iso = isolated_errors(variant.module, calib, evals)
    t_iso = time.time() - t0
    t0 = time.time()
    sens = layer_sensitivity(lm, evals, QuantConfig(engine="torch"))
    t_sens = time.time() - t0
    qm = get_engine("onnxruntime").quantize(lm, PrecisionPlan(), QuantConfig(), list(calib), NullContext())
    t0 = time.time()
    acc = layer_sqnr(lm, qm, list(evals))
    t_acc = time.time() - t0
    by_iso = sorted(iso, key=lambda n: iso[n]["both"])
    by_sens = sorted(sens, key=lambda n: -sens[n])
    by_acc = sorted(acc, key=lambda n: acc[n])
    consumers = variant.consumers
    prods = input_producers(variant.module)
    return {
        "model": variant.name,
        "consumers": consumers,
        "rank_isolated": rank_of(by_iso, consumers),
        "rank_sensitivity": rank_of(by_sens, consumers),
        "rank_accumulated_sqnr": rank_of(by_acc, consumers),
        "top5_isolated": [(n, round(iso[n]["both"], 1), round(iso[n]["input"], 1), round(iso[n]["weight"], 1))
                          for n in by_iso[:5]],
        "top5_sensitivity": [(n, round(sens[n], 2)) for n in by_sens[:5]],
        "top5_accumulated_sqnr": [(n, round(acc[n], 1)) for n in by_acc[:5]],
        "keep_fp32": {n: [n] + prods.get(n, []) for n in by_iso[:3] if iso[n]["input"] < iso[n]["weight"]},
        "n_layers": len(iso),
        "seconds": {"isolated": t_iso, "sensitivity": t_sens, "accumulated_sqnr": t_acc},
    }


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    names = (argv if argv else sys.argv[1:]) or ["resnet18 normal", "resnet18 3 blocks s300", "resnet18 late layer4.0 s100",
                                                 "mobilenet_v2 normal", "mobilenet_v2 3 sites s300"]
    archs = sorted({n.split()[0] for n in names})
    out = []
    for arch in archs:
        variants = [v for v in damaged_models(arch) if v.name in names]
        cx, _, tx, _ = digits_split(variants[0].size)
        calib = [cx[i:i + 32].numpy() for i in range(0, 256, 32)]
        evals = [tx[i:i + 16].numpy() for i in range(0, 32, 16)]  # 32 held-out samples
        for v in variants:
            r = study(v, calib, evals)
            out.append(r)
            _log(json.dumps(r))
    path = WORK / "isolation.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

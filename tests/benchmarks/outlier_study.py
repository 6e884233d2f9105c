"""Issue 13 ("When INT8 hurts"): PTQ recipes on trained models with outlier channels.

For every model of :mod:`tests.benchmarks.outlier_models` (normal and damaged ResNet-18 /
MobileNetV2 on the digits) and every candidate recipe, on both engines:

* top-1 of FP32 and INT8 on the 540 held-out digits (one image = 0.185 points),
* batch-1 latency of each INT8 model, timed interleaved with the same engine's min-max
  model in one process (median of rounds; quoted as a ratio, the machine is shared).

The INT8 models come from QuantStudio's own engines (``get_engine(...).quantize`` with a
``QuantConfig`` and a ``PrecisionPlan``, exactly as ``run_quantize`` calls them). Recipes
the product does not offer are made by changing one thing around the engine:

* ``percentile 99.999``: the engines' ``PERCENTILE`` constant (read at call time);
* ``moving-avg minmax``: torch: ``MovingAverageMinMaxObserver`` in place of the engine's
  activation observer (``engines.pytorch.qconfig.build_qconfig`` wrapped); ORT: MinMax with
  ``extra_options={"CalibMovingAverage": True}`` (the job the engine hands its child tool);
* ``CLE``: ``torch.ao.quantization._equalize.cross_layer_equalization`` on the model's conv
  pairs (BN folded into the first conv first) before the engine sees the model; the ORT
  engine exports that equalized module to ONNX;
* ``fp32 consumer`` / ``fp32 consumer+producer``: plan rules ``<layer>=fp32`` on the damaged
  sites' consumer conv (what sensitivity named in issue 13) and on consumer + producer.

Results are cached per (model, engine, recipe) in ``/tmp/outliers/study.json`` so the
study runs in chunks (each under ~10 minutes on the shared 2-core machine); ``--render``
writes ``tests/benchmarks/OUTLIERS.md``'s measured table from the cache.

    PYTHONPATH=$PWD nice -n 15 python -m tests.benchmarks.outlier_study --models 'resnet18 normal' --recipes all
    PYTHONPATH=$PWD python -m tests.benchmarks.outlier_study --render
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.outlier_models import WORK, Variant, _log, damaged_models, digits_split

# One cache file per concurrent run (OUTLIERS_CACHE=name.json); --render merges every study*.json.
CACHE = WORK / os.environ.get("OUTLIERS_CACHE", "study.json")
N_CALIB = 256
LAT_ROUNDS = int(os.environ.get("OUTLIERS_LAT_ROUNDS", "40"))

RECIPES = (
    "minmax",  # both engines' default today
    "entropy",  # torch: HistogramObserver (L2); ORT: Entropy (KL)
    "percentile 99.99",  # the product's percentile
    "percentile 99.999",
    "moving-avg minmax",
    "CLE + minmax",
    "CLE + percentile 99.99",
    "bias-corr + minmax",
    "CLE + stream-EQ + minmax",
    "CLE + gated stream-EQ + minmax",
    "fp32 consumer",
    "fp32 consumer+producer",
)
DAMAGE_ONLY = ("fp32 consumer", "fp32 consumer+producer")


# --------------------------------------------------------------------------- recipe plumbing


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def recipe_context(recipe: str, engine: str):
    """Patch the engine for recipes it does not offer (see the module docstring)."""
    # Patched where the engines read them: the ORT engine module imports its tool runner
    # and percentile by name; the PyTorch qconfig module builds the observers.
    from quantstudio.core.engines.ort import engine as ort_engine
    from quantstudio.core.engines.pytorch import qconfig as torch_engine

    with contextlib.ExitStack() as stack:
        if recipe.startswith("percentile"):
            p = float(recipe.split()[-1])
            stack.enter_context(patched(torch_engine, "PERCENTILE", p))
            stack.enter_context(patched(ort_engine, "PERCENTILE", p))
        if recipe == "moving-avg minmax" and engine == "torch":
            original = torch_engine.build_qconfig

            def build_qconfig(config, backend):
                import torch
                from torch.ao.quantization import QConfig
                from torch.ao.quantization.observer import MovingAverageMinMaxObserver

                q = original(config, backend)
                act = MovingAverageMinMaxObserver.with_args(
                    dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=backend == "x86")
                return QConfig(activation=act, weight=q.weight)

            stack.enter_context(patched(torch_engine, "build_qconfig", build_qconfig))
        if recipe == "moving-avg minmax" and engine == "onnxruntime":
            original_tool = ort_engine.run_ort_tool

            def run_ort_tool(job, *a, **k):
                if job.get("tool") == "static":
                    job = {**job, "extra": {**job["extra"], "CalibMovingAverage": True}}
                return original_tool(job, *a, **k)

            stack.enter_context(patched(ort_engine, "run_ort_tool", run_ort_tool))
        yield


def base_calibration(recipe: str) -> str:
    if "percentile" in recipe:
        return "percentile"
    if recipe == "entropy":
        return "entropy"
    return "minmax"


def cle_pairs(variant: Variant) -> list[tuple[str, str, str]]:
    """(conv1, bn1, conv2) triples CLE may equalize: nothing clipping between conv1's BN and conv2.

    ResNet-18: every BasicBlock's conv1 (bn1, ReLU) -> conv2 (ReLU is positively homogeneous).
    MobileNetV2: the two projection -> single-reader pairs of outlier_models (features.1 ->
    features.2's expansion conv, features.17 -> features.18.0). Pairs across ReLU6 are left out
    (not exact through a clip at 6) and a residual stream has several producers and readers,
    which pairwise CLE cannot equalize.
    """
    m = variant.module
    if variant.arch == "resnet18":
        return [(f"{n}.conv1", f"{n}.bn1", f"{n}.conv2") for n, mod in m.named_modules()
                if type(mod).__name__ == "BasicBlock"]
    return [("features.1.conv.1", "features.1.conv.2", "features.2.conv.0.0"),
            ("features.17.conv.2", "features.17.conv.3", "features.18.0")]


def equalized(variant: Variant, fold: bool = False):
    """A copy of the module with cross-layer equalization on every :func:`cle_pairs` pair.

    ``fold=True`` (the first runs): BN folded into conv1 (``fuse_modules``, BN -> Identity),
    then ``torch.ao.quantization._equalize.cross_layer_equalization`` on the folded conv1 and
    conv2. Correct, but the Identity left where the BN was stops torch FX from fusing
    conv+ReLU, so the torch INT8 model gets slower (measured: 1.3x on ResNet-18).
    ``fold=False`` (default now): the same scaling factors, computed on the folded weights
    (s_c = sqrt(range(folded W1_c) / range(W2[:, c])), as torch's function does), applied to the
    BN's gamma and beta instead, so the graph -- and every fusion -- is unchanged.
    """
    import torch

    m = copy.deepcopy(variant.module).eval()
    pairs = cle_pairs(variant)
    if fold:
        from torch.ao.quantization import fuse_modules
        from torch.ao.quantization._equalize import cross_layer_equalization

        fuse_modules(m, [[c1, bn] for c1, bn, _ in pairs], inplace=True)
        with torch.no_grad():
            for c1, _, c2 in pairs:
                for _ in range(4):  # to convergence, as torch's equalize() iterates
                    cross_layer_equalization(m.get_submodule(c1), m.get_submodule(c2))
        return m
    with torch.no_grad():
        for c1, bn_name, c2 in pairs:
            w1, bn, w2 = m.get_submodule(c1).weight, m.get_submodule(bn_name), m.get_submodule(c2).weight
            for _ in range(4):
                fold_scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                r1 = (w1 * fold_scale.view(-1, 1, 1, 1)).abs().amax(dim=(1, 2, 3))
                r2 = w2.abs().amax(dim=(0, 2, 3)) + 1e-9
                s = torch.sqrt(r1 / r2).clamp(min=1e-8)
                bn.weight /= s
                bn.bias /= s
                w2 *= s.view(1, -1, 1, 1)
    return m


def mobilenet_stages(module) -> list[tuple[int, int]]:
    """(first, last) of every residual stage: features.first has no skip, first+1..last add to it."""
    stages, k, n = [], 1, len(module.features)
    while k < n:
        blk = module.features[k]
        if hasattr(blk, "use_res_connect") and not blk.use_res_connect:
            last = k
            while last + 1 < n and getattr(module.features[last + 1], "use_res_connect", False):
                last += 1
            if last > k:
                stages.append((k, last))
            k = last + 1
        else:
            k += 1
    return stages


def stream_equalized(module, calib: list, alpha: float = 0.5, gate: float | None = None):
    """Prototype: SmoothQuant-style equalization of each MobileNetV2 residual *stream*.

    Pairwise CLE cannot reach a residual stream: it has several producers (every block's
    projection BN adds into it) and several readers (every next expansion conv). Scaling
    stream channel c by 1/s_c in *all* producers' BNs and by s_c in *all* readers' input
    weights is exact (the adds are linear, nothing clips in between). s_c =
    a_c**alpha / w_c**(1-alpha) with a_c the channel's max |activation| over the stream's
    tensors on the calibration data and w_c the readers' max |weight| on input channel c.

    ``gate`` (e.g. 4): touch only outlier channels, a_c > gate * median(a), bringing them down to
    gate * median(a) (s_c = a_c / (gate * median(a))); every other channel keeps s_c = 1, so a
    model without outliers is left exactly as it is.
    """
    import torch

    m = copy.deepcopy(module).eval()
    for first, last in mobilenet_stages(m):
        blocks = [m.features[k] for k in range(first, last + 1)]
        amax = None
        acts = []
        hs = [b.register_forward_hook(lambda mod, a, out: acts.append(out.detach().abs().amax(dim=(0, 2, 3))))
              for b in blocks]
        with torch.no_grad():
            for x in calib:
                m(torch.as_tensor(x))
        for h in hs:
            h.remove()
        amax = torch.stack(acts).amax(0).clamp(min=1e-8)
        readers = [m.features[k].conv[0][0] for k in range(first + 1, last + 2)]
        wmax = torch.stack([r.weight.detach().abs().amax(dim=(0, 2, 3)) for r in readers]).amax(0).clamp(min=1e-8)
        if gate is None:
            s = amax.pow(alpha) / wmax.pow(1 - alpha)
        else:
            s = (amax / (gate * amax.median())).clamp(min=1.0)
        with torch.no_grad():
            for b in blocks:
                bn = b.conv[-1]
                bn.weight /= s
                bn.bias /= s
            for r in readers:
                r.weight *= s.view(1, -1, 1, 1)
    return m


def plan_for(recipe: str, variant: Variant):
    from quantstudio.core.plan import PrecisionPlan

    plan = PrecisionPlan()
    layers = []
    if recipe == "fp32 consumer":
        layers = variant.consumers
    elif recipe == "fp32 consumer+producer":
        layers = variant.consumers + variant.producers
    for name in layers:
        plan.parse_assignment(f"{name}=fp32")
    return plan


def loaded(module, size: int):
    from quantstudio.core.loading import LoadedModel

    return LoadedModel(path=Path("model.pth"), kind="state_dict", input_shape=(1, 3, size, size), module=module.eval())


def quantize(variant: Variant, engine: str, recipe: str, calib: list[np.ndarray], size: int):
    """The engine's QuantizedModel for ``recipe``; (model, seconds)."""
    from quantstudio.core.engines import QuantConfig, get_engine
    from quantstudio.core.jobs import NullContext

    module = variant.module
    if recipe.startswith("CLE"):
        module = equalized(variant)
        if "stream-EQ" in recipe and variant.arch == "mobilenet_v2":
            module = stream_equalized(module, calib, gate=4.0 if "gated" in recipe else None)
    elif recipe.startswith("bias-corr"):
        from tests.benchmarks.layer_isolation import bias_corrected

        # torch's x86 qconfig uses 7-bit activations (reduce_range); ORT's U8S8 on VNNI 8-bit
        module = bias_corrected(variant.module, calib, reduce_range=engine == "torch")
    cfg = QuantConfig(engine=engine, calibration=base_calibration(recipe), calib_samples=sum(len(c) for c in calib))
    t0 = time.time()
    with recipe_context(recipe, engine):
        qm = get_engine(engine).quantize(loaded(module, size), plan_for(recipe, variant), cfg, list(calib),
                                         NullContext())
    return qm, time.time() - t0


def top1(fn, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    pred = np.concatenate([np.asarray(fn(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def latencies(runners: dict[str, object], x1: np.ndarray, rounds: int = LAT_ROUNDS,
              stat=statistics.median) -> dict[str, float]:
    """Batch-1 ms per runner (``stat`` of the rounds: median, or min), all timed interleaved
    (round-robin, rotated start)."""
    names = list(runners)
    for n in names:  # warm-up
        for _ in range(3):
            runners[n](x1)
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runners[n](x1)
            samples[n].append((time.perf_counter() - t0) * 1e3)
    latencies.last_min = {n: min(s) for n, s in samples.items()}
    return {n: stat(s) for n, s in samples.items()}


def fp32_runner(variant: Variant, qm):
    """ORT: the engine's pre-processed FP32 ONNX model in a session; torch: the eager module."""
    import torch

    reference = qm.extras.get("reference")
    if reference is not None:
        from quantstudio.core.engines.ort.runtime import OrtRunner, make_session

        return OrtRunner(make_session(reference))

    def run(x):
        with torch.inference_mode():
            return variant.module(torch.from_numpy(x)).numpy()

    return run


def load_cache(path: Path = CACHE) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": {}, "meta": {}}


def load_all() -> dict:
    """Every study*.json in WORK merged (newer files win a key both hold)."""
    merged = {"rows": {}, "meta": {}}
    for p in sorted(WORK.glob("study*.json"), key=lambda p: p.stat().st_mtime):
        c = load_cache(p)
        merged["rows"].update(c["rows"])
        merged["meta"].update(c["meta"])
    return merged


def save_cache(cache: dict) -> None:
    """Merge this run's rows into the file on disk (another run may have written it meanwhile)."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    disk = load_cache()
    disk["rows"].update(cache["rows"])
    disk["meta"].update(cache["meta"])
    tmp = CACHE.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(disk, indent=1))
    tmp.rename(CACHE)


def run(models: list[str], recipes: list[str], engines: list[str], force: bool = False) -> None:
    import torch

    torch.manual_seed(0)
    # One intra-op thread for torch: with ~10 runnable processes on 2 cores, OpenMP's spinning
    # threads make batch-1 torch timings meaningless (300 ms for the demo's INT8 model).
    torch.set_num_threads(1)
    cache = load_cache()
    cache["meta"].update({"torch_threads": 1, "n_calib": N_CALIB, "lat_rounds": LAT_ROUNDS})
    archs = {m.split()[0] for m in models}
    variants = [v for a in sorted(archs) for v in damaged_models(a) if v.name in models]
    if not variants:
        raise SystemExit(f"no model named {models}")
    data = {}
    for v in variants:
        size = v.size
        if size not in data:
            cx, cy, tx, ty = digits_split(size)
            calib_x = cx[:N_CALIB].numpy()
            data[size] = ([calib_x[i:i + 32] for i in range(0, len(calib_x), 32)], tx.numpy(), ty.numpy())
        calib, test_x, test_y = data[size]
        calib_x = np.concatenate(calib)
        x1 = test_x[:1].copy()
        with torch.no_grad():
            fp32 = top1(lambda a: v.module(torch.from_numpy(a)).numpy(), test_x, test_y)
        _log(f"{v.name}: FP32 top-1 {fp32:.2%}")
        for engine in engines:
            runners = {}
            todo = [r for r in recipes if not (r in DAMAGE_ONLY and not v.damages)
                    and (force or f"{v.name}|{engine}|{r}" not in cache["rows"])]
            if not todo:
                continue
            if "minmax" not in todo:  # always re-made: the latency reference
                todo = ["minmax"] + todo
            for recipe in todo:
                key = f"{v.name}|{engine}|{recipe}"
                try:
                    qm, secs = quantize(v, engine, recipe, calib, size)
                except Exception as exc:  # noqa: BLE001 - a failure is a result
                    _log(f"  {key}: FAILED {exc}")
                    cache["rows"][key] = {"model": v.name, "engine": engine, "recipe": recipe,
                                          "error": str(exc).splitlines()[0][:200]}
                    continue
                acc = top1(qm.forward_numpy, test_x, test_y)
                runners[recipe] = qm.forward_numpy
                if "FP32" not in runners:  # the same runtime's FP32 model: the speed-up reference
                    runners["FP32"] = fp32_runner(v, qm)
                fp32_layers = sorted(k for k, p in qm.layer_precisions.items() if str(p).lower().endswith("fp32"))
                cache["rows"][key] = {"model": v.name, "engine": engine, "recipe": recipe, "fp32_top1": fp32,
                                      "int8_top1": acc, "quantize_s": secs, "n_test": len(test_y),
                                      "n_calib": len(calib_x), "fp32_layers": fp32_layers}
                _log(f"  {key}: INT8 {acc:.2%} (FP32 {fp32:.2%}) quantized in {secs:.0f} s")
            if runners:
                ms = latencies(runners, x1)
                fp32_ms = ms.pop("FP32", None)
                mins = latencies.last_min
                for recipe, t in ms.items():
                    row = cache["rows"][f"{v.name}|{engine}|{recipe}"]
                    row["fp32_ms"] = fp32_ms
                    row["ms_min"] = mins[recipe]
                    row["ms_min_vs_minmax"] = mins[recipe] / mins["minmax"]
                    row["fp32_ms_min"] = mins.get("FP32")
                    row["lat_rounds"] = LAT_ROUNDS
                    row["ms"] = t
                    row["ms_vs_minmax"] = t / ms["minmax"]
                _log(f"  {engine} latency ms: " + ", ".join(f"{k} {t:.2f}" for k, t in ms.items()))
            save_cache(cache)


# --------------------------------------------------------------------------- report


def cpu_info() -> tuple[str, bool]:
    text = Path("/proc/cpuinfo").read_text()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), platform.processor())
    return name, "avx512_vnni" in text


def render_table(cache: dict) -> list[str]:
    """One row per (model, recipe); cells: INT8 top-1 (points vs FP32) and batch-1 ms (ratio to the
    same engine's min-max model, timed interleaved). The FP32 ms of each runtime is in the model's
    min-max row."""
    rows = cache["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows.values()))
    lines = ["| model (FP32 top-1) | recipe | torch INT8 top-1 (pts) | torch ms (x minmax) | "
             "ORT INT8 top-1 (pts) | ORT ms (x minmax) |",
             "|---|---|---|---|---|---|"]
    for m in models:
        fp32 = next((r["fp32_top1"] for r in rows.values() if r["model"] == m and "fp32_top1" in r), None)
        for recipe in RECIPES:
            cells = []
            for engine in ("torch", "onnxruntime"):
                r = rows.get(f"{m}|{engine}|{recipe}")
                if r is None:
                    cells += ["", ""]
                elif "error" in r:
                    cells += [f"failed: {r['error'][:60]}", ""]
                else:
                    d = 100 * (r["int8_top1"] - r["fp32_top1"])
                    ms = ""
                    if "ms_min" in r:  # the long interleaved run: min of rounds (see OUTLIERS.md)
                        ms = f"**{r['ms_min']:.2f} ({r['ms_min_vs_minmax']:.2f})** min/{r['lat_rounds']}"
                        if recipe == "minmax" and r.get("fp32_ms_min"):
                            ms += f"; FP32 {r['fp32_ms_min']:.2f}"
                    elif "ms" in r:
                        ms = f"{r['ms']:.2f} ({r['ms_vs_minmax']:.2f})"
                        if recipe == "minmax" and r.get("fp32_ms"):
                            ms += f"; FP32 {r['fp32_ms']:.2f}"
                    cells += [f"{r['int8_top1']:.2%} ({d:+.1f})", ms]
            if all(c == "" for c in cells):
                continue
            lines.append(f"| {m} ({fp32:.2%}) | {recipe} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--recipes", nargs="*", default=["all"])
    ap.add_argument("--engines", nargs="*", default=["torch", "onnxruntime"])
    ap.add_argument("--force", action="store_true", help="re-measure rows already in the cache")
    ap.add_argument("--render", action="store_true", help="print the markdown table from the cache")
    args = ap.parse_args(argv)
    if args.models:
        recipes = list(RECIPES) if args.recipes == ["all"] else args.recipes
        run(args.models, recipes, args.engines, args.force)
    if args.render or not args.models:
        print("\n".join(render_table(load_all())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

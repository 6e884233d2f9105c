"""Demo MobileNetV2: QAT .onnx before/after folding ReLU6 into the conv's quantizer, against
plain ONNX Runtime INT8 (latency at batch 1, node counts, top-1). Not part of `make bench`
(two QAT runs: a few minutes). Run from the repository root:

    OUT=/tmp/relu6 EPOCHS=2 RUNS=500 python -m tests.benchmarks.qat_relu6_bench

Figures in README.md (Fine-tuning with quantization-aware training).
"""
import copy, json, os, time
from collections import Counter
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
import quantstudio.core.engines.pytorch.qdq_onnx as qdq_mod
from quantstudio.core.data import Preprocessing, open_data
from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.loading import load_model
from quantstudio.core.pipeline import run_quantize
from quantstudio.core.plan import PrecisionPlan

OUT = Path(os.environ.get("OUT", "/tmp/relu6/demo")); OUT.mkdir(parents=True, exist_ok=True)
folder = Path(__file__).resolve().parents[2] / "resources" / "demo"
meta = json.loads((folder / "demo.json").read_text())
model = load_model(folder / meta["weights"], arch=meta["arch"], input_shape=tuple(meta["input_shape"]))
prep = Preprocessing()
data = open_data(folder / meta["data"], input_shape=model.input_shape, preprocessing=prep)
EVAL = 200
log = lambda *a: print(time.strftime("%H:%M:%S"), f"load {os.getloadavg()[0]:.2f}", *a, flush=True)

def quantize(qat):
    cfg = QuantConfig(engine="onnxruntime", qat=qat, qat_epochs=int(os.environ.get("EPOCHS", "1")))
    return run_quantize(model, data, prep, PrecisionPlan(), cfg, eval_samples=EVAL, benchmark=False), cfg

if not (OUT / "plain.onnx").exists():
    r, _ = quantize(False)
    onnx.save(r.quantized.artifact, str(OUT / "plain.onnx")); log("plain top1", r.quantized_metrics.top1)
if not (OUT / "qat_before.onnx").exists():
    fold = qdq_mod.fold_clipped_activations
    qdq_mod.fold_clipped_activations = lambda m: m  # the export as it was
    t0 = time.time(); r, cfg = quantize(True); log("qat wall s", round(time.time() - t0), "pipeline top1 (before)", r.quantized_metrics.top1, r.training["history"])
    qdq_mod.fold_clipped_activations = fold
    onnx.save(r.quantized.artifact, str(OUT / "qat_before.onnx"))
    onnx.save(fold(copy.deepcopy(r.quantized.artifact)), str(OUT / "qat_after.onnx"))
    r2, _ = quantize(True)  # the export as it is now, straight from the pipeline
    c2 = Counter(x.op_type for x in r2.quantized.artifact.graph.node)
    log("pipeline (fold on): top1", r2.quantized_metrics.top1, "Clip", c2["Clip"], "QuantizeLinear", c2["QuantizeLinear"])
    (OUT / "split.json").write_text(json.dumps(data.split(calibration=cfg.calib_samples, evaluation=EVAL, seed=cfg.seed).evaluation.tolist()))

names = ["plain", "qat_before", "qat_after"]
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
sess = {}
for n in names:
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.optimized_model_filepath = str(OUT / f"{n}.opt.onnx")
    sess[n] = ort.InferenceSession(str(OUT / f"{n}.onnx"), o, providers=["CPUExecutionProvider"])
    c = Counter(x.op_type for x in onnx.load(str(OUT / f"{n}.onnx")).graph.node)
    co = Counter(x.op_type for x in onnx.load(str(OUT / f"{n}.opt.onnx")).graph.node)
    log(n, "file:", {k: c[k] for k in ("QuantizeLinear", "DequantizeLinear", "Clip", "Conv")}, "as run:", dict(co))
ev = np.array(json.loads((OUT / "split.json").read_text()))
xs, ys = [], []
for b in data.batches(np.arange(len(data)), batch_size=64):
    xs.append(b.x); ys.append(b.targets)
X, Y = np.concatenate(xs), np.concatenate(ys)
inp = {n: sess[n].get_inputs()[0].name for n in names}
pred = {n: np.concatenate([sess[n].run(None, {inp[n]: X[i:i + 64]})[0] for i in range(0, len(X), 64)]).argmax(1) for n in names}
for n in names:
    log(n, f"top1 held-out {EVAL}: {(pred[n][ev] == Y[ev]).mean() * 100:.2f}% ({(pred[n][ev] == Y[ev]).sum()}/{len(ev)}), all 540: {(pred[n] == Y).mean() * 100:.2f}%")
log("qat before vs after predictions agree on", int((pred["qat_before"] == pred["qat_after"]).sum()), "of", len(X))
x1 = X[:1]
from quantstudio.core.engines.ort.runtime import make_session
RUNS = int(os.environ.get("RUNS", "300"))
for label, mk in (("1 thread", lambda n: sess[n]), ("app session (threads = cores)", lambda n: make_session(str(OUT / f"{n}.onnx")))):
    ss = {n: mk(n) for n in names}
    for rnd in range(3):
        t = {n: [] for n in names}
        for n in names:
            for _ in range(20): ss[n].run(None, {inp[n]: x1})
        for i in range(RUNS):
            for n in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter(); ss[n].run(None, {inp[n]: x1}); t[n].append(time.perf_counter() - t0)
        log(label, f"round {rnd}, batch 1, {RUNS} interleaved runs:", "; ".join(f"{n} median {np.median(np.array(t[n]) * 1e3):.3f} min {np.min(np.array(t[n]) * 1e3):.3f} ms" for n in names))

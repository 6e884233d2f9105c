"""Regenerate QuantStudio's bundled demo: digits image folder, model.pth, demo.json.

DEV-ONLY SCRIPT. It needs scikit-learn (``pip install -e .[demo]`` or
``pip install scikit-learn``) for the bundled copy of the UCI "Optical Recognition
of Handwritten Digits" data set (Alpaydin & Kaynak, CC BY 4.0). The application
itself never imports scikit-learn: it only reads the files this script writes.

Usage (from the repository root)::

    python resources/demo/train_demo.py            # data + train + eval + benchmark
    python resources/demo/train_demo.py --no-bench # skip the latency measurement
    python resources/demo/train_demo.py --bench-only  # re-measure the shipped model

What it does, deterministically (seed 0):

1. loads the 1797 8x8 digit images (pixel values 0..16), scales them to 0..255
   uint8, and splits them 70/30 (stratified, ``random_state=0``);
2. writes the held-out 30% as grayscale PNGs ``digits/<class>/<index>.png``
   (``index`` is the row in ``sklearn.datasets.load_digits``); only these ship;
3. trains a torchvision ``mobilenet_v2`` (num_classes=10, input 1x3x64x64) from
   scratch on the other 70%, using exactly the app's default preprocessing
   (PIL ``convert("RGB")`` -> ``Resize((64, 64))`` -> ``ToTensor`` -> ImageNet
   ``Normalize``) plus a small random affine augmentation on the resized image,
   then re-estimates the BatchNorm statistics on the clean training images;
4. saves ``model.pth``, a plain state_dict whose floating-point tensors are stored
   as float16 to halve the file (2.2 M parameters: 9.2 MB in float32, 4.6 MB in
   float16). Loading it into the float32 model with ``load_state_dict`` upcasts
   the weights; the script checks that this gives exactly the same held-out top-1
   predictions and top-1/top-5 accuracy as the float32 weights, and falls back to
   a float32 file if not;
5. re-reads the written PNG folder, evaluates top-1/top-5, and (unless
   ``--no-bench``) quantizes to INT8 with PyTorch FX (x86 qconfig) and ONNX Runtime
   (QDQ, per-channel) and measures batch-1 latency FP32 vs INT8;
6. writes ``demo.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

HERE = Path(__file__).resolve().parent
DIGITS_DIR = HERE / "digits"
MODEL_PATH = HERE / "model.pth"
JSON_PATH = HERE / "demo.json"

ARCH = "mobilenet_v2"
NUM_CLASSES = 10
H = W = 64
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SEED = 0
TEST_SIZE = 0.3
EPOCHS = 8
BATCH = 32
LR = 2e-3
EVAL_BATCH = 64
N_CALIB = 100
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def eval_transform() -> transforms.Compose:
    """The app's default preprocessing (must match quantstudio's default exactly)."""
    return transforms.Compose([
        transforms.Resize((H, W)),  # bilinear, antialias=True (torchvision default)
        transforms.ToTensor(),
        transforms.Normalize(mean=MEAN, std=STD),
    ])


def train_transform() -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize((H, W)),
        transforms.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1), fill=0),
        transforms.ToTensor(),
        transforms.Normalize(mean=MEAN, std=STD),
    ])


def to_uint8(images_0_16: np.ndarray) -> np.ndarray:
    """Scale sklearn's 0..16 pixel values to 0..255 uint8 (round half to even)."""
    return np.round(images_0_16.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)


def load_split():
    from sklearn.datasets import load_digits  # dev-only dependency
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = to_uint8(digits.images)  # (1797, 8, 8) uint8
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SEED, stratify=labels)
    return images, labels, np.sort(tr), np.sort(te)


def write_digits_folder(images, labels, test_idx) -> None:
    if DIGITS_DIR.exists():
        shutil.rmtree(DIGITS_DIR)
    for c in CLASS_NAMES:
        (DIGITS_DIR / c).mkdir(parents=True)
    for i in test_idx:
        Image.fromarray(images[i], mode="L").save(
            DIGITS_DIR / str(int(labels[i])) / f"{int(i):04d}.png", optimize=True)


def read_digits_folder(root: Path = DIGITS_DIR):
    """(PIL RGB images, labels) from <root>/<class>/*.png, sorted by class then name."""
    pil, lab = [], []
    for ci, c in enumerate(CLASS_NAMES):
        for p in sorted((root / c).glob("*.png")):
            with Image.open(p) as im:
                pil.append(im.convert("RGB"))
            lab.append(ci)
    return pil, torch.tensor(lab)


def pil_like_png(arr: np.ndarray) -> Image.Image:
    """The same PIL image the app gets from loading the PNG written from ``arr``."""
    return Image.fromarray(arr, mode="L").convert("RGB")


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    top1 = top5 = 0
    for s in range(0, len(x), EVAL_BATCH):
        out = model(x[s:s + EVAL_BATCH])
        t5 = out.topk(5, dim=1).indices
        yy = y[s:s + EVAL_BATCH]
        top1 += int((t5[:, 0] == yy).sum())
        top5 += int((t5 == yy[:, None]).any(dim=1).sum())
    return top1 / len(y), top5 / len(y)


def train(images, labels, train_idx) -> torch.nn.Module:
    seed_everything()
    model = torchvision.models.get_model(ARCH, num_classes=NUM_CLASSES)
    pil = [pil_like_png(images[i]) for i in train_idx]
    y = torch.from_numpy(labels[train_idx])
    tf = train_transform()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = EPOCHS * ((len(pil) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(pil), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(pil), BATCH):
            b = perm[s:s + BATCH]
            xb = torch.stack([tf(pil[int(i)]) for i in b])
            yb = y[b]
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(b)
            correct += int((out.argmax(1) == yb).sum())
            total += len(b)
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {loss_sum / total:.4f} "
              f"train acc {correct / total:.4f} ({time.time() - t0:.1f}s)", flush=True)
    recompute_bn_stats(model, torch.stack([eval_transform()(im) for im in pil]))
    return model.eval()


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Replace BatchNorm running stats by exact averages over clean training images."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for s in range(0, len(x), EVAL_BATCH):
        model(x[s:s + EVAL_BATCH])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def half_state_dict(model: torch.nn.Module) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).clone()
            for k, v in model.state_dict().items()}


def predictions(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[s:s + EVAL_BATCH]).topk(5, dim=1).indices
                          for s in range(0, len(x), EVAL_BATCH)])


# ----------------------------------------------------------------------------- INT8

def _median_ms(ts):
    return round(statistics.median(ts) * 1e3, 3)


def _bench_pair(f_fp32, f_int8, runs: int, warmup: int = 20):
    a, b = [], []
    for _ in range(warmup):
        f_fp32()
        f_int8()
    for _ in range(runs):  # interleaved so that load changes hit both alike
        t = time.perf_counter(); f_fp32(); a.append(time.perf_counter() - t)
        t = time.perf_counter(); f_int8(); b.append(time.perf_counter() - t)
    fa, fb = _median_ms(a), _median_ms(b)
    return {"fp32_ms": fa, "int8_ms": fb, "speedup": round(fa / fb, 2), "runs": runs}


def torch_fx_int8(model, calib: torch.Tensor, x_test, y_test, runs: int):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (calib[:1],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example)
        with torch.no_grad():
            for s in range(0, len(calib), 10):
                prepared(calib[s:s + 10])
        q = convert_fx(prepared)
    top1, top5 = evaluate(q, x_test, y_test)
    x1 = x_test[:1]
    threads = torch.get_num_threads()
    r = {}
    with torch.no_grad():
        for t in (threads, 1) if threads > 1 else (1,):
            torch.set_num_threads(t)
            bench = _bench_pair(lambda: model(x1), lambda: q(x1), runs)
            if t == threads:
                r.update(bench)
            else:
                r["one_thread"] = bench
    torch.set_num_threads(threads)
    r.update({"int8_top1": top1, "int8_top5": top5})
    return r


def ort_int8(model, calib: torch.Tensor, x_test, y_test, runs: int):
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = Path(tempfile.mkdtemp(prefix="qs_demo_"))
    try:
        f32, pre, i8 = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "int8.onnx"
        torch.onnx.export(model, (calib[:1],), str(f32), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        quant_pre_process(str(f32), str(pre))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(pre), str(i8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        def sessions(threads):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            return (ort.InferenceSession(str(f32), so, providers=["CPUExecutionProvider"]),
                    ort.InferenceSession(str(i8), so, providers=["CPUExecutionProvider"]))

        threads = torch.get_num_threads()
        s32, s8 = sessions(threads)

        class Wrap(torch.nn.Module):
            def __init__(self, sess):
                super().__init__()
                self.sess = sess

            def forward(self, x):
                return torch.from_numpy(self.sess.run(None, {"input": x.numpy()})[0])

        fp32_top1, _ = evaluate(Wrap(s32), x_test, y_test)
        top1, top5 = evaluate(Wrap(s8), x_test, y_test)
        x1 = {"input": x_test[:1].numpy()}
        r = _bench_pair(lambda: s32.run(None, x1), lambda: s8.run(None, x1), runs)
        if threads > 1:
            o32, o8 = sessions(1)
            r["one_thread"] = _bench_pair(lambda: o32.run(None, x1), lambda: o8.run(None, x1), runs)
        r.update({"fp32_top1": fp32_top1, "int8_top1": top1, "int8_top5": top5,
                  "onnxruntime": ort.__version__})
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                     if l.startswith("model name")), platform.processor())
        flags = next((l.split(":", 1)[1].split() for l in info.splitlines()
                      if l.startswith("flags")), [])
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
        return f"{name} ({', '.join(isa) or 'no AVX2'})"
    except OSError:
        return platform.processor() or platform.machine()


def measure(model, images, train_idx, x_test, y_test, runs: int) -> dict:
    """INT8 quantization with both engines, accuracy and batch-1 latency FP32 vs INT8."""
    # Calibrate on N_CALIB training images (deterministic pick), eval preprocessing.
    tf = eval_transform()
    rng = np.random.default_rng(SEED)
    calib_idx = rng.choice(train_idx, N_CALIB, replace=False)
    calib = torch.stack([tf(pil_like_png(images[i])) for i in calib_idx])
    fx = torch_fx_int8(model, calib, x_test, y_test, runs)
    print("PyTorch FX INT8:", fx)
    ox = ort_int8(model, calib, x_test, y_test, runs)
    print("ONNX Runtime QDQ INT8:", ox)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average_after": load,
        "batch": 1,
        "statistic": "median latency, FP32 and INT8 runs interleaved; one_thread: the same "
                     "with 1 thread (less sensitive to other load on a shared machine)",
        "calibration_images": N_CALIB,
        "pytorch_fx_x86": fx,
        "onnxruntime_qdq": ox,
    }


def load_shipped():
    """The shipped model (as the app loads it) and the held-out folder, preprocessed."""
    model = torchvision.models.get_model(ARCH, num_classes=NUM_CLASSES)
    model.load_state_dict(torch.load(MODEL_PATH, weights_only=True), strict=True)
    model.eval()
    pil, y_test = read_digits_folder()
    tf = eval_transform()
    return model, torch.stack([tf(im) for im in pil]), y_test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bench", action="store_true", help="skip INT8 quantization/latency")
    ap.add_argument("--bench-only", action="store_true",
                    help="no training: re-measure the shipped model.pth and update demo.json")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per engine (median)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    images, labels, train_idx, test_idx = load_split()

    if args.bench_only:
        info = json.loads(JSON_PATH.read_text())
        fresh, x_test, y_test = load_shipped()
        top1, top5 = evaluate(fresh, x_test, y_test)
        if (top1, top5, len(y_test)) != (info["top1"], info["top5"], info["n"]):
            raise SystemExit(f"shipped files disagree with demo.json: {top1} {top5} {len(y_test)}")
        info["measured"] = measure(fresh, images, train_idx, x_test, y_test, args.runs)
        JSON_PATH.write_text(json.dumps(info, indent=2) + "\n")
        print(f"updated {JSON_PATH.name}")
        return 0

    write_digits_folder(images, labels, test_idx)
    print(f"wrote {len(test_idx)} held-out PNGs to {DIGITS_DIR} "
          f"({len(train_idx)} images kept for training)")

    t0 = time.time()
    model = train(images, labels, train_idx)
    train_s = time.time() - t0

    pil, y_test = read_digits_folder()
    tf = eval_transform()
    x_test = torch.stack([tf(im) for im in pil])

    # Store float16 only if the upcast weights predict exactly like the float32 ones.
    half = torchvision.models.get_model(ARCH, num_classes=NUM_CLASSES)
    half.load_state_dict(half_state_dict(model), strict=True)
    half.eval()
    p32, p16 = predictions(model, x_test), predictions(half, x_test)
    same = (torch.equal(p32[:, 0], p16[:, 0])
            and evaluate(model, x_test, y_test) == evaluate(half, x_test, y_test))
    saved_dtype = "float16" if same else "float32"
    print(f"float16 storage gives identical top-1 predictions and top-1/top-5 accuracy: "
          f"{same} -> saving {saved_dtype}")
    torch.save(half_state_dict(model) if same else model.state_dict(), MODEL_PATH)

    # Evaluate exactly as the app would: reload model.pth, read the written folder back.
    fresh, x_test, y_test = load_shipped()
    top1, top5 = evaluate(fresh, x_test, y_test)
    print(f"held-out top-1 {top1:.4f} top-5 {top5:.4f} on {len(y_test)} images "
          f"(training took {train_s:.0f}s)")

    info = {
        "arch": ARCH,
        "num_classes": NUM_CLASSES,
        "input_shape": [1, 3, H, W],
        "class_names": CLASS_NAMES,
        "top1": top1,
        "top5": top5,
        "n": len(y_test),
        "weights": "model.pth",
        "weights_dtype": saved_dtype,
        "data": "digits",
        "preprocessing": {"resize": [H, W], "interpolation": "bilinear", "antialias": True,
                          "mean": MEAN, "std": STD, "color": "RGB"},
        "dataset": {
            "name": "UCI Optical Recognition of Handwritten Digits (scikit-learn load_digits)",
            "license": "CC BY 4.0",
            "split": {"test_size": TEST_SIZE, "random_state": SEED, "stratify": True,
                      "n_train": len(train_idx), "n_test": len(test_idx)},
        },
        "trained_with": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "epochs": EPOCHS, "seed": SEED, "batch_size": BATCH,
                         "optimizer": f"AdamW lr={LR} wd=1e-4, OneCycle, label_smoothing=0.05",
                         "augmentation": "RandomAffine(10 deg, translate 0.08, scale 0.9-1.1)",
                         "train_seconds": round(train_s, 1)},
    }

    if not args.no_bench:
        info["measured"] = measure(fresh, images, train_idx, x_test, y_test, args.runs)

    JSON_PATH.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {MODEL_PATH.name} ({MODEL_PATH.stat().st_size / 1e6:.2f} MB) and {JSON_PATH.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

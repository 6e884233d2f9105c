"""Peer figure: OpenVINO NNCF 3.4 with plain defaults on the same damaged ONNX models.

Two steps, two environments (NNCF is not a QuantStudio dependency):

1. in the project's venv, export the models and the data the study uses::

       PYTHONPATH=$PWD nice -n 15 /work/main/.venv/bin/python -m tests.benchmarks.nncf_peer export

   writes ``/tmp/outliers/nncf/<model>.onnx`` (the same ``torch_to_onnx`` export the ORT engine
   uses) and ``data_<size>.npz`` (the 256 calibration and 540 test images);

2. in a separate venv with ``nncf==3.4.0`` (plus torch, onnx, onnxruntime)::

       nice -n 15 /work/venv-nncf/bin/python tests/benchmarks/nncf_peer.py run

   ``nncf.quantize(onnx_model, nncf.Dataset(calib))`` with every option at its default, then
   top-1 on the test images and batch-1 latency (interleaved with the FP32 model) in ORT.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("/tmp/outliers/nncf")
MODELS = ("resnet18 normal", "resnet18 3 blocks s300", "mobilenet_v2 normal", "mobilenet_v2 3 sites s300")


def export() -> None:
    from quantstudio.core.engines.ort.export import torch_to_onnx
    from tests.benchmarks.outlier_models import damaged_models, digits_split
    from tests.benchmarks.outlier_study import N_CALIB, loaded

    OUT.mkdir(parents=True, exist_ok=True)
    for arch in ("resnet18", "mobilenet_v2"):
        for v in damaged_models(arch):
            if v.name in MODELS:
                torch_to_onnx(loaded(v.module, v.size), OUT / f"{v.name.replace(' ', '_')}.onnx")
                size = v.size
        cx, _, tx, ty = digits_split(size)
        np.savez(OUT / f"data_{size}.npz", calib=cx[:N_CALIB].numpy(), test_x=tx.numpy(), test_y=ty.numpy())


def run() -> None:
    import nncf
    import onnx
    import onnxruntime as ort

    results = []
    for name in MODELS:
        size = 32 if name.startswith("resnet") else 64
        d = np.load(OUT / f"data_{size}.npz")
        path = OUT / f"{name.replace(' ', '_')}.onnx"
        model = onnx.load(str(path))
        inp = model.graph.input[0].name
        calib = [d["calib"][i:i + 1] for i in range(len(d["calib"]))]
        t0 = time.time()
        q = nncf.quantize(model, nncf.Dataset(calib, lambda x: {inp: x}), subset_size=len(calib))
        secs = time.time() - t0
        sessions = {k: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                    for k, m in (("FP32", model), ("NNCF INT8", q))}
        acc = {}
        for k, s in sessions.items():
            pred = np.concatenate([s.run(None, {inp: d["test_x"][i:i + 64]})[0].argmax(1)
                                   for i in range(0, len(d["test_x"]), 64)])
            acc[k] = float((pred == d["test_y"]).mean())
        x1 = d["test_x"][:1]
        samples = {k: [] for k in sessions}
        for _ in range(5):
            for s in sessions.values():
                s.run(None, {inp: x1})
        for r in range(200):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {inp: x1})
                samples[k].append((time.perf_counter() - t) * 1e3)
        row = {"model": name, "fp32_top1": acc["FP32"], "nncf_top1": acc["NNCF INT8"], "quantize_s": secs,
               "fp32_ms_min": min(samples["FP32"]), "nncf_ms_min": min(samples["NNCF INT8"]),
               "fp32_ms_median": statistics.median(samples["FP32"]),
               "nncf_ms_median": statistics.median(samples["NNCF INT8"]),
               "nncf": nncf.__version__, "onnxruntime": ort.__version__, "n_calib": len(calib),
               "n_test": int(len(d["test_y"]))}
        results.append(row)
        print(json.dumps(row), flush=True)
    (OUT / "nncf_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    {"export": export, "run": run}[sys.argv[1]]()

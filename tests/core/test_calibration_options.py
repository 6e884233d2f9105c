"""Every calibration option changes the built model, on both engines (issue 11 item 3).

The model is a conv -> ReLU -> conv whose input is Gaussian with a few huge outliers
(one value of 60 in each batch of 24,576): a long tail where min-max, entropy and
percentile must disagree. Everything is read from the built model itself: the
QuantizeLinear scales and zero points of the ONNX graph, the quantize_per_tensor
buffers and quantized modules of the FX model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.engines.base import QuantConfig, get_engine
from quantstudio.core.jobs import NullContext
from quantstudio.core.loading import LoadedModel
from quantstudio.core.plan import PrecisionPlan

OUT_CHANNELS = 8
METHODS = ("minmax", "entropy", "percentile")


class LongTail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, OUT_CHANNELS, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(OUT_CHANNELS, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.relu(self.c1(x)))


def long_tail_data() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        x = rng.standard_normal((8, 3, 32, 32), dtype=np.float32)
        x.flat[rng.integers(0, x.size)] = 60.0  # 4 outliers in 98,304 values: beyond the 99.99th percentile
        out.append(x)
    return out


@lru_cache(maxsize=None)
def built(engine: str, calibration: str, per_channel: bool = True, symmetric: bool = False):
    torch.manual_seed(0)
    model = LoadedModel(path=Path("long_tail.pth"), kind="pickled_module", input_shape=(1, 3, 32, 32),
                        module=LongTail().eval())
    config = QuantConfig(calibration=calibration, per_channel=per_channel, symmetric_activations=symmetric,
                         backend="x86")
    return get_engine(engine).quantize(model, PrecisionPlan(), config, long_tail_data(), NullContext())


def activation_qparams(result) -> dict[str, tuple[float, int]]:
    """Activation tensor -> (scale, zero point), as the built model stores them."""
    if result.engine == "onnxruntime":
        from onnx import numpy_helper

        inits = {i.name: numpy_helper.to_array(i) for i in result.artifact.graph.initializer}
        return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
                for n in result.artifact.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    gm = result.artifact
    buffers = dict(gm.named_buffers())
    out = {"input": (float(buffers["c1_input_scale_0"]), int(buffers["c1_input_zero_point_0"]))}
    for name, module in gm.named_modules():
        if ".quantized" in type(module).__module__ and hasattr(module, "scale"):
            out[name] = (float(module.scale), int(module.zero_point))
    return out


def input_scale(result) -> float:
    return activation_qparams(result)["input"][0]


def weight_scale_counts(result) -> list[int]:
    """The number of scales of each conv weight."""
    if result.engine == "onnxruntime":
        from onnx import numpy_helper

        inits = {i.name: numpy_helper.to_array(i) for i in result.artifact.graph.initializer}
        return [inits[n.input[1]].size for n in result.artifact.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    counts = []
    for _, module in result.artifact.named_modules():
        if ".quantized" in type(module).__module__ and callable(getattr(module, "weight", None)):
            w = module.weight()
            per_channel = w.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine)
            counts.append(w.q_per_channel_scales().numel() if per_channel else 1)
    return counts


ENGINES = ["torch", "onnxruntime"]


def test_entropy_threshold_is_onnxruntimes_search():
    from onnxruntime.quantization.calibrate import HistogramCollector

    from quantstudio.core.engines.entropy import entropy_threshold

    rng = np.random.default_rng(1)
    for k in range(3):
        data = rng.standard_normal(20000).astype(np.float32) * (k + 1)
        if k == 1:
            data = np.maximum(data, 0)  # a ReLU output: one-sided
        data[: 3 * k] = 40.0
        collector = HistogramCollector("entropy", False, 512, 128, 99.99, "same")
        collector.collect_value({"t": [data]})
        hist = collector.histogram_dict["t"]
        assert entropy_threshold(hist[0], hist[1], hist[2], hist[3], 128) == collector.get_entropy_threshold(hist, 128)


@pytest.mark.parametrize("engine", ENGINES)
def test_minmax_entropy_and_percentile_give_different_ranges(engine):
    minmax, entropy, percentile = (input_scale(built(engine, m)) for m in METHODS)
    # Min-max stretches the input's range to the outliers (60); entropy and percentile
    # clip them, each at its own threshold.
    assert entropy < minmax / 3 and percentile < minmax / 3
    assert len({minmax, entropy, percentile}) == 3
    # Entropy is no relabelled min-max anywhere in the model (ORT's was, byte for byte).
    mm, ent = activation_qparams(built(engine, "minmax")), activation_qparams(built(engine, "entropy"))
    assert all(ent[k] != mm[k] for k in mm)


@pytest.mark.parametrize("engine", ENGINES)
def test_per_channel_weights_have_one_scale_per_output_channel(engine):
    assert weight_scale_counts(built(engine, "minmax", per_channel=True))[0] == OUT_CHANNELS
    assert set(weight_scale_counts(built(engine, "minmax", per_channel=False))) == {1}


# uint8 activations: ONNX Runtime's symmetric zero point is 128; torch's x86 backend
# uses 7-bit activations (0..127, reduce_range), centred on 63.
SYMMETRIC_ZERO_POINT = {"onnxruntime": 128, "torch": 63}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("calibration", METHODS)
def test_symmetric_activations_sit_on_the_symmetric_zero_point(engine, calibration):
    symmetric = activation_qparams(built(engine, calibration, per_channel=False, symmetric=True))
    assert symmetric and {zp for _, zp in symmetric.values()} == {SYMMETRIC_ZERO_POINT[engine]}
    affine = activation_qparams(built(engine, calibration))
    assert any(zp != SYMMETRIC_ZERO_POINT[engine] for _, zp in affine.values())  # the ReLU output starts at 0

"""The doctor's rules, with made-up CPUs, model facts and timings, and on a real S8S8 model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from quantstudio.core.doctor import (
    CpuFeatures,
    DoctorInput,
    ModelFacts,
    diagnose,
    onnx_facts,
)

VNNI_X86 = CpuFeatures("x86_64", {"avx2", "avx512f", "avx512_vnni"})
AVX2_X86 = CpuFeatures("x86_64", {"avx2"})
ARM_DOT = CpuFeatures("aarch64", {"asimd", "asimddp"})


def titles(findings):
    return [f.title for f in findings]


def test_s8s8_on_x86_slower_than_fp32_is_explained():
    facts = ModelFacts("onnx", activation_type="int8", weight_type="int8",
                       int8_compute=10, float_compute=11, quantize_nodes=21, dequantize_nodes=51)
    fs = diagnose(DoctorInput(VNNI_X86, facts, baseline_ms=6.3, quantized_ms=6.2))
    assert fs[0].severity == "problem" and "not faster" in fs[0].title
    assert "6.20 ms vs 6.30 ms" in fs[0].detail
    s8 = next(f for f in fs if f.title == "int8 activations on an x86 CPU")
    assert s8.severity == "problem"
    assert "uint8" in s8.suggestion
    assert "this CPU has no VNNI" not in titles(fs)


def test_u8s8_fast_model_gets_a_clean_bill():
    facts = ModelFacts("onnx", activation_type="uint8", weight_type="int8", int8_compute=21)
    fs = diagnose(DoctorInput(VNNI_X86, facts, baseline_ms=9.1, quantized_ms=3.3))
    assert fs[0].severity == "info" and "2.8x faster" in fs[0].title
    assert all(f.severity == "info" for f in fs)


def test_no_vnni_and_small_model_are_named_when_slow():
    facts = ModelFacts("onnx", activation_type="uint8", int8_compute=5, total_macs=2_000_000)
    fs = diagnose(DoctorInput(AVX2_X86, facts, baseline_ms=1.0, quantized_ms=1.05))
    t = titles(fs)
    assert "this CPU has no VNNI" in t
    assert "the model is small for batch 1" in t
    small = next(f for f in fs if f.title == "the model is small for batch 1")
    assert "larger batch" in small.suggestion


def test_many_float_layers_and_fp16_without_native_support():
    facts = ModelFacts("onnx", activation_type="uint8", int8_compute=4, float_compute=6, fp16_compute=3)
    t = titles(diagnose(DoctorInput(VNNI_X86, facts)))
    assert "6 of 13 compute layers run in float" in t
    assert "3 layers run in FP16 on a CPU without native FP16 arithmetic" in t


def test_nothing_integer_means_quantization_did_nothing():
    facts = ModelFacts("pytorch", float_compute=20)
    fs = diagnose(DoctorInput(VNNI_X86, facts, baseline_ms=5, quantized_ms=6))
    assert "no layer runs an integer kernel" in titles(fs)


def test_arm_without_dotprod():
    facts = ModelFacts("pytorch", int8_compute=3, activation_type="uint8")
    fs = diagnose(DoctorInput(CpuFeatures("aarch64", {"asimd"}), facts, baseline_ms=2, quantized_ms=2.1))
    assert "this ARM CPU has no dot-product instructions" in titles(fs)
    assert "this ARM CPU has no dot-product instructions" not in titles(
        diagnose(DoctorInput(ARM_DOT, facts, baseline_ms=2, quantized_ms=2.1)))


def test_tiny_int8_layers_are_listed():
    facts = ModelFacts("onnx", activation_type="uint8", int8_compute=3,
                       low_intensity_int8=["features.1.conv.0.0", "features.2.conv.1.0"])
    f = next(f for f in diagnose(DoctorInput(VNNI_X86, facts)) if "very little work" in f.title)
    assert "features.1.conv.0.0" in f.detail and "FP32" in f.suggestion


@pytest.fixture(scope="module")
def tiny_onnx_pair(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tests.core.models import tiny_net

    d = tmp_path_factory.mktemp("dr")
    fp32 = d / "fp32.onnx"
    torch.onnx.export(tiny_net(), (torch.randn(1, 3, 32, 32),), str(fp32), dynamo=False, opset_version=17)

    name = onnx.load(str(fp32)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [{name: np.random.default_rng(i).standard_normal((1, 3, 32, 32), dtype=np.float32)}
                            for i in range(4)]

        def get_next(self):
            return self.batches.pop() if self.batches else None

    out = {}
    for label, act in (("s8s8", QuantType.QInt8), ("u8s8", QuantType.QUInt8)):
        path = d / f"{label}.onnx"
        quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, activation_type=act,
                        weight_type=QuantType.QInt8, per_channel=True)
        out[label] = onnx.load(str(path))
    return out


def test_facts_read_from_real_quantized_files(tiny_onnx_pair):
    s8 = onnx_facts(tiny_onnx_pair["s8s8"])
    u8 = onnx_facts(tiny_onnx_pair["u8s8"])
    assert s8.activation_type == "int8" and u8.activation_type == "uint8"
    assert s8.weight_type == u8.weight_type == "int8"
    assert u8.per_channel is True
    # On x86, ONNX Runtime turns U8S8 QDQ into integer kernels for every conv/gemm.
    assert u8.int8_compute == 3 and u8.float_compute == 0
    fs = diagnose(DoctorInput(VNNI_X86, s8, baseline_ms=1.0, quantized_ms=1.2))
    assert "int8 activations on an x86 CPU" in titles(fs)

"""The TensorFlow Lite (LiteRT) engine: .tflite files that LiteRT runs, per mode and per layer.

Needs the ``tflite`` extra (litert-torch, ai-edge-quantizer, ai-edge-litert: wheels for
Linux x86_64 and macOS arm64); elsewhere these tests skip and say why, except the ones
about what the engine says when the extra is missing. Models are tiny (32×32) and
BN-ready (tests/core/test_engines.py), and the FP32 conversion is cached per module, so
the whole file runs in ~15 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from quantstudio.core.engines.base import QuantConfig, get_engine
from quantstudio.core.engines.tflite import convert as tfl_convert
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.plan import Precision, PrecisionPlan
from tests.core.models import tiny_net
from tests.core.test_engines import batches, bn_ready, loaded

MISSING = tfl_convert.missing_modules()
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"the tflite extra is not installed ({', '.join(MISSING)} missing; "
                          f"pip install 'quantstudio[tflite]', wheels for {tfl_convert.PLATFORMS})")


def sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


@pytest.fixture(scope="module")
def tiny():
    xs = batches(4, (8, 3, 32, 32))
    model = loaded(bn_ready(tiny_net(), xs))
    ref = np.concatenate([model.forward_numpy(x) for x in xs])
    return SimpleNamespace(model=model, xs=xs, ref=ref, engine=get_engine("tflite"))


def quantize(t, mode: str, plan: PrecisionPlan | None = None, ctx=None):
    return t.engine.quantize(t.model, plan or PrecisionPlan(), QuantConfig(engine="tflite", mode=mode), t.xs,
                             ctx or NullContext())


def fresh_run(data: bytes, x: np.ndarray) -> np.ndarray:
    """The file in a brand-new LiteRT interpreter, one sample at a time (no QuantStudio code)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32  # float I/O: drops into FP32 code
    ys = []
    for sample in x:
        interp.set_tensor(inp["index"], sample[None])
        interp.invoke()
        ys.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(ys)


def weight_dtypes(data: bytes) -> dict[str, str]:
    """Layer → dtype of the weights its compute op reads, from the file itself."""
    from quantstudio.core.engines.tflite.runtime import COMPUTE_OPS, layer_ops, read_facts

    facts = read_facts(data)
    prod = facts.producer()
    out = {}
    for layer, ops in layer_ops(facts, ["conv1", "conv2", "fc"]).items():
        op = [o for o in ops if o.op in COMPUTE_OPS][-1]
        w = op.inputs[1]
        src = prod.get(w)
        if src is not None and src.op == "DEQUANTIZE":
            w = src.inputs[0]
        out[layer] = facts.tensors[w].dtype
    return out


# --------------------------------------------------------------------------- without the extra


def test_without_the_extra_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tfl_convert, "missing_modules", lambda: ["litert_torch"])
    engine = get_engine("tflite")
    eager = SimpleNamespace(is_eager=True, framework="torch", kind="state_dict", kind_label="PyTorch state_dict")
    reason = engine.unsupported_reason(eager)
    assert reason and reason.startswith("install the tflite extra: pip install 'quantstudio[tflite]'")
    with pytest.raises(InputError, match=r"install the tflite extra"):
        engine.quantize(eager, PrecisionPlan(), QuantConfig(engine="tflite"), [], NullContext())


def test_onnx_and_torchscript_sources_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(tfl_convert, "missing_modules", lambda: [])
    engine = get_engine("tflite")
    onnx_model = SimpleNamespace(is_eager=False, framework="onnx", kind="onnx", kind_label="ONNX model")
    assert "from PyTorch only" in engine.unsupported_reason(onnx_model)
    script = SimpleNamespace(is_eager=False, framework="torch", kind="torchscript", kind_label="TorchScript archive")
    assert "TorchScript" in engine.unsupported_reason(script)
    program = SimpleNamespace(is_eager=False, framework="torch", kind="exported_program", kind_label=".pt2")
    assert engine.unsupported_reason(program) is None


def test_doctor_explains_litert_and_what_stayed_float():
    from quantstudio.core.doctor import CpuFeatures, DoctorInput, ModelFacts, diagnose

    cpu = CpuFeatures("x86_64", {"avx2", "avx512f", "avx512_vnni"})
    mixed = ModelFacts(runtime="litert", int8_compute=19, float_compute=2, float_ops=3, activation_type="int8",
                       quantize_nodes=3, dequantize_nodes=3, delegate_partitions=1)
    found = {f.title: f for f in diagnose(DoctorInput(cpu=cpu, facts=mixed))}
    assert "one XNNPACK partition" in found["LiteRT's CPU path is XNNPACK"].detail
    stayed = found["LiteRT: part of the model stayed float"]
    assert stayed.severity == "warning" and "2 compute ops and 3 other ops" in stayed.detail
    fp16 = ModelFacts(runtime="litert", fp16_compute=21, delegate_partitions=1)
    titles = [f.title for f in diagnose(DoctorInput(cpu=cpu, facts=fp16))]
    assert "LiteRT: part of the model stayed float" not in titles and "LiteRT's CPU path is XNNPACK" in titles


# --------------------------------------------------------------------------- modes


@needs_extra
def test_all_fp32_plan_is_the_plain_conversion_and_matches_torch(tiny):
    qm = quantize(tiny, "static", PrecisionPlan(default=Precision.FP32))
    out = fresh_run(qm.artifact, np.concatenate(tiny.xs))
    assert sqnr(tiny.ref, out) > 60
    assert set(qm.layer_precisions.values()) == {"fp32"}
    assert qm.artifact == qm.extras["fp32"]
    assert any("plain FP32 conversion" in n for n in qm.notes)


@needs_extra
@pytest.mark.parametrize("mode,min_db,weights", [("static", 20, "int8"), ("dynamic", 25, "int8"), ("fp16", 60, "float16")])
def test_each_mode_makes_a_tflite_litert_runs_close_to_torch(tiny, mode, min_db, weights):
    qm = quantize(tiny, mode)
    x = np.concatenate(tiny.xs)
    out = fresh_run(qm.artifact, x)
    assert sqnr(tiny.ref, out) > min_db, mode
    assert np.mean(tiny.ref.argmax(1) == out.argmax(1)) >= 0.9
    np.testing.assert_allclose(qm.runner(x), out, rtol=1e-4, atol=1e-4)  # the in-app runner is the file
    assert set(weight_dtypes(qm.artifact).values()) == {weights}
    sizes = tiny.engine.sizes(tiny.model, qm)
    assert sizes["quantized_bytes"] == len(qm.artifact) < sizes["original_bytes"]
    if mode == "static":
        from quantstudio.core.engines.tflite.runtime import read_facts

        counts = read_facts(qm.artifact).counts()
        assert counts["compute_int8"] == 3 and counts["compute_fp32"] == 0  # both convs and the fc
        assert set(qm.layer_precisions[n] for n in ("conv1", "conv2", "fc")) == {"int8"}
        assert ["conv1", "bn1", "relu1"] in qm.fused
        assert any("XNNPACK" in n for n in qm.notes)  # the doctor explains LiteRT's CPU path
    if mode == "fp16":
        assert set(qm.layer_precisions[n] for n in ("conv1", "conv2", "fc")) == {"fp16"}


@needs_extra
def test_per_layer_plan_leaves_the_named_layers_float_in_the_file(tiny):
    plan = PrecisionPlan()
    plan.set("conv2", Precision.FP32)
    plan.set("fc", Precision.FP32)  # the op writing the model's output: found by its weight's name
    qm = quantize(tiny, "static", plan)
    assert weight_dtypes(qm.artifact) == {"conv1": "int8", "conv2": "float32", "fc": "float32"}
    assert qm.layer_precisions["conv1"] == "int8"
    assert qm.layer_precisions["conv2"] == qm.layer_precisions["fc"] == "fp32"
    assert [r["algorithm_key"] for r in qm.extras["recipe"]].count("no_quantize") >= 2
    assert any("conv2" in r["regex"] for r in qm.extras["recipe"])
    out = fresh_run(qm.artifact, np.concatenate(tiny.xs))
    assert sqnr(tiny.ref, out) > 25  # fewer int8 layers: closer than all-INT8
    assert any("part of the model stayed float" in n for n in qm.notes)


@needs_extra
def test_int8_io_option_makes_integer_input_and_output_that_the_runner_scales(tiny):
    from quantstudio.core.engines.tflite.recipe import build_recipe, quantize_tflite
    from quantstudio.core.engines.tflite.runtime import TfliteRunner, read_facts

    fp32 = quantize(tiny, "static", PrecisionPlan(default=Precision.FP32)).artifact
    data, how = quantize_tflite(fp32, build_recipe("static", {}, int8_io=True), tiny.xs, NullContext(), 0, 1,
                                tiny.model.input_shape)
    facts = read_facts(data)
    assert facts.input_dtype == facts.output_dtype == "int8"
    assert "min/max over all 32" in how
    out = TfliteRunner(data)(np.concatenate(tiny.xs))
    assert sqnr(tiny.ref, out) > 20


@needs_extra
def test_runner_resizes_for_batches_and_gives_the_per_sample_outputs(tiny):
    qm = quantize(tiny, "static")
    x = np.concatenate(tiny.xs)[:8]
    batched = qm.runner(x)
    one_by_one = np.concatenate([qm.runner(x[i:i + 1]) for i in range(8)])
    assert batched.shape == (8, 5)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    ref = tiny.engine.reference_runner(tiny.model, qm)  # the FP32 .tflite: same runtime baseline
    assert sqnr(tiny.ref[:8], ref(x)) > 60


@needs_extra
def test_per_layer_error_names_the_weighted_layers(tiny):
    qm = quantize(tiny, "static")
    errors = tiny.engine.layer_error(tiny.model, qm, tiny.xs[:1])
    assert set(errors) == {"conv1", "conv2", "fc"}
    assert all(15 < v < 80 for v in errors.values()), errors
    fp16 = tiny.engine.layer_error(tiny.model, quantize(tiny, "fp16"), tiny.xs[:1])
    assert all(fp16[k] > errors[k] + 10 for k in errors)  # FP16 weights are far closer than INT8


@needs_extra
def test_cancel_is_honoured_after_conversion(tiny):
    ctx = RecordingContext(cancel_after=2)  # "reading the layer tree", "converting"
    with pytest.raises(Cancelled):
        quantize(tiny, "static", ctx=ctx)
    assert any("converting" in m for _, m in ctx.reports)


# --------------------------------------------------------------------------- export, CLI


@needs_extra
def test_export_writes_checks_and_leaves_the_old_file_on_failure(tiny, tmp_path, monkeypatch):
    from quantstudio.core.export import export_model

    qm = quantize(tiny, "static")
    target = tmp_path / "m.tflite"
    res = export_model(qm, target, samples=np.concatenate(tiny.xs)[:4])
    assert res.check.passed and res.format == "tflite" and "ai_edge_litert" in res.check.reloaded_with
    assert target.read_bytes() == qm.artifact
    target.write_bytes(b"earlier file")
    engine_cls = type(tiny.engine)
    monkeypatch.setattr(engine_cls, "reload", lambda self, qm, path, samples: (np.zeros((4, 5), np.float32), "x"))
    with pytest.raises(InputError, match="does not reproduce"):
        export_model(qm, target, samples=np.concatenate(tiny.xs)[:4])
    assert target.read_bytes() == b"earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


@needs_extra
def test_cli_quantize_engine_tflite_writes_a_file_that_reloads(tmp_path, capsys):
    from quantstudio.cli import main

    model_file = tmp_path / "tiny.pth"
    torch.save(bn_ready(tiny_net(), batches(2)).eval(), model_file)
    out = tmp_path / "model.tflite"
    assert main(["quantize", str(model_file), "--trust", "--input-shape", "1,3,32,32", "--data", "random",
                 "--engine", "tflite", "--calib-samples", "16", "--eval-samples", "16", "--no-benchmark",
                 "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["export"]["format"] == "tflite" and d["export"]["check"]["passed"]
    recipe = json.loads(Path(d["export"]["recipe"]).read_text())
    assert recipe["engine"] == "tflite" and "model.tflite" in recipe["exports"]
    y = fresh_run(out.read_bytes(), np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32))
    assert y.shape == (2, 5) and np.isfinite(y).all()


class _BakedBatch(torch.nn.Module):
    """Flattens with the traced batch size: torch.export bakes 1 into the file's reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.reshape(y.shape[0], -1))


@needs_extra
def test_runner_falls_back_to_one_sample_at_a_time_when_the_batch_is_baked_in():
    from quantstudio.core.engines.tflite.runtime import TfliteRunner

    torch.manual_seed(0)
    model = loaded(_BakedBatch())
    data = tfl_convert.convert_fp32(model)
    x = np.concatenate(batches(1, (6, 3, 32, 32)))
    runner = TfliteRunner(data)
    out = runner(x)
    assert out.shape == (6, 3) and runner._per_sample  # resizing could not give 6 rows
    np.testing.assert_allclose(out, model.forward_numpy(x), atol=1e-4)


@needs_extra
def test_pipeline_runs_the_tflite_side_by_side_with_the_original(tiny):
    from quantstudio.core.data import open_data
    from quantstudio.core.pipeline import run_quantize

    data = open_data("random", input_shape=tiny.model.input_shape, random_samples=24)
    ctx = RecordingContext()
    plan = PrecisionPlan()
    plan.parse_assignment("fc=fp32")
    result = run_quantize(tiny.model, data, None, plan, QuantConfig(engine="tflite", calib_samples=8), ctx,
                          eval_samples=16, batch_size=8, benchmark_runs=3, measure_memory=True)
    assert result.quantized_metrics.sqnr_db > 20
    assert set(result.layer_sqnr) == {"conv1", "conv2", "fc"}
    built = result.quantized.layer_precisions
    assert built["fc"] == "fp32" and built["conv1"] == "int8"
    assert len(result.latency_ms) == 3  # the original, the FP32 .tflite (same runtime) and the INT8 .tflite
    assert "original (tflite)" in result.latency_ms  # named by its runtime, not "onnxruntime"
    assert result.to_dict()["speedup_baseline"] == "original (tflite)"
    assert result.sizes["quantized_bytes"] < result.sizes["original_bytes"]
    assert any("peak memory" in n and ".tflite" in n for n in result.notes)
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

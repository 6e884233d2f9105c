"""The ONNX Runtime engine's reuse between auto-precision candidates (engines/ort/reuse.py).

A candidate built with the export, pre-processing and calibration ranges of an earlier one
must be the model it would be from scratch (same bytes); the search must use the reuse,
remove its folder when it ends (cancel included), and never serve another model from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantstudio.core.auto_precision import Budget, search
from quantstudio.core.engines.base import QuantConfig, get_engine
from quantstudio.core.engines.ort.reuse import OrtReuse
from quantstudio.core.errors import Cancelled
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.loading import LoadedModel
from quantstudio.core.plan import PrecisionPlan
from tests.core.test_auto_precision import NO_EQ, SHAPE, damaged_model, damaged_net, samples, top1


def _fp32_plan(*layers: str) -> PrecisionPlan:
    plan = PrecisionPlan()
    for name in layers:
        plan.set(name, "fp32")
    return plan


@pytest.mark.parametrize("calibration", ["minmax", "entropy"])
def test_a_candidate_built_from_reused_work_is_the_model_built_from_scratch(calibration):
    model = damaged_model()
    x, _ = samples(64, 3)
    calib = [x[:32].numpy(), x[32:].numpy()]
    eng = get_engine("onnxruntime")
    config = QuantConfig(engine="onnxruntime", calibration=calibration, **NO_EQ)
    with OrtReuse() as reuse:
        eng.quantize(model, PrecisionPlan(), config, calib, NullContext(), reuse=reuse)
        cached = eng.quantize(model, _fp32_plan("conv1", "conv2"), config, calib, NullContext(), reuse=reuse)
        # The second candidate exported, pre-processed and calibrated nothing.
        assert reuse.hits == {"prepare": 1, "pre_process": 1, "ranges": 1}
    fresh = eng.quantize(model, _fp32_plan("conv1", "conv2"), config, calib, NullContext())
    assert cached.artifact.SerializeToString() == fresh.artifact.SerializeToString()
    assert cached.layer_precisions == fresh.layer_precisions and cached.layer_precisions["conv2"] == "fp32"
    assert cached.notes == fresh.notes and any("exported to ONNX" in n for n in cached.notes)
    assert cached.extras["reference"].SerializeToString() == fresh.extras["reference"].SerializeToString()


def test_ranges_are_reused_per_calibration_method_and_never_for_another_model():
    model = damaged_model()
    other = LoadedModel(path=Path("other.pth"), kind="pickled_module", input_shape=SHAPE, module=damaged_net(10.0),
                        num_classes=4)
    x, _ = samples(64, 4)
    calib = [x.numpy()]
    eng = get_engine("onnxruntime")
    minmax = QuantConfig(engine="onnxruntime", calibration="minmax", **NO_EQ)
    percentile = QuantConfig(engine="onnxruntime", calibration="percentile", **NO_EQ)
    with OrtReuse() as reuse:
        eng.quantize(model, PrecisionPlan(), minmax, calib, NullContext(), reuse=reuse)
        eng.quantize(model, PrecisionPlan(), percentile, calib, NullContext(), reuse=reuse)
        assert reuse.hits == {"prepare": 1, "pre_process": 1, "ranges": 0}  # another method: calibrated again
        served = eng.quantize(other, PrecisionPlan(), minmax, calib, NullContext(), reuse=reuse)
        assert reuse.hits == {"prepare": 1, "pre_process": 1, "ranges": 0}  # another model: nothing reused
        folder = reuse._dir
        assert folder is not None and folder.is_dir()
    assert not folder.exists()  # closed with the block
    fresh = eng.quantize(other, PrecisionPlan(), minmax, calib, NullContext())
    assert served.artifact.SerializeToString() == fresh.artifact.SerializeToString()


class _Spy:
    """The ORT engine, keeping the reuse object the search asked for."""

    def __init__(self) -> None:
        self._engine = get_engine("onnxruntime")
        self.reuse: OrtReuse | None = None

    def search_reuse(self) -> OrtReuse:
        self.reuse = self._engine.search_reuse()
        return self.reuse

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_the_ort_search_reuses_work_between_candidates_and_cleans_up():
    """min-max fails on the damaged model, so FP32 layers are bisected: every candidate after
    the first reuses the export, pre-processing and min-max ranges; the chosen plan recovers."""
    model = damaged_model()
    x, y = samples(260, 11)
    calib = [x[:64].numpy()]
    spy = _Spy()
    found = search(model, model, PrecisionPlan(), QuantConfig(engine="onnxruntime", **NO_EQ), spy, calib,
                   x[64:].numpy(), y[64:].numpy(), Budget(max_drop=1.0), NullContext(), calibrations=("minmax",))
    n = len(found.record["candidates"])
    assert n >= 2 and spy.reuse is not None
    assert spy.reuse.hits == {"prepare": n - 1, "pre_process": n - 1, "ranges": n - 1}
    assert spy.reuse._dir is None  # closed: its folder is gone
    assert spy.reuse.helper_starts == 1  # one helper process ran every candidate's tools
    chosen = found.record["candidates"][found.record["chosen"] - 1]
    assert chosen["meets_budget"] and {"conv1", "conv2"} <= set(chosen["fp32_layers"])
    assert top1(found.quantized, x[64:].numpy(), y[64:].numpy()) >= 0.99


class _CancelAtCandidate2(RecordingContext):
    """Presses Cancel as the second candidate starts (one built from reused work)."""

    def report(self, fraction: float, message: str = "") -> None:
        super().report(fraction, message)
        if "candidate 2" in message:
            self.cancel()


def test_cancel_mid_search_on_ort_keeps_the_best_candidate_and_removes_the_reuse_folder():
    model = damaged_model()
    x, y = samples(200, 12)
    spy = _Spy()
    found = search(model, model, PrecisionPlan(), QuantConfig(engine="onnxruntime", **NO_EQ), spy, [x[:64].numpy()],
                   x[64:].numpy(), y[64:].numpy(), Budget(max_drop=1.0), _CancelAtCandidate2(),
                   calibrations=("minmax", "percentile"))
    assert found.record["cancelled"] and len(found.record["candidates"]) == 1
    assert spy.reuse is not None and spy.reuse._dir is None and spy.reuse.prepared is None
    assert np.asarray(found.quantized.forward_numpy(x[:4].numpy())).shape == (4, 4)


class _CancelAtCheck(RecordingContext):
    """Presses Cancel as the engine starts checking the quantized model (a job in the helper)."""

    def report(self, fraction: float, message: str = "") -> None:
        super().report(fraction, message)
        if message.startswith("checking the model"):
            self.cancel()


def test_a_cancelled_candidate_leaves_the_reuse_able_to_build_the_next_one_exactly():
    model = damaged_model()
    x, _ = samples(64, 5)
    calib = [x.numpy()]
    eng = get_engine("onnxruntime")
    config = QuantConfig(engine="onnxruntime", **NO_EQ)
    with OrtReuse() as reuse:
        eng.quantize(model, PrecisionPlan(), config, calib, NullContext(), reuse=reuse)
        with pytest.raises(Cancelled):
            eng.quantize(model, _fp32_plan("conv1"), config, calib, _CancelAtCheck(), reuse=reuse)
        again = eng.quantize(model, _fp32_plan("conv2"), config, calib, NullContext(), reuse=reuse)
        assert reuse.hits["ranges"] == 2
    fresh = eng.quantize(model, _fp32_plan("conv2"), config, calib, NullContext())
    assert again.artifact.SerializeToString() == fresh.artifact.SerializeToString()

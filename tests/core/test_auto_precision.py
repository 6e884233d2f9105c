"""Automatic mixed precision to an accuracy budget (issue 13), on a tiny damaged model.

The model: conv-BN-ReLU ×2, conv, pool, linear, trained here in a few seconds on a 4-class
task (which colour channel is bright) to 100 % top-1, then damaged without changing its
FP32 function: one channel of ``bn1`` ×1000 and ``conv2``'s input weights of that channel
÷1000 — the outlier-channel pattern of tests/benchmarks/outlier_models.py. With
equalization off, min-max (and percentile) INT8 collapses to ~25 % on both engines;
FP32 on ``conv2`` alone does not help (its input is still written INT8 by ``conv1``);
``conv2`` with its producer ``conv1`` recovers 100 %.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantstudio.core.auto_precision import Budget, held_out_split, search
from quantstudio.core.engines.base import QuantConfig, get_engine
from quantstudio.core.errors import InputError
from quantstudio.core.jobs import NullContext, RecordingContext
from quantstudio.core.loading import LoadedModel
from quantstudio.core.pipeline import run_quantize
from quantstudio.core.plan import PrecisionPlan
from quantstudio.core.results import CandidateTried, RunSummary

SHAPE = (1, 3, 16, 16)


class DamagedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc(self.flatten(self.pool(x)))


def samples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: channel 0, 1 or 2 brighter, or all darker; on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, *SHAPE[1:], generator=g)
    offset = torch.tensor([[1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5], [-1.0, -1.0, -1.0]]).reshape(4, 3, 1, 1)
    return x + offset[y], y


@functools.cache
def _trained() -> DamagedNet:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and no fight over a shared machine's cores
    try:
        torch.manual_seed(0)
        m = DamagedNet()
        opt = torch.optim.Adam(m.parameters(), 2e-2)
        for step in range(60):
            x, y = samples(32, 1000 + step)
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return m.eval()


def damaged_net(scale: float = 1000.0) -> DamagedNet:
    """The trained net with one outlier channel between conv1 and conv2 (FP32 function unchanged)."""
    m = copy.deepcopy(_trained())
    with torch.no_grad():
        c = int(m.conv2.weight.abs().sum(dim=(0, 2, 3)).argmax())  # the channel conv2 relies on most
        m.bn1.weight[c] *= scale
        m.bn1.bias[c] *= scale
        m.conv2.weight[:, c] /= scale
    return m


def damaged_model() -> LoadedModel:
    return LoadedModel(path=Path("damaged.pth"), kind="pickled_module", input_shape=SHAPE, module=damaged_net(),
                       num_classes=4)


def labeled_file(folder: Path, n: int = 400) -> Path:
    x, y = samples(n, 7)
    path = folder / "data.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def top1(qm, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(qm.forward_numpy(x)).argmax(1) == y))


NO_EQ = dict(equalize=False, calib_samples=64)


def test_damaged_model_is_the_defect_the_search_must_fix():
    """The premise of every test here: min-max INT8 collapses, FP32 on the consumer alone
    does not help, consumer + producer does (torch; ORT is checked in test_sensitivity)."""
    model = damaged_model()
    x, y = samples(200, 3)
    with torch.no_grad():
        assert float((model.module(x).argmax(1) == y).float().mean()) == 1.0
    calib = [x[:64].numpy()]
    eng = get_engine("torch")
    plain = eng.quantize(model, PrecisionPlan(), QuantConfig(engine="torch", **NO_EQ), calib, NullContext())
    plan = PrecisionPlan()
    plan.set("conv2", "fp32")
    consumer = eng.quantize(model, plan, QuantConfig(engine="torch", **NO_EQ), calib, NullContext())
    plan.set("conv1", "fp32")
    both = eng.quantize(model, plan, QuantConfig(engine="torch", **NO_EQ), calib, NullContext())
    xs, ys = x[64:].numpy(), y[64:].numpy()
    assert top1(plain, xs, ys) < 0.5 and top1(consumer, xs, ys) < 0.6 and top1(both, xs, ys) >= 0.99


def test_budget_needs_exactly_one_figure():
    with pytest.raises(InputError):
        Budget()
    with pytest.raises(InputError):
        Budget(max_drop=1, min_agreement=99)
    with pytest.raises(InputError, match="between 0 and 100"):
        Budget(max_drop=-1)
    assert Budget(max_drop=1).metric == "top1" and Budget(min_agreement=99).metric == "agreement"


def test_held_out_split_is_disjoint_from_calibration_and_evaluation():
    class Data:
        def __len__(self):
            return 300

    calib, evaluation = np.arange(0, 64), np.arange(64, 200)
    judge, ev, notes = held_out_split(Data(), calib, evaluation, n=80)
    assert len(judge) == 80 and not set(judge) & (set(calib) | set(evaluation)) and list(ev) == list(evaluation)
    assert not notes
    # Too little left over: some evaluation samples move over, and the notes say so.
    judge, ev, notes = held_out_split(Data(), calib, np.arange(64, 290), n=80)
    assert len(judge) >= 64 and not set(judge) & set(ev) and not set(judge) & set(calib) and notes


def test_fp32_layers_by_bisection_meet_the_budget_with_the_producer():
    """Calibration methods fail (min-max only here), so layers go FP32 in sensitivity order,
    each with the producer of its input: conv2 + conv1."""
    model = damaged_model()
    x, y = samples(260, 11)
    calib = [x[:64].numpy()]
    ctx = RecordingContext()
    found = search(model, model, PrecisionPlan(), QuantConfig(engine="torch", **NO_EQ), get_engine("torch"), calib,
                   x[64:].numpy(), y[64:].numpy(), Budget(max_drop=1.0), ctx, calibrations=("minmax",))
    rec = found.record
    chosen = rec["candidates"][rec["chosen"] - 1]
    assert chosen["meets_budget"] and set(chosen["fp32_layers"]) >= {"conv1", "conv2"}
    assert len(chosen["fp32_layers"]) <= 3, chosen
    assert rec["candidates"][0]["fp32_layers"] == [] and not rec["candidates"][0]["meets_budget"]
    assert rec["original_metric"] == 100.0 and rec["heldout_samples"] == 196
    # One event per candidate, the same figures as the record.
    events = [p for p in ctx.partials if isinstance(p, CandidateTried)]
    assert [e.index for e in events] == [c["index"] for c in rec["candidates"]]
    assert all(e.latency_ms and e.latency_ms > 0 for e in events)
    assert found.plan.precision_for("conv1").value == "fp32" and found.quantized.layer_precisions["conv2"] == "fp32"
    assert found.fp32_reasons["conv2"].startswith("auto precision: +")
    assert top1(found.quantized, x[64:].numpy(), y[64:].numpy()) >= 0.99
    assert any(c["on_front"] for c in rec["candidates"])


def test_run_with_a_budget_chooses_a_plan_and_the_run_measures_it(tmp_path):
    data = labeled_file(tmp_path)
    ctx = RecordingContext()
    result = run_quantize(damaged_model(), str(data), None, PrecisionPlan(), QuantConfig(engine="torch", **NO_EQ), ctx,
                          eval_samples=128, benchmark=False, budget=Budget(max_drop=1.0))
    s = json.loads(json.dumps(result.to_dict()))
    auto = s["auto_precision"]
    assert auto["budget"] == {"max_drop": 1.0, "min_agreement": None} and auto["metric"] == "top1"
    assert auto["heldout_samples"] == 400 - 64 - 128 and not auto["cancelled"]
    chosen = auto["candidates"][auto["chosen"] - 1]
    assert chosen["meets_budget"] and auto["candidates"][0]["label"] == "minmax"
    # The run's own evaluation (other samples) measures the chosen plan, and the result's
    # config and plan are the chosen ones (what the recipe writes).
    assert s["quantized"]["top1"] >= 0.99 and result.quantized_metrics.n == 128
    assert result.config.calibration == chosen["calibration"]
    for layer in chosen["fp32_layers"]:
        assert s["layer_precisions"][layer] == "fp32" and s["fp32_reasons"][layer].startswith("auto precision")
    assert RunSummary.from_dict(s).auto_precision["chosen"] == auto["chosen"]
    fractions = [f for f, _ in ctx.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_unlabeled_data_needs_an_agreement_budget(tmp_path):
    x, _ = samples(300, 5)
    np.save(tmp_path / "x.npy", x.numpy())
    with pytest.raises(InputError, match="labeled"):
        run_quantize(damaged_model(), str(tmp_path / "x.npy"), None, PrecisionPlan(),
                     QuantConfig(engine="torch", **NO_EQ), NullContext(), eval_samples=64, benchmark=False,
                     budget=Budget(max_drop=1.0))
    model = damaged_model()
    found = search(model, model, PrecisionPlan(), QuantConfig(engine="torch", **NO_EQ), get_engine("torch"),
                   [x[:64].numpy()], x[64:].numpy(), None, Budget(min_agreement=99.0), NullContext(),
                   calibrations=("minmax",))
    rec = found.record
    assert rec["metric"] == "agreement" and rec["original_metric"] == 100.0
    chosen = rec["candidates"][rec["chosen"] - 1]
    assert chosen["metric"] >= 99.0 and chosen["drop"] == pytest.approx(100.0 - chosen["metric"])


class CancelAfterCandidates(RecordingContext):
    """Cancels once ``n`` candidates were tried (as a user pressing Cancel mid-search)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def partial(self, payload) -> None:
        super().partial(payload)
        if isinstance(payload, CandidateTried) and payload.index >= self.n:
            self.cancel()


def test_cancel_during_the_search_keeps_the_best_plan_and_finishes_the_run(tmp_path):
    data = labeled_file(tmp_path)
    ctx = CancelAfterCandidates(1)
    result = run_quantize(damaged_model(), str(data), None, PrecisionPlan(), QuantConfig(engine="torch", **NO_EQ), ctx,
                          eval_samples=64, benchmark=False, budget=Budget(max_drop=1.0))
    auto = result.auto_precision
    assert auto["cancelled"] and len(auto["candidates"]) == 1 and auto["chosen"] == 1
    assert result.quantized_metrics is not None and result.quantized_metrics.n == 64  # the run went on
    assert any("no candidate met the budget" in w and "before the search was cancelled" in w for w in result.warnings)


def test_cli_auto_precision_prints_the_plan_and_its_recipe_replays_it_without_searching(tmp_path, capsys):
    from quantstudio.cli import main
    from quantstudio.core.recipe import Recipe

    model_file = tmp_path / "damaged.pth"
    torch.save(damaged_net(), model_file)
    data = labeled_file(tmp_path)
    common = [str(model_file), "--trust", "--input-shape", "1,3,16,16", "--data", str(data), "--engine", "torch",
              "--calib-samples", "64", "--eval-samples", "128", "--no-benchmark", "--no-equalize"]
    assert main(["quantize", *common, "--max-drop", "1", "--out", str(tmp_path / "x.pth")]) == 2
    assert "--auto-precision" in capsys.readouterr().err
    assert main(["quantize", *common, "--auto-precision", "--out", str(tmp_path / "x.pth")]) == 2
    assert "needs a budget" in capsys.readouterr().err

    assert main(["quantize", *common, "--auto-precision", "--max-drop", "1", "--out", str(tmp_path / "q.pth")]) == 0
    out = capsys.readouterr()
    assert "candidate 1: minmax" in out.err and "misses the budget" in out.err  # one line per candidate, as tried
    assert "auto precision (at most 1 pt top-1 drop" in out.out and "meets the budget" in out.out
    recipe = Recipe.load(tmp_path / "q.recipe.json")
    assert recipe.quant_config().calibration != "minmax"  # min-max collapses; the chosen method is written

    assert main(["quantize", *common, "--recipe", str(tmp_path / "q.recipe.json"), "--json",
                 "--out", str(tmp_path / "r.pth")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["auto_precision"] == {} and d["config"]["calibration"] == recipe.quant_config().calibration
    assert d["quantized"]["top1"] >= 0.99

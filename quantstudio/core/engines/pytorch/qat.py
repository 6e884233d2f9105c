"""Quantization-aware training of eager PyTorch models (torch.ao FX QAT), Qt-free.

One run: the plan's QConfigMapping with fake quantizers (FP32/FP16 layers get none, fusion
as in PTQ: :meth:`TorchEngine._prepare_fx`) → **calibrate** exactly as PTQ does (observers
on, fake quantization off: the training starts from the PTQ ranges, validated as "epoch
0") → **fine-tune** (Adam, cosine decay; cross-entropy + distillation with labels,
distillation from the FP32 model's logits without) → keep the **best epoch** on the
validation split, stop early when it stops improving → freeze and **convert**: the INT8
FX model for the ``.pth`` export (``convert_fx``, as PTQ), or a QDQ ONNX for ONNX Runtime
(the same fine-tuned weights and ranges; BN folded into the conv before it; each quantized
ReLU6 folded into the range of the conv output before it: ``qdq_onnx.py``).

Ranges during training (:data:`LEARNABLE_RANGES`, default False): activation ranges are
*moving averages* (a min-max observer in calibration, then an exponential moving average
of each batch's range, frozen after :data:`OBSERVER_FREEZE` of the steps), not learned
(LSQ: torch.ao's ``_LearnableFakeQuantize`` started from the min-max range). Chosen by
measurement (``tests/benchmarks/qat_bench.py``, RESULTS.md): on the digits ResNet-18 with
three x300 outlier channels (FP32 98.89 %, min-max PTQ 9.63 %), 2 epochs, torch engine,
540 held-out images: moving averages 96.67 % (lr 1.25e-4) and 97.41 % (lr 5e-4); learned
ranges 95.00 % and 96.67 % at the same rates, 96.85 % with per-range learning rates
proportional to the range (:data:`SCALE_LR`, kept for the learned option). Freezing the
ranges after half the steps and BN after three quarters (instead of 1/4 and 1/2) gave
97.78 % (torch) / 98.89 % (ONNX Runtime) at lr 5e-4, the best of the settings tried. Learned ranges
also cost more per step (a learnable fake-quant kernel with gradients for scale and zero
point). Weight ranges follow the current weights every step (per-channel symmetric
min-max; they are known exactly, nothing to learn).

BN statistics are frozen after :data:`BN_FREEZE` of the steps (running statistics from a
small folder are noisier than the model's own; the second half then trains with the
folded weights the INT8 model will have).

Cancel: the training loop checks for cancel between batches; a cancel there ends the
training, keeps the best epoch so far, and the run finishes (``training["cancelled"]``).
"""

from __future__ import annotations

import copy
import functools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from quantstudio.core.engines.base import QuantConfig, QuantizedModel
from quantstudio.core.engines.pytorch.cancel import cancel_points
from quantstudio.core.engines.pytorch.runner import _as_array, quiet, release_torch_ao_caches
from quantstudio.core.errors import Cancelled, InputError
from quantstudio.core.jobs import JobContext
from quantstudio.core.plan import Precision, PrecisionPlan
from quantstudio.core.qat import CancelGuard, TrainingData
from quantstudio.core.results import TrainingEpoch, TrainingStep

LEARNABLE_RANGES = False  # moving-average ranges: measured better, see the module docstring
BN_FREEZE = 0.75  # share of the training steps after which BN running statistics are frozen (measured, RESULTS.md)
OBSERVER_FREEZE = 0.5  # moving-average ranges: share of the steps after which they are frozen (measured)
SCALE_LR = 0.05  # learned ranges: Adam step as a fraction of each scale (see _param_groups)
PATIENCE = 2  # epochs without a better validation metric before stopping early
LABEL_DISTILL_WEIGHT = 1.0  # with labels: cross-entropy + this × distillation from the FP32 model
STEP_EVENTS_PER_S = 4.0
CACHE_BYTES = 1 << 30  # decoded training samples kept in memory up to this size (else read per batch)
ACTIVATION_OUT = "activation_post_process"


@dataclass
class QatOutcome:
    quantized: QuantizedModel
    training: dict[str, Any]


# --------------------------------------------------------------------------- fake quantizers


def qat_qconfig(config: QuantConfig, *, reduce_range: bool, learnable: bool | None = None):
    """Fake-quantize QConfig: uint8 activations (0..127 when ``reduce_range``), int8 weights.

    Plain ``FakeQuantize`` / ``_LearnableFakeQuantize``, not torch's default fused one:
    the fused observer does not export to ONNX."""
    import torch
    from torch.ao.quantization import FakeQuantize, QConfig
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
    from torch.ao.quantization.observer import (MinMaxObserver, MovingAverageMinMaxObserver,
                                                MovingAveragePerChannelMinMaxObserver)

    learnable = LEARNABLE_RANGES if learnable is None else learnable
    qmax = 127 if reduce_range else 255
    if config.symmetric_activations:
        act_scheme = torch.per_tensor_symmetric
    else:
        act_scheme = torch.per_tensor_affine
    if learnable:
        activation = _LearnableFakeQuantize.with_args(
            observer=_calibrating_observer(MinMaxObserver), quant_min=0, quant_max=qmax, dtype=torch.quint8,
            qscheme=act_scheme, use_grad_scaling=True)
    else:
        activation = FakeQuantize.with_args(
            observer=_calibrating_observer(MovingAverageMinMaxObserver), quant_min=0, quant_max=qmax,
            dtype=torch.quint8, qscheme=act_scheme, averaging_constant=0.01)
    # averaging_constant=1: the range of the weights as they are now (exact, every step).
    if config.per_channel:
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, averaging_constant=1.0)
    else:
        weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, averaging_constant=1.0)
    return QConfig(activation=activation, weight=weight)


_OBSERVER_CLASSES: dict[type, type] = {}


def _calibrating_observer(base: type) -> type:
    """``base`` that keeps plain min/max while ``calibrating`` (the PTQ range), then ``base``'s rule.

    Why: the moving-average observer would start training from an average of per-batch
    ranges, not from the min-max PTQ result the training must start from."""
    if base in _OBSERVER_CLASSES:
        return _OBSERVER_CLASSES[base]
    import torch

    class Calibrating(base):  # type: ignore[misc, valid-type]
        calibrating = True

        def forward(self, x_orig):
            if not self.calibrating or x_orig.numel() == 0:
                return super().forward(x_orig)
            x = x_orig.detach().to(self.min_val.dtype)
            lo, hi = torch.aminmax(x)
            if self.min_val.numel() == 0 or torch.isinf(self.min_val).all():
                self.min_val.resize_(lo.shape).copy_(lo)
                self.max_val.resize_(hi.shape).copy_(hi)
            else:
                self.min_val.copy_(torch.minimum(self.min_val, lo))
                self.max_val.copy_(torch.maximum(self.max_val, hi))
            return x_orig

    Calibrating.__name__ = base.__name__
    Calibrating.__qualname__ = base.__qualname__
    _OBSERVER_CLASSES[base] = Calibrating
    return Calibrating


def _activation_quantizers(model) -> list:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return [m for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase) and not n.endswith("weight_fake_quant")]


def _weight_quantizers(model) -> list:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return [m for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase) and n.endswith("weight_fake_quant")]


def _set_phase(model, phase: str) -> None:
    """Quantizer states: "calibrate" (observe, no fake quant), "train", "frozen"."""
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    for fq in _activation_quantizers(model):
        obs = getattr(fq, "activation_post_process", None)
        if obs is not None and hasattr(type(obs), "calibrating"):
            obs.calibrating = phase == "calibrate"
        if isinstance(fq, _LearnableFakeQuantize):
            if phase == "calibrate":
                fq.enable_static_observation()
            elif phase == "train":
                fq.enable_param_learning()
            else:
                fq.toggle_observer_update(False).toggle_fake_quant(True).toggle_qparam_learning(False)
        else:
            fq.enable_fake_quant(phase != "calibrate")
            fq.enable_observer(phase != "frozen")
    for fq in _weight_quantizers(model):
        fq.enable_fake_quant(phase != "calibrate")
        fq.enable_observer(True)


def _freeze_activation_observers(model) -> None:
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    for fq in _activation_quantizers(model):
        if not isinstance(fq, _LearnableFakeQuantize):
            fq.enable_observer(False)


def _freeze_bn(model) -> None:
    import torch
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats

    model.apply(freeze_bn_stats)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


# --------------------------------------------------------------------------- data


class _Samples:
    """Decoded samples of one index set, with labels and the FP32 teacher's logits.

    Kept in memory when they fit in :data:`CACHE_BYTES` (read once, the teacher run
    once); otherwise read and run per batch."""

    def __init__(self, data: Any, indices: np.ndarray, teacher, ctx: JobContext, what: str, lo: float, hi: float) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.teacher = teacher
        per = int(np.prod(data.read(self.indices[:1])[0].shape[1:])) * 4 if len(self.indices) else 0
        self.cached = per * len(self.indices) <= CACHE_BYTES
        self.x: Any = None
        self.y: Any = None
        self.t: Any = None
        if self.cached:
            xs: list[np.ndarray] = []
            ts: list[np.ndarray] = []
            kept: list[np.ndarray] = []
            step = 64
            for s in range(0, len(self.indices), step):
                ctx.check_cancelled()
                x, k, _ = data.read(self.indices[s:s + step])
                xs.append(x)
                kept.append(k)
                ts.append(self._teach(x))
                ctx.report(lo + (hi - lo) * min(1.0, (s + step) / len(self.indices)), f"reading {what} samples")
            self.x = np.concatenate(xs) if xs else np.zeros((0,), np.float32)
            self.indices = np.concatenate(kept).astype(np.int64) if kept else self.indices[:0]
            self.t = np.concatenate(ts) if ts else None
            self.y = self._labels(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _teach(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.teacher(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().numpy()

    def _labels(self, indices: np.ndarray) -> np.ndarray | None:
        targets = getattr(self.data, "targets", None)
        return None if targets is None else np.asarray(targets)[indices].astype(np.int64)

    def batch(self, positions: np.ndarray):
        """(x, y or None, teacher logits) as tensors for the given positions."""
        import torch

        if self.cached:
            x, y, t = self.x[positions], (self.y[positions] if self.y is not None else None), self.t[positions]
        else:
            x, kept, _ = self.data.read(self.indices[positions])
            y = self._labels(kept)
            t = self._teach(x)
        return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                torch.from_numpy(y) if y is not None else None, torch.from_numpy(t))


# --------------------------------------------------------------------------- memory


class _PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                import os

                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        rss = self._rss()
        if rss is not None:
            self.peak = max(self.peak or 0, rss)

    def __enter__(self) -> "_PeakRss":
        self._sample()
        if self.peak is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


# --------------------------------------------------------------------------- training


def train_qat(engine: Any, model: Any, plan: PrecisionPlan, config: QuantConfig, calib_batches: Iterable[Any],
              training: TrainingData, ctx: JobContext, *, target: str) -> QatOutcome:
    """Calibrate, fine-tune and convert ``model`` for ``target`` ("torch" → INT8 FX model,
    "onnxruntime" → QDQ ONNX). ``engine``: the :class:`TorchEngine` (its prepare/convert)."""
    import torch

    from quantstudio.core.engines.ort.runtime import cpu_has_vnni

    guard = CancelGuard(ctx)
    tree, requested, backend, notes = engine._begin(model, plan, config, guard)
    # Activation range: torch's x86 kernels want 7-bit activations (as PTQ); ONNX Runtime's
    # U8S8 path wants 8 bits, or 7 on CPUs without VNNI (16-bit accumulation, see the ORT engine).
    reduce_range = backend == "x86" if target == "torch" else not cpu_has_vnni()
    qconfig = qat_qconfig(config, reduce_range=reduce_range)
    if target != "torch":  # the torch backend says nothing about the ONNX Runtime model
        notes = [n for n in notes if not n.startswith("backend ")]
    notes.extend(training.notes)
    started = time.perf_counter()
    try:
        with quiet(), torch.inference_mode(False), cancel_points(guard):
            torch.manual_seed(training.seed)
            traced, prepared, effective, example = engine._prepare_fx(model, tree, requested, config, backend, guard,
                                                                      notes, qconfig=qconfig)
            _calibrate(prepared, calib_batches, guard)
            teacher = copy.deepcopy(model.module).eval()
            cpu0 = time.process_time()
            with _PeakRss() as peak:
                result = _fit(prepared, teacher, training, guard)
            # CPU seconds of the training: on a shared machine wall time says more about the neighbours.
            result["cpu_seconds"] = round(time.process_time() - cpu0, 1)
            if peak.peak is not None:
                result["peak_memory_bytes"] = int(peak.peak)
            result["seconds"] = round(time.perf_counter() - started, 2)
            guard.partial({"type": "stage", "name": "convert"})
            guard.report(0.95, "converting the fine-tuned model")
            frozen = freeze_for_export(prepared)
            if result["cancelled"]:
                notes.append(f"QAT cancelled: the best epoch so far ({result['best_epoch']}) was kept")
            if result["stopped_early"]:
                notes.append(f"QAT stopped early: no better validation {result['metric']} for {PATIENCE} epochs")
            with torch.no_grad():
                if target == "torch":
                    qm = engine._convert_fx(model, tree, config, backend, traced, copy.deepcopy(frozen), effective,
                                            example, guard, notes)
                else:
                    qm = _onnx_result(model, frozen, effective, example, config, notes)
    finally:
        release_torch_ao_caches()
    qm.notes = notes
    guard.report(1.0, "fine-tuned and converted")
    return QatOutcome(qm, result)


def _calibrate(prepared, calib_batches: Iterable[Any], ctx: JobContext) -> None:
    import torch

    ctx.partial({"type": "stage", "name": "calibrate"})
    prepared.eval()
    _set_phase(prepared, "calibrate")
    total = len(calib_batches) if hasattr(calib_batches, "__len__") else None  # type: ignore[arg-type]
    n = 0
    with torch.no_grad():
        for batch in calib_batches:
            ctx.check_cancelled()
            prepared(torch.from_numpy(_as_array(batch)))
            n += 1
            ctx.report(0.03 + 0.04 * (n / total if total else 1 - 1 / (n + 1)), f"calibrating: batch {n}" + (f"/{total}" if total else ""))
    if n == 0:
        raise InputError("there is no calibration data", hint="Choose data with at least one sample.")


def _loss(out, y, t, signal: str):
    import torch.nn.functional as F

    distill = F.kl_div(F.log_softmax(out, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    if signal == "labels" and y is not None:
        return F.cross_entropy(out, y) + LABEL_DISTILL_WEIGHT * distill
    return distill


def _param_groups(prepared, lr: float) -> list[dict[str, Any]]:
    """Adam groups: the weights at ``lr``; each learned range scale at :data:`SCALE_LR` of its own size.

    Why: Adam moves a parameter by about its learning rate per step whatever its size, so
    one absolute rate either freezes a large range (an outlier channel's: 300x the
    others) or shakes a small one; a rate proportional to the scale moves every range by
    the same fraction per step, as learning its logarithm would."""
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    special: set[int] = set()
    groups: list[dict[str, Any]] = []
    for fq in _activation_quantizers(prepared):
        if isinstance(fq, _LearnableFakeQuantize):
            special.update({id(fq.scale), id(fq.zero_point)})
            groups.append({"params": [fq.scale], "lr": SCALE_LR * float(fq.scale.detach().abs().max()), "scale": True})
            groups.append({"params": [fq.zero_point], "lr": lr})
    weights = [p for p in prepared.parameters() if p.requires_grad and id(p) not in special]
    return [{"params": weights, "lr": lr}, *groups]


def _set_learning_rates(opt, lr: float, factor: float) -> None:
    """Cosine decay (``factor``); each learned scale's rate follows its *current* size, so its
    Adam steps are multiplicative (log-space) and a range can shrink many-fold in a few epochs."""
    for group in opt.param_groups:
        if group.get("scale"):
            group["lr"] = SCALE_LR * factor * float(group["params"][0].detach().abs().max())
        else:
            group["lr"] = lr * factor


def _validate(prepared, val: _Samples, signal: str, batch_size: int) -> float:
    """% top-1 (labels) or % agreement with the FP32 model (distill) of the fake-quantized model."""
    import torch

    prepared.eval()
    right = n = 0
    with torch.no_grad():
        for s in range(0, len(val), batch_size):
            x, y, t = val.batch(np.arange(s, min(s + batch_size, len(val))))
            out = prepared(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            want = y if signal == "labels" and y is not None else t.argmax(1)
            right += int((out.argmax(1) == want).sum())
            n += len(x)
    return 100.0 * right / max(n, 1)


def _fit(prepared, teacher, training: TrainingData, ctx: CancelGuard) -> dict[str, Any]:
    """The training loop; returns ``RunSummary.training`` (without seconds). Leaves the best epoch in ``prepared``."""
    import torch

    signal = training.signal
    metric = "top1" if signal == "labels" else "agreement"
    ctx.partial({"type": "stage", "name": "train"})
    train = _Samples(training.source, training.train, teacher, ctx, "training", 0.07, 0.11)
    val = _Samples(training.source, training.validation, teacher, ctx, "validation", 0.11, 0.12)
    if signal == "labels" and train.y is not None:
        outputs = int(train.t.shape[1]) if train.t is not None and train.t.ndim == 2 else None
        if outputs is not None and train.y.size and int(train.y.max()) >= outputs:
            raise InputError(f"the data has class {int(train.y.max())} but the model has {outputs} outputs",
                             path=getattr(training.source, "path", None),
                             hint="Use data whose classes match the model's outputs, or --qat-signal distill.")
    bs = training.batch_size
    epochs = training.epochs
    steps = max(1, math.ceil(len(train) / bs))
    total = steps * epochs
    _set_phase(prepared, "train")
    opt = torch.optim.Adam(_param_groups(prepared, training.lr), lr=training.lr)
    gen = torch.Generator().manual_seed(training.seed)
    ptq = _validate(prepared, val, signal, bs)
    history: list[dict[str, Any]] = [{"epoch": 0, "train_loss": None, "val_metric": round(ptq, 4)}]
    best_metric, best_epoch, best_state = ptq, 0, copy.deepcopy(prepared.state_dict())
    ctx.partial(TrainingEpoch(0, epochs, None, ptq, metric, 0))
    cancelled = stopped_early = False
    bn_frozen = obs_frozen = False
    step = 0
    last_event = 0.0
    span = (0.12, 0.95)
    for epoch in range(1, epochs + 1):
        prepared.train()
        if bn_frozen:
            _freeze_bn(prepared)
        order = torch.randperm(len(train), generator=gen).numpy()
        losses: list[float] = []
        try:
            for i in range(steps):
                ctx.check_cancelled()
                x, y, t = train.batch(np.sort(order[i * bs:(i + 1) * bs]))
                with torch.enable_grad():
                    out = prepared(x)
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    loss = _loss(out, y, t, signal)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                step += 1
                _set_learning_rates(opt, training.lr, 0.5 * (1 + math.cos(math.pi * step / total)))
                losses.append(float(loss.detach()))
                if not obs_frozen and step >= OBSERVER_FREEZE * total:
                    _freeze_activation_observers(prepared)
                    obs_frozen = True
                if not bn_frozen and step >= BN_FREEZE * total:
                    _freeze_bn(prepared)
                    bn_frozen = True
                now = time.monotonic()
                ctx.report(span[0] + (span[1] - span[0]) * step / total, f"fine-tuning: epoch {epoch}/{epochs}, batch {i + 1}/{steps}")
                if now - last_event >= 1.0 / STEP_EVENTS_PER_S or i == steps - 1:
                    last_event = now
                    ctx.partial(TrainingStep(epoch, epochs, i + 1, steps, losses[-1]))
        except Cancelled:
            ctx.consume()
            cancelled = True
            break
        value = _validate(prepared, val, signal, bs)
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        history.append({"epoch": epoch, "train_loss": round(mean_loss, 6), "val_metric": round(value, 4)})
        if value > best_metric:
            best_metric, best_epoch, best_state = value, epoch, copy.deepcopy(prepared.state_dict())
        ctx.partial(TrainingEpoch(epoch, epochs, mean_loss, value, metric, best_epoch))
        if epoch - best_epoch >= PATIENCE and epoch < epochs:
            stopped_early = True
            break
    prepared.load_state_dict(best_state)
    _freeze_bn(prepared)
    _set_phase(prepared, "frozen")
    prepared.eval()
    return {"settings": training.settings(), "history": history, "metric": metric, "best_epoch": best_epoch,
            "stopped_early": stopped_early, "cancelled": cancelled, "ptq_val_metric": round(ptq, 4),
            "best_val_metric": round(best_metric, 4), "seconds": 0.0, "peak_memory_bytes": None}


# --------------------------------------------------------------------------- freezing and export


def _frozen_quantizer(fq):
    """A plain FakeQuantize holding ``fq``'s current (learned) scale and zero point, fixed.

    ``calculate_qparams`` returns those, so ``convert_fx`` builds the INT8 model with them,
    and the ONNX exporter writes them as QuantizeLinear/DequantizeLinear constants."""
    import torch
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
    from torch.ao.quantization.observer import MinMaxObserver

    if isinstance(fq, _LearnableFakeQuantize):
        scale, zero_point = fq.calculate_qparams()
    else:
        scale, zero_point = fq.scale.detach().clone(), fq.zero_point.detach().clone()
    frozen = _fixed_class()(observer=MinMaxObserver, quant_min=fq.quant_min, quant_max=fq.quant_max,
                                dtype=fq.dtype, qscheme=fq.qscheme)
    frozen.scale = scale.detach().float().reshape(1).clone()
    frozen.zero_point = zero_point.detach().to(torch.int32).reshape(1).clone()
    frozen.disable_observer()
    frozen.enable_fake_quant()
    return frozen


@functools.cache
def _fixed_class() -> type:
    from torch.ao.quantization import FakeQuantize

    class FixedFakeQuantize(FakeQuantize):
        """FakeQuantize with fixed qparams (its observer is off): what training left."""

        def calculate_qparams(self):  # type: ignore[override]
            return self.scale, self.zero_point

    return FixedFakeQuantize


def _set_module(root, name: str, module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, module)


def freeze_for_export(prepared):
    """A copy of the trained model with BN folded into its conv and every range fixed.

    Conv+BN(+ReLU) QAT modules become conv(+ReLU) QAT modules whose weights have the BN
    folded in: with BN frozen, in eval mode, the same function (the conv+BN module
    fake-quantizes exactly this folded weight). One model then serves both exports."""
    import torch
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat

    model = copy.deepcopy(prepared).eval()
    swaps = {nniqat.ConvBn1d: nnqat.Conv1d, nniqat.ConvBn2d: nnqat.Conv2d, nniqat.ConvBn3d: nnqat.Conv3d,
             nniqat.ConvBnReLU1d: nniqat.ConvReLU1d, nniqat.ConvBnReLU2d: nniqat.ConvReLU2d,
             nniqat.ConvBnReLU3d: nniqat.ConvReLU3d}
    for name, mod in list(model.named_modules()):
        new_cls = swaps.get(type(mod))
        if new_cls is None:
            continue
        float_mod = mod.to_float()  # BN folded into the conv's weight and bias
        float_mod.qconfig = mod.qconfig
        if isinstance(float_mod, (nni.ConvReLU1d, nni.ConvReLU2d, nni.ConvReLU3d)):
            float_mod[0].qconfig = mod.qconfig
        new = new_cls.from_float(float_mod)
        new.eval()
        _set_module(model, name, new)
    frozen: dict[int, Any] = {}  # one quantizer may sit under several names: it stays shared
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if name.endswith("weight_fake_quant") or not _is_activation_quantizer(mod):
            continue
        if id(mod) not in frozen:
            frozen[id(mod)] = _frozen_quantizer(mod)
        _set_module(model, name, frozen[id(mod)])
    # Weight ranges from the final (folded) weights, then fixed.
    with torch.no_grad():
        for mod in model.modules():
            fq = getattr(mod, "weight_fake_quant", None)
            if fq is not None and getattr(mod, "weight", None) is not None:
                fq.enable_observer(True)
                fq(mod.weight)
                fq.disable_observer()
    return model


def _is_activation_quantizer(mod) -> bool:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return isinstance(mod, FakeQuantizeBase)


def _onnx_result(model: Any, frozen, effective: dict[str, Precision], example: tuple, config: QuantConfig,
                 notes: list[str]) -> QuantizedModel:
    """The ONNX Runtime form of the fine-tuned model: QDQ ONNX, its FP32 reference, a session."""
    from quantstudio.core.engines.ort.export import torch_to_onnx
    from quantstudio.core.engines.ort.runtime import OrtRunner, make_session
    from quantstudio.core.engines.pytorch.qdq_onnx import qdq_onnx

    quantized = qdq_onnx(frozen, example, fold_clips=not config.symmetric_activations)
    reference = torch_to_onnx(model)
    try:
        session = make_session(quantized)
    except Exception as exc:  # noqa: BLE001
        raise InputError("ONNX Runtime cannot run the fine-tuned model", path=model.path,
                         hint="Keep the layers named in the details in FP32, or use the PyTorch engine.",
                         details=str(exc)[-4000:]) from exc
    if any(p is Precision.FP16 for p in effective.values()):
        notes.append("FP16 layers stay FP32 in the fine-tuned ONNX model")
    notes.append("QDQ INT8 ONNX from the fine-tuned PyTorch model (weights and learned ranges), activations uint8, weights int8")
    precisions = {k: (Precision.FP32 if v is Precision.FP16 else v).value for k, v in effective.items()}
    return QuantizedModel(engine="onnxruntime", config=config, runner=OrtRunner(session), layer_precisions=precisions,
                          notes=notes, artifact=quantized, input_shape=tuple(model.input_shape),
                          extras={"reference": reference, "node_layers": {}})

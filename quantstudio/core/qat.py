"""Quantization-aware training (QAT), the engine-independent part: which samples train and
validate, which signal trains, the default learning rate, the cost estimate, and the
cancel guard that lets a cancelled fine-tune still finish the run.

The training itself is an engine's (``quantize_aware``; today the PyTorch engine's
:mod:`quantstudio.core.engines.pytorch.qat`, which the ONNX Runtime engine delegates to for
PyTorch sources). Qt-free and torch-free at import.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantstudio.core.errors import InputError
from quantstudio.core.jobs import JobContext

# Validation share of the training pool: enough samples that one image is a small step of
# the metric, few enough that training keeps most of a small folder.
VALIDATION_FRACTION = 0.15
MIN_VALIDATION = 16
MAX_VALIDATION = 500
MIN_TRAINING = 8
ONNX_SOURCE_REASON = "QAT needs the PyTorch model: open the .pth, not the .onnx"
NOT_EAGER_REASON = ("QAT needs the model's Python code (a state_dict or a whole saved model); "
                    "a {what} cannot be fine-tuned")
# Adam's learning rate for fine-tuning at batch 256, scaled linearly with the batch size
# (see auto_lr): 5e-4 at the default batch of 32. Measured on the outlier-damaged digits
# ResNet-18, 2 epochs, moving-average ranges (tests/benchmarks/qat_bench.py, RESULTS.md):
# 1.25e-4 → 96.67 %, 5e-4 → 97.41 %, 1e-3 → worse on validation (95.8 % vs 97.4 %) — too
# large a rate shakes the model off the PTQ start in the first epoch.
BASE_LR_AT_256 = 4e-3
# A QAT step (fake quantization on every weight and activation, the FP32 teacher's forward)
# against a plain float training step of the same model; measured with qat_bench.py.
QAT_STEP_OVERHEAD = 2.0


@dataclass
class TrainingData:
    """What a QAT run trains on and how: samples of ``source`` (disjoint from evaluation)."""

    source: Any  # a DataSource
    train: np.ndarray
    validation: np.ndarray
    signal: str  # "labels" | "distill"
    epochs: int
    lr: float
    batch_size: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """The settings part of ``RunSummary.training``."""
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "signal": self.signal,
                "train_samples": int(len(self.train)), "val_samples": int(len(self.validation)), "seed": self.seed}


def auto_lr(batch_size: int) -> float:
    """Adam learning rate for a short fine-tune: ``BASE_LR_AT_256 × batch / 256`` (linear scaling)."""
    return BASE_LR_AT_256 * max(int(batch_size), 1) / 256.0


def resolve_signal(requested: str, data: Any) -> str:
    """"labels" or "distill": auto means labels when the data has classes."""
    labeled = bool(getattr(data, "labeled", False)) and not getattr(data, "is_random", False)
    if requested == "labels" and not labeled:
        raise InputError(
            "QAT with labels needs labeled data (one sub-folder per class)",
            path=getattr(data, "path", None),
            hint="Use a folder with class sub-folders, or train by distillation (--qat-signal distill).",
        )
    if requested == "auto":
        return "labels" if labeled else "distill"
    return requested


def qat_unsupported_reason(model: Any) -> str | None:
    """Why ``model`` (a LoadedModel) cannot be fine-tuned, or None when it can (any engine)."""
    if getattr(model, "framework", None) == "onnx" or getattr(model, "kind", None) == "onnx":
        return ONNX_SOURCE_REASON
    if not getattr(model, "is_eager", False):
        return NOT_EAGER_REASON.format(what=getattr(model, "kind_label", "model of this kind"))
    return None


def check_qat_config(config: Any, model: Any, engine: Any) -> None:
    """InputError when ``config.qat`` cannot run with this model, mode or engine."""
    if config.mode != "static":
        raise InputError(f"QAT fine-tunes static INT8, not mode '{config.mode}'", hint="Use --mode static with --qat.")
    if config.qat_epochs < 1:
        raise InputError(f"QAT needs at least one epoch, not {config.qat_epochs}", hint="Give --epochs 1 or more.")
    if config.qat_batch_size < 1:
        raise InputError(f"the QAT batch size must be positive, not {config.qat_batch_size}", hint="Give --qat-batch-size 1 or more.")
    if not (config.qat_lr >= 0 and math.isfinite(config.qat_lr)):
        raise InputError(f"the QAT learning rate must be 0 (automatic) or positive, not {config.qat_lr}", hint="Give --lr 0.0001, or leave it out.")
    reason = qat_unsupported_reason(model)
    if reason is None and not hasattr(engine, "quantize_aware"):
        reason = f"the {getattr(engine, 'label', engine)} engine has no quantization-aware training"
    if reason is not None:
        raise InputError(reason, path=getattr(model, "path", None),
                         hint="Open the PyTorch model (.pth) and use --engine torch or onnxruntime, or quantize without --qat.")


def training_data(config: Any, data: Any, evaluation: np.ndarray, separate_eval: bool) -> TrainingData:
    """Training and validation samples of ``data``: every sample not evaluated on, split by ``config.seed``.

    ``evaluation``: the indices of ``data`` the run evaluates on (none when the evaluation
    data is a separate source, ``separate_eval``). The validation part is stratified by class
    when labeled; calibration samples may be trained on (they are not evaluated on).
    """
    from quantstudio.core.data.splits import _stratified_choice

    pool = np.arange(len(data), dtype=np.int64)
    if not separate_eval and len(evaluation):
        pool = np.setdiff1d(pool, np.asarray(evaluation, dtype=np.int64), assume_unique=True)
    if len(pool) < MIN_TRAINING + 1:
        raise InputError(
            f"only {len(pool)} samples are left for QAT after holding back {len(evaluation)} for evaluation",
            path=getattr(data, "path", None),
            hint="Use more images, fewer --eval-samples, or a separate --eval-data folder.",
        )
    n_val = int(min(MAX_VALIDATION, max(MIN_VALIDATION, round(VALIDATION_FRACTION * len(pool)))))
    n_val = min(n_val, len(pool) - MIN_TRAINING)
    rng = np.random.default_rng(config.seed + 7919)  # not the calibration/evaluation draw
    targets = getattr(data, "targets", None)
    validation = _stratified_choice(pool, targets, n_val, rng)
    train = np.setdiff1d(pool, validation, assume_unique=True)
    signal = resolve_signal(config.qat_signal, data)
    lr = float(config.qat_lr) if config.qat_lr > 0 else auto_lr(config.qat_batch_size)
    notes = [f"QAT: {len(train)} training and {len(validation)} validation samples (disjoint from the evaluation samples), "
             f"{'cross-entropy on the labels + distillation' if signal == 'labels' else 'distillation from the FP32 model (no labels needed)'}, "
             f"{config.qat_epochs} epoch(s), batch {config.qat_batch_size}, Adam lr {lr:.3g}{' (automatic)' if config.qat_lr <= 0 else ''}"]
    return TrainingData(source=data, train=train, validation=validation, signal=signal, epochs=int(config.qat_epochs),
                        lr=lr, batch_size=int(config.qat_batch_size), seed=int(config.seed), notes=notes)


class CancelGuard:
    """A job context whose cancel, once caught by the training loop, no longer stops the run.

    Why: cancelling a fine-tune keeps the best epoch so far; the rest of the run (convert,
    evaluate, export check) must then finish although the caller's cancel flag stays set.
    ``consume()`` is called where the training loop catches :class:`Cancelled`.
    """

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.consumed = False

    def report(self, fraction: float, message: str = "") -> None:
        self.ctx.report(fraction, message)

    def partial(self, payload: Any) -> None:
        self.ctx.partial(payload)

    def check_cancelled(self) -> None:
        if not self.consumed:
            self.ctx.check_cancelled()

    def consume(self) -> None:
        self.consumed = True


def estimate_qat(model: Any, input_shape: tuple[int, ...] | list[int] | None, train_samples: int, epochs: int,
                 batch_size: int) -> tuple[float, int]:
    """Rough (seconds, bytes) a QAT run will take, measured by timing two float training steps.

    ``model``: a LoadedModel (or a torch module). Seconds: the measured float step × the QAT
    overhead (:data:`QAT_STEP_OVERHEAD`) × steps, plus validation; bytes: parameters ×
    (weights, gradients, two Adam moments, the FP32 teacher, the best-epoch copy) plus the
    activations a training step keeps for its backward pass (measured with forward hooks),
    ×2 for the fake-quantized copies. Runs torch: call it from a worker, not a GUI slot.
    """
    import copy

    import torch

    module = getattr(model, "module", model)
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if len(shape) < 2:
        raise InputError("the model's input shape is unknown", hint="Give the input shape (e.g. 1,3,224,224).")
    probe_batch = max(1, min(int(batch_size), 8))
    net = copy.deepcopy(module).train()
    activation_bytes = 0

    def hook(_mod, _args, out):
        nonlocal activation_bytes
        if isinstance(out, torch.Tensor):
            activation_bytes += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    x = torch.randn((probe_batch, *shape[1:]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)
    times = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for i in range(3):
                t0 = time.perf_counter()
                out = net(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().square().mean().backward()
                opt.step()
                opt.zero_grad()
                times.append(time.perf_counter() - t0)
                if i == 0:
                    for h in handles:
                        h.remove()
    finally:
        for h in handles:
            h.remove()
    per_sample = min(times[1:]) / probe_batch
    steps_samples = max(int(train_samples), 1) * max(int(epochs), 1)
    val_samples = max(MIN_VALIDATION, int(VALIDATION_FRACTION * train_samples / (1 - VALIDATION_FRACTION)))
    seconds = per_sample * QAT_STEP_OVERHEAD * steps_samples + per_sample * 0.5 * val_samples * max(int(epochs), 1) + 3.0
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    per_sample_act = activation_bytes / probe_batch
    nbytes = int(params * 6 + per_sample_act * max(int(batch_size), 1) * 2)
    return float(seconds), nbytes

"""Observers and the per-layer QConfigMapping built from the precision plan."""

from __future__ import annotations

import functools

import numpy as np

from quantstudio.core.engines.base import QuantConfig
from quantstudio.core.engines.pytorch.cancel import _cancellable
from quantstudio.core.plan import Precision

PERCENTILE = 99.99  # percentile calibration clips 0.01 % at each end (as the ONNX Runtime engine)


@functools.cache
def _percentile_observer_class():
    """A HistogramObserver that clips at the 0.01st / 99.99th percentile.

    Why a histogram: percentiles of the *whole* calibration set at constant memory (the
    histogram is what HistogramObserver already keeps across batches), instead of an
    average of per-batch percentiles or keeping every activation.
    """
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        percentile: float = PERCENTILE

        @torch.jit.export
        def calculate_qparams(self):  # type: ignore[override]
            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            hist = self.histogram.double()
            total = hist.sum()
            if total <= 0:
                return self._calculate_qparams(self.min_val, self.max_val)
            cdf = torch.cumsum(hist, 0) / total
            tail = (100.0 - self.percentile) / 100.0
            lo_bin = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
            hi_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
            width = (self.max_val - self.min_val) / self.bins
            new_min = self.min_val + width * lo_bin
            new_max = self.min_val + width * (hi_bin + 1)
            return self._calculate_qparams(torch.minimum(new_min, self.max_val), torch.minimum(new_max, self.max_val))

    return PercentileObserver


@functools.cache
def _entropy_observer_class():
    """A HistogramObserver whose range is the KL-divergence (entropy) threshold.

    Why: torch's HistogramObserver picks the range with the least L2 rounding error,
    which is another method; the recipe says "entropy", so both engines run the same
    search (:func:`quantstudio.core.engines.entropy.entropy_threshold`, ONNX
    Runtime's algorithm with 128 quantized bins) on a 2048-bin histogram symmetric about
    zero, re-binned from the observer's own [min, max] histogram (an error of at most
    one bin, ~0.1% of the range).
    """
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    class EntropyObserver(HistogramObserver):
        @torch.jit.export
        def calculate_qparams(self):  # type: ignore[override]
            from quantstudio.core.engines.entropy import ENTROPY_BINS, ENTROPY_QUANTIZED_BINS, entropy_threshold

            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            lo, hi = float(self.min_val), float(self.max_val)
            counts = self.histogram.double().numpy()
            if counts.sum() <= 0 or hi <= lo:
                return self._calculate_qparams(self.min_val, self.max_val)
            centres = lo + (np.arange(counts.size) + 0.5) * (hi - lo) / counts.size
            t = max(abs(lo), abs(hi))
            hist, edges = np.histogram(centres, bins=ENTROPY_BINS, range=(-t, t), weights=counts)
            low, high = entropy_threshold(np.rint(hist).astype(np.int64), edges.astype(np.float32),
                                          np.float32(lo), np.float32(hi), ENTROPY_QUANTIZED_BINS)
            return self._calculate_qparams(torch.tensor(float(low)), torch.tensor(float(high)))

    return EntropyObserver


def build_qconfig(config: QuantConfig, backend: str):
    """The QConfig for INT8 layers from the calibration method and options."""
    import torch
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import (
        MinMaxObserver,
        PerChannelMinMaxObserver,
    )

    # x86 (fbgemm/onednn) kernels may overflow their 16-bit accumulation with full
    # 8-bit activation ranges on CPUs without VNNI, so torch's x86 default reduces the
    # range to 7 bits; qnnpack does not need it.
    reduce_range = backend == "x86"
    if config.symmetric_activations and reduce_range:
        # torch.ao refuses reduce_range with symmetric quint8 ("Cannot reduce range for
        # symmetric quantization for quint8"; this engine failed with that, reported as
        # a trace error): the same 7-bit range given explicitly, centred on 64.
        act_kwargs = dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric, quant_min=0, quant_max=127)
    else:
        qscheme = torch.per_tensor_symmetric if config.symmetric_activations else torch.per_tensor_affine
        act_kwargs = dict(dtype=torch.quint8, qscheme=qscheme, reduce_range=reduce_range)
    if config.calibration == "minmax":
        activation = _cancellable(MinMaxObserver).with_args(**act_kwargs)
    elif config.calibration == "entropy":
        activation = _cancellable(_entropy_observer_class()).with_args(**act_kwargs)
    else:
        activation = _cancellable(_percentile_observer_class()).with_args(**act_kwargs)
    if config.per_channel:
        weight = _cancellable(PerChannelMinMaxObserver).with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = _cancellable(MinMaxObserver).with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfig(activation=activation, weight=weight)


def build_qconfig_mapping(config: QuantConfig, backend: str, decisions: dict[str, Precision], tree, groups,
                          qconfig=None):
    """A QConfigMapping: the backend's defaults with our observers, then the plan per layer.

    ``qconfig``: a quantization-aware-training QConfig (fake quantization, see
    ``engines/pytorch/qat.py``) instead of the calibration observers; the backend's QAT
    defaults are then the base, and our fake quantizers replace their weight ones too (the
    default fused observer does not export to ONNX)."""
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.qconfig import default_reuse_input_qconfig
    from torch.ao.quantization.qconfig_mapping import _FIXED_QPARAMS_OP_TO_OBSERVER

    qat = qconfig is not None
    qconfig = qconfig if qat else build_qconfig(config, backend)
    mapping = get_default_qat_qconfig_mapping(backend) if qat else get_default_qconfig_mapping(backend)
    # Keep the backend's special cases (fixed-range sigmoid/softmax, per-tensor weights
    # for transposed convs, float LayerNorm weights) but use our activation observer.
    for pattern, old in list(mapping.object_type_qconfigs.items()):
        if pattern in _FIXED_QPARAMS_OP_TO_OBSERVER or old is default_reuse_input_qconfig or old is None:
            continue
        weight = qconfig.weight if qat and old.weight is not None else old.weight
        mapping.set_object_type(pattern, QConfig(activation=qconfig.activation, weight=weight))
    # Modules fused together must share a qconfig (torch.ao requires it): BN and ReLU
    # follow the conv/linear they are fused into.
    effective = dict(decisions)
    for group in groups:
        head = effective.get(group[0])
        for member in group[1:]:
            if head is not None and member in effective:
                effective[member] = head
    mapping.set_global(qconfig if _default_is_int8(effective) else None)
    # Scopes whose every layer is float: the functional ops inside them (residual adds)
    # stay float too.
    for node, _ in tree.walk():
        if not node.name:
            continue
        leaves = [effective.get(n.name) for n in node.leaves()]
        leaves = [p for p in leaves if p is not None]
        if not leaves:
            continue
        if node.children:
            if all(p is not Precision.INT8 for p in leaves):
                mapping.set_module_name(node.name, None)
            elif all(p is Precision.INT8 for p in leaves):
                mapping.set_module_name(node.name, qconfig)
        else:
            mapping.set_module_name(node.name, qconfig if leaves[0] is Precision.INT8 else None)
    return mapping, effective


def _default_is_int8(effective: dict[str, Precision]) -> bool:
    values = list(effective.values())
    return bool(values) and sum(p is Precision.INT8 for p in values) * 2 >= len(values)

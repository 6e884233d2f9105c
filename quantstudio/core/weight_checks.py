"""Load-time check of a model's weights: NaN or infinite values, named by layer."""

from __future__ import annotations

from typing import Any

from quantstudio.core.errors import InputError
from quantstudio.core.loading import KIND_ONNX, LoadedModel, _name_some


def check_finite_weights(model: LoadedModel) -> None:
    """Raise :class:`InputError` naming the layers whose weights hold NaN or infinity.

    Such a model (usually from a training run that diverged) evaluates at chance and
    later fails quantization with a scale error that names nothing; say it at load time.
    """
    bad = _nonfinite_tensors(model)
    if not bad:
        return
    layers = list(dict.fromkeys(name.rsplit(".", 1)[0] if "." in name else name for name in bad))
    raise InputError(
        f"the weights of {len(layers)} layer{'s' if len(layers) != 1 else ''} hold NaN or infinite values "
        f"({_name_some(layers)})",
        path=model.path,
        hint="The model is broken (often a training run that diverged): save it again from a good checkpoint.",
        details="tensors with NaN/Inf: " + ", ".join(bad),
    )


def _nonfinite_tensors(model: LoadedModel) -> list[str]:
    if model.kind == KIND_ONNX:
        from onnx import TensorProto, numpy_helper

        import numpy as np

        floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
        tensors = [(t.name, t) for t in model.onnx_model.graph.initializer if t.data_type in floats]
        for node in model.onnx_model.graph.node:  # weights folded into Constant nodes
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.HasField("t") and attr.t.data_type in floats:
                        tensors.append((node.output[0], attr.t))
        bad = []
        for name, t in tensors:
            try:
                arr = numpy_helper.to_array(t)
            except (ValueError, TypeError):  # external data not found etc.: checked elsewhere
                continue
            if not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
                bad.append(name)
        return bad
    import torch

    module = model.module
    if module is None:
        return []
    named: dict[str, Any] = {}
    try:
        named.update(module.state_dict())
    except (RuntimeError, AttributeError, TypeError):  # an exotic module without a state_dict
        pass
    ep = getattr(model, "exported_program", None)
    if ep is not None:
        named.update({k: v for k, v in ep.state_dict.items() if k not in named})
        named.update({k: v for k, v in getattr(ep, "constants", {}).items() if k not in named})
    bad = []
    for name, t in named.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_quantized:
            with torch.no_grad():
                if not bool(torch.isfinite(t.detach()).all()):
                    bad.append(name)
    return bad

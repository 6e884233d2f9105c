"""PyTorch → ONNX export (TorchScript-based exporter, opset 17, dynamic batch)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from quantstudio.core.engines.ort.runtime import quiet
from quantstudio.core.errors import InputError
from quantstudio.core.tracing import refuse_value_dependent_trace

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def torch_to_onnx(model: Any, path: Path | None = None):
    """Export a loaded PyTorch model to ONNX (dynamic batch); returns the ModelProto."""
    import onnx
    import torch

    example = model.example_input()
    module = model.module
    buf = io.BytesIO()
    # nn.MultiheadAttention takes a fused "fast path" (aten::_native_multi_head_attention,
    # which has no ONNX form) in eval mode without grad; export the plain path.
    fastpath = getattr(torch.backends, "mha", None)
    was_fast = fastpath.get_fastpath_enabled() if fastpath is not None else None
    try:
        if fastpath is not None:
            fastpath.set_fastpath_enabled(False)
        with quiet(), refuse_value_dependent_trace(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                buf if path is None else str(path),  # type: ignore[arg-type]  # torch accepts a file object
                dynamo=False,
                opset_version=OPSET,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except InputError:
        raise  # a forward that branches on tensor values (refuse_value_dependent_trace)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the model could not be exported to ONNX: {first[:300]}",
            path=model.path,
            hint="Export it to ONNX yourself (torch.onnx.export) and open the .onnx file.",
            details=str(exc)[-4000:],
        ) from exc
    finally:
        if fastpath is not None:
            fastpath.set_fastpath_enabled(was_fast)
    return onnx.load_from_string(buf.getvalue()) if path is None else onnx.load(str(path))


def float_onnx(model: Any):
    """The FP32 ONNX form of any loaded model."""
    if model.kind == "onnx":
        return model.onnx_model
    return torch_to_onnx(model)

"""Quantization engines: one package per engine implementing :class:`Engine`.

``ort/`` is the ONNX Runtime engine, ``pytorch/`` the PyTorch (torch.ao FX) engine;
``base.py`` holds the protocol and the registry, ``entropy.py`` the entropy range search
both engines calibrate with.
"""

from __future__ import annotations

from quantstudio.core.engines.base import (
    ENGINES,
    Engine,
    QuantConfig,
    QuantizedModel,
    available_engines,
    engine_writing,
    get_engine,
)

__all__ = ["ENGINES", "Engine", "QuantConfig", "QuantizedModel", "available_engines", "engine_writing", "get_engine"]

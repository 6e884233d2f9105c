"""Quantization engines. Each engine is one module implementing :class:`Engine`."""

from __future__ import annotations

from quantstudio.core.engines.base import ENGINES, Engine, QuantConfig, QuantizedModel, get_engine

__all__ = ["ENGINES", "Engine", "QuantConfig", "QuantizedModel", "get_engine"]

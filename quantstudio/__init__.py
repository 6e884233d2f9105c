"""QuantStudio: point-and-click quantization of trained neural networks."""

__version__ = "0.1.0"

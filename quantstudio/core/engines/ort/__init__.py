"""The ONNX Runtime engine (see engine.py); export, mapping, fp16, tools and runtime are its parts."""

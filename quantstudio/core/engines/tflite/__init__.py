"""The TensorFlow Lite (LiteRT) engine (see engine.py); convert, recipe and runtime are its parts.

Optional: it needs the ``tflite`` extra (``pip install 'quantstudio[tflite]'``: litert-torch,
ai-edge-quantizer, ai-edge-litert). Nothing here imports them at module level, so the
registry can list the engine, greyed, where they are missing.
"""

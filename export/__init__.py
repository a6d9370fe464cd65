"""Exports of a baked checkpoint for the runtimes people deploy with, and the loops that run them.

``onnx/`` writes ONNX exports (graphs, quantization, genai_config.json, the folder format); ``runtime/``
runs them. ``options`` (the option values the CLI parses) and ``install`` (which runtime packages are
installed, which devices they serve, and what to install) serve both. ``export`` may import ``bake.io``
to ``bake.write``, never ``bake.verify`` or the command line.
"""

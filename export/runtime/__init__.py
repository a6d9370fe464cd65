"""Run an export: lambda-bake's own ONNX Runtime loop, onnxruntime-genai's loop, the choice between them, and
chat rendering without transformers.

May import ``bake.io`` to ``bake.write``, ``export.onnx`` (the folder format), ``export.install``/``export.options``."""

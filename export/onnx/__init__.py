"""ONNX export: the Qwen3 graph builders (portable standard ops; ONNX Runtime's fused kernels for cpu/cuda),
weight-only quantization (MatMulNBits), genai_config.json, the export folder's format and its writer.

May import ``bake.io`` to ``bake.write`` and ``export.install``/``export.options``; never ``export.runtime``."""

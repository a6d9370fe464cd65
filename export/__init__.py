"""ONNX export of a baked Qwen3 checkpoint (with KV cache) and a small ONNX Runtime generator.

``onnx_builder`` builds the graph directly from safetensors tensors (no PyTorch model), ``exporter``
writes an export folder atomically, ``runtime`` loads and runs one, ``commands`` wires the CLI.
"""

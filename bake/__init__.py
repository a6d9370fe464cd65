"""lambda-bake: fold learned per-neuron lambda gates into plain Qwen3 checkpoints."""

__version__ = "0.1.0"

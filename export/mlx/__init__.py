"""The MLX export: an mlx-lm model folder (qwen3 as-is, openelm ragged), written by ``writer``, described by
``folder``. Imports bake.io and bake.write, never the other export formats."""

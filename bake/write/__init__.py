"""Write a bake: the safetensors checkpoint folder, ``bake_manifest.json``, the model card, the bake job that puts
them in place all or nothing, and sweeps of many cuts.

May import ``bake.io``, ``bake.gates`` and ``bake.fold``."""

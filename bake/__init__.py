"""lambda-bake: fold learned per-neuron lambda gates into plain Qwen3 checkpoints, export and verify them.

The wings are the stages of a bake, each importing only the ones before it:
``io`` -> ``gates`` -> ``fold`` -> ``write`` -> (``export``) -> ``verify`` -> ``plots`` -> ``hub`` -> ``demo``
-> ``commands``/``cli``. ``errors`` (the error classes and exit codes) serves all of them.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"

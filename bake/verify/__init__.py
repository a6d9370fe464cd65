"""The proof: the hooked reference (the base with ``down_proj`` pre-hooks, sharing no code with the fold), the
candidates (checkpoint, ONNX export), metrics and budgets, and the weight-level check of exports.

May import the wings below it (``bake.io`` to ``bake.write``) and ``export``; nothing above it."""

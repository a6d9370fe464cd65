"""The gates: reading a variant folder (the torch-free ``.pt`` reader among them), the gate math (lambda, cut,
mask, scale: SPEC.md's formulas, in ``gate_math`` alone), what a cut leaves per layer, and ``inspect``'s report.

May import ``bake.io``."""

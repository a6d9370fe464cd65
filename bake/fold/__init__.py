"""Plan and fold: decide every output tensor of a bake (``plan``), and fold the gate scale into ``down_proj``
and prune neurons, streaming block by block (``weights``); the ragged layout as an in-memory model.

May import ``bake.io`` and ``bake.gates``."""

"""Figures (matplotlib, the optional ``[plot]`` extra) drawn from the commands' JSON reports and nothing else.

May import ``bake.io``, ``bake.gates``, ``bake.fold``, ``bake.write`` and ``bake.verify`` (it needs none of them today)."""

"""The embedded default job: a built-in tiny Qwen3 and the card's four variants as gate folders, baked and checked
offline; also the trained tiny model the verify budgets are calibrated on.

May import every wing below it (it runs the whole pipeline)."""

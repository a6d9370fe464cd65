"""What a cut costs, measured: text sets scored (tokens, NLL, perplexity, the change against a reference and the
KL from it) and QA sets answered (exact match, contains-any-alias), for baked checkpoints, exports in their own
runtimes, sweeps, the hooked model and the base; EleutherAI's lm-evaluation-harness on the same models.

May import the wings below it (``bake.io`` to ``bake.verify``, and ``export``); nothing above it."""

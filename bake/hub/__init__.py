"""Publish, and fetch from, the Hugging Face Hub: which ``--base``/``--gates`` are local paths and which are Hub ids,
downloads into the cache, and uploads of baked folders.

May import every wing below it; ``huggingface_hub`` is imported only when a Hub id or an upload asks for it."""

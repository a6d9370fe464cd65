"""File and folder machinery: lazy safetensors I/O, dtypes without torch, the base model's folder, JSON files,
input path checks, and all-or-nothing output folders.

The lowest wing: it imports only ``bake.errors`` (and third-party libraries), never another wing."""

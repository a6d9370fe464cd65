"""Write a standard Hugging Face checkpoint folder from a stream of tensors.

Shards and ``model.safetensors.index.json`` follow ``save_pretrained``'s naming; config, generation
config, tokenizer files, chat template and licence are carried over from the base folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bake.io.tensor_io import INDEX_NAME, SINGLE_NAME, OutTensor, shard_plan, write_safetensors

CARRIED_PATTERNS = (
    "tokenizer*.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template*", "generation_config.json", "LICENSE*",
)


def write_weights(
    out_dir: Path, tensors: list[OutTensor], max_shard_bytes: int, progress: bool = True
) -> list[str]:
    """Write tensors as one ``model.safetensors`` or as shards plus index; return the file names."""
    shards = shard_plan(tensors, max_shard_bytes)
    total = sum(t.nbytes for t in tensors)
    names = (
        [SINGLE_NAME] if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    bar = _progress_bar(total) if progress else None
    step: Callable[[OutTensor], None] | None = (lambda t: bar.update(t.nbytes)) if bar else None  # noqa: E731
    try:
        for name, shard in zip(names, shards):
            write_safetensors(out_dir / name, shard, on_tensor=step)
    finally:
        if bar is not None:
            bar.close()
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard},
        }
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        names.append(INDEX_NAME)
    return names


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm  # only when a bar is shown: --quiet runs skip the import

    return tqdm(total=total, unit="B", unit_scale=True, desc="writing weights")


def write_config(out_dir: Path, config: dict[str, Any], *, intermediate_size: int, dtype_name: str) -> None:
    """The base config with the (possibly new) intermediate size and dtype."""
    cfg = dict(config)
    cfg["intermediate_size"] = intermediate_size
    cfg["dtype"] = dtype_name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype_name
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def carry_base_files(base_dir: Path, out_dir: Path) -> list[str]:
    """Copy tokenizer, chat template, generation config and licence files from the base."""
    copied = []
    for pattern in CARRIED_PATTERNS:
        for src in sorted(Path(base_dir).glob(pattern)):
            if src.is_file() and not (out_dir / src.name).exists():
                shutil.copy2(src, out_dir / src.name)
                copied.append(src.name)
    return copied

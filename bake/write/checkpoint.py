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

from bake.errors import BakeError, BaseModelError
from bake.io.base_model import PER_LAYER_CONFIG, per_layer_config
from bake.io.json_files import read_json_object
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


def write_config(out_dir: Path, config: dict[str, Any], *, widths: list[int], dtype_name: str) -> None:
    """The base config with the bake's MLP widths and dtype: one ``intermediate_size`` when every layer has the same
    width (a stock Qwen3 config), else the widest as ``intermediate_size`` and the others in transformers'
    ``per_layer_config``."""
    cfg = {k: v for k, v in config.items() if k != PER_LAYER_CONFIG}
    cfg["intermediate_size"] = max(widths)
    if len(set(widths)) > 1:
        cfg[PER_LAYER_CONFIG] = per_layer_config(widths)
    cfg["dtype"] = dtype_name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype_name
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def check_carried_files(base_dir: Path, error: type[BakeError] = BaseModelError) -> None:
    """Parse every file a bake or an export copies from the base, so that a broken one stops the run before
    anything is written: JSON files must be JSON objects, tokenizer.json must load in the ``tokenizers``
    library (what every consumer runs), and a chat template must be valid Jinja."""
    fix = "download it again (or delete it, if the model does not need it)"
    for pattern in CARRIED_PATTERNS:
        for src in sorted(Path(base_dir).glob(pattern)):
            if not src.is_file():
                continue
            if src.suffix == ".json":
                data = read_json_object(src, error, fix, "a JSON object")
                _check_template(data.get("chat_template"), src, error, fix)
                if src.name == "generation_config.json":
                    _check_token_ids(data, src, error, fix)
            if src.name == "tokenizer.json":
                from tokenizers import Tokenizer

                try:
                    Tokenizer.from_file(str(src))
                except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
                    raise error(f"{src} is not a tokenizer the tokenizers library can load ({str(e)[:200]}); "
                                f"{fix}") from e
            elif src.name.startswith("chat_template") and src.suffix == ".jinja":
                try:
                    text = src.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise error(f"{src} cannot be read as text ({e}); {fix}") from e
                _check_template(text, src, error, fix)


def _check_token_ids(config: dict[str, Any], src: Path, error: type[BakeError], fix: str) -> None:
    """bos/eos/pad token ids: a non-negative integer, a list of them, or absent."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        values = value if isinstance(value, list) else [value]
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in values):
            raise error(f"{src}: {key} is {value!r}, not a token id (a non-negative integer or a list of them); {fix}")


def _check_template(template: Any, src: Path, error: type[BakeError], fix: str) -> None:
    """A chat template (a string, or transformers' list of named templates) must parse as Jinja."""
    if template is None:
        return
    texts = [t.get("template") for t in template if isinstance(t, dict)] if isinstance(template, list) else [template]
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    for text in texts:
        if not isinstance(text, str):
            raise error(f"{src}: its chat template is a {type(text).__name__}, not Jinja text; {fix}")
        try:
            ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
        except jinja2.TemplateError as e:
            raise error(f"{src}: its chat template is not valid Jinja ({e}); {fix}") from e


def carry_base_files(base_dir: Path, out_dir: Path) -> list[str]:
    """Copy tokenizer, chat template, generation config and licence files from the base."""
    copied = []
    for pattern in CARRIED_PATTERNS:
        for src in sorted(Path(base_dir).glob(pattern)):
            if src.is_file() and not (out_dir / src.name).exists():
                shutil.copy2(src, out_dir / src.name)
                copied.append(src.name)
    return copied

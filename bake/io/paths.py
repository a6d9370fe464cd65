"""Check a path the user gave before any work is done, and say exactly what is wrong with it.

Three problems are told apart for every input: the path does not exist, it is a file where a
folder belongs (or a folder where a file belongs), or it is an empty folder. The library functions
that open inputs use ``require``; the command line uses ``path_arg`` so the message names the
option and comes before anything is loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from bake.errors import BakeError

Kind = Literal["folder", "file"]

# What belongs at each kind of path, as the messages say it.
MODEL_FOLDER = "a Qwen3 model folder (config.json and .safetensors weights)"
BAKED_FOLDER = "a baked model folder (the --out of lambda-bake bake)"
EXPORT_FOLDER = "an ONNX export folder (the --out of lambda-bake export)"
GATES_PATH = "a gate variant folder (or a folder of variants, or a .pt/.safetensors gate file)"
GATE_FILE_SUFFIXES = (".pt", ".safetensors")
PROMPTS_FILE = "a JSONL prompt file"
MLX_FOLDER = "an MLX export folder (the --out of lambda-bake export --format mlx)"
GGUF_FILE = "a GGUF file (written by lambda-bake export --format gguf)"
HUB_ALTERNATIVE = ", or a Hub repo id (owner/name)"


def path_problem(path: Path, kind: Kind, accept_files: tuple[str, ...] = ()) -> str | None:
    """What makes ``path`` unusable as an input of ``kind``, in words; None when it is fine.

    ``accept_files``: file suffixes that may stand in for a folder (a gate file for --gates).
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        empty = not any(path.iterdir())
        if kind == "file":
            return "is an empty folder, not a file" if empty else "is a folder, not a file"
        return "is an empty folder" if empty else None
    if kind == "folder" and path.suffix not in accept_files:
        return "is a file, not a folder"
    return None


def require(path: Path, kind: Kind, expected: str, error: type[BakeError] = BakeError,
            accept_files: tuple[str, ...] = ()) -> Path:
    """``path`` if it is a usable input of ``kind``; else ``error`` saying what it is and what belongs there."""
    problem = path_problem(Path(path), kind, accept_files)
    if problem is not None:
        raise error(f"{path} {problem}; expected {expected}")
    return Path(path)


def path_arg(kind: Kind, expected: str, *, hub: bool = False,
             accept_files: tuple[str, ...] = ()) -> Callable[[str], Path | str]:
    """An argparse ``type`` that checks the path as it is parsed (argparse prefixes the option name).

    With ``hub``, a path that does not exist but is a Hub repo id (owner/name) is passed on as the
    string, to be resolved on the Hub; an existing path is checked like any other.
    """
    wanted = expected + (HUB_ALTERNATIVE if hub else "")

    def check(text: str) -> Path | str:
        path = Path(text).expanduser()
        if hub and not path.exists():
            if is_repo_id(text):
                return text
            raise argparse.ArgumentTypeError(f"{text} does not exist and is not a Hub repo id; expected {wanted}")
        try:
            require(path, kind, wanted, accept_files=accept_files)
        except BakeError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text if hub else path

    return check


def is_repo_id(ref: str) -> bool:
    """Whether ``ref`` has the form of a Hub repo id (owner/name or name), by huggingface_hub's own rule.

    huggingface_hub is imported here, when a path does not exist, not when a command starts."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True

"""Resolve ``--base`` / ``--gates`` Hub ids to folders in the Hugging Face cache, downloading only what a bake reads.

A reference that names an existing local path is used as is. Anything else that is a valid repo id
(``owner/name``) is fetched with ``huggingface_hub.snapshot_download`` into the usual cache: safetensors
weights, config, tokenizer, card and licence of a base (never pickled ``.bin``/``.pth`` or other
frameworks' weights), one variant folder of a gate repo. ``HF_HUB_OFFLINE=1`` is honoured by
huggingface_hub itself: cached snapshots are used and nothing is fetched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx2  # huggingface_hub's HTTP client (a dependency of huggingface_hub>=2.0)
from huggingface_hub import HfApi, get_cached_repo_tree, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    IncompleteSnapshotError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from bake.errors import BaseModelError, GateFileError, HubError
from bake.gates.variant import GATE_FILENAMES, list_variants
from bake.hub.hub_errors import hub_errors
from bake.io.paths import is_repo_id

# Everything a bake reads from a base repo, at the repo root only.
BASE_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "LICENSE*",
    "README.md",
]
# Not needed to bake; only the model card (licence) and the output's LICENSE come from them.
BASE_OPTIONAL_PATTERNS = ["LICENSE*", "README.md"]
# Subfolders (onnx/, original/, ...) hold other formats' copies of the weights; a bake never reads them.
BASE_IGNORE_PATTERNS = ["*/*"]
CACHED_FOLDERS = "cached so far (the Hub cannot be reached; the repo may hold more)"
_VARIANT_NAME = re.compile(r"^[\w.-]+$")


class _NoProgress(hf_tqdm):
    """huggingface_hub's progress bar, always disabled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def resolve_base(ref: str, revision: str | None = None, progress: bool = True) -> Path:
    """A local base model folder, or a Hub repo id downloaded (only what a bake needs) into the cache."""
    local = _local_path(ref, revision, what="base model", error=BaseModelError)
    if local is not None:
        return local

    def fetch(patterns: list[str]) -> Path:
        return Path(snapshot_download(
            ref, revision=revision, repo_type="model", allow_patterns=patterns,
            ignore_patterns=BASE_IGNORE_PATTERNS, tqdm_class=None if progress else _NoProgress,
        ))

    with hub_errors(ref, revision, include=BASE_ALLOW_PATTERNS, flag="--base"):
        try:
            folder = fetch(BASE_ALLOW_PATTERNS)
        except IncompleteSnapshotError:
            # Offline with a cache filled by e.g. transformers' from_pretrained, which skips the card
            # and licence: bake from what is cached if the rest is complete, and say what is missing.
            folder = fetch([p for p in BASE_ALLOW_PATTERNS if p not in BASE_OPTIONAL_PATTERNS])
            print(f"warning: the cached copy of {ref} lacks its README.md/LICENSE (the Hub cannot be "
                  "reached); baking without them, so the model card will not carry the base model's licence",
                  file=sys.stderr)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise HubError(
            f"{ref} (revision {revision or 'main'}) has no config.json plus .safetensors weights at its root "
            f"(got: {found}). lambda-bake reads safetensors only and never loads pickled .bin weights; "
            + ("the cached snapshot may be partial: download it again with network access, or "
               if is_offline_mode() else "")
            + "pick a repo with safetensors weights or pass a local folder to --base"
        )
    return folder


def resolve_gates(ref: str, variant: str | None, revision: str | None = None) -> Path:
    """A local gates path, or the cached snapshot root of a Hub gates repo holding ``variant``.

    Only the variant's subfolder is downloaded. With ``variant`` None, a repo with exactly one
    variant uses it; otherwise the error lists the variants so the user can pick one with --variant.
    """
    local = _local_path(ref, revision, what="gates", error=GateFileError)
    if local is not None:
        return local
    if variant is None:
        names, source = list_hub_variants(ref, revision)
        if len(names) != 1 or source == CACHED_FOLDERS:
            raise HubError(f"pick a gate variant of {ref} with --variant; variants {source}: "
                           f"{', '.join(names) or 'none'}")
        variant = names[0]
    if not _VARIANT_NAME.match(variant):
        raise GateFileError(f"--variant {variant!r} is not a folder name (letters, digits, '_', '-', '.')")
    pattern = f"{variant}/*"
    with hub_errors(ref, revision, include=[pattern], flag="--gates"):
        root = Path(snapshot_download(ref, revision=revision, repo_type="model", allow_patterns=[pattern]))
    if not any((root / variant / name).is_file() for name in GATE_FILENAMES):
        names, source = list_hub_variants(ref, revision)
        if source == CACHED_FOLDERS:
            raise HubError(
                f"variant {variant!r} of {ref} is not in the local cache and the Hub cannot be reached "
                f"(variants {source}: {', '.join(names) or 'none'}). Fix: download it with network access "
                f"(`hf download {ref} --include \"{pattern}\"`) or pass a local gates folder"
            )
        raise HubError(f"{ref} has no variant {variant!r}; variants {source}: {', '.join(names) or 'none'}")
    return root


def list_hub_variants(repo_id: str, revision: str | None = None) -> tuple[list[str], str]:
    """Variant folder names of a gates repo, and where the list came from.

    Online: the Hub's file listing. Offline or unreachable: the file listing huggingface_hub caches
    per commit, else the variant folders in the cached snapshot (``CACHED_FOLDERS``: maybe a subset).
    """
    if not is_offline_mode():
        with hub_errors(repo_id, revision, include=None, flag="--gates"):
            try:
                files = HfApi().list_repo_files(repo_id, revision=revision, repo_type="model")
                return _variants_in(files), "on the Hub"
            except httpx2.TransportError:
                pass  # unreachable: fall back to the cache, as snapshot_download does
    try:
        files = [f.path for f in get_cached_repo_tree(repo_id, revision=revision, repo_type="model")]
        return _variants_in(files), "in the cached listing"
    except CachedRepoTreeNotFoundError:
        pass
    with hub_errors(repo_id, revision, include=None, flag="--gates"):
        root = Path(snapshot_download(repo_id, revision=revision, repo_type="model", local_files_only=True))
    return list_variants(root), CACHED_FOLDERS


def _local_path(ref: str, revision: str | None, *, what: str, error: type[Exception]) -> Path | None:
    """``ref`` as a local path if it exists; None for a Hub repo id; an error for a missing path."""
    path = Path(ref).expanduser()
    if path.exists():
        if revision:
            raise error(f"{ref} is a local {what} path; a revision applies only to Hub repo ids: drop it")
        return path
    if not is_repo_id(ref):
        raise error(f"{what} path {ref} does not exist (and it is not a Hub repo id like owner/name); "
                    "check the path")
    return None


def _variants_in(files: list[str]) -> list[str]:
    """Top-level folders that hold a gate file, from a repo file listing."""
    return sorted({f.split("/")[0] for f in files if f.count("/") == 1 and f.split("/")[1] in GATE_FILENAMES})

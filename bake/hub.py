"""Hugging Face Hub: resolve ``--base`` / ``--gates`` Hub ids to local folders.

A reference that names an existing local path is used as is. Anything else that is a valid repo id
(``owner/name``) is fetched with ``huggingface_hub.snapshot_download`` into the usual Hugging Face
cache, downloading only what a bake reads (safetensors weights, config, tokenizer, card and
licence; never pickled ``.bin``/``.pth`` or other frameworks' weights). ``HF_HUB_OFFLINE=1`` is
honoured by huggingface_hub itself: cached snapshots are used and nothing is fetched. Errors from
huggingface_hub (all ``OSError`` subclasses) become ``HubError`` with the problem and the fix.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2  # huggingface_hub's HTTP client (a dependency of huggingface_hub>=2.0)
from huggingface_hub import HfApi, constants, get_cached_repo_tree, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm
from huggingface_hub.utils import validate_repo_id

from .errors import BaseModelError, GateFileError, HubError
from .gates import GATE_FILENAMES, list_variants

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


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--base-revision`` / ``--gates-revision`` (used only when --base / --gates are Hub ids)."""
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--base-revision", metavar="REV", default=None,
                       help="branch, tag or commit of the --base Hub repo (default: main)")
    group.add_argument("--gates-revision", metavar="REV", default=None,
                       help="branch, tag or commit of the --gates Hub repo (default: main)")


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

    with _hub_errors(ref, revision, include=BASE_ALLOW_PATTERNS, flag="--base"):
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
    with _hub_errors(ref, revision, include=[pattern], flag="--gates"):
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
        with _hub_errors(repo_id, revision, include=None, flag="--gates"):
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
    with _hub_errors(repo_id, revision, include=None, flag="--gates"):
        root = Path(snapshot_download(repo_id, revision=revision, repo_type="model", local_files_only=True))
    return list_variants(root), CACHED_FOLDERS


def _local_path(ref: str, revision: str | None, *, what: str, error: type[Exception]) -> Path | None:
    """``ref`` as a local path if it exists; None for a Hub repo id; an error for a missing path."""
    path = Path(ref).expanduser()
    if path.exists():
        if revision:
            raise error(f"{ref} is a local {what} path; a revision applies only to Hub repo ids: drop it")
        return path
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise error(f"{what} path {ref} does not exist (and it is not a Hub repo id like owner/name); "
                    "check the path") from None
    return None


def _variants_in(files: list[str]) -> list[str]:
    """Top-level folders that hold a gate file, from a repo file listing."""
    return sorted({f.split("/")[0] for f in files if f.count("/") == 1 and f.split("/")[1] in GATE_FILENAMES})


@contextmanager
def _hub_errors(
    repo_id: str, revision: str | None, *, include: list[str] | None, flag: str
) -> Iterator[None]:
    """Turn huggingface_hub's errors into HubError naming the repo, the problem and the fix."""
    rev = revision or "main"
    fetch = f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "".join(
        f' --include "{p}"' for p in include or []) + "`"
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be reached on the Hub; unset it") from e
    except IncompleteSnapshotError as e:
        raise HubError(
            f"the cached copy of {repo_id} (revision {rev}) is incomplete and the Hub cannot be reached "
            f"({_offline_reason()}). Fix: download it again with network access ({fetch}), or pass a local "
            "folder"
        ) from e
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} is not a local path, so it was taken as a Hub repo id, but it (revision {rev}) is "
            f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {_offline_reason()}. "
            f"Fix: run once with network access, or fetch it with {fetch}, or pass a local folder to {flag}"
        ) from e
    except GatedRepoError as e:
        raise HubError(f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id} and log in "
                       "(`hf auth login` or HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} is neither a local path nor a Hub repo you can see (not found, or private and your "
            "token has no access); check the spelling and log in with `hf auth login` or HF_TOKEN"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id} has no revision {rev!r}; give an existing branch, tag or commit") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubError(f"the Hub refused {repo_id}: not logged in or the token is invalid; run "
                           "`hf auth login` or set HF_TOKEN") from e
        if status == 403:
            raise HubError(f"the Hub refused {repo_id}: your token lacks access to it; check the token's "
                           "permissions (`hf auth whoami`)") from e
        raise HubError(f"the Hub returned an error for {repo_id} (HTTP {status}): {e}") from e
    except httpx2.TransportError as e:
        raise HubError(f"could not reach the Hub for {repo_id} ({type(e).__name__}: {e}); check your "
                       "connection or proxy, or pass a local folder") from e


def _offline_reason() -> str:
    return ("HF_HUB_OFFLINE is set, so nothing is downloaded" if is_offline_mode()
            else "the Hub could not be reached")

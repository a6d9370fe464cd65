"""Hugging Face Hub: resolve ``--base`` / ``--gates`` Hub ids to local folders, and push baked folders.

Imported only when a Hub id is given or a folder is pushed (``bake.hub.sources``). A reference that names an existing local path is used as is. Anything else that is a valid repo id
(``owner/name``) is fetched with ``huggingface_hub.snapshot_download`` into the usual Hugging Face
cache, downloading only what a bake reads (safetensors weights, config, tokenizer, card and
licence; never pickled ``.bin``/``.pth`` or other frameworks' weights). ``HF_HUB_OFFLINE=1`` is
honoured by huggingface_hub itself: cached snapshots are used and nothing is fetched. Errors from
huggingface_hub (all ``OSError`` subclasses) become ``HubError`` with the problem and the fix.

``push_folder`` uploads a baked folder (checked against its ``bake_manifest.json``) in one commit.
"""

from __future__ import annotations

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
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id
from huggingface_hub.utils import tqdm as hf_tqdm

from bake.errors import BaseModelError, GateFileError, HubError
from bake.gates.variant import GATE_FILENAMES, list_variants
from bake.io.json_files import read_json
from bake.io.paths import BAKED_FOLDER, is_repo_id, require
from bake.write.manifest import MANIFEST_NAME

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


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    allow_unbaked: bool = False,
    api: Any = None,
) -> str:
    """Upload a baked folder to ``repo_id`` in one commit and return the commit URL.

    Creates the repo (``private`` applies at creation; an existing public repo is refused when
    ``private`` is asked) and the branch ``revision`` if missing. The token comes from
    huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``) and is never printed.
    """
    folder = Path(folder)
    files = upload_file_list(folder)
    manifest = check_push_folder(folder, files, allow_unbaked)
    api = api if api is not None else HfApi()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--repo-id {repo_id!r} is not a Hub repo id ({e}); use USER/NAME") from e
    message = commit_message or default_commit_message(manifest)
    size = sum((folder / f).stat().st_size for f in files)
    where = f"{repo_id}" + (f" (branch {revision})" if revision else "")
    print(f"pushing {len(files)} files ({size / 1e6:.1f} MB) from {folder} to {where} in one commit",
          file=sys.stderr)
    with _hub_errors(repo_id, revision, include=None, flag="--repo-id", pushing=True):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise HubError(
                f"{repo_id} already exists and is public; --private cannot change that. Make it private in "
                "its settings on the Hub first, push to another repo, or drop --private"
            )
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
            commit_message=message,
        )
    print(f"pushed: {info.commit_url}", file=sys.stderr)
    return str(info.commit_url)


def upload_file_list(folder: Path) -> list[str]:
    """The files ``upload_folder`` sends from ``folder`` (relative POSIX paths, sorted)."""
    require(folder, "folder", BAKED_FOLDER, HubError)
    paths = sorted(p.relative_to(folder).as_posix() for p in Path(folder).glob("**/*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS))


def check_push_folder(folder: Path, files: list[str], allow_unbaked: bool) -> dict[str, Any] | None:
    """Refuse a folder that is not a complete baked model; return its manifest (None if it has none)."""
    manifest_path = Path(folder) / MANIFEST_NAME
    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        manifest = read_json(manifest_path, HubError, "bake the folder again")
    if allow_unbaked:
        return manifest
    has_weights = any(f.endswith(".safetensors") and "/" not in f for f in files)
    if "config.json" not in files or not has_weights:
        raise HubError(
            f"{folder} is not a model folder (needs config.json and .safetensors weights at its root); "
            "push the output folder of `lambda-bake bake`, or pass --allow-unbaked to push it anyway"
        )
    if manifest is None:
        raise HubError(
            f"{folder} has no {MANIFEST_NAME}, so it was not baked by lambda-bake (or the bake did not "
            "finish); bake it first, or pass --allow-unbaked to push it anyway"
        )
    missing = [f for f in manifest.get("files", []) if f not in files]
    if missing:
        raise HubError(f"{folder} lacks files its {MANIFEST_NAME} lists: {', '.join(missing)}; bake it again")
    return manifest


def default_commit_message(manifest: dict[str, Any] | None) -> str:
    """Name what was baked, e.g. "Bake chat_energy_optA into Qwen/Qwen3-0.6B: off_fraction 0.25
    (threshold 0.4981, 25.0% off), dense layout"."""
    if not manifest:
        return "Upload model folder with lambda-bake"
    gates, cut = manifest.get("gates") or {}, manifest.get("cut") or {}
    message = f"Bake {gates.get('variant', 'lambda gates')}"
    base = str((manifest.get("base") or {}).get("source") or "")
    if base:
        message += f" into {Path(base).name if Path(base).is_absolute() else base}"
    details = []
    if cut:
        off = manifest.get("off_fraction")
        achieved = f", {off:.1%} off" if isinstance(off, (int, float)) else ""
        threshold = f"threshold {cut.get('threshold')}{achieved}"
        details.append(f"{cut.get('kind', 'cut')} {cut.get('value')} ({threshold})")
    if manifest.get("layout"):
        details.append(f"{manifest['layout']} layout")
    return message + (": " + ", ".join(details) if details else "")


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


@contextmanager
def _hub_errors(
    repo_id: str, revision: str | None, *, include: list[str] | None, flag: str, pushing: bool = False
) -> Iterator[None]:
    """Turn huggingface_hub's errors into HubError naming the repo, the problem and the fix."""
    rev = revision or "main"
    fetch = f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "".join(
        f' --include "{p}"' for p in include or []) + "`"
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be reached on the Hub; unset it"
                       + (" to push" if pushing else "")) from e
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
            raise HubError(f"the Hub refused {repo_id}: your token lacks {'write ' if pushing else ''}access "
                           "to it; check the token's permissions (`hf auth whoami`)") from e
        raise HubError(f"the Hub returned an error for {repo_id} (HTTP {status}): {e}") from e
    except httpx2.TransportError as e:
        raise HubError(f"could not reach the Hub for {repo_id} ({type(e).__name__}: {e}); check your "
                       "connection or proxy, or pass a local folder") from e


def _offline_reason() -> str:
    return ("HF_HUB_OFFLINE is set, so nothing is downloaded" if is_offline_mode()
            else "the Hub could not be reached")

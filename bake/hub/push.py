"""Upload a baked folder to a Hub model repo in one commit, after checking it against its ``bake_manifest.json``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import (
    HFValidationError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from bake.errors import HubError
from bake.hub.hub_errors import hub_errors
from bake.io.json_files import read_json
from bake.io.paths import BAKED_FOLDER, require
from bake.write.manifest import MANIFEST_NAME


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
    with hub_errors(repo_id, revision, include=None, flag="--repo-id", pushing=True):
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

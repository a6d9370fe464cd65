"""Upload a baked folder to a Hub model repo in one commit, after checking it against its ``bake_manifest.json``.

What is sent is planned first (``plan_upload``): every file of the folder, except that each
``bake_manifest.json`` goes as its public copy (no ``local_path``, no machine path in any string) and the
model card is rendered again for the repo it goes to. Then every text file of the plan is scanned for the
absolute paths of this bake's inputs and output and for the home folder; one that still holds one stops
the push with the file named. ``push --dry-run`` shows the plan and uploads nothing.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import (
    HFValidationError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from bake.errors import HubError, ManifestMismatch
from bake.hub.hub_errors import hub_errors
from bake.io.json_files import read_json
from bake.io.paths import BAKED_FOLDER, require
from bake.write.manifest import MANIFEST_NAME, public_manifest, read_manifest
from bake.write.model_card import CARD_NAME, render_model_card

TEXT_SUFFIXES = (".json", ".md", ".jinja", ".txt", ".yaml", ".yml", ".py", ".model")
SCAN_LIMIT = 64 << 20  # bytes: larger files are weights, not text


@dataclass
class Upload:
    """One push, planned: each repo path with the bytes that replace the file on disk (None: the file as it is)."""

    folder: Path
    repo_id: str
    files: dict[str, bytes | None]
    manifest: dict[str, Any] | None

    def size(self, name: str) -> int:
        data = self.files[name]
        return len(data) if data is not None else (self.folder / name).stat().st_size

    def operations(self) -> list[CommitOperationAdd]:
        return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if data is not None
                                   else str(self.folder / name)) for name, data in self.files.items()]

    def card(self) -> str:
        data = self.files.get(CARD_NAME)
        return data.decode() if data is not None else (self.folder / CARD_NAME).read_text()

    def file_list(self) -> list[dict[str, Any]]:
        """Each file with its bytes and whether the push rewrites it (the manifest's public copy, the card)."""
        return [{"path": n, "bytes": self.size(n), "rewritten": d is not None} for n, d in self.files.items()]

    def describe(self) -> dict[str, Any]:
        """What ``--dry-run`` prints: the files and sizes, which ones are rewritten, and the card with its metadata."""
        card = ModelCard(self.card())
        return {"repo_id": self.repo_id, "files": self.file_list(), "bytes": sum(self.size(n) for n in self.files),
                "card_metadata": card.data.to_dict(), "card": self.card()}


def plan_upload(folder: Path, repo_id: str, allow_unbaked: bool = False) -> Upload:
    """Check the folder and the repo id, and decide what each uploaded file holds (see the module docstring)."""
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--repo-id {repo_id!r} is not a Hub repo id ({e}); use USER/NAME") from e
    if folder.is_file():
        return _plan_gguf(folder, repo_id)
    names = upload_file_list(folder)
    manifest = check_push_folder(folder, names, allow_unbaked)
    files: dict[str, bytes | None] = dict.fromkeys(names)
    if manifest is not None:
        public = public_manifest(manifest, folder)
        for name in names:
            if name == MANIFEST_NAME or name.endswith("/" + MANIFEST_NAME):
                inner = read_json(folder / name, HubError, "bake the folder again")
                files[name] = (json.dumps(public_manifest(inner, folder) if name != MANIFEST_NAME else public,
                                          indent=2) + "\n").encode()
        try:
            files[CARD_NAME] = render_model_card(public, folder, repo_id).encode()
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a section of the manifest is not as written
            raise HubError(f"{folder / MANIFEST_NAME} is damaged ({type(e).__name__}: {e}), so no model card can be "
                           "rendered from it; bake the folder again") from e
        _check_card(files[CARD_NAME].decode())
    upload = Upload(folder, repo_id, files, manifest)
    _refuse_leaks(upload, _local_paths(folder, manifest))
    return upload


def _plan_gguf(path: Path, repo_id: str) -> Upload:
    """A GGUF file alone, with a card rendered from the bake manifest it carries."""
    from bake.io.gguf_reader import read_gguf
    from bake.verify.weights.gguf_check import embedded_manifest

    if path.suffix != ".gguf":
        raise HubError(f"{path} is a file; push takes a baked folder or a .gguf file")
    manifest = embedded_manifest(read_gguf(path), str(path))
    if manifest is None:
        raise HubError(f"{path} carries no lambda-bake manifest (it was not written by lambda-bake), so no model card "
                       "can say what it is; push the baked folder it came from instead")
    manifest = manifest | {"verification": _verified_beside(path, manifest)}
    try:
        card = render_model_card(manifest, None, repo_id, gguf_files=[path])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HubError(f"{path}'s manifest is damaged ({type(e).__name__}: {e}); export it again") from e
    _check_card(card)
    from export.gguf.modelfile import modelfile_name

    beside = [modelfile_name(path.name)] if (path.parent / modelfile_name(path.name)).is_file() else []
    upload = Upload(path.parent, repo_id, {path.name: None, **dict.fromkeys(beside), CARD_NAME: card.encode()},
                    manifest)
    _refuse_leaks(upload, _local_paths(path.parent, None))
    return upload


def _verified_beside(path: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The verification of this very file by ``bake --gguf --verify``: its embedded manifest is written before the
    check runs, so the report is in the baked folder's manifest beside it (same gates and cut, a GGUF candidate of
    this file name); that report with the checkpoint and this file's rows, else None."""
    from bake.write.manifest import MANIFEST_NAME, read_manifest

    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    folder = read_manifest(path.parent)
    report = folder.get("verification")
    same = (folder["gates"]["sha256"], folder["cut"]) == (manifest["gates"]["sha256"], manifest["cut"])
    if not same or not isinstance(report, dict) or not isinstance(report.get("candidates"), list):
        return None
    mine = [c for c in report["candidates"] if isinstance(c, dict) and (
        str(c.get("name", "")).startswith("checkpoint") or (str(c.get("name", "")).startswith("gguf") and Path(
            str((c.get("weights") or {}).get("export"))).name == path.name))]
    if not any(str(c.get("name", "")).startswith("gguf") for c in mine):
        return None
    return report | {"candidates": mine, "passed": all(c.get("passed") for c in mine)}


def _check_card(text: str) -> None:
    """The card's metadata must parse as the Hub parses it (huggingface_hub's ModelCard, offline)."""
    try:
        data = ModelCard(text).data
        ModelCardData(**data.to_dict())
    except Exception as e:  # huggingface_hub raises ValueError or yaml errors for a broken card
        raise RuntimeError(f"the rendered model card does not parse as a Hub card ({e})") from e  # a bug of ours


def _local_paths(folder: Path, manifest: dict[str, Any] | None) -> list[str]:
    """Strings no uploaded file may hold: the absolute paths of this bake's inputs and output, and the home folder."""
    paths = {str(Path(folder).resolve()), str(Path(folder).absolute())}
    for key in ("base", "gates"):
        local = ((manifest or {}).get(key) or {}).get("local_path")
        if local:
            paths.add(local)
    home = os.path.expanduser("~")
    if home not in ("", "/", "~"):
        paths.add(home.rstrip("/") + "/")
    return sorted(p for p in paths if len(p) > 1)


def _refuse_leaks(upload: Upload, paths: list[str]) -> None:
    for name, data in upload.files.items():
        if not name.endswith(TEXT_SUFFIXES) or upload.size(name) > SCAN_LIMIT:
            continue
        text = (data if data is not None else (upload.folder / name).read_bytes()).decode("utf-8", errors="replace")
        found = [p for p in paths if p in text]
        if found:
            raise HubError(f"{name} holds the machine-local path {found[0]!r}, which would be published; remove it "
                           f"from {upload.folder / name} (or bake again), then push")


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
    """Upload a baked folder to ``repo_id`` in one commit (as ``plan_upload`` plans it); return the commit URL.

    Creates the repo (``private`` applies at creation; an existing public repo is refused when
    ``private`` is asked) and the branch ``revision`` if missing. The token comes from
    huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``) and is never printed.
    """
    upload = plan_upload(folder, repo_id, allow_unbaked)
    api = api if api is not None else HfApi()
    message = commit_message or default_commit_message(upload.manifest)
    where = f"{repo_id}" + (f" (branch {revision})" if revision else "")
    size = sum(upload.size(n) for n in upload.files)
    print(f"pushing {len(upload.files)} files ({size / 1e6:.1f} MB) from {folder} to {where} in one commit",
          file=sys.stderr)
    url = commit_upload(api, upload, private=private, revision=revision, message=message, flag="--repo-id")
    print(f"pushed: {url}", file=sys.stderr)
    return url


def commit_upload(api: Any, upload: Upload, *, private: bool, revision: str | None, message: str, flag: str) -> str:
    """Create the repo (and branch) if missing and send the planned files in one commit; return the commit URL.
    ``flag`` is the option the repo id came from, named in the Hub's errors."""
    repo_id = upload.repo_id
    with hub_errors(repo_id, revision, include=None, flag=flag, pushing=True):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise HubError(
                f"{repo_id} already exists and is public; --private cannot change that. Make it private in "
                "its settings on the Hub first, push to another repo, or drop --private"
            )
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.create_commit(repo_id=repo_id, operations=upload.operations(), commit_message=message,
                                 repo_type="model", revision=revision)
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
        try:
            manifest = read_manifest(folder)
        except ManifestMismatch as e:
            raise HubError(str(e)) from e
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
    if (Path(folder) / "mlx_export.json").is_file():  # an MLX folder: mlx_export.json, not the manifest, lists it
        return manifest
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

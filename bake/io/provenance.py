"""Where a local input folder came from, in terms that can be published: its name, content hashes, and the Hub
commit it was downloaded at, never its absolute path.

``hf download REPO --local-dir DIR`` leaves, per file, ``DIR/.cache/huggingface/download/<file>.metadata``: the
commit hash, the file's etag (the sha256 of an LFS file) and a timestamp. It is read here directly rather
than through huggingface_hub's ``read_download_metadata``, which takes a lock file and deletes a metadata
file it cannot parse: both would write into the user's input folder, and a bake only reads its inputs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

METADATA_DIR = Path(".cache") / "huggingface" / "download"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def download_metadata(folder: Path, filename: str) -> dict[str, str] | None:
    """``{"commit", "etag"}`` that ``hf download --local-dir`` recorded for ``filename``, if it is still valid
    (the file has not been modified since); None otherwise, or where the record is not in its format."""
    meta = Path(folder) / METADATA_DIR / f"{filename}.metadata"
    target = Path(folder) / filename
    try:
        commit, etag, timestamp = meta.read_text().splitlines()[:3]
        fresh = target.stat().st_mtime - 1 <= float(timestamp)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not fresh or not _COMMIT.match(commit.strip()):
        return None
    return {"commit": commit.strip(), "etag": etag.strip()}


def describe_local(folder: Path, files: list[str]) -> dict[str, Any]:
    """A local input folder as it may be published: its name, the sha256 of ``files`` (taken from the download
    record where it holds one, else computed), and the Hub commit it was downloaded at, when known."""
    folder = Path(folder)
    hashes, commits = {}, set()
    for name in files:
        record = download_metadata(folder, name)
        if record is not None:
            commits.add(record["commit"])
        blob = (folder / name).resolve().name if (folder / name).is_symlink() else ""  # the Hub cache: blobs/<sha256>
        if record is not None and _SHA256.match(record["etag"]):
            hashes[name] = record["etag"]
        elif _SHA256.match(blob):
            hashes[name] = blob
        else:
            hashes[name] = sha256_file(folder / name)
    return {"name": folder.resolve().name, "sha256": hashes,
            "downloaded_revision": commits.pop() if len(commits) == 1 else None}

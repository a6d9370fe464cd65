"""All-or-nothing output folders: build in a temporary sibling, fsync, then rename into place.

A crash, a full disk or a kill leaves the destination untouched (at worst a hidden
``.NAME.tmp-PID`` sibling, removed by the next run once that process is gone).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def check_destination(dest: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse a destination that exists (without overwrite), is an input, or cannot be written."""
    dest = Path(dest).absolute()
    for src in inputs:
        src = Path(src).absolute()
        if dest == src or src.is_relative_to(dest) or dest.is_relative_to(src):
            raise OutputError(f"output folder {dest} overlaps the input {src}; choose a separate --out folder")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest} exists and is a file; choose another --out")
    if dest.exists() and not overwrite:
        raise OutputError(f"output folder {dest} already exists; pass --overwrite to replace it or choose another --out")
    parent = _existing_ancestor(dest.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent}: permission denied; choose an --out you can write to")
    return dest


@contextmanager
def atomic_output_dir(dest: Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``dest`` in one rename, on failure it is removed."""
    dest = check_destination(dest, overwrite, inputs)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"cannot create {tmp} ({e.strerror or e}); choose an --out folder you can write to") from e
    try:
        yield tmp
        _fsync_tree(tmp)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _remove_stale_siblings(dest: Path) -> None:
    for p in dest.parent.glob(f".{dest.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

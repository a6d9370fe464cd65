"""All-or-nothing output folders: build in a hidden sibling, fsync, then commit it in one step.

One run at a time per destination: ``atomic_output_dir`` holds ``.NAME.lock`` next to ``NAME``
(``fcntl.flock``, which the kernel releases when the process dies, however it dies), so a second run
aimed at the same folder fails at once, and a lock left by a killed run blocks nothing.

The commit honours ``overwrite`` when it happens, not only when the run starts:

- without it, ``rename(2)``, which never replaces a folder that holds anything: an output that
  appeared during the run is left untouched, the temporary folder is removed, and the run fails;
- with it, Linux ``renameat2(RENAME_EXCHANGE)`` swaps the new folder and the old one in one step;
  where the filesystem or the OS lacks it, two renames (old aside to ``.NAME.old-PID``, new in). A
  run killed between them leaves no ``NAME``; the next run for ``NAME`` puts the set-aside one back.

Each output of a sweep is one ``atomic_output_dir`` of its own, so a failed cut leaves the others.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bake.errors import OutputError

AT_FDCWD = -100
RENAME_EXCHANGE = 2
# renameat2's number where libc has no wrapper (glibc < 2.28); the generic table is arm64's, riscv's.
SYS_RENAMEAT2 = {"x86_64": 316, "i686": 353, "aarch64": 276, "riscv64": 276, "armv7l": 382, "ppc64le": 357,
                 "s390x": 347}
UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
NOT_EMPTY = (errno.ENOTEMPTY, errno.EEXIST)


def check_destination(dest: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse a destination that holds an output (without overwrite), is a file, is an input, or
    cannot be written. An empty folder holds no output: it is used as is."""
    dest = Path(dest).absolute()
    for src in inputs:
        src = Path(src).absolute()
        if dest == src or src.is_relative_to(dest) or dest.is_relative_to(src):
            raise OutputError(f"output folder {dest} overlaps the input {src}; choose a separate --out folder")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        kind = "a symbolic link" if dest.is_symlink() else "a file"
        raise OutputError(f"{dest} exists and is {kind}; choose another --out")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise OutputError(f"output folder {dest} already exists; pass --overwrite to replace it or choose another --out")
    parent = _existing_ancestor(dest.parent)
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, so {dest} cannot be created; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent}: permission denied; choose an --out you can write to")
    return dest


@contextmanager
def atomic_output_dir(dest: Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it becomes ``dest`` in one step.

    Holds ``dest``'s lock throughout; on any failure the temporary folder is removed and ``dest`` is
    as it was.
    """
    dest = check_destination(dest, overwrite, inputs)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {dest.parent} ({e.strerror or e}); choose an --out you can write to") from e
    with destination_lock(dest):
        repair(dest)
        check_destination(dest, overwrite, inputs)  # again: the repair may have put an output back
        try:
            tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot create {tmp} ({e.strerror or e}); choose an --out you can write to") from e
        try:
            yield tmp
            _fsync_tree(tmp)
            commit(tmp, dest, overwrite)
            _fsync_dir(dest.parent)
        except BaseException:
            repair(dest)
            raise


@contextmanager
def atomic_output_file(dest: Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary file path beside ``dest``; when the block succeeds it is fsynced and renamed to ``dest``
    (replacing an existing file only with ``overwrite``). Holds ``dest``'s lock; on failure the file is removed."""
    dest = Path(dest).absolute()
    for src in inputs:
        if dest == Path(src).absolute():
            raise OutputError(f"output file {dest} is the input {src}; choose another --out")
    if dest.is_dir() or dest.is_symlink():
        raise OutputError(f"{dest} is {'a folder' if dest.is_dir() else 'a symbolic link'}; give a file path as --out")
    if dest.exists() and not overwrite:
        raise OutputError(f"output file {dest} already exists; pass --overwrite to replace it or choose another --out")
    if not dest.parent.is_dir():
        raise OutputError(f"folder {dest.parent} does not exist; create it or choose another --out")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    with destination_lock(dest):
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if dest.exists() and not overwrite:
                raise OutputError(f"another file appeared at {dest} while this run was writing; nothing was "
                                  "replaced: remove it or pass --overwrite")
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``dest`` or fail at once naming the run that holds it.

    The file is removed on release; a file left by a dead process is taken over (its flock died
    with it). The inode check makes sure the lock held is the file that is at the path.
    """
    path = dest.parent / f".{dest.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{dest} is being written by another run (pid {holder}); wait for it to finish, "
                              "or choose another --out") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def repair(dest: Path) -> None:
    """Undo what an interrupted run for ``dest`` left behind (call with its lock held): put back a
    previous output it had set aside if the new one never arrived, and remove its temporary folders."""
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old)-\d+$")
    found = [(p, m.group(1)) for p in dest.parent.iterdir() if (m := pattern.match(p.name))]
    leftovers = [p for p, _ in found]
    set_aside = sorted((p for p, kind in found if kind == "old"), key=lambda p: p.stat().st_mtime_ns)
    if set_aside and not dest.exists():
        set_aside[-1].rename(dest)
        leftovers.remove(set_aside[-1])
        print(f"restored {dest}: an interrupted run had set it aside as {set_aside[-1].name}", file=sys.stderr)
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)


def commit(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``dest``, replacing an existing output only with ``overwrite``."""
    try:
        os.rename(tmp, dest)  # POSIX: fails on a folder that holds anything, replaces an empty one
        return
    except OSError as e:
        if e.errno not in (*NOT_EMPTY, errno.ENOTDIR):
            raise
        if dest.is_symlink() or not dest.is_dir():
            raise OutputError(f"a file appeared at {dest} while this run was writing; it was left untouched and "
                              "this run wrote nothing. Choose another --out") from None
        if not overwrite:
            raise OutputError(f"another output appeared at {dest} while this run was writing; it was left untouched "
                              "and this run wrote nothing. Pass --overwrite to replace it, or choose another --out"
                              ) from None
    if exchange(tmp, dest):
        shutil.rmtree(tmp)  # now the previous output
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    _move(dest, old)
    _move(tmp, dest)  # a kill between these two: the next run's repair() puts ``old`` back
    shutil.rmtree(old)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    rename = _renameat2()
    if rename is None:
        return False
    if rename(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """renameat2 from this process's libc; None where the OS is not Linux."""
    return renameat2_from(ctypes.CDLL(None, use_errno=True)) if sys.platform == "linux" else None


def renameat2_from(libc: Any) -> Callable[..., int] | None:
    """libc's renameat2 wrapper (glibc >= 2.28), else the raw syscall on a known architecture, else None."""
    args = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = args
        return fn
    number = SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.argtypes = [ctypes.c_long, *args]
    return lambda *a: syscall(number, *a)


def _move(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


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

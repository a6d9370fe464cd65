"""Commits that honour --overwrite when they happen, one run per destination, and repairs after a kill.

Races are made deterministic by holding a run between its checks and its commit (``atomic.commit``
wrapped), and letting a second run or another program act on the destination meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

import bake.io.atomic as atomic
from bake.cli import main
from bake.errors import EXIT_USER, OutputError
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.io.atomic import atomic_output_dir, exchange
from bake.write.pipeline import BakeOptions, bake_checkpoint

REPO = Path(__file__).resolve().parents[2]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def bake_args(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--base", str(base), "--gates", str(gates / "chat_mean"), "--out", str(out), "--quiet", *extra]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "bake_manifest.json").read_text())


def hold_commit(monkeypatch: pytest.MonkeyPatch, during: Callable[[Path], None]) -> None:
    """Run ``during(dest)`` after a run's checks, with its output complete, just before its commit."""
    real = atomic.commit

    def held(tmp: Path, dest: Path, overwrite: bool) -> None:
        during(dest)
        real(tmp, dest, overwrite)

    monkeypatch.setattr(atomic, "commit", held)


def no_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without RENAME_EXCHANGE: renameat2 answers EINVAL, so the two-step swap is used."""

    def einval(*_args: object) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: einval)


def another_program_writes(dest: Path) -> None:
    dest.mkdir()
    (dest / "theirs.txt").write_text("another output")


APPEARED = ("error: another output appeared at {out} while this run was writing; it was left untouched and this "
            "run wrote nothing. Pass --overwrite to replace it, or choose another --out")
LOCKED = "error: {out} is being written by another run (pid {pid}); wait for it to finish, or choose another --out"


# --------------------------------------------------------------------------- renameat2


def test_exchange_swaps_two_folders_in_one_step_on_this_filesystem(tmp_path: Path) -> None:
    roots = [tmp_path] + [Path(d) for d in ("/dev/shm",) if os.access(d, os.W_OK)]  # ext4 here, and tmpfs
    for root in roots:
        a, b = root / f"a-{os.getpid()}", root / f"b-{os.getpid()}"
        a.mkdir()
        b.mkdir()
        (a / "new.txt").write_text("new")
        (b / "old.txt").write_text("old")
        try:
            assert exchange(a, b) is (sys.platform == "linux")
            if sys.platform == "linux":
                assert (listing(a), listing(b)) == (["old.txt"], ["new.txt"])
        finally:
            for p in (a, b):
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine not in atomic.SYS_RENAMEAT2,
                    reason="the raw renameat2 syscall number is known for Linux architectures only")
def test_raw_syscall_is_used_where_libc_has_no_wrapper(tmp_path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rename = atomic.renameat2_from(SimpleNamespace(syscall=libc.syscall))  # an old glibc: no renameat2 symbol
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("x")
    assert rename(atomic.AT_FDCWD, os.fsencode(tmp_path / "a"), atomic.AT_FDCWD, os.fsencode(tmp_path / "b"),
                  atomic.RENAME_EXCHANGE) == 0
    assert (listing(tmp_path / "a"), listing(tmp_path / "b")) == ([], ["x"])


def test_unsupported_exchange_falls_back_to_two_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_exchange(monkeypatch)
    dest = tmp_path / "out"
    another_program_writes(dest)
    moves: list[tuple[str, str]] = []
    real_move = atomic._move
    monkeypatch.setattr(atomic, "_move", lambda a, b: (moves.append((a.name, b.name)), real_move(a, b)))
    with atomic_output_dir(dest, overwrite=True) as tmp:
        (tmp / "ours.txt").write_text("new")
    pid = os.getpid()
    assert moves == [("out", f".out.old-{pid}"), (f".out.tmp-{pid}", "out")]
    assert listing(tmp_path) == ["out"] and listing(dest) == ["ours.txt"]


# --------------------------------------------------------------------------- races (bake, export, sweep)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_appeared_is_never_replaced(tmp_path: Path, overwrite: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    hold_commit(monkeypatch, lambda d: d.write_text("someone's file"))
    with pytest.raises(OutputError) as e:
        with atomic_output_dir(dest, overwrite=overwrite) as tmp:
            (tmp / "ours.txt").write_text("new")
    assert str(e.value) == (f"a file appeared at {dest} while this run was writing; it was left untouched and "
                            "this run wrote nothing. Choose another --out")
    assert listing(tmp_path) == ["out"] and dest.read_text() == "someone's file"


def test_an_empty_out_filled_during_the_run_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    dest.mkdir()  # empty: accepted as --out without --overwrite
    hold_commit(monkeypatch, lambda d: (d / "theirs.txt").write_text("another output"))
    with pytest.raises(OutputError) as e:
        with atomic_output_dir(dest) as tmp:
            (tmp / "ours.txt").write_text("new")
    assert "error: " + str(e.value) == APPEARED.format(out=dest)
    assert listing(tmp_path) == ["out"] and listing(dest) == ["theirs.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_bake_race_with_another_program(tiny_base: Path, tiny_gates: Path, tmp_path: Path, overwrite: bool,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outs" / "out"
    hold_commit(monkeypatch, another_program_writes)
    swaps: list[str] = []
    real_exchange = atomic.exchange
    monkeypatch.setattr(atomic, "exchange", lambda a, b: swaps.append(b.name) or real_exchange(a, b))
    code = main(bake_args(tiny_base, tiny_gates, out, "--preset", "2", *(["--overwrite"] if overwrite else [])))
    err = capsys.readouterr().err
    if overwrite:  # replaced in one renameat2(RENAME_EXCHANGE)
        assert code == 0 and swaps == ["out"]
        assert listing(out) == manifest(out)["files"] and manifest(out)["cut"]["value"] == 2
    else:
        assert code == EXIT_USER and err.splitlines()[-1] == APPEARED.format(out=out)
        assert listing(out) == ["theirs.txt"] and swaps == []
    assert listing(out.parent) == ["out"]  # no temporary folder, no lock left


@pytest.mark.parametrize("overwrite", [False, True])
def test_bake_race_with_another_run_never_both_succeed(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                       overwrite: bool, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outs" / "out"
    flag = ["--overwrite"] if overwrite else []
    second: dict[str, object] = {}

    def second_run(dest: Path) -> None:
        capsys.readouterr()
        second["code"] = main(bake_args(tiny_base, tiny_gates, out, "--threshold", "0.4", *flag))
        second["err"] = capsys.readouterr().err

    hold_commit(monkeypatch, second_run)
    assert main(bake_args(tiny_base, tiny_gates, out, "--threshold", "0.5", *flag)) == 0
    assert second["code"] == EXIT_USER
    assert str(second["err"]).splitlines()[-1] == LOCKED.format(out=out, pid=os.getpid())
    assert manifest(out)["cut"] == {"kind": "threshold", "value": 0.5, "threshold": 0.5, "rule": "threshold",
                                    "target_off_fraction": None}
    assert listing(out) == manifest(out)["files"] and listing(out.parent) == ["out"]


@pytest.fixture(scope="module")
def baked(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baked") / "model"
    v = load_variant(tiny_gates / "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 2), "hard", "mean"), out, BakeOptions(progress=False))
    return out


EXPORT_FILES = ["bake_manifest.json", "chat_template.jinja", "config.json", "genai_config.json",
                "generation_config.json", "model.onnx", "onnx_io.json", "tokenizer.json", "tokenizer_config.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_race_with_another_program_and_another_run(baked: Path, tmp_path: Path, overwrite: bool,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outs" / "onnx"
    args = ["export", "--model", str(baked), "--out", str(out), "--quiet", *(["--overwrite"] if overwrite else [])]
    second: dict[str, object] = {}

    def both(dest: Path) -> None:
        capsys.readouterr()
        second["code"] = main(args)
        second["err"] = capsys.readouterr().err
        another_program_writes(dest)

    hold_commit(monkeypatch, both)
    code = main(args)
    err = capsys.readouterr().err
    assert second["code"] == EXIT_USER
    assert str(second["err"]).splitlines()[-1] == LOCKED.format(out=out, pid=os.getpid())
    if overwrite:
        assert code == 0 and listing(out) == EXPORT_FILES
    else:
        assert code == EXIT_USER and err.splitlines()[-1] == APPEARED.format(out=out)
        assert listing(out) == ["theirs.txt"]
    assert listing(out.parent) == ["onnx"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_sweep_commits_each_cut_on_its_own(tiny_base: Path, tiny_gates: Path, tmp_path: Path, overwrite: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep bakes one atomic output per cut under OUT/; a race on one cut leaves the others."""
    v = load_variant(tiny_gates / "chat_mean", num_layers=4, intermediate_size=128)
    sweep = tmp_path / "sweep"
    hold_commit(monkeypatch, lambda dest: another_program_writes(dest) if dest.name == "chat_mean-p2" else None)
    results = {}
    for k in (1, 2, 3):
        out = sweep / f"chat_mean-p{k}"
        try:
            bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", k), "hard", "mean"), out,
                            BakeOptions(progress=False, overwrite=overwrite))
            results[k] = "ok"
        except OutputError as e:
            results[k] = str(e)
    raced = sweep / "chat_mean-p2"
    assert results == {1: "ok", 2: "ok" if overwrite else APPEARED.format(out=raced)[len("error: "):], 3: "ok"}
    assert listing(sweep) == ["chat_mean-p1", "chat_mean-p2", "chat_mean-p3"]
    assert [manifest(sweep / f"chat_mean-p{k}")["cut"]["value"] for k in (1, 3)] == [1, 3]
    assert listing(raced) == (manifest(raced)["files"] if overwrite else ["theirs.txt"])


HELD_BAKE = """
import sys, time
from pathlib import Path
import bake.io.atomic as atomic
real = atomic.commit
def held(tmp, dest, overwrite):
    Path(sys.argv[1]).write_text("holding")
    while not Path(sys.argv[2]).exists():
        time.sleep(0.01)
    real(tmp, dest, overwrite)
atomic.commit = held
from bake.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_two_processes_one_destination_exactly_one_succeeds(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: two bakes to one --out without --overwrite, one at 0.4 and one at 0.5."""
    out, ready, go = tmp_path / "outs" / "out", tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HELD_BAKE, str(ready), str(go),
                              *bake_args(tiny_base, tiny_gates, out, "--threshold", "0.4")],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert first.poll() is None and time.time() < deadline, "the first bake never reached its commit"
            time.sleep(0.02)
        assert main(bake_args(tiny_base, tiny_gates, out, "--threshold", "0.5")) == EXIT_USER
        assert capsys.readouterr().err.splitlines()[-1] == LOCKED.format(out=out, pid=first.pid)
    finally:
        go.write_text("go")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert manifest(out)["cut"]["threshold"] == 0.4 and listing(out.parent) == ["out"]


# --------------------------------------------------------------------------- locks


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_of_a_live_run_blocks_and_of_a_killed_one_does_not(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outs" / "out"
    out.parent.mkdir()
    lock = out.parent / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert main(bake_args(tiny_base, tiny_gates, out, "--preset", "1")) == EXIT_USER
        assert capsys.readouterr().err.splitlines()[-1] == LOCKED.format(out=out, pid=holder.pid)
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert lock.read_text() == f"{holder.pid}\n"  # the dead run's lock file is still there
    assert main(bake_args(tiny_base, tiny_gates, out, "--preset", "1")) == 0
    assert listing(out.parent) == ["out"] and manifest(out)["cut"]["value"] == 1


def test_lock_is_released_and_removed_when_the_run_fails(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        with atomic_output_dir(dest) as tmp:
            (tmp / "half.txt").write_text("half")
            assert (tmp_path / ".out.lock").read_text() == f"{os.getpid()}\n"
            with pytest.raises(BlockingIOError):  # held: a second open file cannot take it
                fd = os.open(tmp_path / ".out.lock", os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                finally:
                    os.close(fd)
            raise RuntimeError("simulated")
    assert listing(tmp_path) == []


def test_lock_file_replaced_under_a_waiting_run_is_locked_afresh(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder before us removes its lock file after we opened it: the lock must be on the new file."""
    lock = tmp_path / ".out.lock"
    real_flock = fcntl.flock
    opened: list[int] = []

    def flock(fd: int, op: int) -> None:
        opened.append(os.fstat(fd).st_ino)
        if len(opened) == 1:  # the previous run releases (removes its file) and a third one creates a new file
            lock.unlink()
            lock.write_text("")
        real_flock(fd, op)

    monkeypatch.setattr(atomic.fcntl, "flock", flock)
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "ours.txt").write_text("new")
        assert len(opened) == 2 and opened[1] == lock.stat().st_ino != opened[0]
    assert listing(tmp_path) == ["out"]


# --------------------------------------------------------------------------- a kill between the two renames


KILLED_BETWEEN_RENAMES = """
import ctypes, errno, os, signal, sys
import bake.io.atomic as atomic
def einval(*args):
    ctypes.set_errno(errno.EINVAL)
    return -1
atomic._renameat2 = lambda: einval   # a filesystem without RENAME_EXCHANGE: the two-step swap
real = atomic._move
def move(src, dst):
    real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)   # after the first rename: the old output is set aside
atomic._move = move
from bake.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("rerun_overwrite", [True, False])
def test_sigkill_between_the_two_renames_then_rerun_restores_a_model(tiny_base: Path, tiny_gates: Path,
                                                                     tmp_path: Path, rerun_overwrite: bool,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outs" / "out"
    assert main(bake_args(tiny_base, tiny_gates, out, "--preset", "1")) == 0
    previous = {name: (out / name).read_bytes() for name in listing(out)}
    args = bake_args(tiny_base, tiny_gates, out, "--preset", "3", "--overwrite")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BETWEEN_RENAMES, *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    _, killed_err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, killed_err
    pid = proc.pid
    assert listing(out.parent) == [".out.lock", f".out.old-{pid}", f".out.tmp-{pid}"]  # no model at --out
    assert {n: (out.parent / f".out.old-{pid}" / n).read_bytes() for n in previous} == previous
    capsys.readouterr()
    code = main(args if rerun_overwrite else args[:-1])
    err = capsys.readouterr().err
    assert f"restored {out}: an interrupted run had set it aside as .out.old-{pid}" in err.splitlines()
    if rerun_overwrite:
        assert code == 0 and manifest(out)["cut"]["value"] == 3 and listing(out) == manifest(out)["files"]
    else:
        assert code == EXIT_USER and err.splitlines()[-1] == (
            f"error: output folder {out} already exists; pass --overwrite to replace it or choose another --out")
        assert {name: (out / name).read_bytes() for name in listing(out)} == previous
    assert listing(out.parent) == ["out"]


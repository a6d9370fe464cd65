"""Bad inputs, interrupted runs and full disks: the output is a complete model or nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bake.cli import main
from bake.demo.assets import seed_gate_logits, write_gate_folder
from bake.errors import EXIT_INTERNAL, EXIT_USER
from bake.io.tensor_io import CheckpointReader

REPO = Path(__file__).resolve().parents[2]


def bake_args(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--base", str(base), "--gates", str(gates), "--out", str(out), "--quiet", *extra]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def copy_base(tiny_base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_base, tmp_path / "base"))


# --------------------------------------------------------------------------- gate files


@pytest.mark.parametrize("case,message", [
    ("count", "holds 640 gate logits but the base model has 4 layers x 128 neurons = 512"),
    ("truncated", "download it again"),
    ("nan", "NaN or infinite"),
    ("pickle", "refused to load"),
    ("no gate file", "no gate file in"),
])
def test_bad_gate_files_exit_2_and_write_nothing(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 case: str, message: str) -> None:
    folder = tmp_path / "chat_mean"
    logits = seed_gate_logits(4, 128, seed=1)
    if case == "count":
        write_gate_folder(folder, seed_gate_logits(5, 128, seed=1), scale_mode="mean")
    elif case == "no gate file":
        folder.mkdir()
        (folder / "gate_stats.json").write_text("{}")
    else:
        write_gate_folder(folder, logits, scale_mode="mean")
        pt = folder / "lambda_logits.pt"
        if case == "truncated":
            pt.write_bytes(pt.read_bytes()[:300])
        elif case == "nan":
            bad = logits.reshape(-1).clone()
            bad[7] = float("nan")
            import torch

            torch.save(bad, pt)
        elif case == "pickle":
            import torch

            torch.save({"logits": logits, "obj": Path("x")}, pt)
    code = main(bake_args(tiny_base, folder, tmp_path / "out", "--threshold", "0.5"))
    assert code == EXIT_USER and message in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_unknown_variant_lists_the_existing_ones(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(bake_args(tiny_base, tiny_gates, tmp_path / "out", "--variant", "chat_energy_optC", "--preset", "1"))
    err = capsys.readouterr().err
    assert code == EXIT_USER
    assert "unknown variant 'chat_energy_optC'" in err and "chat_energy, chat_energy_optA, chat_energy_optB, chat_mean" in err


# --------------------------------------------------------------------------- base models


def test_base_without_config(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    base = copy_base(tiny_base, tmp_path)
    (base / "config.json").unlink()
    assert main(bake_args(base, tiny_gates / "chat_mean", tmp_path / "out", "--preset", "1")) == EXIT_USER
    assert "has no config.json" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_base_that_is_not_qwen3(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    base = copy_base(tiny_base, tmp_path)
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (base / "config.json").write_text(json.dumps(cfg))
    assert main(bake_args(base, tiny_gates / "chat_mean", tmp_path / "out", "--preset", "1")) == EXIT_USER
    err = capsys.readouterr().err
    assert "is a 'llama' model (LlamaForCausalLM)" in err and "supports Qwen3" in err
    assert_nothing_written(tmp_path / "out")


def test_truncated_shard(tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = copy_base(tiny_base, tmp_path)
    shard = base / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size - 1000])
    assert main(bake_args(base, tiny_gates / "chat_mean", tmp_path / "out", "--preset", "1")) == EXIT_USER
    assert "the file is truncated: download it again" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_index_naming_a_missing_shard(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = copy_base(tiny_base, tmp_path)
    names = CheckpointReader(base).names()
    index = {"metadata": {}, "weight_map": {n: ("model-00001-of-00002.safetensors" if i % 2 else
                                                "model-00002-of-00002.safetensors") for i, n in enumerate(names)}}
    (base / "model.safetensors").rename(base / "model-00001-of-00002.safetensors")
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(bake_args(base, tiny_gates / "chat_mean", tmp_path / "out", "--preset", "1")) == EXIT_USER
    assert "names shard(s) model-00002-of-00002.safetensors that are not in" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- cuts


@pytest.mark.parametrize("cut,message", [
    (["--threshold", "0"], "must lie in (0, 1)"),
    (["--threshold", "1.2"], "must lie in (0, 1)"),
    (["--off-fraction", "1.5"], "must lie in [0, 1]"),
    (["--off-fraction", "-0.1"], "must lie in [0, 1]"),
    (["--preset", "6"], "--preset 6 is out of range"),
    (["--preset", "0"], "--preset 0 is out of range"),
    (["--off-fraction", "1"], "switches off every neuron of every layer"),
])
def test_bad_cuts(tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  cut: list[str], message: str) -> None:
    assert main(bake_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "out", *cut)) == EXIT_USER
    assert message in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- outputs


def test_existing_output_needs_overwrite_and_then_is_replaced(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(bake_args(tiny_base, tiny_gates / "chat_mean", out, "--preset", "1")) == EXIT_USER
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(bake_args(tiny_base, tiny_gates / "chat_mean", out, "--preset", "1", "--overwrite")) == 0
    assert not (out / "keep.txt").exists() and (out / "bake_manifest.json").exists()


@pytest.mark.parametrize("where", ["base", "inside base", "gates"])
def test_output_overlapping_an_input_is_refused(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], where: str) -> None:
    base = copy_base(tiny_base, tmp_path)
    before = sorted(p.name for p in base.iterdir())
    out = {"base": base, "inside base": base / "baked", "gates": tiny_gates / "chat_mean"}[where]
    assert main(bake_args(base, tiny_gates / "chat_mean", out, "--preset", "1", "--overwrite")) == EXIT_USER
    assert "overlaps the input" in capsys.readouterr().err
    assert sorted(p.name for p in base.iterdir()) == before


def test_unwritable_output(tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(bake_args(tiny_base, tiny_gates / "chat_mean", blocker / "out", "--preset", "1")) == EXIT_USER
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {blocker} is a file, so {blocker / 'out'} cannot be created; choose another --out")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main(bake_args(tiny_base, tiny_gates / "chat_mean", ro / "out", "--preset", "1")) == EXIT_USER
        assert "permission denied" in capsys.readouterr().err


def test_disk_full_mid_write_leaves_nothing_and_rerun_succeeds(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import bake.io.tensor_io as tio

    real_write = tio.write_array
    calls = {"n": 0}

    def fill_disk(f: object, a: object) -> int:
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, a)  # type: ignore[arg-type]

    monkeypatch.setattr(tio, "write_array", fill_disk)
    out = tmp_path / "out"
    args = bake_args(tiny_base, tiny_gates / "chat_mean", out, "--preset", "1", "--dtype", "bfloat16")
    assert main(args) == EXIT_USER
    assert "disk full" in capsys.readouterr().err
    assert_nothing_written(out)
    monkeypatch.setattr(tio, "write_array", real_write)
    assert main(args) == 0 and (out / "model.safetensors").exists()


SLOW_BAKE = """
import sys, time
import bake.write.checkpoint as cw
real = cw.write_safetensors
def slow(path, tensors, metadata=None, on_tensor=None):
    def step(t):
        time.sleep(0.05)
        if on_tensor: on_tensor(t)
    return real(path, tensors, metadata, step)
cw.write_safetensors = slow
from bake.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_bake_leaves_destination_untouched_and_rerun_succeeds(tiny_base: Path, tiny_gates: Path,
                                                                     tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier bake")
    args = bake_args(tiny_base, tiny_gates / "chat_mean", out, "--preset", "2", "--overwrite")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BAKE, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    tmp_dir = tmp_path / f".out.tmp-{proc.pid}"
    deadline = time.time() + 60
    while not (tmp_dir / "model.safetensors").exists():  # wait until it is part-way through the weights
        assert proc.poll() is None and time.time() < deadline, "bake ended before it could be interrupted"
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    if sig == signal.SIGTERM:
        assert "interrupted: no output was written" in err
        assert not tmp_dir.exists()
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]  # destination untouched
    assert main(args) == 0
    assert not (out / "previous.txt").exists() and (out / "bake_manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []  # the killed run's temporary
    # folder (and, after SIGKILL, its lock file) are cleaned up by the rerun


def test_internal_error_exits_1(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    crash = ("import sys, bake.write.pipeline as p\n"
             "def boom(*a, **k): raise RuntimeError('simulated bug')\n"
             "p.plan_bake = boom\n"
             "import bake.commands.bake_cmd as b; b.bake_checkpoint = p.bake_checkpoint\n"
             "from bake.cli import main; sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", crash,
                           *bake_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "out", "--preset", "1")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == EXIT_INTERNAL and "RuntimeError: simulated bug" in proc.stderr
    assert_nothing_written(tmp_path / "out")

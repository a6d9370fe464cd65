"""Shared by the benchmark scripts: the random-weight Qwen3-0.6B and a real-shape gate variant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANT = "chat_energy"

_BUILD = """
import sys, torch
from pathlib import Path
from bake.demo_assets import QWEN3_0_6B, build_tiny_qwen3, seed_gate_logits, write_gate_folder
root = Path(sys.argv[1])
build_tiny_qwen3(root / "base", QWEN3_0_6B, dtype=torch.bfloat16)
write_gate_folder(root / "gates" / sys.argv[2], seed_gate_logits(28, 3072, seed=0), scale_mode="energy")
"""


def ensure_inputs(workdir: Path) -> tuple[Path, Path]:
    """Build (once, in a child process) ``workdir/base`` (bf16, 1.2 GB) and ``workdir/gates/<variant>``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "base" / "model.safetensors").exists():
        print("building random-weight Qwen3-0.6B (bf16) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", _BUILD, str(workdir), VARIANT], cwd=REPO, check=True)
    return workdir / "base", workdir / "gates" / VARIANT

"""Shared by the benchmark scripts: random-weight Qwen3 bases of the real shapes and real-shape gates."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANT = "chat_energy"
SHAPES = {"0.6b": "QWEN3_0_6B", "1.7b": "QWEN3_1_7B", "4b": "QWEN3_4B", "tiny": "TinyQwen3Spec"}  # specs in bake.demo.assets (tiny:
# the test models' 4 x 128 shape, for running a benchmark script end to end in seconds)

_BUILD = """
import sys, torch
from pathlib import Path
from bake.demo import assets as demo_assets
from bake.demo.assets import build_tiny_qwen3, seed_gate_logits, write_gate_folder
root, variant, spec = Path(sys.argv[1]), sys.argv[2], getattr(demo_assets, sys.argv[3])
spec = spec() if isinstance(spec, type) else spec
build_tiny_qwen3(root / "base", spec, dtype=torch.bfloat16)
write_gate_folder(root / "gates" / variant, seed_gate_logits(spec.num_layers, spec.intermediate_size, seed=0),
                  scale_mode="energy")
"""


def ensure_inputs(workdir: Path, shape: str = "0.6b") -> tuple[Path, Path]:
    """Build (once, in a child process) ``workdir/base`` (bf16) and ``workdir/gates/<variant>`` of ``shape``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "base" / "model.safetensors").exists():
        print(f"building random-weight Qwen3-{shape.upper()} (bf16) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", _BUILD, str(workdir), VARIANT, SHAPES[shape]], cwd=REPO, check=True)
    return workdir / "base", workdir / "gates" / VARIANT


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform.processor`` says: timings are per machine."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def paired(a: list[float], b: list[float], digits: int = 4) -> dict[str, float]:
    """The per-round ratios a/b of runs paired in one process: their median and spread."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": round(statistics.median(ratios), digits), "min": round(min(ratios), digits),
            "max": round(max(ratios), digits)}


def write_report(report: dict[str, Any], path: Path | None) -> None:
    """Print the report as JSON, and write it to ``path`` when given."""
    text = json.dumps(report, indent=2)
    if path:
        path.write_text(text + "\n")
    print(text)

"""Shared fixtures: tiny random Qwen3 models and gate folders built at test time (no network)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bake.demo.assets import TinyQwen3Spec, build_seed_variants, build_tiny_qwen3

# tests/serving (vLLM) run in vLLM's own virtualenv (.ci/run), not here: vLLM pins a torch and transformers of its own
collect_ignore = ["serving"] if importlib.util.find_spec("vllm") is None else []

TINY = TinyQwen3Spec()  # 4 layers x 128 neurons, hidden 64
# The real gate shape (28 x 3072 = 86,016 neurons) on a narrow model.
FULL_SHAPE = TinyQwen3Spec(num_layers=28, hidden_size=32, intermediate_size=3072, num_heads=2, num_kv_heads=1,
                           head_dim=16, init_std=0.1, seed=1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "base", TINY)


@pytest.fixture(scope="session")
def tiny_gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seed_variants(tmp_path_factory.mktemp("tiny") / "gates", TINY.num_layers, TINY.intermediate_size)


@pytest.fixture(scope="session")
def full_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("full") / "base", FULL_SHAPE)


@pytest.fixture(scope="session")
def full_gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seed_variants(tmp_path_factory.mktemp("full") / "gates", FULL_SHAPE.num_layers,
                               FULL_SHAPE.intermediate_size)


@pytest.fixture(scope="session")
def tiny_base_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model stored in bfloat16, as Qwen3 ships."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-bf16") / "base", TINY, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def full_base_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 28 x 3072 gate shape, stored in bfloat16."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("full-bf16") / "base", FULL_SHAPE, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def prompt_ids() -> torch.Tensor:
    """A fixed batch of token ids (vocabulary of the tiny tokenizer is 384)."""
    return torch.randint(5, 384, (2, 24), generator=torch.Generator().manual_seed(7))

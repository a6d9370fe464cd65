"""Build offline stand-ins for the real inputs: a small Qwen3 with a chat tokenizer, and gate folders.

Used by ``lambda-bake demo`` (the embedded default) and by the tests; nothing here touches the
network. The tokenizer is a byte-level BPE trained on a few built-in sentences, with Qwen3's
special tokens and a ChatML chat template that honours ``enable_thinking`` like Qwen3's.
The gate folders follow the published card's layout for its four chat variants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bake.gates.gate_math import gate_values

# Qwen3-style ChatML template written for this project: system/user/assistant turns and, with
# add_generation_prompt and enable_thinking=False, an empty think block as Qwen3 renders it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
_CORPUS = [
    "What is two plus two? Two plus two is four.",
    "Explain why the sky is blue in one sentence.",
    "Solve for x: 3x + 5 = 20. Subtract five, then divide by three: x = 5.",
    "Who wrote the novel? The question asks about a person, a place and a year.",
    "List three prime numbers: 2, 3, 5, 7, 11, 13.",
    "The derivative of x squared is two x. The integral of 2x is x squared plus C.",
    "Paris is a city; Tokyo is a city; numbers and reasoning are not facts about entities.",
    "def add(a, b):\n    return a + b\n",
]


@dataclass(frozen=True)
class SeedVariant:
    """One of the card's four chat variants."""

    name: str
    scale_mode: str
    lambda_f: float
    lambda_r: float
    unmasked_retain_weight: float


SEED_VARIANTS: tuple[SeedVariant, ...] = (
    SeedVariant("chat_energy", "energy", 0.1, 0.5, 0.0),
    SeedVariant("chat_energy_optA", "energy", 0.1, 0.5, 0.05),
    SeedVariant("chat_energy_optB", "energy", 1.0, 0.5, 0.1),
    SeedVariant("chat_mean", "mean", 0.1, 0.5, 0.0),
)
TARGET_OFF_FRACTIONS = (0.05, 0.25, 0.50, 0.75, 0.95)


@dataclass(frozen=True)
class TinyQwen3Spec:
    """Shape of a built test/demo model; ``init_std`` spreads logits so top-1 is well defined."""

    num_layers: int = 4
    hidden_size: int = 64
    intermediate_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    init_std: float = 0.08
    seed: int = 0
    vocab_size: int | None = None  # default: the tokenizer's size
    tie_word_embeddings: bool = True


# The real Qwen/Qwen3-0.6B architecture (random weights) for benchmarks: 28 x 3072 MLP neurons.
QWEN3_0_6B = TinyQwen3Spec(num_layers=28, hidden_size=1024, intermediate_size=3072, num_heads=16, num_kv_heads=8,
                           head_dim=128, init_std=0.02, vocab_size=151936)
# The real Qwen/Qwen3-1.7B architecture (random weights): 28 x 6144 MLP neurons, 3.4 GB in bf16.
QWEN3_1_7B = TinyQwen3Spec(num_layers=28, hidden_size=2048, intermediate_size=6144, num_heads=16, num_kv_heads=8,
                           head_dim=128, init_std=0.02, vocab_size=151936)
# The real Qwen/Qwen3-4B architecture (random weights): 36 x 9728 MLP neurons, 32/8 heads, tied, 8.0 GB in bf16.
QWEN3_4B = TinyQwen3Spec(num_layers=36, hidden_size=2560, intermediate_size=9728, num_heads=32, num_kv_heads=8,
                         head_dim=128, init_std=0.02, vocab_size=151936)


# Qwen2/Qwen3 tokenizer.json's pre-tokenizer split (one digit per piece), which llama.cpp's ``qwen2`` pre-tokenizer
# implements: the demo tokenizer splits text as Qwen3's does, so every runtime tokenizes the demo's prompts alike.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")


def build_tokenizer(out_dir: Path):
    """Train a small byte-level BPE with Qwen3's normalizer, pre-tokenizer and special tokens and save it with the chat
    template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_qwen3(out_dir: Path, spec: TinyQwen3Spec = TinyQwen3Spec(), dtype: torch.dtype = torch.float32) -> Path:
    """Save a random-weight Qwen3ForCausalLM plus tokenizer and generation config to ``out_dir``."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(
        vocab_size=max(len(tokenizer), spec.vocab_size or 0), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, max_position_embeddings=512,
        tie_word_embeddings=spec.tie_word_embeddings, initializer_range=spec.init_std, bos_token_id=pad_id, eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(spec.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no float32 copy of a large model
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # RMSNorm weights start at 1; vary them so a wrong fold cannot hide
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
    model.save_pretrained(str(out_dir))
    GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False).save_pretrained(
        str(out_dir)
    )
    return out_dir


def seed_gate_logits(num_layers: int, intermediate_size: int, seed: int, std: float = 0.12) -> torch.Tensor:
    """Random logits shaped like the card's (sigmoid mean about 0.5, std about 0.03)."""
    g = torch.Generator().manual_seed(seed)
    layer_bias = torch.randn(num_layers, 1, generator=g) * std * 0.5
    return torch.randn(num_layers, intermediate_size, generator=g) * std + layer_bias


def write_gate_folder(
    folder: Path,
    logits: torch.Tensor,
    *,
    scale_mode: str | None,
    container: object | None = None,
    extra_stats: dict | None = None,
) -> Path:
    """Write a variant folder in the card's layout: logits, stats, thresholds, neuron indices.

    ``container`` overrides what goes into ``lambda_logits.pt`` (default: the flat layer-major tensor).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(logits.reshape(-1).clone() if container is None else container, folder / "lambda_logits.pt")
    lam = gate_values(logits.numpy())
    flat = np.sort(lam.reshape(-1))
    thresholds = [float(flat[min(round(f * flat.size), flat.size - 1)]) for f in TARGET_OFF_FRACTIONS]
    (folder / "selected_thresholds.txt").write_text(",".join(f"{t:.8f}" for t in thresholds) + "\n")
    knowledge = {str(i): np.flatnonzero(lam[i] < 0.5).tolist() for i in range(lam.shape[0])}
    (folder / "neuron_indices.json").write_text(json.dumps(knowledge))
    stats = {
        "total_gates": int(lam.size),
        "mean_sigmoid": float(lam.mean()),
        "std_sigmoid": float(lam.std(ddof=1)),
        "selected_thresholds": {f"{int(f * 100)}%": t for f, t in zip(TARGET_OFF_FRACTIONS, thresholds)},
    }
    if scale_mode is not None:
        stats["scale_mode"] = scale_mode
    stats.update(extra_stats or {})
    (folder / "gate_stats.json").write_text(json.dumps(stats, indent=2))
    return folder


def build_seed_variants(root: Path, num_layers: int, intermediate_size: int) -> Path:
    """The card's four chat variants as gate folders under ``root`` (distinct random logits each)."""
    for i, v in enumerate(SEED_VARIANTS):
        write_gate_folder(
            Path(root) / v.name,
            seed_gate_logits(num_layers, intermediate_size, seed=1000 + i),
            scale_mode=v.scale_mode,
            extra_stats={"lambda_f": v.lambda_f, "lambda_r": v.lambda_r,
                         "unmasked_retain_weight": v.unmasked_retain_weight},
        )
    return Path(root)

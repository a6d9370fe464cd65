"""Qwen3's real tokenizer and chat template, rebuilt offline from the files llama.cpp's source ships.

``models/ggml-vocab-qwen2.gguf`` holds the real Qwen byte-level BPE (151,643 tokens and 151,387 merges, shared
by Qwen2 and Qwen3) and ``models/templates/Qwen-Qwen3-0.6B.jinja`` the real Qwen3-0.6B chat template. With
Qwen3's 26 added tokens and its pre-tokenizer this is the tokenizer.json of Qwen/Qwen3-0.6B in everything
a GGUF carries; ``ggml-vocab-qwen2.gguf.inp``/``.out`` are llama.cpp's own expected tokenizations of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bake.demo.assets import QWEN_SPLIT

# Qwen/Qwen3-0.6B's tokenizer_config.json added_tokens_decoder: (content, special), ids 151643 on.
QWEN3_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED = 151643
VOCAB_SIZE = 151936


def llama_cpp_cases(llama_src: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test cases for the Qwen vocabulary: (text, expected ids)."""
    models = Path(llama_src) / "models"
    texts = (models / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (models / "ggml-vocab-qwen2.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids, strict=False)]


def build_qwen3_tokenizer(llama_src: Path, out_dir: Path):
    """Save Qwen3's tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) to ``out_dir``."""
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(str(Path(llama_src) / "models" / "ggml-vocab-qwen2.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:FIRST_ADDED]
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for content, special in QWEN3_ADDED:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    assert tok.token_to_id("</think>") == FIRST_ADDED + len(QWEN3_ADDED) - 1
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (Path(llama_src) / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    fast.save_pretrained(str(out_dir))
    return fast


def build_qwen3_vocab_model(llama_src: Path, out_dir: Path) -> Path:
    """A 2-layer random Qwen3 with the real 151,936-row vocabulary, Qwen3's token ids and the real tokenizer."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    build_qwen3_tokenizer(llama_src, out_dir)
    ids = {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}
    config = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(str(out_dir))
    GenerationConfig(**{**ids, "eos_token_id": [151645, 151643]}, do_sample=False).save_pretrained(str(out_dir))
    return out_dir

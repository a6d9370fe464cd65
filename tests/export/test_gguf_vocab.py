"""GGUF with Qwen3's real vocabulary and chat template (rebuilt from llama.cpp's own copies: tests/qwen_vocab.py):
the tokenizer metadata llama.cpp's converter writes, llama.cpp's own expected tokenizations, and the chat prompt
llama.cpp is given equal to the one transformers renders."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from llama_source import LLAMA_SRC, needs_llama_source, run_converter
from qwen_vocab import FIRST_ADDED, QWEN3_ADDED, VOCAB_SIZE, build_qwen3_vocab_model, llama_cpp_cases

from export.gguf.writer import export_gguf
from export.runtime.llama_loop import GgufChat, LlamaCppLM

pytestmark = needs_llama_source


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert LLAMA_SRC is not None
    return build_qwen3_vocab_model(LLAMA_SRC, tmp_path_factory.mktemp("qwen-vocab") / "model")


@pytest.fixture(scope="module")
def qwen_gguf(qwen_model: Path) -> Path:
    out = qwen_model.parent / "ours.gguf"
    export_gguf(qwen_model, out, gguf_type_name="f16", progress=False)
    return out


def test_the_rebuilt_tokenizer_is_qwens(qwen_model: Path) -> None:
    """The fixture itself: transformers tokenizes llama.cpp's 47 Qwen test strings to llama.cpp's expected ids."""
    from transformers import AutoTokenizer

    assert LLAMA_SRC is not None
    tok = AutoTokenizer.from_pretrained(qwen_model)
    cases = llama_cpp_cases(LLAMA_SRC)
    assert len(cases) >= 40
    assert [tok.encode(text, add_special_tokens=False) for text, _ in cases] == [ids for _, ids in cases]
    assert len(tok) == FIRST_ADDED + len(QWEN3_ADDED)


def test_tokenizer_metadata_equals_llama_cpps_converter(qwen_model: Path, qwen_gguf: Path, tmp_path: Path) -> None:
    """The converter recognizes the real tokenizer as 'qwen2' itself (no hint) and writes the same tokens, types,
    merges, special ids and chat template as we do."""
    run_converter(qwen_model, tmp_path / "ref.gguf", "f16")
    ref, ours = gguf.GGUFReader(str(tmp_path / "ref.gguf")), gguf.GGUFReader(str(qwen_gguf))

    def tokenizer_fields(r: gguf.GGUFReader) -> dict:
        return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}

    theirs = tokenizer_fields(ref)
    assert theirs["tokenizer.ggml.pre"] == "qwen2" and len(theirs["tokenizer.ggml.tokens"]) == VOCAB_SIZE
    assert tokenizer_fields(ours) == theirs
    types = ours.fields["tokenizer.ggml.token_type"].contents()
    assert [types[FIRST_ADDED + i] for i in range(len(QWEN3_ADDED))] == [
        int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED) for _, special in QWEN3_ADDED]


def test_llama_cpp_tokenizes_and_prompts_like_transformers(qwen_model: Path, qwen_gguf: Path) -> None:
    """llama.cpp, reading our file: llama.cpp's expected ids for its Qwen test strings; the chat prompt (the real
    Qwen3 template, thinking off) token for token what transformers renders; <|im_end|> ends a turn."""
    from transformers import AutoTokenizer

    assert LLAMA_SRC is not None
    lm = LlamaCppLM(qwen_gguf)
    cases = llama_cpp_cases(LLAMA_SRC)
    assert [list(lm.llm.tokenize(t.encode(), add_bos=False, special=False)) for t, _ in cases] == [i for _, i in cases]
    tok = AutoTokenizer.from_pretrained(qwen_model)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wie viel ist 2+2? 🦙"}]
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, enable_thinking=False,
                                       return_dict=False)
    chat = GgufChat(lm)
    assert chat.prompt_ids(messages) == expected
    assert 151645 in chat.eos_ids()
    assert chat.template == (LLAMA_SRC / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()

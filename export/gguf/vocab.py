"""The tokenizer metadata of a GGUF file, from the model folder's ``tokenizer.json`` (the ``tokenizers`` library, not
transformers): what llama.cpp's ``convert_hf_to_gguf.py`` writes for a Qwen byte-level BPE tokenizer.

Tokens are listed by id up to the config's ``vocab_size`` (ids the tokenizer does not use become
``[PAD<id>]``, type UNUSED, as the converter pads Qwen's 151,936-row embedding); added tokens are
CONTROL when special (or shaped ``<|...|>``), USER_DEFINED otherwise; the merges, the bos/eos/pad ids and
the chat template come from gguf-py's own ``SpecialVocab`` (llama.cpp's reader of those files). The pre-tokenizer is ``qwen2``: the one
llama.cpp uses for every Qwen2/Qwen3 tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bake.errors import ExportError

PRE_TOKENIZER = "qwen2"


def vocab_tokens(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """The token list and token types, by id, for ``vocab_size`` rows of the embedding."""
    import gguf
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no tokenizer.json; a GGUF carries the tokenizer, so the model folder needs it")
    tok = Tokenizer.from_file(str(path))
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    if by_id and max(by_id) >= vocab_size:
        raise ExportError(f"{path} has token ids up to {max(by_id)}, past the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(added[i].content)
            control = added[i].special or _looks_special(added[i].content)
            types.append(int(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _looks_special(content: str) -> bool:
    """The converter's rule for added tokens not marked special: ``<|...|>`` is a control token all the same."""
    return content.startswith("<|") and content.endswith("|>")


def add_vocab(writer: Any, folder: Path, vocab_size: int) -> None:
    """Write the tokenizer metadata into a ``gguf.GGUFWriter``."""
    import gguf

    tokens, types = vocab_tokens(folder, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(Path(folder), load_merges=True).add_to_gguf(writer, quiet=True)

"""llama.cpp's own source (``LLAMA_CPP_SOURCE``: the ``vendor/llama.cpp`` folder of the llama-cpp-python sdist;
.ci/run provides it): its converter, to compare our GGUF writer with, and its real Qwen files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LLAMA_SRC = Path(os.environ["LLAMA_CPP_SOURCE"]) if os.environ.get("LLAMA_CPP_SOURCE") else None
needs_llama_source = pytest.mark.skipif(LLAMA_SRC is None,
                                        reason="needs llama.cpp's source (LLAMA_CPP_SOURCE; .ci/run provides it)")


def run_converter(folder: Path, out: Path, kind: str, pre_tokenizer: str | None = None) -> None:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on ``folder``. ``pre_tokenizer``: name the pre-tokenizer outright
    (its check is a hash of known tokenizers' output, which a test-trained tokenizer is not among)."""
    assert LLAMA_SRC is not None
    src = str(LLAMA_SRC)
    patch = (f"base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre_tokenizer!r}\n"
             if pre_tokenizer else "")
    script = (f"import sys; sys.path.insert(0, {src!r}); sys.path.insert(0, {src + '/gguf-py'!r})\n"
              f"import conversion.base as base\n{patch}"
              f"sys.argv = ['convert', {str(folder)!r}, '--outfile', {str(out)!r}, '--outtype', {kind!r}]\n"
              f"import runpy; runpy.run_path({src + '/convert_hf_to_gguf.py'!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]

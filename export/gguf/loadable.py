"""Whether llama.cpp can load a GGUF without taking the process down: checked before llama.cpp sees the file.

llama.cpp ends the process (``abort()``, SIGABRT: no exception, no message a caller can catch) on some damaged
files, e.g. one flipped bit in a token string of the vocabulary. So a file is first read with gguf-py and what
llama.cpp's vocabulary loader relies on is checked (exit 2 naming the field): token strings valid UTF-8, token
types llama.cpp knows, special ids inside the vocabulary, merges that are two tokens, one token list as long as
the embedding. What no such check foresees is then met by loading the file once in a child process
(``probe``): an abort there is reported as a clear error, and only a file the child loaded is loaded here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from bake.errors import ExportError

TOKEN_TYPES = range(1, 7)  # llama_token_type: NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
PROBE_SECONDS = 600
FIX = "the file is damaged: export it again (or download it again)"


def ensure_loadable(path: Path) -> None:
    """Refuse what llama.cpp would abort on, by name (``check_loadable``), then load the file once in a child
    process (``probe``): call before llama.cpp loads ``path`` in this process."""
    check_loadable(path)
    probe(path)


def check_loadable(path: Path) -> None:
    """Refuse (``ExportError``, exit 2) a GGUF whose metadata llama.cpp's loader would abort or misread on."""
    from bake.io.gguf_reader import read_gguf

    path = Path(path)
    reader = read_gguf(path)  # the parse verify's candidate and weight proof share; a damaged file is named there
    fields = reader.fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ExportError(f"{path} has no tokenizer.ggml.tokens: no vocabulary; {FIX}")
    n = len(tokens.data)
    for i, part in enumerate(tokens.data):
        try:
            bytes(tokens.parts[part]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ExportError(f"{path}: tokenizer.ggml.tokens: token {i} is not UTF-8 ({e.reason} at byte {e.start}); "
                              f"{FIX}") from e
    types = fields.get("tokenizer.ggml.token_type")
    if types is not None:
        values = types.contents()
        if len(values) != n:
            raise ExportError(f"{path}: tokenizer.ggml.token_type has {len(values)} entries for {n} tokens; {FIX}")
        bad = next((i for i, t in enumerate(values) if t not in TOKEN_TYPES), None)
        if bad is not None:
            raise ExportError(f"{path}: tokenizer.ggml.token_type: token {bad} has type {values[bad]}, which llama.cpp "
                              f"does not know (1 to 6); {FIX}")
    for key, f in fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            value = f.contents()
            if not isinstance(value, int) or not 0 <= value < n:
                raise ExportError(f"{path}: {key} is {value!r}, not a token of its {n}-token vocabulary; {FIX}")
    merges = fields.get("tokenizer.ggml.merges")
    if merges is not None:
        for i, part in enumerate(merges.data):
            try:
                text = bytes(merges.parts[part]).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ExportError(f"{path}: tokenizer.ggml.merges: merge {i} is not UTF-8; {FIX}") from e
            if text.count(" ") != 1 or text.startswith(" ") or text.endswith(" "):
                raise ExportError(f"{path}: tokenizer.ggml.merges: merge {i} ({text!r}) is not two tokens; {FIX}")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is not None and int(embed.shape[-1]) != n:
        raise ExportError(f"{path}: token_embd.weight has {int(embed.shape[-1])} rows for {n} tokens; {FIX}")


def probe(path: Path) -> None:
    """Load ``path`` with llama.cpp in a child process; its abort, crash or error becomes an ``ExportError``."""
    path = Path(path).resolve()
    stat = path.stat()
    _probe(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _probe(path: str, size: int, mtime_ns: int) -> None:  # keyed on size and time: a rewritten file is probed again
    code = ("import sys, llama_cpp\n"
            "llama_cpp.Llama(sys.argv[1], n_ctx=32, n_batch=32, n_threads=1, verbose=False)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                              timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"llama.cpp did not finish loading {path} in {PROBE_SECONDS} s (in a child process); "
                          f"{FIX}") from e
    if done.returncode == -signal.SIGILL:  # the build, not the file: a native build run on a CPU without its ISA
        from export.install import LLAMA_CPP_INSTALL

        raise ExportError(f"llama.cpp died on an illegal instruction loading {path} (in a child process): this "
                          f"llama-cpp-python was built for instructions this CPU lacks. Build it again portable: "
                          f"pip uninstall llama-cpp-python, then {LLAMA_CPP_INSTALL}, adding --no-cache-dir so that "
                          "pip does not reuse the wheel it cached")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ExportError(f"llama.cpp aborted loading {path} ({name}, in a child process, so this command lives on); "
                          f"{FIX}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        raise ExportError(f"llama.cpp cannot load {path} ({last}); {FIX}")

"""What a deployment carries besides its weights, proven against the base (what the bake copies from).

A wrong vocabulary, chat template, stop token or sampling default breaks a deployment as surely as a wrong weight,
and each format carries its own copy. For every candidate:

- **folders** (checkpoint, ONNX, MLX): each tokenizer, chat-template, generation-config and licence file of the base
  is present and byte for byte the base's (a JSON file that differs is named with its first differing field and
  both values; a text file with its first differing line); no such file is there that the base lacks;
  ``config.json``: every field the bake does not change equals the base's, and those it does (``intermediate_size``,
  ``dtype``) equal the bake manifest's (MLX: its bos/eos ids; mlx_check proves the fields that change the math);
- **ONNX**: ``genai_config.json``'s bos/eos/pad ids, context length, vocabulary size and search settings equal
  what the base's config and generation_config.json say, derived here (not by the exporter's code);
- **GGUF**: the tokenizer model and pre-tokenizer, every token string and type (as transformers reads the base's
  tokenizer, not as the exporter's vocabulary builder does), the merges (from tokenizer.json itself), the special
  ids and add-bos/eos flags and the chat template (gguf-py's reader of the base's files) equal what the base gives
  (a damaged byte in one token string is named with its id).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bake.verify.weights.weight_check import Failure

CHANGED_BY_BAKE = ("intermediate_size", "per_layer_config", "dtype", "torch_dtype", "transformers_version")


@dataclass
class CarriedReport:
    """What was compared with the base (``proven``: file names, or ``file field``), and what differs."""

    proven: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, where: str, message: str) -> None:
        self.failures.append(Failure(where, f"{where}: {message}"))

    def to_dict(self) -> dict[str, Any]:
        return {"proven": self.proven, "failures": [asdict(f) for f in self.failures], "passed": self.passed}

    def failure_lines(self, most: int = 5) -> list[str]:
        lines = [f.message for f in self.failures[:most]]
        if len(self.failures) > most:
            lines.append(f"... and {len(self.failures) - most} more (see the JSON report)")
        return lines


def check_folder(folder: Path, base: Path, kind: str, manifest: dict[str, Any] | None) -> CarriedReport:
    """The carried files and config of a checkpoint, ONNX or MLX folder (``kind``) against the base."""
    from bake.write.checkpoint import CARRIED_PATTERNS

    folder, base = Path(folder), Path(base)
    report = CarriedReport()
    names = {p.name for pattern in CARRIED_PATTERNS for p in base.glob(pattern) if p.is_file()}
    extra = {p.name for pattern in CARRIED_PATTERNS for p in folder.glob(pattern) if p.is_file()} - names
    for name in sorted(extra):
        report.fail(name, "is not a file of the base: the deployment carries a tokenizer or generation file the base "
                          "does not have")
    for name in sorted(names):
        mine = folder / name
        if not mine.is_file():
            report.fail(name, "is missing: the base has it, so the deployment must carry it")
            continue
        report.proven.append(name)
        difference = _difference(mine.read_bytes(), (base / name).read_bytes(), name)
        if difference:
            report.fail(name, f"differs from the base's: {difference}")
    _config(folder, base, kind, manifest, report)
    if kind == "onnx":
        _genai_config(folder, base, report)
    return report


def _difference(mine: bytes, theirs: bytes, name: str) -> str | None:
    """Where two files differ, in words (None: byte for byte the same)."""
    if mine == theirs:
        return None
    if name.endswith(".json"):
        try:
            a, b = json.loads(mine), json.loads(theirs)
        except (ValueError, UnicodeDecodeError):
            return "it is not valid JSON any more" if _valid_json(theirs) else "the bytes differ"
        where = next(_json_paths(a, b), None)
        if where is not None:
            path, got, want = where
            return f"{path or '(the whole file)'} is {_short(got)}, the base's is {_short(want)}"
        return "the same JSON, written differently"
    for i, (x, y) in enumerate(zip(mine.split(b"\n"), theirs.split(b"\n"))):
        if x != y:
            return f"line {i + 1} is {_short(x.decode('utf-8', 'replace'))}, the base's is " \
                   f"{_short(y.decode('utf-8', 'replace'))}"
    return f"{len(mine)} bytes, the base's {len(theirs)}"


def _valid_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _json_paths(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """The first paths (dotted; list items by [i]) where two JSON values differ, depth first."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                yield sub, a.get(key, "(absent)"), b.get(key, "(absent)")
            elif a[key] != b[key]:
                yield from _json_paths(a[key], b[key], sub)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                yield from _json_paths(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def _short(value: Any, most: int = 80) -> str:
    """A value as it would be written: a string quoted, anything else as JSON; cut at ``most`` characters."""
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= most else text[:most] + "..."


def _config(folder: Path, base: Path, kind: str, manifest: dict[str, Any] | None, report: CarriedReport) -> None:
    from bake.io.base_model import read_config
    from bake.verify.weights.bake_tensors import config_widths

    mine, theirs = read_config(folder), read_config(base)
    report.proven.append("config.json")
    if kind == "mlx":  # mlx-lm's own config: the ids here, the fields that change the math in mlx_check
        for key in ("bos_token_id", "eos_token_id"):
            if mine.get(key) != theirs.get(key):
                report.fail(f"config.json {key}", f"is {mine.get(key)!r}, the base's is {theirs.get(key)!r}")
        return
    for key in sorted((set(mine) | set(theirs)) - set(CHANGED_BY_BAKE)):
        if mine.get(key, "(absent)") != theirs.get(key, "(absent)"):
            report.fail(f"config.json {key}", f"is {_short(mine.get(key, '(absent)'))}, the base's is "
                                              f"{_short(theirs.get(key, '(absent)'))}: the bake does not change it")
    if manifest is not None:
        for key in ("intermediate_size", "dtype"):
            if mine.get(key) != manifest[key]:
                report.fail(f"config.json {key}", f"is {mine.get(key)!r}, but the bake manifest records "
                                                  f"{manifest[key]!r}")
        widths = config_widths(mine)
        recorded = manifest.get("mlp_widths") or [manifest["intermediate_size"]] * len(widths)
        report.proven.append("config.json per-layer MLP widths")
        if widths != recorded:
            layer = next((i for i, (a, b) in enumerate(zip(widths, recorded)) if a != b), min(len(widths),
                                                                                              len(recorded)))
            report.fail("config.json per_layer_config", f"gives layer {layer} "
                        f"{widths[layer] if layer < len(widths) else 'no'} MLP neurons, but the bake manifest records "
                        f"{recorded[layer] if layer < len(recorded) else 'no layer'} (mlp_widths)")


def base_generation(base: Path) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The base's config.json and generation_config.json (both checked; {} where it has no generation config) and
    its end-of-turn ids: the generation config's ``eos_token_id``, else config.json's, as a list (none: empty)."""
    from bake.errors import BaseModelError
    from bake.io.base_model import read_config
    from bake.io.json_files import read_json_object

    config = read_config(base)
    gen_path = base / "generation_config.json"
    gen = read_json_object(gen_path, BaseModelError, "repair the base", "the base's generation config") \
        if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    return config, gen, eos if isinstance(eos, list) else [] if eos is None else [eos]


def _genai_config(folder: Path, base: Path, report: CarriedReport) -> None:
    """genai_config.json's ids, lengths and search settings against the base's config and generation config."""
    from bake.errors import ExportError
    from bake.io.json_files import read_json_object

    path = folder / "genai_config.json"
    if not path.is_file():
        report.fail("genai_config.json", "is missing: onnxruntime-genai cannot run the folder without it")
        return
    genai = read_json_object(path, ExportError, "export again", "onnxruntime-genai's configuration")
    config, gen, eos = base_generation(base)
    pads = [gen.get("pad_token_id"), config.get("pad_token_id"), *eos[:1]]
    want = {
        "model.eos_token_id": eos if len(eos) != 1 else eos[0],
        "model.bos_token_id": next((v for v in (gen.get("bos_token_id"), config.get("bos_token_id")) if v is not None),
                                   "(absent)"),
        "model.pad_token_id": next((v for v in pads if v is not None), "(absent)"),
        "model.context_length": int(config.get("max_position_embeddings", 32768)),
        "model.vocab_size": int(config["vocab_size"]),
        "search.max_length": int(config.get("max_position_embeddings", 32768)),
        "search.do_sample": bool(gen.get("do_sample", False)),
        "search.temperature": float(gen.get("temperature", 1.0)),
        "search.top_k": int(gen.get("top_k", 50)),
        "search.top_p": float(gen.get("top_p", 1.0)),
        "search.repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
        "search.num_beams": 1,
    }
    for key, expected in want.items():
        section, name = key.split(".")
        got = (genai.get(section) or {}).get(name, "(absent)") if isinstance(genai.get(section), dict) else "(absent)"
        report.proven.append(f"genai_config.json {key}")
        if got != expected:
            report.fail(f"genai_config.json {key}", f"is {got!r}, but the base's config and generation_config.json "
                                                   f"give {expected!r}")


def check_gguf(path: Path, base: Path) -> CarriedReport:
    """A GGUF's tokenizer metadata and chat template against what the writer makes of the base's tokenizer files."""
    import gguf

    from bake.io.base_model import read_config
    from bake.io.gguf_reader import read_gguf
    from bake.verify.weights.gguf_check import field
    from export.gguf.vocab import PRE_TOKENIZER

    report = CarriedReport()
    reader = read_gguf(path)
    vocab_size = int(read_config(base)["vocab_size"])
    tokens, types = expected_vocab(Path(base), vocab_size)
    special = gguf.SpecialVocab(Path(base), load_merges=False)
    want: dict[str, Any] = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": PRE_TOKENIZER,
                            "tokenizer.ggml.merges": expected_merges(Path(base)),
                            "tokenizer.chat_template": special.chat_template}
    keys = gguf.Keys.Tokenizer  # the keys gguf-py's writer files each id and flag under (pad: padding_token_id)
    for name, token_id in special.special_token_ids.items():
        want[getattr(keys, f"{name.upper()}_ID", f"tokenizer.ggml.{name}_token_id")] = token_id
    for name, value in special.add_special_token.items():
        want[getattr(keys, f"ADD_{name.upper()}", f"tokenizer.ggml.add_{name}_token")] = value
    got_tokens = _strings(reader, "tokenizer.ggml.tokens")
    got_types = field(reader, "tokenizer.ggml.token_type")
    report.proven += ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]
    _compare_list(report, "tokenizer.ggml.tokens", got_tokens, tokens, "token")
    _compare_list(report, "tokenizer.ggml.token_type", list(got_types) if isinstance(got_types, list) else got_types,
                  types, "token")
    for key, expected in want.items():
        report.proven.append(key)
        got = _strings(reader, key) if key == "tokenizer.ggml.merges" else field(reader, key)
        if isinstance(expected, list):
            _compare_list(report, key, got, expected, "merge")
        elif got != expected:
            report.fail(key, f"is {_short(got)}, but the base's tokenizer files give {_short(expected)}")
    return report


def expected_vocab(base: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """The GGUF token list and types the base's tokenizer gives, read by transformers (``AutoTokenizer``: its token
    strings, byte-level encoded as GPT-2's BPE stores them, and its added tokens), not by the exporter's vocabulary
    builder: a defect there shows here. llama.cpp's converter's rules: an id the tokenizer does not use is
    ``[PAD<id>]`` (UNUSED); an added token is CONTROL when special or shaped ``<|...|>``, else USER_DEFINED; every
    other token NORMAL."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            content = added[i].content
            tokens.append(content)
            control = added[i].special or (content.startswith("<|") and content.endswith("|>"))
            types.append(int(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    return tokens, types


def expected_merges(base: Path) -> list[str]:
    """The BPE merges of the base's tokenizer.json as the GGUF stores them ("left right"), read from the JSON."""
    data = json.loads((Path(base) / "tokenizer.json").read_text(encoding="utf-8"))
    merges = (data.get("model") or {}).get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _strings(reader: Any, key: str) -> list[str] | None:
    """A string array of the file as text, each entry decoded on its own (a damaged entry as its repr)."""
    f = reader.fields.get(key)
    if f is None:
        return None
    out = []
    for i in f.data:
        raw = bytes(f.parts[i])
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(f"(not UTF-8: {raw!r})")
    return out


def _compare_list(report: CarriedReport, key: str, got: Any, want: list[Any], what: str) -> None:
    if not isinstance(got, list):
        report.fail(key, f"is {_short(got)}, not the list of {len(want)} entries the base's tokenizer gives")
        return
    if len(got) != len(want):
        report.fail(key, f"has {len(got)} entries, but the base's tokenizer gives {len(want)}")
        return
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if bad:
        i = bad[0]
        report.fail(key, f"{what} {i} is {_short(got[i])}, the base's is {_short(want[i])} ({len(bad)} of {len(want)} "
                         "differ)")

"""The Ollama ``Modelfile`` beside a GGUF (when there is one), proven against the base: FROM names that very file, its TEMPLATE renders
chats exactly as the base's chat template does with thinking off (``add_generation_prompt=True,
enable_thinking=False``, as the gates were trained), its stop strings are the base's end-of-turn tokens and its
sampling defaults the base's ``generation_config.json``.

The TEMPLATE is Go ``text/template`` (Ollama's engine). It is rendered here by a small interpreter of the part of
that language a chat template of this kind uses (``range .Messages``, ``.Role``, ``.Content``, ``if``/``else`` with
``eq``, ``and``, ``not``, ``$.`` and trim markers), written for this check, not the exporter's; a TEMPLATE outside
that part is reported as not provable rather than passed. Go itself renders it in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.verify.carried import CarriedReport, base_generation

CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a fact."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "One"},
     {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three"}],
]
_OLLAMA_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                 "repetition_penalty": "repeat_penalty"}


@dataclass
class Modelfile:
    """The instructions of a Modelfile that verify reads."""

    source: str | None
    template: str | None
    stops: list[str]
    parameters: dict[str, str]


def parse_modelfile(text: str) -> Modelfile:
    """FROM, TEMPLATE (a triple-quoted or quoted string), PARAMETER stop ... and the other PARAMETERs."""
    source, template, stops, params = None, None, [], {}
    m = re.search(r'^TEMPLATE\s+"""(.*?)"""', text, flags=re.S | re.M) or re.search(
        r'^TEMPLATE\s+"((?:[^"\\]|\\.)*)"', text, flags=re.M)
    if m:
        template = m.group(1)
        text = text[:m.start()] + text[m.end():]
    for line in text.splitlines():
        words = line.strip().split(None, 2)
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM" and len(words) > 1:
            source = line.strip()[4:].strip()
        elif words[0].upper() == "PARAMETER" and len(words) == 3:
            value = words[2].strip()
            value = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
            if words[1] == "stop":
                stops.append(value)
            else:
                params[words[1]] = value
    return Modelfile(source, template, stops, params)


def check_modelfile(gguf_path: Path, base: Path) -> CarriedReport:
    """The Modelfile beside ``gguf_path`` (``<stem>.Modelfile``) against the base folder ``base``."""
    from transformers import AutoTokenizer

    report = CarriedReport()
    path = gguf_path.with_name(gguf_path.stem + ".Modelfile")
    name = path.name
    if not path.is_file():  # a GGUF copied on its own: nothing of Ollama's to prove
        return report
    try:
        modelfile = parse_modelfile(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        report.fail(name, f"cannot be read ({e})")
        return report
    report.proven.append(name)
    if modelfile.source not in (f"./{gguf_path.name}", gguf_path.name):
        report.fail(f"{name} FROM", f"is {modelfile.source!r}, not this file (./{gguf_path.name})")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if modelfile.template is None:
        report.fail(f"{name} TEMPLATE", "is missing: Ollama would use a bare {{ .Prompt }}")
    else:
        for chat in CHATS:
            want = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False)
            try:
                got = render_go_template(modelfile.template, chat)
            except TemplateError as e:
                report.fail(f"{name} TEMPLATE", f"cannot be proven: {e}")
                break
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                report.fail(f"{name} TEMPLATE", f"renders a {len(chat)}-message chat as {got[at:at + 40]!r} at "
                                                f"character {at}, where the base's chat template with thinking off "
                                                f"gives {want[at:at + 40]!r}")
                break
    _, generation, eos = base_generation(base)
    ends = {tokenizer.convert_ids_to_tokens(int(i)) for i in eos}
    missing = sorted(t for t in ends if t not in modelfile.stops)
    if missing:
        report.fail(f"{name} stop", f"lacks {', '.join(missing)}: the base's end-of-turn tokens, so Ollama would run "
                                    "past the reply")
    for key, ollama in _OLLAMA_NAMES.items():
        want_value = generation.get(key)
        got_value = modelfile.parameters.get(ollama)
        if want_value is not None and (got_value is None or float(got_value) != float(want_value)):
            report.fail(f"{name} {ollama}", f"is {got_value!r}, but the base's generation_config.json gives "
                                            f"{key} {want_value!r}")
    return report


class TemplateError(Exception):
    """A Go template construct outside the part this check renders."""


_TOKEN = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go_template(template: str, messages: list[dict[str, str]]) -> str:
    """Render a Go ``text/template`` chat template over ``.Messages`` (Role, Content), as Ollama does for a chat."""
    parts: list[tuple[str, str]] = []  # ("text", s) or ("action", s), with Go's trim markers applied
    pos = 0
    for m in _TOKEN.finditer(template):
        text = template[pos:m.start()]
        if m.group(1) == "-":
            text = text.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim":
            text = text.lstrip(" \t\r\n")
            parts.pop()
        parts.append(("text", text))
        parts.append(("action", m.group(2)))
        if m.group(3) == "-":
            parts.append(("trim", ""))
        pos = m.end()
    tail = template[pos:]
    if parts and parts[-1][0] == "trim":
        tail = tail.lstrip(" \t\r\n")
        parts.pop()
    parts.append(("text", tail))
    tree, rest = _parse([p for p in parts if p[0] != "trim"], 0)
    if rest != len([p for p in parts if p[0] != "trim"]):
        raise TemplateError("an {{ end }} or {{ else }} without its {{ range }} or {{ if }}")
    root = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return _run(tree, root, root)


def _parse(parts: list[tuple[str, str]], i: int, until: tuple[str, ...] = ()) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(parts):
        kind, value = parts[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if value.startswith("/*") or value == "":
            i += 1
            continue
        if word in until:
            return nodes, i
        if word == "range":
            body, i = _parse(parts, i + 1, ("end",))
            nodes.append(("range", value[5:].strip(), body))
            i += 1
        elif word == "if":
            then, i = _parse(parts, i + 1, ("end", "else"))
            other: list[Any] = []
            if parts[i][1].split(None, 1)[0] == "else":
                if parts[i][1][4:].strip():
                    raise TemplateError("'else if' chains")
                other, i = _parse(parts, i + 1, ("end",))
            nodes.append(("if", value[2:].strip(), then, other))
            i += 1
        elif word in ("end", "else"):
            raise TemplateError(f"an unexpected {{{{ {word} }}}}")
        else:
            nodes.append(("value", value))
            i += 1
    if until:
        raise TemplateError(f"a block without its {{{{ {until[0]} }}}}")
    return nodes, i


def _value(expr: str, dot: Any, root: Any) -> Any:
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        return _value(expr[1:-1], dot, root)
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1].encode().decode("unicode_escape")
    words = _split(expr)
    if len(words) > 1:
        fn, args = words[0], [_value(w, dot, root) for w in words[1:]]
        if fn == "eq":
            return any(args[0] == a for a in args[1:])
        if fn == "ne":
            return args[0] != args[1]
        if fn == "and":
            return all(args)
        if fn == "or":
            return any(args)
        if fn == "not":
            return not args[0]
        raise TemplateError(f"the function {fn!r}")
    if expr == ".":
        return dot
    if expr.startswith("$."):
        return _field(root, expr[2:])
    if expr.startswith("."):
        return _field(dot, expr[1:])
    raise TemplateError(f"the expression {expr!r}")


def _field(obj: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(obj, dict) or name not in obj:
            raise TemplateError(f"the field .{name}")
        obj = obj[name]
    return obj


def _split(expr: str) -> list[str]:
    out, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == '"' and depth == 0:
            quote = not quote
        if ch == "(" and not quote:
            depth += 1
        if ch == ")" and not quote:
            depth -= 1
        if ch.isspace() and depth == 0 and not quote:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + ([cur] if cur else [])


def _run(nodes: list[Any], dot: Any, root: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            value = _value(node[1], dot, root)
            if isinstance(value, (dict, list)):
                raise TemplateError(f"printing {node[1]!r}")
            out.append(str(value))
        elif node[0] == "range":
            if ":=" in node[1]:
                raise TemplateError("range with variables")
            for item in _value(node[1], dot, root):
                out.append(_run(node[2], item, root))
        else:
            out.append(_run(node[2] if _value(node[1], dot, root) else node[3], dot, root))
    return "".join(out)

"""Weight-level proof that a GGUF file is the float or block-quantized image of a bake.

Every tensor of the file (read with gguf-py's reader, dequantized with its numpy dequantizers, not the writer's
code) is traced back to the bake tensors it was made from: ``attn_qkv`` is q, k and v stacked; a layer's
``ffn_gate``/``ffn_up`` rows and ``ffn_down`` columns are the neurons it keeps (all of them as-is; for a ragged
file, those whose ``down_proj`` column in the bake is nonzero, in order) followed by zero neurons up to the
file's width. Then:

- F32 tensors must be the bake's values exactly, F16 and BF16 ones the bake's rounded once to that type;
- block-quantized tensors (Q8_0, Q4_0, Q5_0, Q5_1 from gguf-py; Q4_K, Q5_K, Q6_K from llama.cpp's quantizer)
  must lie within half a step of the bake's, or as far as the clamped end of the code range for a weight past
  it (``quantization_bound``: the step is the block's stored scale, and for the types whose codes are picked
  before the scale is stored as float16 also that rounding, which is coarse for a subnormal float16 scale, as
  small weights get at 0.6B scale); in the symmetric types every bake weight that is exactly 0 (an off
  neuron, a padding neuron) must come back as 0 (Q5_1 and the K-quants with a block minimum store ``step x
  code - min`` and may not hit 0 exactly);
- the per-layer ``feed_forward_length`` must be the widths the bake gives, and every bake tensor must be used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import ExportError
from bake.io.gguf_reader import drop_pages, read_gguf
from bake.verify.weights.bake_tensors import BakeTensors
from bake.verify.weights.weight_check import Failure, WeightReport
from bake.verify.weights.weight_map import LiveNeurons
from bake.write.manifest import GGUF_LAYOUT_KEY, GGUF_MANIFEST_KEY

CHUNK_ELEMENTS = 1 << 22  # elements proven at once: 4M, about 16 MB per float32 temporary
PAD_SLACK = 256  # a ragged layer's width rounds up to at most one K-quant block (256) of zero neurons
Found = tuple[np.ndarray, Callable[[tuple[int, ...]], tuple[str, dict[str, Any]]]]  # bad elements; what to say
SLACK = 1e-3  # of a step: float32 rounding of the dequantized value


def field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def embedded_manifest(reader: Any, where: str = "the GGUF") -> dict[str, Any] | None:
    """The bake manifest a lambda-bake GGUF carries, checked field by field as a folder's is; None when it has none
    or it is not a JSON object; a damaged field is a clear error naming ``where``."""
    from bake.write.manifest import check_manifest

    raw = field(reader, GGUF_MANIFEST_KEY)
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return check_manifest(value, f"{where} ({GGUF_MANIFEST_KEY})", "the file is damaged: export it again")


def check_gguf_weights(path: Path, bake: BakeTensors) -> WeightReport:
    """Check every tensor of the GGUF at ``path`` against ``bake``."""
    started = time.monotonic()
    reader = read_gguf(path)
    checker = _Checker(reader, bake, path)
    checker.run()
    return WeightReport(str(path), bake.label, len(reader.tensors), checker.checked, checker.elements,
                        checker.max_steps, checker.failures, round(time.monotonic() - started, 3))


# per block type: (first code, last code, whether the codes are picked with the float32 scale before it is
# stored as float16 (gguf-py's and llama.cpp's Q8_0/Q4_0/Q5_0/Q5_1) or with the stored scales (the K-quants))
CODES = {"Q8_0": (-127, 127, True), "Q4_0": (-8, 7, True), "Q5_0": (-16, 15, True), "Q5_1": (0, 31, True),
         "Q4_K": (0, 15, False), "Q5_K": (0, 31, False), "Q6_K": (-32, 31, False)}
SYMMETRIC = {"Q8_0", "Q4_0", "Q5_0", "Q6_K"}  # value = step x code: a zero weight must come back as 0


def quantization_bound(qtype: Any, raw: np.ndarray, got: np.ndarray, want: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a block-quantized tensor (``raw`` its blocks, ``got`` them dequantized, ``want`` the bake's values, all
    [rows, cols]): the error, the most a correct quantization allows, and the step, per element.

    Every type here stores ``value = step x code + offset`` with a per-block (K-quants: per-sub-block) step and
    offset, and its quantizer takes the nearest code, clamped to the type's code range. So a correct element is
    within half a step, or, past the ends of the range, as far as the value it was clamped from. Where the codes
    were picked with the float32 step and offset that were then stored as float16, each may be off by ``h``
    (half of float16's spacing there: large for a subnormal scale, as small weights get at 0.6B scale), which
    moves the value by up to ``(1 + |code|) h``."""
    from gguf import GGML_QUANT_SIZES

    with np.errstate(invalid="ignore", over="ignore"):  # a damaged block's inf or NaN scale fails in _Checker
        return _bound(qtype.name, GGML_QUANT_SIZES[qtype][1], raw, got, want)


def _bound(name: str, size: int, raw: np.ndarray, got: np.ndarray, want: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    step, offset = (a.reshape(want.shape) for a in _grid(name, raw.reshape(-1, size)))
    return np.abs(got - want), _allowed(name, step, offset, got, want), np.abs(step)


def _allowed(name: str, step: np.ndarray, offset: np.ndarray, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The bound of ``quantization_bound`` element by element (any shape): ``step`` and ``offset`` are each element's
    block step (signed) and offset."""
    first, last, rounded_after = CODES[name]
    lo, hi = np.minimum(first * step, last * step) + offset, np.maximum(first * step, last * step) + offset
    s = np.abs(step)
    outside = np.maximum(np.maximum(lo - want, want - hi), 0.0)
    if rounded_after:
        h = np.spacing(s.astype(np.float16)).astype(np.float32) / 2
        h_off = np.spacing(np.abs(offset).astype(np.float16)).astype(np.float32) / 2 * (offset != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.where(s > 0, np.abs(got - offset) / np.where(s > 0, s, 1), float(max(-first, last)))
        allowed = np.maximum((s + h) / 2, outside + h) + codes * h + h_off
    else:
        h = np.zeros_like(s)
        allowed = np.maximum(s / 2, outside)
    float32_rounding = 4 * np.finfo(np.float32).eps * (np.abs(got) + np.abs(offset))
    return allowed + SLACK * np.maximum(s, h) + float32_rounding


def _grid(name: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step and offset of every element of ``blocks`` [n, bytes] (the field layouts gguf-py's dequantizers
    read, gguf/quants.py)."""
    from gguf.quants import Q4_K

    def f16(a: np.ndarray) -> np.ndarray:
        return a.copy().view(np.float16).astype(np.float32)

    if name in ("Q8_0", "Q4_0", "Q5_0", "Q5_1"):  # blocks of 32: d (float16) first; Q5_1's offset m next
        d = np.repeat(f16(blocks[:, :2]), 32, axis=1)
        m = np.repeat(f16(blocks[:, 2:4]), 32, axis=1) if name == "Q5_1" else np.zeros_like(d)
        return d, m
    if name in ("Q4_K", "Q5_K"):  # d, dmin (float16), 8 sub-blocks of 32 with 6-bit scales and mins
        sc, mins = Q4_K.get_scale_min(blocks[:, 4:4 + Q4_K.K_SCALE_SIZE])
        d = f16(blocks[:, :2]) * sc.astype(np.float32)
        m = f16(blocks[:, 2:4]) * mins.astype(np.float32)
        return np.repeat(d, 32, axis=1), -np.repeat(m, 32, axis=1)
    if name == "Q6_K":  # ql, qh, 16 int8 scales of 16 elements, d (float16) last
        scales = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
        d = np.repeat(f16(blocks[:, 208:210]) * scales, 16, axis=1)
        return d, np.zeros_like(d)
    raise ExportError(f"no quantization bound for {name}")  # unreachable: run() only sends CODES' types


class _Checker:
    def __init__(self, reader: Any, bake: BakeTensors, path: Path):
        self.reader, self.bake, self.path = reader, bake, path
        self.arch = str(field(reader, "general.architecture"))
        self.layers = int(bake.config["num_hidden_layers"])
        blocks = field(reader, f"{self.arch}.block_count")
        self.blocks = int(blocks) if isinstance(blocks, int) and not isinstance(blocks, bool) else None
        self.tied = bool(bake.config.get("tie_word_embeddings", False))
        self.ragged = field(reader, GGUF_LAYOUT_KEY) == "ragged" or self.arch == "openelm"
        self.failures: list[Failure] = []
        self.checked = self.elements = 0
        self.max_steps: float | None = None
        self.used: set[str] = set()
        self.live = LiveNeurons(bake)
        self.max_width = int(bake.config["intermediate_size"]) + PAD_SLACK

    def fail(self, tensor: str, message: str, worst: dict[str, Any] | None = None) -> None:
        self.failures.append(Failure(tensor, f"{tensor}: {message}", worst))

    def neurons(self, i: int) -> np.ndarray | None:
        return self.live(i) if self.ragged else None

    def expected(self, name: str) -> tuple[np.ndarray, list[str]] | None:
        """The float32 values the GGUF tensor ``name`` must hold (HF orientation), and the bake tensors used."""
        layer = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
                 "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
        top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
        if name in top:
            return self.values(top[name]), [top[name]]
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight" or not parts[1].isdigit():
            return None
        i, kind, hf = int(parts[1]), parts[2], f"model.layers.{parts[1]}"
        if self.blocks is not None and i >= self.blocks:
            raise ExportError(f"{self.path}: tensor {name} names block {i}, but the file has {self.blocks} blocks "
                              f"({self.arch}.block_count): the file is damaged; export it again")
        if i >= self.layers:
            return None  # a file with more blocks than the bake's layers: made from another model
        if kind in layer:
            return self.values(f"{hf}.{layer[kind]}.weight"), [f"{hf}.{layer[kind]}.weight"]
        if kind == "attn_qkv":
            names = [f"{hf}.self_attn.{p}_proj.weight" for p in "qkv"]
            return np.concatenate([self.values(n) for n in names]), names
        if kind in ("ffn_gate", "ffn_up", "ffn_down"):
            src = f"{hf}.mlp.{kind[4:]}_proj.weight"
            w, keep = self.values(src), self.neurons(i)
            if keep is not None:
                w = w[:, keep] if kind == "ffn_down" else w[keep]
            return w, [src]
        return None

    def values(self, name: str) -> np.ndarray:
        return self.bake.tensor(name).values()

    def run(self) -> None:
        from gguf import GGMLQuantizationType as Q
        from gguf.quants import dequantize

        widths = {}
        for t in self.reader.tensors:
            name, qtype = t.name, t.tensor_type
            found = self.expected(name)
            if found is None:
                self.fail(name, "is not a tensor of the bake nor made from one; the weight check cannot account for it")
                continue
            want, sources = found
            self.used.update(sources)
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
            if name.split(".")[-2] in ("ffn_gate", "ffn_up", "ffn_down") and len(shape) == 2:
                down = name.split(".")[-2] == "ffn_down"
                width = shape[1] if down else shape[0]
                if width > self.max_width:  # a damaged dimension: padding the bake's rows to it would exhaust memory
                    self.fail(name, f"is {width} neurons wide, more than the bake's {self.max_width - PAD_SLACK} plus "
                                    f"one quantization block: the file is damaged; export it again")
                    continue
                widths[int(name.split(".")[1])] = width
                want = _pad_to(want, shape, down=down)
            if want is None or want.shape != shape:
                self.fail(name, f"shape {list(shape)}, but the bake's {' + '.join(sources)} gives "
                                f"{list(None if want is None else want.shape)}")
                continue
            self.checked += 1
            self.elements += want.size
            if qtype not in (Q.F32, Q.F16, Q.BF16) and qtype.name not in CODES:
                self.fail(name, f"is {qtype.name}, which the weight check does not cover (F32, F16, BF16, "
                                f"{', '.join(CODES)})")
                continue
            self.tensor(name, qtype, np.asarray(t.data), want, dequantize)
            drop_pages(self.reader)
        self.check_widths(widths)
        self.hyperparameters(widths)
        for name in sorted(set(self.bake.names()) - self.used):
            if name == "lm_head.weight" and self.tied:
                continue
            self.fail(name, "this bake tensor is not in the GGUF: no tensor is made from it")

    def hyperparameters(self, widths: dict[int, int]) -> None:
        """Every key that changes the math equals what the bake's config gives (derived here, not by the writer):
        a wrong norm epsilon or RoPE base leaves every weight right and every logit a little wrong, and no logit
        budget that quantized activations need can tell it from rounding."""
        c = self.bake.config
        heads = int(c["num_attention_heads"])
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
        want: dict[str, Any] = {
            "block_count": int(c["num_hidden_layers"]), "context_length": int(c.get("max_position_embeddings", 32768)),
            "embedding_length": int(c["hidden_size"]), "attention.head_count": heads,
            "attention.head_count_kv": int(c.get("num_key_value_heads") or heads),
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "rope.freq_base": float(np.float32(theta)),
            "attention.layer_norm_rms_epsilon": float(np.float32(c.get("rms_norm_eps", 1e-6))),
            "feed_forward_length": [widths[i] for i in sorted(widths)] if self.ragged else int(c["intermediate_size"]),
        }
        if self.ragged:
            want["rope.dimension_count"] = head_dim
        arch = "openelm" if self.ragged else "qwen3"
        if self.arch != arch:
            self.fail("general.architecture", f"is {self.arch!r}, but a {'ragged' if self.ragged else 'as-is'} file of "
                                              f"this bake is {arch!r}")
            return
        for key, expected in want.items():
            got = field(self.reader, f"{arch}.{key}")
            per_layer = isinstance(got, list) and not isinstance(expected, list)
            same = (all(g == expected for g in got) and len(got) == want["block_count"]) if per_layer else got == expected
            if not same:
                self.fail(f"{arch}.{key}", f"is {got!r}, but the bake's config gives {expected!r}: a hyperparameter "
                                           "that changes the math")

    def tensor(self, name: str, qtype: Any, data: np.ndarray, want: np.ndarray, dequantize: Any) -> None:
        """Prove one tensor a few rows at a time (the bound's temporaries of a whole embedding would be ten times its
        float32 size); the first failing rows name it."""
        from gguf import GGMLQuantizationType as Q

        vector = want.ndim == 1
        rows, cols = (1, want.size) if vector else want.shape
        want = want.reshape(rows, cols)
        try:
            raw = data.reshape(rows, -1)  # a row of the tensor per row: its values, or its blocks' bytes
        except ValueError as e:
            self.fail(name, f"holds {data.size} values or bytes, not {rows} rows of {cols} ({e})")
            return
        check = self.exact if qtype in (Q.F32, Q.F16, Q.BF16) else self.quantized
        step = max(1, CHUNK_ELEMENTS // max(cols, 1))
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            try:
                got = dequantize(raw[r0:r1], qtype).reshape(r1 - r0, cols).astype(np.float32)
            except Exception as e:  # noqa: BLE001 - a damaged block the dequantizer cannot read
                self.fail(name, f"cannot be dequantized as {qtype.name} ({e})")
                return
            found = check(qtype, raw[r0:r1], got, want[r0:r1])
            if found is not None:
                bad, describe = found
                at = tuple(int(i) for i in np.argwhere(bad)[0])
                index = [at[1]] if vector else [at[0] + r0, at[1]]
                message, worst = describe(at)
                self.fail(name, f"element {index} {message}", {"index": index, **worst})
                return

    def exact(self, qtype: Any, raw: np.ndarray, got: np.ndarray, want: np.ndarray) -> Found | None:
        """The elements of a float tensor's rows that are not the bake's rounded to its type, and how to say so."""
        import ml_dtypes
        from gguf import GGMLQuantizationType as Q

        if qtype == Q.F16:
            with np.errstate(over="ignore"):
                want = want.astype(np.float16).astype(np.float32)
        elif qtype == Q.BF16:  # ml_dtypes' rounding (to nearest, ties to even), not the writer's gguf-py call
            want = want.astype(ml_dtypes.bfloat16).astype(np.float32)
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
        if not bad.any():
            return None

        def describe(at: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
            return (f"is {float(got[at]):.8g}, but the bake's value rounded to {qtype.name} is {float(want[at]):.8g} "
                    f"(bound 0); {int(bad.sum())} of the {bad.size} elements of these rows differ",
                    {"value": float(got[at]), "expected": float(want[at]), "bound": 0.0})

        return bad, describe

    def quantized(self, qtype: Any, raw: np.ndarray, got: np.ndarray, want: np.ndarray) -> Found | None:
        """The elements of a block-quantized tensor's rows outside the bound, and how to say so.

        An element within half a step of the bake is within the bound, whatever else the bound allows; the bound's
        costlier terms are computed only for the others (a few per block in a correct file): two thirds of the
        proof's time otherwise."""
        from gguf import GGML_QUANT_SIZES

        name = qtype.name
        step, offset = (a.reshape(want.shape) for a in _grid(name, raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])))
        s = np.abs(step)
        err = np.abs(got - want)
        with np.errstate(invalid="ignore", over="ignore"):  # a damaged block's inf or NaN scale fails below
            steps = np.divide(err, s, out=np.zeros_like(err), where=s > 0)  # a zero step's error: judged below
            rest = np.flatnonzero(~(2 * err <= s))  # NaN and inf included
            allowed = np.zeros_like(err)  # only read where rest puts the bound
            allowed.flat[rest] = _allowed(name, *(a.flat[rest] for a in (step, offset, got, want)))
            bad = np.zeros(err.shape, bool)
            bad.flat[rest] = ~(err.flat[rest] <= allowed.flat[rest])
        zero_wrong = (want == 0) & (got != 0) & (name in SYMMETRIC)
        # NaN or inf on either side (a damaged scale) is never within a bound
        bad |= zero_wrong | (~np.isfinite(got) & np.isfinite(want))
        most = float(steps.max()) if steps.size else 0.0
        if not np.isfinite(most):
            finite = steps[np.isfinite(steps)]
            most = float(finite.max()) if finite.size else 0.0
        self.max_steps = max(self.max_steps or 0.0, most)
        if not bad.any():
            return None
        steps[(s == 0) & (err != 0)] = np.inf

        def describe(at: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
            bound = float(allowed[at] / s[at]) if s[at] > 0 else float("inf")
            return (f"dequantizes to {float(got[at]):.6g}, but the bake has {float(want[at]):.6g}: "
                    f"{float(steps[at]):.2f} steps off (bound {bound:.2f} of its block's scale {float(s[at]):.3g}"
                    f"{'; a zero weight must stay 0' if zero_wrong[at] else ''}, {name})",
                    {"value": float(got[at]), "expected": float(want[at]), "bound": float(allowed[at]),
                     "steps": float(steps[at])})

        return bad, describe

    def check_widths(self, widths: dict[int, int]) -> None:
        recorded = field(self.reader, f"{self.arch}.feed_forward_length")
        per_layer = list(recorded) if isinstance(recorded, list) else [recorded] * self.layers
        found = [widths.get(i) for i in range(self.layers)]
        if per_layer != found:
            self.fail(f"{self.arch}.feed_forward_length", f"records {per_layer}, but the file's MLP tensors are "
                                                          f"{found} wide")
        if self.ragged:
            kept = [int(self.neurons(i).size) for i in range(self.layers)]
            short = [i for i in range(self.layers) if found[i] is None or found[i] < kept[i]]
            if short:
                self.fail("ffn widths", f"layer {short[0]} is {found[short[0]]} wide but keeps {kept[short[0]]} neurons "
                                        "of the bake")


def _pad_to(want: np.ndarray, shape: tuple[int, ...], *, down: bool) -> np.ndarray:
    """The kept neurons' rows (gate/up) or columns (down), then zeros up to the file's width."""
    if down:
        if shape[0] != want.shape[0] or shape[1] < want.shape[1]:
            return want
        return np.pad(want, ((0, 0), (0, shape[1] - want.shape[1])))
    if shape[1] != want.shape[1] or shape[0] < want.shape[0]:
        return want
    return np.pad(want, ((0, shape[0] - want.shape[0]), (0, 0)))

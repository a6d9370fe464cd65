"""Weight-level proof that an ONNX export is the float32, float16, bfloat16, int4 or int8 image of a bake.

Every initializer of the graph is traced back to the bake tensors it was made from
(``bake.verify.weights.weight_map``) and checked against them:

- ``MatMulNBits`` weights, read back here (``bake.verify.weights.nbits``, not the exporter's quantizer): every
  element lies within half a quantization step of the bake's weight, ``|(code - zero_point) *
  scale - w| <= |scale| / 2`` (plus ``STEP_SLACK`` of a step for float32 rounding of ``w / scale``),
  and a bake weight that is exactly 0 (an off neuron, a padding neuron) must come back as exactly 0;
- float weights (embedding, norms, attention bias, unquantized projections): exactly the bake's
  tensor rounded to the export dtype (transposed where the graph multiplies by ``W.T``);
- the rotary tables: the RoPE formula, within the float rounding of its float32 evaluation;
- the per-layer split sizes and ``onnx_io.json``'s MLP widths: the neurons the bake keeps;
- every bake tensor is used, except the ones an export has no use for (an lm_head tied to the
  embedding, the MLP of a ragged layer with no neuron left).

A failure names the export tensor, the bake tensor behind it, the worst element (index, value,
expected value) and the bound it breaks.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bake.verify.weights.bake_tensors import BakeTensors, Stored, config_widths
from bake.verify.weights.onnx_weights import ExportGraph, Use
from bake.verify.weights.quant_check import Worst, quant_error
from bake.verify.weights.weight_map import EMBED, LiveNeurons, Part, projection_parts

STEP_SLACK = 1e-3  # of a step: float32 rounding of w / scale is below 2e-5 steps even for int8's 255 codes
CHUNK_ELEMENTS = 1 << 20  # float weights are compared this many elements at a time
ROTARY = ("rotary.cos_cache", "rotary.sin_cache", "rotary.inv_freq")
_SPLIT = re.compile(r"^model\.layers\.(\d+)\.mlp/split$")
_MLP_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(mlp\.|post_attention_layernorm\.)")
_NP_TYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_SIGNIFICAND = {"float16": 11, "bfloat16": 8}  # bits: rounding to them moves a value by at most 2 ** -bits of it


@dataclass
class Failure:
    """One export tensor that is not what the bake says it must be."""

    tensor: str
    message: str
    worst: dict[str, Any] | None = None  # index, value, expected, bound (and the bake tensor and index)


@dataclass
class WeightReport:
    """The outcome of ``check_export_weights``."""

    export: str
    bake: str
    initializers: int
    weights_checked: int
    elements_checked: int
    max_quant_error_steps: float | None  # worst |dequantized - bake| over every MatMulNBits weight, in steps
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}

    def failure_lines(self, most: int = 5) -> list[str]:
        lines = [f.message for f in self.failures[:most]]
        if len(self.failures) > most:
            lines.append(f"... and {len(self.failures) - most} more tensors (see the JSON report)")
        return lines


def check_export_weights(folder: Path, bake: BakeTensors) -> WeightReport:
    """Check every initializer of the export in ``folder`` against ``bake`` (timed from reading the graph)."""
    from export.onnx.folder import read_export_folder

    started = time.monotonic()
    io = read_export_folder(folder)
    report = _Checker(ExportGraph(Path(folder) / io["model_file"]), io, bake).run()
    report.seconds = round(time.monotonic() - started, 3)
    return report


class _Checker:
    def __init__(self, graph: ExportGraph, io: dict[str, Any], bake: BakeTensors):
        self.graph, self.io, self.bake = graph, io, bake
        self.dtype = str(io["dtype"])
        self.ragged = io.get("layout") == "ragged"
        self.multiple = int(io.get("width_multiple") or 1)
        self.tied = bool(bake.config.get("tie_word_embeddings", False))
        self.bake_widths = config_widths(bake.config)
        self.bake_names = set(bake.names())
        self.used: set[str] = set()
        self.live = LiveNeurons(bake)
        self.failures: list[Failure] = []
        self.checked = self.elements = 0
        self.max_steps: float | None = None

    def fail(self, tensor: str, message: str, worst: dict[str, Any] | None = None) -> None:
        self.failures.append(Failure(tensor, f"{tensor}: {message}", worst))

    # ---- the walk ----------------------------------------------------------------------------
    def run(self) -> WeightReport:
        done: set[str] = set()
        for uses in list(self.graph.uses.values()):
            for use in uses:
                if use.op_type == "MatMulNBits" and use.index == 1:
                    self.quantized(use)
                    done.update(n for n in use.inputs[1:] if n)
        done |= self.quantized_lookups()
        for name in self.graph.names():
            if name in done or name.startswith("const/"):  # const/*: shapes, axes, eps of the graph, no weights
                continue
            if name in ROTARY:
                self.rotary(name)
            elif _SPLIT.match(name):
                self.split(name)
            else:
                self.float_weight(name)
        self.widths()
        self.coverage()
        return WeightReport(str(self.graph.path.parent), self.bake.label, len(self.graph.names()), self.checked,
                            self.elements, self.max_steps, self.failures)

    # ---- which neurons, which bake tensors ---------------------------------------------------
    def keep(self, layer: int) -> np.ndarray | None:
        """The neurons an export layer holds: all (as-is), or those with a nonzero down_proj column (ragged)."""
        return self.live(layer) if self.ragged else None

    def kept(self, layer: int) -> int:
        keep = self.keep(layer)
        return self.bake_widths[layer] if keep is None else int(keep.size)

    def padding(self, layer: int) -> int:
        """The zero neurons the export must add after the kept ones: up to the width multiple (a layer with none
        kept has no MLP, so none)."""
        kept = self.kept(layer)
        return -(-kept // self.multiple) * self.multiple - kept

    def neurons(self, layer: int) -> tuple[np.ndarray | None, int]:
        return self.keep(layer), self.padding(layer)

    def parts(self, name: str) -> list[Part] | None:
        prefix, _, suffix = name.rpartition(".")
        parts = projection_parts(prefix, suffix, self.tied, self.neurons) if suffix in ("weight", "bias") else None
        if parts is None and name in self.bake_names:
            parts = [Part(name)]
        return parts

    def part_tensors(self, tensor: str, parts: list[Part]) -> list[Stored] | None:
        """Each part's selected bake tensor (bake dtype); None (and a failure) if one is not in the bake."""
        missing = [p.name for p in parts if p.name not in self.bake_names]
        if missing:
            self.fail(tensor, f"its bake tensor {', '.join(missing)} is not in the bake ({self.bake.label}); "
                              "was the export made from another model?")
            return None
        self.used.update(p.name for p in parts)
        return [self.select(p) for p in parts]

    def select(self, part: Part) -> Stored:
        t = self.bake.tensor(part.name)
        return Stored(part.select(t.raw), t.dtype)

    def shape_fits(self, tensor: str, parts: list[Part], blocks: list[Stored], shape: tuple[int, ...]) -> bool:
        """The parts stacked along dim 0 have ``shape`` (the export tensor's, oriented as the bake's)."""
        stacked = (sum(b.shape[0] for b in blocks), *blocks[0].shape[1:])
        if any(b.shape[1:] != blocks[0].shape[1:] for b in blocks) or stacked != shape:
            self.fail(tensor, f"shape {list(shape)} (oriented as the bake's), but the bake's {self.describe(parts)} "
                              f"gives {[list(b.shape) for b in blocks]}")
            return False
        return True

    # ---- float tensors: exact ----------------------------------------------------------------
    def float_weight(self, name: str) -> None:
        parts = self.parts(name)
        if parts is None:
            self.fail(name, f"is not a tensor of the bake nor made from one ({self.bake.label}); the weight "
                            "check cannot account for it")
            return
        transposed = self.transposed(name)
        if transposed is None or not self.dtype_is(name, self.dtype):
            return
        blocks = self.part_tensors(name, parts)
        actual = self.graph.tensor(name)
        actual = actual.T if transposed else actual
        if blocks is None or not self.shape_fits(name, parts, blocks, tuple(actual.shape)):
            return
        self.checked += 1
        self.elements += actual.size
        row = 0
        for part, block in zip(parts, blocks):
            h = block.shape[0]
            got = actual[row:row + h]
            step = max(1, CHUNK_ELEMENTS // max(1, math.prod(block.shape[1:])))  # rows per comparison
            if not all(np.array_equal(got[r:r + step], self.rounded(block, r, r + step)) for r in range(0, h, step)):
                self.float_mismatch(name, part, row, got, self.rounded(block))
                return
            row += h

    def rounded(self, t: Stored, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows of the bake's tensor rounded to the export dtype (numpy's IEEE round-to-nearest-even)."""
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as in the exporter's rounding
            return t.values(start, stop).astype(_NP_TYPES[self.dtype], copy=False)

    def float_mismatch(self, name: str, part: Part, row: int, got: np.ndarray, want: np.ndarray) -> None:
        """Report the worst element of one part (rows ``row`` on of the export tensor)."""
        diff = np.nan_to_num(np.abs(got.astype(np.float32) - want.astype(np.float32)), nan=math.inf)
        flat = int(diff.argmax())
        at = np.unravel_index(flat, diff.shape)
        value, exp = float(got[at]), float(want[at])
        idx = [int(i) for i in at]
        col = idx[1] if len(idx) > 1 else None
        where = part.where(idx[0], col, want.shape)
        bake_idx = None if part.is_padding(idx[0], col, want.shape) else part.bake_index(idx[0], col)
        idx[0] += row
        expected = f"it is {where}" if bake_idx is None else f"{where} of the bake rounded to {self.dtype} is {exp:.8g}"
        self.fail(name, f"element {idx} is {value:.8g}, but {expected} (|diff| {abs(value - exp):.3g}, bound 0: float weights are "
                        f"the bake's, exactly); {int((diff > 0).sum())} of {diff.size} elements of this part differ",
                  {"index": idx, "value": value, "expected": exp, "bound": 0.0, "bake_tensor": part.name,
                   "bake_index": bake_idx, "bake": where})

    def transposed(self, name: str) -> bool | None:
        """Whether the graph stores ``name`` as [in, out] (read as MatMul's B, or Gemm's B without transB)."""
        layouts = set()
        for u in self.graph.uses[name]:
            if u.op_type == "MatMul" and u.index == 1:
                layouts.add(True)
            elif u.op_type == "Gemm" and u.index == 1:
                layouts.add(not u.attrs.get("transB", 0))
            else:
                layouts.add(False)
        if len(layouts) > 1:
            self.fail(name, "is read both as W and as W.T by different nodes; the graph is inconsistent")
            return None
        return layouts.pop() if layouts else False

    def dtype_is(self, name: str, want: str) -> bool:
        got = self.graph.dtype_name(name)
        if got != want:
            self.fail(name, f"is stored as {got}, but this export's weights are {want} (onnx_io.json)")
            return False
        return True

    # ---- MatMulNBits: within half a step ------------------------------------------------------
    def quantized(self, use: Use) -> None:
        b_name, s_name = use.inputs[1], use.inputs[2]
        zp_name = use.inputs[3] if len(use.inputs) > 3 and use.inputs[3] else None
        bits, bs = int(use.attrs["bits"]), int(use.attrs["block_size"])
        n, k = int(use.attrs["N"]), int(use.attrs["K"])
        if not b_name.endswith(".weight.quant"):
            self.fail(b_name, "is a MatMulNBits weight not named {projection}.weight.quant; cannot trace it")
            return
        if any(use.inputs[4:]):
            self.fail(b_name, "MatMulNBits with g_idx or bias inputs is not produced by lambda-bake; cannot check it")
            return
        recorded = self.io.get("quantization") or {}
        if (recorded.get("bits"), recorded.get("block_size")) != (bits, bs):
            self.fail(b_name, f"is {bits}-bit with blocks of {bs}, but onnx_io.json records quantization "
                              f"{recorded or None}")
            return
        parts = self.parts(b_name.removesuffix(".quant"))
        if parts is None:
            self.fail(b_name, "does not name a projection of the bake; the weight check cannot account for it")
            return
        if not self.dtype_is(s_name, self.dtype):
            return
        blocks = self.part_tensors(b_name, parts)
        if blocks is None or not self.shape_fits(b_name, parts, blocks, (n, k)):
            return
        self.checked += 1
        self.elements += n * k
        n_blocks = -(-k // bs)
        b, scales = self.graph.tensor(b_name), self.graph.tensor(s_name)
        zp = self.graph.tensor(zp_name) if zp_name else None
        if tuple(b.shape) != (n, n_blocks, bs * bits // 8) or scales.size != n * n_blocks:
            self.fail(b_name, f"B {list(b.shape)} / scales {list(scales.shape)} do not fit N={n}, K={k}, "
                              f"{bits} bits, blocks of {bs}")
            return
        scales = scales.reshape(n, n_blocks)
        worst, where, row = Worst(0.0), "", 0
        for part, block in zip(parts, blocks):
            h = block.shape[0]
            got = quant_error(b[row:row + h], scales[row:row + h], None if zp is None else zp[row:row + h], block,
                              bits, bs, locate_above=0.5 + STEP_SLACK)
            if not got.steps <= worst.steps:  # larger, or NaN
                worst, where = got, ""
                if got.index is not None:  # located: outside the bound
                    r, c = got.index
                    worst = replace(got, index=(row + r, c))
                    where = part.where(r, c, block.shape) if c < k else f"padding column {c} past K={k}"
            row += h
        self.max_steps = max(self.max_steps or 0.0, worst.steps)
        if worst.steps <= 0.5 + STEP_SLACK:
            return
        bound = abs(worst.scale) / 2
        why = (f"half its block's scale {abs(worst.scale):.3g}; {worst.steps:.2f} steps off" if worst.scale
               else "its block's scale is 0: the block is all zero in the export")
        self.fail(b_name, f"element {list(worst.index)} dequantizes to {worst.value:.6g}, but the bake has "
                          f"{worst.expected:.6g} at {where}: |diff| {abs(worst.value - worst.expected):.3g} > bound "
                          f"{bound:.3g} ({why}, int{bits})",
                  {"index": list(worst.index), "value": worst.value, "expected": worst.expected, "bound": bound,
                   "steps": worst.steps, "bake": where})

    # ---- GatherBlockQuantized: the embedding in int codes ----------------------------------------
    def quantized_lookups(self) -> set[str]:
        """Prove each GatherBlockQuantized embedding lookup: its codes, scales and zero points are a MatMulNBits
        weight's reshaped to [N, K * bits / 8] (a tied table: the lm_head's own, which ``quantized`` proves against
        the embedding), or a table of its own proven the same way against the bake's embedding; its attributes say
        the same bits and blocks, rows gathered, blocks along each row. Returns the initializers it accounted for."""
        nodes = [n for n in self.graph.model.graph.node if n.op_type == "GatherBlockQuantized"]
        recorded = (self.io.get("embedding") or {}).get("form", "float")
        if recorded != "float" and len(nodes) != 1:
            self.fail("embedding", f"onnx_io.json records a {recorded} embedding, but the graph has {len(nodes)} "
                                   "GatherBlockQuantized nodes")
        done: set[str] = set()
        for node in nodes:
            done |= self.lookup(node, recorded)
        return done

    def lookup(self, node: Any, recorded: str) -> set[str]:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        label = f"{node.name} (GatherBlockQuantized)"
        inputs = list(node.input) + [""] * (4 - len(node.input))
        reshape = next((n for n in self.graph.model.graph.node if inputs[0] in n.output and n.op_type == "Reshape"),
                       None)
        if reshape is None or reshape.input[0] not in self.graph.initializers \
                or not reshape.input[0].endswith(".weight.quant"):
            self.fail(label, "does not read a Reshape of a quantized weight ({projection}.weight.quant); cannot trace "
                             "its codes")
            return set()
        b_name = reshape.input[0]
        head = next((u for u in self.graph.uses[b_name] if u.op_type == "MatMulNBits" and u.index == 1), None)
        quant = self.io.get("quantization") or {}
        bits, bs = int(attrs.get("bits", 4)), int(attrs.get("block_size", 128))
        problems = []
        if (bits, bs) != (quant.get("bits"), quant.get("block_size")):
            problems.append(f"{bits}-bit blocks of {bs}, but onnx_io.json records {quant or None}")
        if (attrs.get("gather_axis", 0), attrs.get("quantize_axis", 1)) != (0, 1):
            problems.append(f"gather_axis {attrs.get('gather_axis', 0)} / quantize_axis {attrs.get('quantize_axis', 1)}"
                            ", not rows gathered with blocks along each row (0 / 1)")
        if inputs[1] != "input_ids":
            problems.append(f"gathers {inputs[1]!r}, not input_ids")
        if head is not None:  # the tied table: the very initializers lm_head's MatMulNBits reads
            shared = (head.inputs[2], head.inputs[3] if len(head.inputs) > 3 else "")
            if (inputs[2], inputs[3]) != shared:
                problems.append(f"scales/zero points {inputs[2:4]}, not the lm_head's {list(shared)}")
            if (int(head.attrs["bits"]), int(head.attrs["block_size"])) != (bits, bs):
                problems.append(f"{bits}-bit blocks of {bs}, but the lm_head's codes are {head.attrs['bits']}-bit "
                                f"blocks of {head.attrs['block_size']}")
            n, k = int(head.attrs["N"]), int(head.attrs["K"])
            form = "shared"
            if not self.tied or b_name != "lm_head.weight.quant":
                problems.append(f"looks tokens up in {b_name}, but only a tied embedding is the lm_head's table")
        else:
            codes = self.graph.tensor(b_name)
            n, k = int(codes.shape[0]), int(codes.shape[1] * codes.shape[2] * 8 // bits)
            form = "quantized"
            self.quantized(Use(node.name, "GatherBlockQuantized", 0, ("input_ids", b_name, inputs[2], inputs[3]),
                               {"bits": bits, "block_size": bs, "N": n, "K": k}))
        shape = [int(v) for v in self.graph.tensor(reshape.input[1]).flatten()] \
            if reshape.input[1] in self.graph.initializers else None
        if shape != [n, k * bits // 8] or k % bs:
            problems.append(f"reads its codes as {shape}, not the [{n}, {k * bits // 8}] rows of whole {bs}-wide "
                            f"blocks that the table's {n} x {k} weights are")
        if recorded != form:
            problems.append(f"is a {form} lookup, but onnx_io.json records embedding {recorded!r}")
        for p in problems:
            self.fail(label, p)
        if not problems:
            self.used.add(EMBED)
        return {b_name, inputs[2], inputs[3], reshape.input[1]} - {""}

    # ---- derived tensors ---------------------------------------------------------------------
    def rotary(self, name: str) -> None:
        """RoPE tables: cos/sin(position * inv_freq), inv_freq = theta ** (-2j / head_dim)."""
        config = self.bake.config
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        rel = (math.log(theta) + 4) * 2.0 ** -23  # the exporter's float32 pow, product and cos, with 2x headroom
        want_dtype = "float32" if name == "rotary.inv_freq" else self.dtype
        if not self.dtype_is(name, want_dtype):
            return
        if name == "rotary.inv_freq":
            expected, bound = inv, inv * rel
        else:
            angles = np.arange(int(config.get("max_position_embeddings", 32768)), dtype=np.float64)[:, None] * inv
            expected = np.cos(angles) if name == "rotary.cos_cache" else np.sin(angles)
            bound = angles * rel + 2.0 ** -22
        if want_dtype in _SIGNIFICAND:  # plus the final rounding to the export dtype
            bound = bound + np.abs(expected) * 2.0 ** -_SIGNIFICAND[want_dtype] + 2.0 ** -25
        actual = self.graph.tensor(name).astype(np.float64)
        self.checked += 1
        self.elements += actual.size
        if actual.shape != expected.shape:
            self.fail(name, f"shape {list(actual.shape)}, but the config (head_dim {head_dim}, max positions) "
                            f"gives {list(expected.shape)}")
            return
        excess = np.abs(actual - expected) / bound
        excess[np.isnan(excess)] = np.inf
        if excess.max() <= 1.0:
            return
        idx = [int(i) for i in np.unravel_index(int(excess.argmax()), excess.shape)]
        value, exp, b = float(actual[tuple(idx)]), float(expected[tuple(idx)]), float(bound[tuple(idx)])
        self.fail(name, f"element {idx} is {value:.8g}, the RoPE formula (theta {theta:g}, head_dim {head_dim}) "
                        f"gives {exp:.8g}: |diff| {abs(value - exp):.3g} > bound {b:.3g} (float rounding)",
                  {"index": idx, "value": value, "expected": exp, "bound": b})

    def split(self, name: str) -> None:
        """The gate/up split of a packed projection: both halves as wide as the layer's neurons."""
        layer = int(_SPLIT.match(name).group(1))
        width = self.width(layer)
        got = [int(v) for v in self.graph.tensor(name).flatten()]
        if got != [width, width]:
            self.fail(name, f"splits gate/up as {got}, but the layer keeps {width} neurons of the bake")

    def width(self, layer: int) -> int:
        """The layer's MLP width in the export: its kept neurons, then zeros up to the width multiple."""
        return self.kept(layer) + self.padding(layer)

    def widths(self) -> None:
        layers = int(self.bake.config["num_hidden_layers"])
        for key, what, expected in (
                ("mlp_widths", "MLP widths", [self.width(i) for i in range(layers)]),
                ("mlp_padding", f"alignment neurons (to multiples of {self.multiple})",
                 [self.padding(i) for i in range(layers)])):
            recorded = self.io.get(key, expected if key == "mlp_padding" and self.multiple == 1 else None)
            if recorded != expected:
                bad = [i for i in range(layers) if recorded is None or i >= len(recorded) or recorded[i] != expected[i]]
                self.fail("onnx_io.json", f"records {what} {recorded}, but the bake's layers give {expected} "
                                          f"(first difference: layer {bad[0] if bad else len(expected)})")

    def coverage(self) -> None:
        """Every bake tensor made it into the export, unless the export has no use for it."""
        for name in sorted(self.bake_names - self.used):
            m = _MLP_BLOCK.match(name)
            if name == "lm_head.weight" and self.tied:
                continue
            if m and self.ragged and self.width(int(m.group(1))) == 0:
                continue  # a ragged layer with no neuron left has no MLP at all, nor its norm
            self.fail(name, "this bake tensor is not in the export: no initializer is made from it")

    # ---- messages ----------------------------------------------------------------------------
    @staticmethod
    def describe(parts: list[Part]) -> str:
        names = " + ".join(p.name for p in parts)
        selected = any(p.rows is not None or p.cols is not None for p in parts)
        return names + (" (the ragged layer's live neurons)" if selected else "")

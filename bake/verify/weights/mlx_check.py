"""The weight proof of an MLX export: every tensor of the folder against the bake, and every config field that
changes the math against the bake's config.

The folder is read with the ``safetensors`` library (not mlx, which wrote it). For each weight the bake tensors
it is made of are named here, independently of the writer (qwen3: the same names; openelm: ``qkv_proj`` is q, k,
v rows, ``proj_1`` gate rows then up rows, each ragged layer's kept neurons in order, then zero neurons up to the
width the quantization group asks for). A float weight must equal the bake's value rounded to the export's dtype
(``ml_dtypes``' rounding), bit for bit. A quantized weight must be what mlx's affine quantizer makes of that
value: the codes, scales and biases are recomputed with ``mx.quantize`` and compared bit for bit; the dequantized
weight (codes x scale + bias, unpacked here) gives the report's worst error in steps of its group's scale.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from bake.errors import ExportError
from bake.io.json_files import read_json_object
from bake.verify.weights.bake_tensors import BakeTensors
from bake.verify.weights.nbits import mlx_dequantize
from bake.verify.weights.weight_check import Failure, WeightReport
from bake.verify.weights.weight_map import LiveNeurons

_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_HF_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm", "attn.out_proj": "self_attn.o_proj"}


def check_mlx_weights(folder: Path, bake: BakeTensors) -> WeightReport:
    """Check every tensor of the MLX export in ``folder`` against ``bake``."""
    from export.mlx.folder import read_mlx_folder

    started = time.monotonic()
    info = read_mlx_folder(folder)
    checker = _Checker(Path(folder), info, bake)
    checker.run()
    return WeightReport(str(folder), bake.label, len(checker.stored), checker.checked, checker.elements,
                        checker.max_steps, checker.failures, round(time.monotonic() - started, 3))


class _Checker:
    def __init__(self, folder: Path, info: dict[str, Any], bake: BakeTensors):
        self.folder, self.info, self.bake = folder, info, bake
        self.ragged = info["layout"] == "ragged"
        self.dtype = info["dtype"]
        self.quant = info.get("quantization")
        self.layers = int(bake.config["num_hidden_layers"])
        self.tied = bool(bake.config.get("tie_word_embeddings", False))
        self.config = read_json_object(folder / "config.json", ExportError, "export again", "an MLX config")
        self.stored: dict[str, Any] = {}
        for file in sorted(folder.glob("model*.safetensors")):
            handle = safe_open(str(file), framework="np")
            self.stored.update({k: handle for k in handle.keys()})
        self.failures: list[Failure] = []
        self.checked = self.elements = 0
        self.max_steps: float | None = None
        self.used: set[str] = set()
        self.live = LiveNeurons(bake)

    def fail(self, tensor: str, message: str, worst: dict[str, Any] | None = None) -> None:
        self.failures.append(Failure(tensor, f"{tensor}: {message}", worst))

    def array(self, name: str) -> np.ndarray:
        return self.stored[name].get_tensor(name)

    def values(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.bake.tensor(name).values()

    def width(self, layer: int) -> int:
        """The width the layer must have: its kept neurons, rounded up to whole groups when quantized, 1 group or
        neuron at least (ragged); the bake's own width (as-is)."""
        if not self.ragged:
            return int(self.bake.config["intermediate_size"])
        kept = int(self.live(layer).size)
        granule = int(self.quant["group_size"]) if self.quant else 1
        return max(granule, -(-kept // granule) * granule)

    def expected(self, module: str) -> np.ndarray | None:
        """The float32 values (HF orientation) the weight of ``module`` must hold, or None if no bake tensor makes
        it."""
        if not self.ragged:
            return self.values(f"{module}.weight") if f"{module}.weight" in self.bake.names() else None
        top = {"transformer.token_embeddings": "model.embed_tokens", "transformer.norm": "model.norm",
               "lm_head": "lm_head"}
        if module in top:
            return self.values(f"{top[module]}.weight")
        parts = module.split(".")
        if len(parts) < 4 or parts[:2] != ["transformer", "layers"] or not parts[2].isdigit():
            return None
        i, kind, hf = int(parts[2]), ".".join(parts[3:]), f"model.layers.{parts[2]}"
        if i >= self.layers:
            return None
        if kind in _HF_LAYER:
            return self.values(f"{hf}.{_HF_LAYER[kind]}.weight")
        if kind == "attn.qkv_proj":
            return np.concatenate([self.values(f"{hf}.self_attn.{p}_proj.weight") for p in "qkv"])
        keep, width = self.live(i), self.width(i)
        if kind == "ffn.proj_1":
            rows = [self.values(f"{hf}.mlp.{p}_proj.weight")[keep] for p in ("gate", "up")]
            return np.concatenate([np.pad(r, ((0, width - keep.size), (0, 0))) for r in rows])
        if kind == "ffn.proj_2":
            down = self.values(f"{hf}.mlp.down_proj.weight")[:, keep]
            return np.pad(down, ((0, 0), (0, width - keep.size)))
        return None

    def run(self) -> None:
        modules = sorted({n.rsplit(".", 1)[0] for n in self.stored})
        for module in modules:
            if f"{module}.weight" not in self.stored:
                self.fail(module, "has no weight; the weight check cannot account for "
                                  f"{', '.join(n for n in self.stored if n.startswith(module + '.'))}")
                continue
            want = self.expected(module)
            if want is None:
                self.fail(f"{module}.weight", "is not a tensor of the bake nor made from one")
                continue
            self.checked += 1
            self.elements += want.size
            if f"{module}.scales" in self.stored:
                self.quantized(module, want)
            else:
                self.exact(f"{module}.weight", want)
        for name in sorted(set(self.bake.names()) - self.used):
            if not (name == "lm_head.weight" and self.tied):
                self.fail(name, "this bake tensor is not in the MLX export: no tensor is made from it")
        self.widths()
        self.hyperparameters()

    def exact(self, name: str, want: np.ndarray) -> None:
        got = self.array(name)
        if got.dtype != np.dtype(_NP[self.dtype]):
            self.fail(name, f"is stored as {got.dtype}, but the export is {self.dtype}")
            return
        if got.shape != want.shape:
            self.fail(name, f"shape {list(got.shape)}, but the bake gives {list(want.shape)}")
            return
        with np.errstate(over="ignore"):
            rounded = np.ascontiguousarray(want.astype(_NP[self.dtype]))
        size = rounded.dtype.itemsize
        bad = (rounded.reshape(-1).view(np.uint8).reshape(-1, size) !=
               np.ascontiguousarray(got).reshape(-1).view(np.uint8).reshape(-1, size)).any(axis=1).reshape(want.shape)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            self.fail(name, f"element {list(at)} is {float(got[at]):.8g}, but the bake's value rounded to {self.dtype} "
                            f"is {float(rounded[at]):.8g} (bound 0); {int(bad.sum())} of {bad.size} elements differ",
                      {"index": list(at), "value": float(got[at]), "expected": float(rounded[at]), "bound": 0.0})

    def quantized(self, module: str, want: np.ndarray) -> None:
        """Codes, scales and biases equal to mlx's quantizer run on the bake's value in the export's dtype; the worst
        dequantized error, in steps, goes into the report."""
        import mlx.core as mx

        if not self.quant:
            self.fail(module, "is quantized, but mlx_export.json records no quantization")
            return
        bits, group = int(self.quant["bits"]), int(self.quant["group_size"])
        stored = {k: self.array(f"{module}.{k}") for k in ("weight", "scales", "biases")
                  if f"{module}.{k}" in self.stored}
        if set(stored) != {"weight", "scales", "biases"} or stored["weight"].dtype != np.uint32:
            self.fail(module, "is not an affine-quantized weight (uint32 codes, scales and biases)")
            return
        rows, cols = want.shape
        if stored["weight"].shape != (rows, cols * bits // 32) or stored["scales"].shape != (rows, cols // group):
            self.fail(f"{module}.weight", f"holds {list(stored['weight'].shape)} codes and "
                                          f"{list(stored['scales'].shape)} scales, but the bake's [{rows}, {cols}] "
                                          f"weight in {bits}-bit groups of {group} needs [{rows}, {cols * bits // 32}] "
                                          f"and [{rows}, {cols // group}]")
            return
        got = mlx_dequantize(stored["weight"], stored["scales"], stored["biases"], bits, group)
        err = np.abs(got - want)
        step = np.repeat(np.abs(stored["scales"].astype(np.float32)), group, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(step > 0, err / step, np.where(err == 0, 0.0, np.inf))
        finite = steps[np.isfinite(steps)]
        self.max_steps = max(self.max_steps or 0.0, float(finite.max()) if finite.size else 0.0)
        again = mx.quantize(mx.array(want).astype(getattr(mx, self.dtype)), group_size=group, bits=bits)
        for key, mine in zip(("weight", "scales", "biases"), again):
            theirs = stored[key]
            mine = np.array(mine.view(mx.uint16) if mine.dtype == mx.bfloat16 else mine)
            if mine.view(np.uint8).tobytes() != np.ascontiguousarray(theirs).view(np.uint8).tobytes():
                diff = np.argwhere(mine.view(np.uint8).reshape(rows, -1) !=
                                   np.ascontiguousarray(theirs).view(np.uint8).reshape(rows, -1))[0]
                self.fail(f"{module}.{key}", f"differs from mlx's quantization of the bake's value (first at byte "
                                             f"{[int(i) for i in diff]}); worst dequantized element "
                                             f"{float(finite.max()) if finite.size else float('inf'):.2f} steps off")
                return

    def widths(self) -> None:
        want = [self.width(i) for i in range(self.layers)]
        kept = [int(self.live(i).size) if self.ragged else self.width(i) for i in range(self.layers)]
        for key, expected in (("mlp_widths", want), ("mlp_kept", kept)):
            if self.info[key] != expected:
                self.fail(f"mlx_export.json {key}", f"records {self.info[key]}, but the bake gives {expected}")
        if self.ragged:
            hidden = int(self.config.get("model_dim", 0))
            sized = [int(m * hidden + 0.5) for m in self.config.get("ffn_multipliers", [])]  # openelm, divisor 1
            if self.config.get("ffn_dim_divisor") != 1 or sized != want:
                self.fail("config.json ffn_multipliers", f"size the layers {sized} (ffn_dim_divisor "
                                                         f"{self.config.get('ffn_dim_divisor')!r}), but the bake's "
                                                         f"widths are {want}")

    def hyperparameters(self) -> None:
        """config.json's fields that change the math equal what the bake's config gives."""
        c = self.bake.config
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
        eps = float(c.get("rms_norm_eps", 1e-6))
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        layers, vocab, hidden = int(c["num_hidden_layers"]), int(c["vocab_size"]), int(c["hidden_size"])
        if self.ragged:
            want: dict[str, Any] = {
                "model_type": "openelm", "num_transformer_layers": layers, "model_dim": hidden, "vocab_size": vocab,
                "head_dim": head_dim, "num_query_heads": [heads] * layers, "num_kv_heads": [kv] * layers,
                "rms_norm_eps": eps, "rope_freq_constant": theta, "normalize_qk_projections": True,
                "ffn_with_glu": True, "share_input_output_layers": self.tied}
        else:
            want = {"model_type": "qwen3", "num_hidden_layers": layers, "hidden_size": hidden, "vocab_size": vocab,
                    "head_dim": head_dim, "num_attention_heads": heads, "num_key_value_heads": kv,
                    "rms_norm_eps": eps, "rope_theta": theta, "tie_word_embeddings": self.tied,
                    "intermediate_size": int(c["intermediate_size"])}
        for key, expected in want.items():
            got = self.config.get(key)
            if got != expected:
                self.fail(f"config.json {key}", f"is {got!r}, but the bake's config gives {expected!r}: a field that "
                                                "changes the math")
        quant = self.config.get("quantization")
        recorded = None if not self.quant else {"group_size": self.quant["group_size"], "bits": self.quant["bits"]}
        if (quant and {k: quant.get(k) for k in ("group_size", "bits")}) != (recorded or None):
            self.fail("config.json quantization", f"is {quant!r}, but mlx_export.json records {self.quant!r}")


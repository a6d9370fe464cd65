"""Write a baked Qwen3 folder as an mlx-lm model folder (Apple silicon's MLX; LM Studio's MLX engine runs mlx-lm).

Two model types, by layout:

- ``as-is`` (a dense or pruned bake): mlx-lm's ``qwen3``, the checkpoint's tensor names and shapes, as
  ``mlx_lm.convert`` writes them.
- ``ragged``: each layer keeps exactly the neurons whose ``down_proj`` column is nonzero, in mlx-lm's ``openelm``
  (``mlx_lm/models/openelm.py``), which sizes every layer's MLP on its own (``ffn_multipliers[i] * model_dim``,
  exact with ``ffn_dim_divisor`` 1) and computes Qwen3's math: RMSNorm, one fused QKV projection (q, k, v rows),
  per-head q/k RMSNorm, non-traditional RoPE over the whole head, attention scaled by ``head_dim ** -0.5``, SwiGLU
  with gate and up rows in one ``proj_1``, the output tied to the embedding or its own ``lm_head``. What openelm
  cannot express (attention bias, RoPE scaling, a sliding window) is refused, not converted wrongly.

Quantized (``bits`` 4 or 8) with mlx-lm's own quantizer (``mlx_lm.utils.quantize_model``: affine, per group of
``group_size`` inputs, every linear layer and the embedding whose input width is a whole number of groups); a
ragged layer's width is rounded up to the group with zero neurons, so its ``down`` projection is quantized too.
Weights are cast to ``dtype`` (default: the bake's) before quantizing, as ``mlx_lm.convert`` does. The folder is
written to a temporary sibling and renamed when complete, with the tokenizer, chat template, generation config
and bake manifest beside the weights, and ``mlx_export.json`` saying what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import BaseModelError, ExportError
from bake.io.atomic import atomic_output_dir
from bake.io.base_model import open_base_model, rope_theta
from bake.io.tensor_io import CheckpointReader
from bake.write.checkpoint import carry_base_files, check_carried_files
from bake.write.manifest import MANIFEST_NAME
from export.install import require_mlx
from export.mlx.folder import FORMAT, FORMAT_VERSION, INFO_FILE, MLX_DTYPES
from export.neurons import LayerWidths, bake_values

MLX_LAYOUTS = ("as-is", "ragged")
MLX_BITS = (4, 8)
DEFAULT_GROUP_SIZE = 64  # mlx-lm's default for affine quantization


def check_mlx_options(layout: str, dtype: str | None, bits: int | None, group_size: int) -> None:
    """Refuse option values before any work is done (bake --mlx checks them before baking)."""
    if layout not in MLX_LAYOUTS:
        raise ExportError(f"unknown --layout {layout!r} for MLX; choose one of {', '.join(MLX_LAYOUTS)}")
    if dtype is not None and dtype not in MLX_DTYPES:
        raise ExportError(f"unknown MLX dtype {dtype!r}; choose one of {', '.join(MLX_DTYPES)}")
    if bits is not None and bits not in MLX_BITS:
        raise ExportError(f"--mlx-bits {bits}: mlx-lm's affine quantization here is 4 or 8 bits")
    if group_size not in (32, 64, 128):
        raise ExportError(f"--mlx-group-size {group_size}: mlx quantizes in groups of 32, 64 or 128")


def export_mlx(model_dir: Path, out: Path, *, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Write the MLX folder of ``model_dir`` to ``out`` all or nothing; return the report (``write_mlx``'s options)."""
    model_dir, out = Path(model_dir), Path(out)
    check_mlx_options(options.get("layout", "as-is"), options.get("dtype"), options.get("bits"),
                      options.get("group_size", DEFAULT_GROUP_SIZE))
    require_mlx()
    with atomic_output_dir(out, overwrite=overwrite, inputs=(model_dir,)) as tmp:
        report = write_mlx(model_dir, tmp, **options)
    return report | {"out": str(out.absolute())}


def export_mlx_into(model_dir: Path, subfolder: str = "mlx", **options: Any) -> dict[str, Any]:
    """Export ``model_dir`` into its own new ``subfolder`` (``bake --mlx``, inside the bake's temporary folder)."""
    require_mlx()
    out = Path(model_dir) / subfolder
    out.mkdir()
    return write_mlx(Path(model_dir), out, **options)


def write_mlx(model_dir: Path, out: Path, *, layout: str = "as-is", dtype: str | None = None, bits: int | None = None,
              group_size: int = DEFAULT_GROUP_SIZE, progress: bool = True) -> dict[str, Any]:
    """Write the MLX folder of ``model_dir`` into the empty folder ``out``; return the report."""
    import mlx.core as mx
    from mlx_lm.utils import quantize_model, save_config, save_model

    check_mlx_options(layout, dtype, bits, group_size)
    try:
        base = open_base_model(model_dir)
    except BaseModelError as e:
        raise ExportError(f"--model {model_dir}: {e}") from e
    check_carried_files(model_dir, ExportError)
    started = time.monotonic()
    config = base.config
    dtype = dtype or _bake_dtype(config)
    layout = "ragged" if base.ragged else layout  # mlx-lm's qwen3 has one intermediate_size: openelm holds a ragged bake
    plan = MlxPlan(base.reader, config, ragged=layout == "ragged", granule=group_size if bits else 1)
    mlx_config = plan.mlx_config()
    target = getattr(mx, dtype)
    weights = {name: mx.array(make()).astype(target) for name, make in _progress(plan.tensors(), progress)}
    model = _model(mlx_config)
    model.load_weights(list(weights.items()), strict=True)  # every name and shape the mlx-lm model expects
    del weights
    # mlx-lm prints its notes ("[INFO] Quantized model with 4.5 bits per weight") to stdout, which --json owns
    with open(os.devnull, "w") as null, redirect_stdout(sys.stderr if progress else null), \
            redirect_stderr(sys.stderr if progress else null):
        if bits:
            model, mlx_config = quantize_model(model, mlx_config, group_size, bits)
        save_model(out, model, donate_model=True)
    save_config(mlx_config, out / "config.json")
    carried = carry_base_files(model_dir, out)
    if (model_dir / MANIFEST_NAME).is_file():  # provenance: verify --mlx reads the bake it came from
        shutil.copy2(model_dir / MANIFEST_NAME, out / MANIFEST_NAME)
        carried.append(MANIFEST_NAME)
    quantized, kept_float = _quantized_tensors(out) if bits else ([], [])
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": mlx_config["model_type"],
            "layout": layout, "dtype": dtype, "num_layers": plan.layers,
            "quantization": {"bits": bits, "group_size": group_size, "mode": "affine"} if bits else None,
            "mlp_widths": plan.widths, "mlp_kept": plan.kept_counts}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    files = sorted(p.name for p in out.iterdir())
    return {
        "out": str(out.absolute()), "model": str(Path(model_dir).absolute()), "format": "mlx",
        "model_type": mlx_config["model_type"], "layout": layout, "dtype": dtype,
        "bits": bits, "group_size": group_size if bits else None, "mlp_widths": plan.widths,
        "mlp_neurons": sum(plan.kept_counts), "mlp_padding_neurons": sum(plan.widths) - sum(plan.kept_counts),
        "config_intermediate_size": int(config["intermediate_size"]),
        "quantized_tensors": len(quantized), "kept_float": kept_float,
        "bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")), "files": files,
        "seconds": round(time.monotonic() - started, 2),
    }


def _bake_dtype(config: dict[str, Any]) -> str:
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in MLX_DTYPES else "float32"


def _model(config: dict[str, Any]) -> Any:
    """The mlx-lm model of ``config`` (``mlx_lm.models.<model_type>``, as mlx-lm's loader picks it)."""
    import importlib

    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    return module.Model(module.ModelArgs.from_dict(config))


def _quantized_tensors(out: Path) -> tuple[list[str], list[str]]:
    """The weights mlx-lm quantized, and the 2-D weights it kept float (an input width not a whole group)."""
    from safetensors import safe_open

    names = [n for f in sorted(out.glob("model*.safetensors")) for n in safe_open(str(f), framework="np").keys()]
    quantized = sorted(n[: -len(".scales")] for n in names if n.endswith(".scales"))
    matrices = [n[: -len(".weight")] for n in names if n.endswith(".weight") and not n.endswith("norm.weight")]
    return quantized, sorted(set(matrices) - set(quantized))


def _progress(items: list[tuple[str, Callable[[], np.ndarray]]], show: bool) -> Iterator[tuple[str, Callable]]:
    from tqdm.auto import tqdm

    yield from tqdm(items, desc="converting to MLX", unit="tensor", disable=not show, file=sys.stderr)


class MlxPlan:
    """Every tensor of the MLX model and its config, decided before one is made."""

    def __init__(self, reader: CheckpointReader, config: dict[str, Any], *, ragged: bool, granule: int):
        self.reader, self.config, self.ragged = reader, config, ragged
        _check_expressible(config, ragged)
        self.layers = int(config["num_hidden_layers"])
        self.tied = bool(config.get("tie_word_embeddings", False))
        self.plan = LayerWidths.of(reader, self.layers, ragged, granule)
        self.keep, self.kept_counts, self.widths = self.plan.keep, self.plan.kept_counts, self.plan.widths

    def _values(self, name: str) -> np.ndarray:
        return bake_values(self.reader, name)

    def mlx_config(self) -> dict[str, Any]:
        """config.json as mlx-lm reads it: the bake's own for qwen3; openelm's fields for ragged."""
        c = self.config
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        hidden = int(c["hidden_size"])
        theta = rope_theta(c)
        if not self.ragged:
            out = {k: v for k, v in c.items() if k not in ("architectures", "transformers_version")}
            return out | {"model_type": "qwen3", "rope_theta": theta}
        return {
            "model_type": "openelm",
            "num_transformer_layers": self.layers, "model_dim": hidden, "vocab_size": int(c["vocab_size"]),
            "head_dim": int(c.get("head_dim") or hidden // heads),
            "num_query_heads": [heads] * self.layers, "num_kv_heads": [kv] * self.layers,
            # each layer's width w is int(w / hidden * hidden + 0.5) = w exactly, with ffn_dim_divisor 1
            "ffn_multipliers": [w / hidden for w in self.widths], "ffn_dim_divisor": 1, "ffn_with_glu": True,
            "normalize_qk_projections": True, "share_input_output_layers": self.tied,
            "rms_norm_eps": float(c.get("rms_norm_eps", 1e-6)), "rope_freq_constant": theta,
            "max_context_length": int(c.get("max_position_embeddings", 32768)),
            "bos_token_id": c.get("bos_token_id"), "eos_token_id": c.get("eos_token_id"),
        }

    def tensors(self) -> list[tuple[str, Callable[[], np.ndarray]]]:
        """(mlx-lm name, float32 maker) for every weight, in file order."""
        def get(name: str) -> Callable[[], np.ndarray]:
            return lambda: self._values(name)

        hf = "model.layers.{i}.{part}.weight"
        if not self.ragged:
            names = [n for n in self.reader.names() if not (self.tied and n == "lm_head.weight")]
            return [(n, get(n)) for n in names]
        out = [("transformer.token_embeddings.weight", get("model.embed_tokens.weight"))]
        for i in range(self.layers):
            pre = f"transformer.layers.{i}"
            qkv = [hf.format(i=i, part=f"self_attn.{p}_proj") for p in "qkv"]
            out += [(f"{pre}.attn_norm.weight", get(hf.format(i=i, part="input_layernorm"))),
                    (f"{pre}.attn.qkv_proj.weight", lambda qkv=qkv: np.concatenate([self._values(n) for n in qkv])),
                    (f"{pre}.attn.q_norm.weight", get(hf.format(i=i, part="self_attn.q_norm"))),
                    (f"{pre}.attn.k_norm.weight", get(hf.format(i=i, part="self_attn.k_norm"))),
                    (f"{pre}.attn.out_proj.weight", get(hf.format(i=i, part="self_attn.o_proj"))),
                    (f"{pre}.ffn_norm.weight", get(hf.format(i=i, part="post_attention_layernorm"))),
                    (f"{pre}.ffn.proj_1.weight", lambda i=i: np.concatenate([self._rows(i, "gate_proj"),
                                                                             self._rows(i, "up_proj")])),
                    (f"{pre}.ffn.proj_2.weight", lambda i=i: self._columns(i))]
        out.append(("transformer.norm.weight", get("model.norm.weight")))
        if not self.tied:
            out.append(("lm_head.weight", get("lm_head.weight")))
        return out

    def _rows(self, i: int, part: str) -> np.ndarray:
        return self.plan.rows(i, self._values(f"model.layers.{i}.mlp.{part}.weight"))

    def _columns(self, i: int) -> np.ndarray:
        return self.plan.columns(i, self._values(f"model.layers.{i}.mlp.down_proj.weight"))


def _check_expressible(config: dict[str, Any], ragged: bool) -> None:
    """Refuse what mlx-lm's model for the layout would compute differently from the checkpoint."""
    arch = "openelm (the ragged layout)" if ragged else "qwen3"
    if config.get("attention_bias"):
        raise ExportError(f"mlx-lm's {arch} has no attention bias and this model has one; it cannot be written for MLX")
    if config.get("use_sliding_window"):
        raise ExportError(f"this model uses a sliding attention window, which mlx-lm's {arch} does not; set "
                          "use_sliding_window false in its config if it never reaches the window, or do not export it")
    if ragged:
        rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind != "default":
            raise ExportError(f"this model's RoPE is scaled ({kind!r}), which mlx-lm's openelm (plain RoPE) does not "
                              "compute: use --layout as-is (mlx-lm's qwen3 reads the scaling)")

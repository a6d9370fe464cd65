"""Write a baked Qwen3 folder as one GGUF file for llama.cpp, with gguf-py (llama.cpp's own writer), tensor by tensor.

Two architectures, by layout:

- ``as-is`` (a dense or pruned bake): arch ``qwen3``, with the tensor names, shapes, types and metadata that
  llama.cpp's ``convert_hf_to_gguf.py`` writes for the same checkpoint (tests compare the two files).
- ``ragged``: each layer keeps exactly the neurons whose ``down_proj`` column is nonzero, in an arch whose
  loader sizes every layer's MLP on its own. llama.cpp's ``qwen3`` sizes every layer from layer 0's
  ``n_ff``; ``openelm`` (``src/models/openelm.cpp``) reads ``n_ff(i)``, ``n_head(i)``, ``n_head_kv(i)`` per
  layer and computes Qwen3's math: RMSNorm, one fused QKV projection, per-head q/k RMSNorm, NEOX RoPE over
  the whole head (``rope.dimension_count`` = head_dim), attention scaled by 1/sqrt(head_dim), SwiGLU, and
  the output tied to the embedding. An untied model (Qwen3-8B and up) is refused for ragged, not converted
  wrongly. Block-quantized types need each layer's width to be a whole number of blocks (32 for Q8_0/Q4_0),
  so a ragged layer gets zero neurons up to the next block (reported; still far less than the pruned
  layout's global width), and a layer with no neuron left keeps one block of zeros (llama.cpp asserts on a
  zero-width matmul).

Types: each tensor gets the type llama.cpp's ``llama-quantize`` gives it for the file type, so a file compares one
to one with the files people already run. ``f32``, ``f16``, ``bf16`` and ``q8_0`` are written by gguf-py (norms
F32; a 2-D tensor whose rows are not a whole number of blocks F16, as the converter does; llama-quantize keeps
every other Q8_0 tensor Q8_0). ``q4_0`` and the K-quants ``q6_k``, ``q5_k_m``, ``q4_k_m`` are llama.cpp's own
``llama_model_quantize`` (through llama-cpp-python) run on an F32 file of the same tensors: its mix of types per
tensor (the output, or the tied embedding, one type up: Q6_K for Q4_0 and the K-quants; ``_m``: some attention
and ``ffn_down`` tensors one type up), its fallback for rows that are not whole blocks (Q5_0, Q5_1, Q8_0), and a
ragged layer's width rounded up to the block (32; 256 for the K-quants). ``pure`` (``--gguf-pure``, as
``llama-quantize --pure``) makes every 2-D tensor the one type: gguf-py writes a pure Q4_0 without llama.cpp.
The file is written to a temporary file beside ``--out`` and renamed when complete; the public bake
manifest rides along as the ``lambda_bake.manifest`` string, so a lone GGUF still says what it is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import BaseModelError, ExportError
from bake.io.atomic import atomic_output_file
from bake.io.base_model import open_base_model, rope_theta
from bake.io.tensor_io import CheckpointReader
from bake.write.checkpoint import check_carried_files
from bake.write.manifest import GGUF_LAYOUT_KEY, GGUF_MANIFEST_KEY, MANIFEST_NAME, public_manifest, read_manifest
from export.gguf.vocab import add_vocab
from export.neurons import LayerWidths, bake_values
from export.options import GGUF_TYPES

GGUF_LAYOUTS = ("as-is", "ragged")


@dataclass(frozen=True)
class GgufType:
    name: str
    qtype: Any  # gguf.GGMLQuantizationType of the 2-D weights (a K-quant: its main one)
    file_type: Any  # gguf.LlamaFileType
    block: int  # elements per block along a row (1: not block-quantized)
    by_llama: bool = False  # written by llama.cpp's quantizer from an F32 file


def gguf_type(name: str, pure: bool = False) -> GgufType:
    """The type ``name``; ``pure``: every 2-D tensor in it (Q4_0 then comes from gguf-py, not llama.cpp's mix)."""
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    table = {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
             "q8_0": (q.Q8_0, f.MOSTLY_Q8_0), "q4_0": (q.Q4_0, f.MOSTLY_Q4_0),
             "q6_k": (q.Q6_K, f.MOSTLY_Q6_K), "q5_k_m": (q.Q5_K, f.MOSTLY_Q5_K_M), "q4_k_m": (q.Q4_K, f.MOSTLY_Q4_K_M)}
    if name not in table:
        raise ExportError(f"unknown --gguf-type {name!r}; choose one of {', '.join(GGUF_TYPES)}")
    qtype, ftype = table[name]
    by_llama = name.endswith(("_k", "_k_m")) or (name == "q4_0" and not pure)
    return GgufType(name, qtype, ftype, gguf.GGML_QUANT_SIZES[qtype][0], by_llama=by_llama)


def default_file_name(layout: str, gguf_type_name: str, pure: bool = False) -> str:
    """The name ``bake --gguf`` gives the file inside the baked folder (``-pure``: one type, ``--gguf-pure``)."""
    return f"model-{layout}-{gguf_type_name.upper()}{'-pure' if pure else ''}.gguf"


def file_type_name(file_type: int) -> str:
    """The --gguf-type of a file's ``general.file_type`` (else ``file type N``)."""
    return {int(gguf_type(n).file_type): n for n in GGUF_TYPES}.get(int(file_type), f"file type {file_type}")


@dataclass
class Planned:
    """One GGUF tensor: its name, the numpy array shape (HF orientation), its GGML type, and how to make it."""

    name: str
    shape: tuple[int, ...]
    qtype: Any
    make: Callable[[], np.ndarray]  # float32 values, ``shape``


def export_gguf(model_dir: Path, out: Path, *, gguf_type_name: str = "f16", layout: str = "as-is",
                pure: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the GGUF of ``model_dir`` to the file ``out`` all or nothing; return the report."""
    import gguf

    if layout not in GGUF_LAYOUTS:
        raise ExportError(f"unknown --layout {layout!r} for GGUF; choose one of {', '.join(GGUF_LAYOUTS)}")
    kind = gguf_type(gguf_type_name, pure)
    if kind.by_llama:
        require_llama_quantizer(kind)
    model_dir, out = Path(model_dir), Path(out)
    if out.suffix != ".gguf":
        raise ExportError(f"--out {out}: a GGUF export is one file; name it *.gguf")
    try:
        base = open_base_model(model_dir)
    except BaseModelError as e:
        raise ExportError(f"--model {model_dir}: {e}") from e
    check_carried_files(model_dir, ExportError)
    config, reader = base.config, base.reader
    # llama.cpp's qwen3 sizes every layer's MLP from one feed_forward_length, so a checkpoint whose layers differ in
    # width (a ragged bake) is written ragged whatever --layout says
    layout = "ragged" if base.ragged else layout
    ragged = layout == "ragged"
    check_expressible(config, layout, base.ragged)
    started = time.monotonic()
    # a K-quant: an F32 file whose ragged widths are whole super-blocks, which llama.cpp then quantizes
    written = GgufType("f32", gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, kind.block) \
        if kind.by_llama else kind
    plan = _Plan(reader, config, written, ragged)
    manifest = read_manifest(model_dir) if (model_dir / MANIFEST_NAME).is_file() else None
    with atomic_output_file(out, overwrite, inputs=(model_dir,)) as tmp:
        first = tmp.with_name(tmp.name + ".f32") if kind.by_llama else tmp
        try:
            _write(first, model_dir, plan, manifest, layout, progress)
            if kind.by_llama:
                llama_quantize(first, tmp, kind, progress, pure)
        finally:
            if first != tmp:
                first.unlink(missing_ok=True)
    modelfile = write_modelfile(out, model_dir)
    return {
        "out": str(out.absolute()), "model": str(model_dir.absolute()), "format": "gguf", "type": kind.name,
        "layout": layout, "pure": pure, "arch": "openelm" if ragged else "qwen3", "mlp_widths": plan.widths,
        "mlp_neurons": sum(plan.kept_counts), "mlp_padding_neurons": sum(plan.widths) - sum(plan.kept_counts),
        "f16_fallback": plan.fallback, "bytes": out.stat().st_size,
        # llama.cpp picks a K-quant's types per tensor, so read them back (parsing the vocabulary: seconds)
        "tensor_types": tensor_types(out) if kind.by_llama else plan.tensor_types(),
        "modelfile": str(modelfile.absolute()),
        "seconds": round(time.monotonic() - started, 2),
    }


def check_expressible(config: dict[str, Any], layout: str, per_layer: bool = False) -> None:
    """Refuse a GGUF llama.cpp could not hold: ragged widths need its openelm arch, which ties the output to the
    embedding and has no attention bias (``per_layer``: the checkpoint itself is ragged). ``bake --gguf`` asks
    before it bakes."""
    if layout != "ragged" and not per_layer:
        return
    why = ("this checkpoint has its own MLP width in each layer (a ragged bake), which only llama.cpp's openelm arch "
           "holds, and" if per_layer else "--layout ragged writes llama.cpp's openelm arch, which")
    instead = ("bake it with --layout pruned (one width) for GGUF" if per_layer
               else "use --layout as-is (a pruned bake is the one-width form)")
    if not config.get("tie_word_embeddings", False):
        raise ExportError(f"{why} ties the output to the embedding; this model has its own lm_head "
                          f"(tie_word_embeddings is false), so it cannot be written ragged: {instead}")
    if config.get("attention_bias"):
        raise ExportError(f"{why} has no attention bias; this model has one: {instead}")


def write_modelfile(gguf_path: Path, model_dir: Path) -> Path:
    """The Ollama Modelfile beside ``gguf_path`` (``export.gguf.modelfile``), written whole or not at all."""
    from export.gguf.modelfile import modelfile_name, modelfile_text

    path = Path(gguf_path).with_name(modelfile_name(Path(gguf_path).name))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(modelfile_text(Path(gguf_path).name, model_dir))
    os.replace(tmp, path)
    return path


def _write(path: Path, model_dir: Path, plan: _Plan, manifest: dict[str, Any] | None, layout: str,
           progress: bool) -> None:
    """Header, metadata and tensor infos first, then the tensors one by one (each made, encoded and written)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "openelm" if plan.ragged else "qwen3")
    _metadata(writer, model_dir, plan, manifest, layout)
    tensors = plan.planned
    for t in tensors:
        nbytes = _nbytes(t.shape, t.qtype)
        writer.add_tensor_info(t.name, _byte_shape(t.shape, t.qtype), _storage(t.qtype), nbytes, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in _progress(tensors, progress):
        writer.write_tensor_data(_encode(t.make(), t.qtype))
    writer.close()


def require_llama_quantizer(kind: GgufType) -> None:
    """Refuse a type only llama.cpp's quantizer makes when llama-cpp-python is missing, naming both ways out."""
    import importlib.util

    from export.install import GGUF_INSTALL, LLAMA_CPP_INSTALL

    if importlib.util.find_spec("llama_cpp") is None:
        pure = (" or add --gguf-pure for a file of Q4_0 tensors only, which gguf-py writes (llama-quantize --pure)"
                if kind.name == "q4_0" else "")
        raise ExportError(f"--gguf-type {kind.name} is made by llama.cpp's quantizer, as llama-quantize makes it "
                          f"(its per-tensor types: the embedding/output in Q6_K), and llama-cpp-python is not "
                          f"installed: {LLAMA_CPP_INSTALL}, or {GGUF_INSTALL}{pure}")


def llama_quantize(source: Path, out: Path, kind: GgufType, progress: bool, pure: bool = False) -> None:
    """llama.cpp's ``llama_model_quantize`` (what ``llama-quantize`` runs) from the F32 ``source`` to ``out``; it
    keeps every metadata key and sets ``general.file_type``; ``pure``: no per-tensor mix (``--pure``). Its
    per-tensor log is shown only with progress."""
    import llama_cpp

    from export.install import cpu_threads

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(kind.file_type)
    params.pure = pure
    params.nthread = cpu_threads()
    if progress:
        print(f"quantizing to {kind.name.upper()} with llama.cpp ...", file=sys.stderr)
    with _quiet_stderr(not progress):
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if failed or not out.is_file():
        raise ExportError(f"llama.cpp's quantizer failed ({failed}) making {kind.name} from {source.name}; nothing "
                          "was written: run again without --quiet to see its log")


@contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[None]:
    """llama.cpp logs through llama-cpp-python's callback (Python's stderr) and from C (file descriptor 2): point
    both at /dev/null while ``quiet``."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, redirect_stderr(null):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the written file holds."""
    from collections import Counter

    from bake.io.gguf_reader import open_gguf

    return dict(sorted(Counter(t.tensor_type.name for t in open_gguf(path).tensors).items()))


class _Plan:
    """Every tensor of the file, decided before a byte is written."""

    def __init__(self, reader: CheckpointReader, config: dict[str, Any], kind: GgufType, ragged: bool):
        self.reader, self.config, self.kind, self.ragged = reader, config, kind, ragged
        self.layers = int(config["num_hidden_layers"])
        self.fallback: list[str] = []
        self.plan = LayerWidths.of(reader, self.layers, ragged, kind.block)
        self.keep, self.kept_counts, self.widths = self.plan.keep, self.plan.kept_counts, self.plan.widths

    def _values(self, name: str) -> np.ndarray:
        return bake_values(self.reader, name)

    def _type_for(self, name: str, shape: tuple[int, ...]) -> Any:
        import gguf

        q = gguf.GGMLQuantizationType
        if len(shape) == 1 or self.kind.qtype == q.F32:
            return q.F32
        if shape[-1] % self.kind.block:  # a row that is not a whole number of blocks: F16, as the converter does
            self.fallback.append(name)
            return q.F16
        return self.kind.qtype

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each GGML type the file holds."""
        from collections import Counter

        return dict(sorted(Counter(t.qtype.name for t in self.planned).items()))

    def _add(self, out: list[Planned], name: str, shape: tuple[int, ...], make: Callable[[], np.ndarray]) -> None:
        out.append(Planned(name, shape, self._type_for(name, shape), make))

    @cached_property
    def planned(self) -> list[Planned]:
        """The file's tensors in order, each with its type (decided once: deciding records the F16 fallbacks)."""
        import gguf

        names, t = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
        hf = "model.layers.{i}.{part}.weight"
        out: list[Planned] = []
        embed = "model.embed_tokens.weight"
        self._add(out, names[t.TOKEN_EMBD] + ".weight", self.reader.tensors[embed].shape, lambda: self._values(embed))
        for i in range(self.layers):
            def get(part: str, i: int = i) -> Callable[[], np.ndarray]:
                return lambda: self._values(hf.format(i=i, part=part))

            def shape(part: str, i: int = i) -> tuple[int, ...]:
                return self.reader.tensors[hf.format(i=i, part=part)].shape

            blk = {k: names[k].format(bid=i) + ".weight" for k in
                   (t.ATTN_NORM, t.ATTN_Q, t.ATTN_K, t.ATTN_V, t.ATTN_QKV, t.ATTN_OUT, t.ATTN_Q_NORM, t.ATTN_K_NORM,
                    t.FFN_NORM, t.FFN_GATE, t.FFN_UP, t.FFN_DOWN)}
            self._add(out, blk[t.ATTN_NORM], shape("input_layernorm"), get("input_layernorm"))
            if self.ragged:
                parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
                rows = sum(shape(p)[0] for p in parts)
                self._add(out, blk[t.ATTN_QKV], (rows, shape(parts[0])[1]),
                          lambda i=i, parts=parts: np.concatenate([self._values(hf.format(i=i, part=p)) for p in parts]))
            else:
                for key, part in ((t.ATTN_Q, "self_attn.q_proj"), (t.ATTN_K, "self_attn.k_proj"),
                                  (t.ATTN_V, "self_attn.v_proj")):
                    self._add(out, blk[key], shape(part), get(part))
            for key, part in ((t.ATTN_Q_NORM, "self_attn.q_norm"), (t.ATTN_K_NORM, "self_attn.k_norm"),
                              (t.ATTN_OUT, "self_attn.o_proj"), (t.FFN_NORM, "post_attention_layernorm")):
                self._add(out, blk[key], shape(part), get(part))
            hidden, width = shape("mlp.down_proj")[0], self.widths[i]
            for key, part in ((t.FFN_GATE, "mlp.gate_proj"), (t.FFN_UP, "mlp.up_proj")):
                self._add(out, blk[key], (width, hidden), lambda i=i, part=part: self._rows(i, part))
            self._add(out, blk[t.FFN_DOWN], (hidden, width), lambda i=i: self._columns(i))
        self._add(out, names[t.OUTPUT_NORM] + ".weight", self.reader.tensors["model.norm.weight"].shape,
                  lambda: self._values("model.norm.weight"))
        if not self.config.get("tie_word_embeddings", False):
            self._add(out, names[t.OUTPUT] + ".weight", self.reader.tensors["lm_head.weight"].shape,
                      lambda: self._values("lm_head.weight"))
        return out

    def _rows(self, i: int, part: str) -> np.ndarray:
        return self.plan.rows(i, self._values(f"model.layers.{i}.{part}.weight"))

    def _columns(self, i: int) -> np.ndarray:
        return self.plan.columns(i, self._values(f"model.layers.{i}.mlp.down_proj.weight"))


def _metadata(writer: Any, model_dir: Path, plan: _Plan, manifest: dict[str, Any] | None, layout: str) -> None:
    config = plan.config
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    writer.add_type("model")
    writer.add_name(manifest["base"]["source"].split("/")[-1] + "-lambda-baked" if manifest else model_dir.name)
    _provenance(writer, manifest, plan.ragged)
    writer.add_block_count(plan.layers)
    writer.add_context_length(int(config.get("max_position_embeddings", 32768)))
    writer.add_embedding_length(int(config["hidden_size"]))
    if plan.ragged:  # only the MLP widths differ by layer: head counts are one number (llama.cpp's loader takes
        writer.add_feed_forward_length(plan.widths)  # either; the Hub's GGUF memory estimate reads a number)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_feed_forward_length(plan.widths[0])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(plan.kind.file_type)
    writer.add_quantization_version(2)
    add_vocab(writer, model_dir, int(config["vocab_size"]))
    writer.add_string(GGUF_LAYOUT_KEY, layout)
    if manifest is not None:
        writer.add_string(GGUF_MANIFEST_KEY, json.dumps(public_manifest(manifest, model_dir), sort_keys=True))


def _provenance(writer: Any, manifest: dict[str, Any] | None, ragged: bool) -> None:
    """``general.basename``, ``general.base_model.*`` and ``general.tags``: what the Hub and llama.cpp's tools show,
    so that an openelm file still says it is a Qwen3 (a Hub base model is named by its id, never a local path)."""
    tags = ["qwen3", "lambda-gates"] + (["ragged"] if ragged else [])
    if manifest is None:
        writer.add_tags(tags)
        return
    base = manifest["base"]
    name = str(base.get("hub_id") or base["source"]).rstrip("/").split("/")[-1]
    writer.add_basename(name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, name)
    hub_id = base.get("hub_id")
    if hub_id and "/" in hub_id:
        writer.add_base_model_organization(0, hub_id.split("/")[0])
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{hub_id}")
    tags += [manifest["layout"], f"variant-{manifest['gates']['variant']}", f"off-{round(100 * manifest['off_fraction'])}pct"]
    writer.add_tags(tags)


def _storage(qtype: Any) -> np.dtype:
    import gguf

    q = gguf.GGMLQuantizationType
    return np.dtype({q.F32: np.float32, q.F16: np.float16, q.BF16: np.uint16}.get(qtype, np.uint8))


def _byte_shape(shape: tuple[int, ...], qtype: Any) -> tuple[int, ...]:
    import gguf

    if _storage(qtype) != np.uint8:
        return shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = int(np.prod(shape, dtype=np.int64))
    return count // block * size


def _encode(values: np.ndarray, qtype: Any) -> np.ndarray:
    """float32 values in the GGML type (gguf-py's quantizers: rounding to nearest, as llama.cpp's)."""
    import gguf

    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if qtype == q.F16:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(values.astype(np.float16))
    return np.ascontiguousarray(gguf.quants.quantize(values, qtype))


def _progress(items: list[Planned], show: bool) -> Iterator[Planned]:
    from tqdm.auto import tqdm

    yield from tqdm(items, desc="writing GGUF", unit="tensor", disable=not show, file=sys.stderr)

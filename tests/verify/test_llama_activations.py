"""verify's model of llama.cpp's activation rounding (``bake.verify.llama_activations``): against llama.cpp itself,
a file whose every weight is float32 but one block-quantized tensor computes what the dequantized model with that
rounding computes, to float rounding (but where one rounding tie falls the other way), where the dequantized model
without it is off at every position; and
against gguf-py's q8_0 quantizer and the q8_K format's own invariants."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from bake.demo.assets import TinyQwen3Spec, build_seed_variants, build_tiny_qwen3
from bake.io.base_model import read_config
from bake.verify import llama_activations as act
from bake.verify.candidates import TorchRunner
from bake.verify.export_model import gguf_model
from export.gguf.writer import export_gguf


def _one_quantized(src: Path, out: Path, name: str, qtype: Q, donor: Path | None = None) -> Path:
    """``src`` (an f32 GGUF) with tensor ``name`` stored as ``qtype``, everything else as it is: quantized by gguf-py,
    or (the K-quants, which gguf-py cannot quantize) taken from ``donor``, the same bake quantized by llama.cpp."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = f.types[0]
        sub = {"sub_type": f.types[-1]} if kind == gguf.GGUFValueType.ARRAY else {}
        writer.add_key_value(key, f.contents(), kind, **sub)
    donated = {t.name: t for t in gguf.GGUFReader(str(donor)).tensors} if donor else {}
    for t in reader.tensors:
        a = np.asarray(t.data).reshape([int(d) for d in reversed(t.shape.tolist())])
        if t.name == name and donor:
            assert donated[name].tensor_type == qtype
            writer.add_tensor(t.name, np.asarray(donated[name].data), raw_dtype=qtype)
        elif t.name == name:
            writer.add_tensor(t.name, quantize(a.astype(np.float32), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


WIDE = TinyQwen3Spec(intermediate_size=256)  # ffn_down rows of 256: whole K-quant super-blocks


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bf16 base with 256 MLP neurons, baked at 50 % off and written as an f32 GGUF: (the base, the file)."""
    from bake.gates.gate_math import Cut, GateSettings
    from bake.gates.variant import load_variant
    from bake.write.pipeline import BakeOptions, bake_checkpoint

    root = tmp_path_factory.mktemp("act")
    base = build_tiny_qwen3(root / "base", WIDE, dtype=torch.bfloat16)
    gates = build_seed_variants(root / "gates", WIDE.num_layers, WIDE.intermediate_size)
    variant = load_variant(gates, "chat_energy_optA", num_layers=WIDE.num_layers, intermediate_size=256)
    bake_checkpoint(base, variant, GateSettings(Cut("off_fraction", 0.5), "hard", "energy"), root / "bake",
                    BakeOptions(progress=False))
    path = root / "f32.gguf"
    export_gguf(root / "bake", path, gguf_type_name="f32", progress=False)
    return base, path


@pytest.mark.parametrize(("tensor", "qtype", "donor"), [
    ("blk.1.attn_q.weight", Q.Q8_0, None), ("blk.2.ffn_gate.weight", Q.Q4_0, None),
    ("blk.0.attn_output.weight", Q.Q5_0, None), ("blk.0.ffn_up.weight", Q.Q5_1, None),
    ("blk.1.ffn_down.weight", Q.Q6_K, "q6_k"), ("blk.1.ffn_down.weight", Q.Q4_K, "q4_k_m")])
def test_llama_cpp_computes_the_rounded_activations(f32_gguf: tuple[Path, Path], tmp_path: Path, tensor: str,
                                                    qtype: Q, donor: str | None) -> None:
    pytest.importorskip("llama_cpp")
    from export.runtime.llama_loop import LlamaCppLM

    base, f32 = f32_gguf
    if donor:
        export_gguf(f32.parent / "bake", tmp_path / "donor.gguf", gguf_type_name=donor, progress=False)
    path = _one_quantized(f32, tmp_path / "one.gguf", tensor, qtype, tmp_path / "donor.gguf" if donor else None)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (7, 40, 90)]
    lm = LlamaCppLM(path, n_ctx=128, logits_all=True, f32_cache=True)
    got = [torch.from_numpy(np.asarray(x)) for x in lm.score(seqs)]
    del lm
    config = read_config(base)

    def off(activations: bool) -> torch.Tensor:
        """Each position's largest logit difference, relative to the sequence's largest logit."""
        want = TorchRunner(gguf_model(path, config, activations=activations)).score(seqs)
        return torch.cat([(a - b).abs().amax(-1) / b.abs().max() for a, b in zip(got, want)])

    rounded, plain = off(True), off(False)
    assert float(plain.median()) > 1e-4  # without the rounding, the 8-bit activations' error shows at every position
    if qtype == Q.Q5_1:  # q8_1 also stores each block's sum in float16 for the weights' offset: not modelled
        assert float(rounded.median()) < float(plain.median()) / 2
    else:  # float rounding: the integer block dots equal the float dots of the rounded values. Not everywhere: where
        # llama.cpp's float input lies within its rounding of a tie, one code goes the other way, and the later
        # positions of that sequence see it through the KV cache
        assert float(rounded.median()) < 2e-6, (float(rounded.median()), float(plain.median()))


def test_q8_0_rounds_as_gguf_pys_quantizer_but_for_float_ties() -> None:
    x = (np.random.default_rng(0).standard_normal((64, 256)) * 3).astype(np.float32)
    x[3, :32] = 0.0  # an all-zero block
    want = dequantize(quantize(x, Q.Q8_0), Q.Q8_0).reshape(x.shape)
    got = act.q8_0(torch.from_numpy(x)).numpy()
    step = np.abs(x).reshape(-1, 32).max(-1).repeat(32).reshape(x.shape) / 127
    assert (got[3, :32] == 0).all()
    assert np.abs(got - want).max() <= step.max() * 1.001  # x / d and x * (127 / amax) may round a tie apart
    assert np.mean(got == want) > 0.999


def test_q8_k_codes_and_scale() -> None:
    x = torch.from_numpy((np.random.default_rng(1).standard_normal((8, 512)) * 0.7).astype(np.float32))
    x[2, 256:] = 0.0
    got = act.q8_k(x).reshape(-1, 256)
    blocks = x.reshape(-1, 256)
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    d = 1.0 / (-127.0 / peak)  # the format's float32 scale
    codes = got / torch.where(peak == 0, torch.ones_like(d), d)
    assert torch.equal(got[5], torch.zeros(256))  # the zero block (row 2, second half)
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127.0 + 1e-3
    assert torch.allclose(got.gather(-1, blocks.abs().argmax(-1, keepdim=True)), peak, rtol=1e-6)
    assert float((got - blocks).abs().max() / d.abs().max()) <= 0.5 + 1e-4  # within half a step
    with pytest.raises(ValueError, match="not whole blocks of 256"):
        act.q8_k(torch.ones(3, 100))


def test_an_unknown_weight_type_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 4))
    with pytest.raises(ValueError, match="no model of llama.cpp's activations for IQ2_XS"):
        act.round_inputs(model, {"0": "IQ2_XS"})
    assert act.round_inputs(model, {"0": "F32"}) == []

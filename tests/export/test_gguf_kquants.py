"""K-quant GGUFs, made by llama.cpp's own quantizer from our F32 file: they keep our metadata, carry the type mix
llama.cpp chooses, pad ragged layers to whole 256-element super-blocks, pass verify (weights within half a step
of the bake, logits within the budget), and the weight bound catches a code moved by one step."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from bake.cli import main
from bake.demo.assets import TinyQwen3Spec, build_seed_variants, build_tiny_qwen3
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.verify.weights.gguf_check import quantization_bound
from bake.write.manifest import GGUF_MANIFEST_KEY
from bake.write.model_card import gguf_summary
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.gguf.writer import export_gguf

SPEC = TinyQwen3Spec(num_layers=2, hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, head_dim=64)
FAST = ["--quiet", "--json", "--greedy-tokens", "4"]


@pytest.fixture(scope="module")
def bakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model whose rows are whole super-blocks (256), baked dense and pruned at 50 % off."""
    root = tmp_path_factory.mktemp("kquant")
    base = build_tiny_qwen3(root / "base", SPEC)
    gates = build_seed_variants(root / "gates", SPEC.num_layers, SPEC.intermediate_size)
    v = load_variant(gates, "chat_energy_optA", num_layers=SPEC.num_layers, intermediate_size=SPEC.intermediate_size)
    settings = GateSettings(Cut("off_fraction", 0.5), "hard", "energy")
    for layout in ("dense", "pruned"):
        bake_checkpoint(base, v, settings, root / layout, BakeOptions(layout=layout, pad_multiple=64, progress=False))
    return {"dense": root / "dense", "pruned": root / "pruned"}


@pytest.mark.parametrize(("bake", "kind", "layout", "types"), [
    ("dense", "q4_k_m", "as-is", {"Q4_K", "Q6_K"}),
    ("dense", "q6_k", "ragged", {"Q6_K"}),
    # the pruned width, 320, is not whole super-blocks: llama.cpp's fallback for ffn_down (Q4_K -> Q5_0, Q6_K -> Q8_0)
    ("pruned", "q4_k_m", "as-is", {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}),
])
def test_k_quants_pass_verify(bakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              bake: str, kind: str, layout: str, types: set[str]) -> None:
    out = tmp_path / "m.gguf"
    report = export_gguf(bakes[bake], out, gguf_type_name=kind, layout=layout, progress=False)
    manifest = json.loads((bakes[bake] / "bake_manifest.json").read_text())
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == {"q4_k_m": 15, "q6_k": 18}[kind]
    assert json.loads(reader.fields[GGUF_MANIFEST_KEY].contents())["off_fraction"] == manifest["off_fraction"]
    assert types <= set(report["tensor_types"]) <= types | {"F32"}
    assert gguf_summary(out)["type"] == kind.upper()  # what the model card calls it
    if layout == "ragged":
        assert report["mlp_widths"] == [max(256, -(-k // 256) * 256) for k in manifest["kept_per_layer"]]
    assert not list(tmp_path.glob(".*"))  # the F32 intermediate is gone
    code = main(["verify", "--baked", str(bakes[bake]), "--gguf", str(out), *FAST])
    _, candidate = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0, candidate["failures"]
    assert candidate["weights"]["passed"] and candidate["weights"]["weights_checked"] == len(reader.tensors)
    assert candidate["dtype"] == kind and candidate["budget"]["dtype"] == {"q4_k_m": "int4", "q6_k": "int8"}[kind]


def test_a_k_quant_code_moved_by_one_step_fails(bakes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    export_gguf(bakes["dense"], out, gguf_type_name="q4_k_m", progress=False)
    from safetensors.numpy import load_file

    want_all = load_file(str(bakes["dense"] / "model.safetensors"))
    for t in gguf.GGUFReader(str(out)).tensors:
        if t.tensor_type.name not in ("Q4_K", "Q6_K") or not t.name.startswith("blk.0.attn_q."):
            continue
        raw = np.asarray(t.data)
        want = want_all["model.layers.0.self_attn.q_proj.weight"].astype(np.float32)
        got = dequantize(raw, t.tensor_type).reshape(want.shape).astype(np.float32)
        err, allowed, step = quantization_bound(t.tensor_type, raw, got, want)
        assert (err <= allowed).all()
        moved = got.copy()
        moved[3, 7] += step[3, 7] * np.sign(moved[3, 7] - want[3, 7] or 1.0)
        err, allowed, _ = quantization_bound(t.tensor_type, raw, moved, want)
        assert err[3, 7] > allowed[3, 7]
        return
    pytest.fail("blk.0.attn_q.weight is not K-quantized")


def test_k_quants_without_llama_cpp_name_the_extra(bakes: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from export.install import GGUF_INSTALL

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    out = tmp_path / "k.gguf"
    assert main(["export", "--model", str(bakes["dense"]), "--format", "gguf", "--gguf-type", "q4_k_m",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python" in err and GGUF_INSTALL in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("layout", ["as-is", "ragged"])
def test_q4_0_has_llama_quantizes_type_mix_and_pure_is_one_type(bakes: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str], layout: str) -> None:
    """llama-quantize Q4_0 (src/llama-quant.cpp): the tied embedding, which is also the output, in Q6_K (its rows,
    256, are whole super-blocks); every other 2-D tensor Q4_0, norms F32. --gguf-pure: all Q4_0, by gguf-py."""
    mixed = export_gguf(bakes["dense"], tmp_path / "m.gguf", gguf_type_name="q4_0", layout=layout, progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert types.pop("token_embd.weight") == "Q6_K"
    assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {"Q4_0"}
    assert {t for n, t in types.items() if n.endswith("norm.weight")} == {"F32"}
    pure = export_gguf(bakes["dense"], tmp_path / "p.gguf", gguf_type_name="q4_0", layout=layout, pure=True,
                       progress=False)
    assert pure["tensor_types"] == {"F32": mixed["tensor_types"]["F32"], "Q4_0": mixed["tensor_types"]["Q4_0"] + 1}
    assert mixed["bytes"] > pure["bytes"]  # the Q6_K embedding: 6.56 bits a weight against 4.5
    assert mixed["mlp_widths"] == pure["mlp_widths"]  # ragged: whole 32-blocks either way
    for path in ("m.gguf", "p.gguf"):
        code = main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(tmp_path / path), *FAST])
        _, candidate = json.loads(capsys.readouterr().out)["candidates"]
        assert code == 0 and candidate["weights"]["passed"], candidate["failures"]


def test_q4_0_without_llama_cpp_names_gguf_pure(bakes: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    args = ["export", "--model", str(bakes["dense"]), "--format", "gguf", "--gguf-type", "q4_0", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "m.gguf")]) == 2
    assert "add --gguf-pure" in capsys.readouterr().err and not (tmp_path / "m.gguf").exists()
    assert main([*args, "--gguf-pure", "--out", str(tmp_path / "p.gguf")]) == 0  # gguf-py alone
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "p.gguf")).tensors} == {"Q4_0", "F32"}

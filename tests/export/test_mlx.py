"""MLX for mlx-lm: the folders mlx-lm itself loads and runs (mlx's Linux CPU build), against the hooked model and the
bake; ragged widths in mlx-lm's openelm; mlx-lm's own 4- and 8-bit quantizer; the weight proof; refused requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from bake.cli import main
from bake.demo.assets import TinyQwen3Spec, build_tiny_qwen3
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.mlx.writer import export_mlx
from export.runtime.mlx_loop import MlxLM

pytest.importorskip("mlx_lm")  # in the test extra; skipped only where mlx has no build (not on CI)

SETTINGS = GateSettings(Cut("preset", 3), "hard", "energy")
FAST = ["--quiet", "--json", "--greedy-tokens", "4"]


@pytest.fixture(scope="module")
def bakes(tiny_base: Path, tiny_base_bf16: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mlx-bakes")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    for layout in ("dense", "pruned"):
        bake_checkpoint(tiny_base, v, SETTINGS, root / layout, BakeOptions(layout=layout, pad_multiple=8,
                                                                           progress=False))
    bake_checkpoint(tiny_base_bf16, v, SETTINGS, root / "bf16", BakeOptions(progress=False))
    return {"dense": root / "dense", "pruned": root / "pruned", "bf16": root / "bf16"}


@pytest.fixture(scope="module")
def hooked(tiny_base: Path, tiny_gates: Path) -> torch.nn.Module:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    return load_hooked_model(tiny_base, compute_gates(v.logits, SETTINGS, v.selected_thresholds).scale)


def prompt() -> list[int]:
    return [int(x) for x in np.random.default_rng(0).integers(5, 380, size=48)]


def greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            seq.append(out[-1])
    return out


@pytest.mark.parametrize(("bake", "layout"), [("dense", "as-is"), ("pruned", "as-is"), ("dense", "ragged"),
                                              ("pruned", "ragged")])
def test_mlx_lm_float32_logits_equal_the_hooked_model(bakes: dict[str, Path], hooked: torch.nn.Module, tmp_path: Path,
                                                      bake: str, layout: str) -> None:
    report = export_mlx(bakes[bake], tmp_path / "m", layout=layout, dtype="float32", progress=False)
    manifest = json.loads((bakes[bake] / "bake_manifest.json").read_text())
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    if layout == "ragged":
        assert report["model_type"] == config["model_type"] == "openelm"
        assert report["mlp_widths"] == manifest["kept_per_layer"]  # each layer exactly its own neurons
        assert [int(m * config["model_dim"] + 0.5) for m in config["ffn_multipliers"]] == manifest["kept_per_layer"]
    else:
        assert config["model_type"] == "qwen3" and set(report["mlp_widths"]) == {manifest["intermediate_size"]}
    ids = prompt()
    lm = MlxLM(tmp_path / "m")
    (got,) = lm.score([ids])
    with torch.no_grad():
        want = hooked(torch.tensor([ids])).logits[0].numpy()
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4
    ours = [int(t[0]) for t in lm.stream([ids], 8, set(), 0)]  # mlx-lm's generate_step, its KV cache
    assert ours == greedy(hooked, ids, 8)


def test_verify_proves_mlx_exports_and_names_a_wrong_tensor_or_field(bakes: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    export_mlx(bakes["dense"], tmp_path / "r", layout="ragged", dtype="float32", progress=False)
    code = main(["verify", "--baked", str(bakes["dense"]), "--mlx", str(tmp_path / "r"), *FAST])
    checkpoint, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0, mlx["failures"]
    assert mlx["name"].startswith("mlx (openelm, ragged") and mlx["weights"]["passed"]
    assert mlx["weights"]["weights_checked"] == 1 + 4 * 8 + 1  # embedding, 8 per layer, final norm
    (vs_bake,) = mlx["checks"]
    assert vs_bake["against"] == "the bake" and vs_bake["passed"] and vs_bake["max_rel_diff"] <= 1e-4
    assert mlx["max_rel_diff"] <= 1e-4 and mlx["greedy_first_divergence"] is None  # vs the hooked model
    # one float32 step in one weight, then a hyperparameter that changes the math
    weights = load_file(str(tmp_path / "r" / "model.safetensors"))
    name = "transformer.layers.2.attn.qkv_proj.weight"
    bits = weights[name].view(np.uint32).copy()
    bits[3, 5] += 1
    weights[name] = bits.view(np.float32)
    save_file(weights, str(tmp_path / "r" / "model.safetensors"), metadata={"format": "mlx"})
    code = main(["verify", "--baked", str(bakes["dense"]), "--mlx", str(tmp_path / "r"), *FAST])
    _, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 3 and [f["tensor"] for f in mlx["weights"]["failures"]] == [name]
    assert mlx["weights"]["failures"][0]["worst"]["index"] == [3, 5]
    export_mlx(bakes["dense"], tmp_path / "e", layout="as-is", dtype="float32", progress=False)
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    (tmp_path / "e" / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-3}))
    code = main(["verify", "--baked", str(bakes["dense"]), "--mlx", str(tmp_path / "e"), *FAST])
    _, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 3 and [f["tensor"] for f in mlx["weights"]["failures"]] == ["config.json rms_norm_eps"]


@pytest.mark.parametrize(("bits", "layout"), [(4, "ragged"), (8, "ragged"), (4, "as-is")])
def test_quantized_mlx_is_mlx_lms_quantizer_and_passes_verify(bakes: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], bits: int,
                                                              layout: str) -> None:
    report = export_mlx(bakes["dense"], tmp_path / "q", layout=layout, bits=bits, progress=False)
    kept = json.loads((bakes["dense"] / "bake_manifest.json").read_text())["kept_per_layer"]
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    if layout == "ragged":
        assert report["mlp_widths"] == [max(64, -(-k // 64) * 64) for k in kept]  # whole groups of 64
        assert report["mlp_padding_neurons"] == sum(report["mlp_widths"]) - sum(kept)
    per_layer = 4 if layout == "ragged" else 7  # qkv, out, proj_1, proj_2; or q, k, v, o, gate, up, down
    assert report["kept_float"] == [] and report["quantized_tensors"] == 1 + 4 * per_layer  # and the embedding
    code = main(["verify", "--baked", str(bakes["dense"]), "--mlx", str(tmp_path / "q"), *FAST])
    _, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0, mlx["failures"]
    # mlx moves the scale so that the group's extreme is exact, so the rest may round by up to a step
    assert mlx["budget"]["dtype"] == f"int{bits}" and 0 < mlx["weights"]["max_quant_error_steps"] <= 1.0 + 1e-3
    (vs_own,) = mlx["checks"]
    assert vs_own["against"] == "its dequantized weights" and vs_own["max_rel_diff"] <= 1e-4  # float32 activations
    weights = load_file(str(tmp_path / "q" / "model.safetensors"))
    name = "transformer.layers.1.ffn.proj_2.scales" if layout == "ragged" else "model.layers.1.mlp.down_proj.scales"
    weights[name] = weights[name] * np.float32(1.01)
    save_file(weights, str(tmp_path / "q" / "model.safetensors"), metadata={"format": "mlx"})
    code = main(["verify", "--baked", str(bakes["dense"]), "--mlx", str(tmp_path / "q"), *FAST])
    _, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 3 and [f["tensor"] for f in mlx["weights"]["failures"]] == [name]


def test_bf16_mlx_holds_the_bf16_bake_bit_for_bit(bakes: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    report = export_mlx(bakes["bf16"], tmp_path / "b", layout="ragged", progress=False)
    assert report["dtype"] == "bfloat16"  # the bake's own dtype by default
    code = main(["verify", "--baked", str(bakes["bf16"]), "--mlx", str(tmp_path / "b"), *FAST])
    _, mlx = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0, mlx["failures"]
    assert mlx["weights"]["passed"] and mlx["chain"] == ["bake bfloat16", "export bfloat16"]


def test_bake_mlx_generate_and_the_card(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "baked"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(out), "--mlx", "--mlx-layout", "ragged", "--mlx-bits", "4",
                 "--verify", "--greedy-tokens", "4", "--quiet"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "bake_manifest.json").read_text())
    names = [c["name"] for c in manifest["verification"]["candidates"]]
    assert names[0].startswith("checkpoint") and names[1].startswith("mlx (openelm, ragged")
    assert "mlx/model.safetensors" in manifest["files"] and (out / "mlx" / "mlx_export.json").is_file()
    card = (out / "README.md").read_text()
    assert "## Run with mlx-lm" in card and 'load("model/mlx")' in card and "- mlx" in card
    assert main(["generate", "--mlx", str(out / "mlx"), "--prompt", "Hello", "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert "mlx-lm on" in captured.err and captured.out.endswith("\n")
    from bake.hub.push import plan_upload

    alone = plan_upload(out / "mlx", "me/tiny-mlx")  # the MLX folder pushed as its own repo
    meta = alone.describe()["card_metadata"]
    assert meta["library_name"] == "mlx" and "mlx" in meta["tags"] and "ragged" in meta["tags"]
    assert 'load("me/tiny-mlx")' in alone.card() and "AutoModelForCausalLM" not in alone.card()


def test_refused_mlx_requests_are_clear_errors(bakes: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    biased = build_tiny_qwen3(tmp_path / "biased", TinyQwen3Spec())
    config = json.loads((biased / "config.json").read_text())
    (biased / "config.json").write_text(json.dumps(config | {"use_sliding_window": True}))
    assert main(["export", "--model", str(biased), "--format", "mlx", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "sliding attention window" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x*"))
    assert main(["export", "--model", str(bakes["dense"]), "--format", "gguf", "--mlx-bits", "4", "--out",
                 str(tmp_path / "g.gguf"), "--quiet"]) == 2
    assert "--mlx-bits do not apply to --format gguf" in capsys.readouterr().err
    assert main(["export", "--model", str(bakes["dense"]), "--format", "mlx", "--quantize", "int4", "--out",
                 str(tmp_path / "y"), "--quiet"]) == 2
    assert "--quantize do not apply to --format mlx" in capsys.readouterr().err
    assert main(["bake", "--base", str(bakes["dense"]), "--gates", "x", "--preset", "3", "--out", str(tmp_path / "z"),
                 "--mlx-bits", "4", "--quiet"]) == 2
    assert "only apply to the MLX export: add --mlx" in capsys.readouterr().err
    untied = build_tiny_qwen3(tmp_path / "untied", TinyQwen3Spec(tie_word_embeddings=False))
    assert main(["export", "--model", str(untied), "--format", "mlx", "--layout", "ragged", "--out",
                 str(tmp_path / "u"), "--quiet", "--mlx-dtype", "float32"]) == 0  # openelm has its own lm_head
    assert "lm_head.weight" in load_file(str(tmp_path / "u" / "model.safetensors"))
    from transformers import AutoModelForCausalLM

    ids = prompt()
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(untied)).eval()(torch.tensor([ids])).logits[0].numpy()
    (got,) = MlxLM(tmp_path / "u").score([ids])
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4

"""GGUF for llama.cpp: the files llama.cpp itself runs (llama-cpp-python), against the hooked model and the bake;
the same tensors and metadata as llama.cpp's own converter; ragged widths in the openelm arch; the weight proof;
damaged files and refused requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from llama_source import needs_llama_source, run_converter

from bake.cli import main
from bake.demo.assets import TinyQwen3Spec, build_tiny_qwen3
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.gguf.writer import export_gguf
from export.runtime.llama_loop import LlamaCppLM

REPO = Path(__file__).resolve().parents[2]
SETTINGS = GateSettings(Cut("preset", 3), "hard", "energy")
FAST = ["--quiet", "--json", "--greedy-tokens", "4"]


@pytest.fixture(scope="module")
def bakes(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-bakes")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    for layout in ("dense", "pruned"):
        bake_checkpoint(tiny_base, v, SETTINGS, root / layout, BakeOptions(layout=layout, pad_multiple=8,
                                                                           progress=False))
    return {"dense": root / "dense", "pruned": root / "pruned"}


@pytest.fixture(scope="module")
def hooked(tiny_base: Path, tiny_gates: Path) -> torch.nn.Module:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    return load_hooked_model(tiny_base, compute_gates(v.logits, SETTINGS, v.selected_thresholds).scale)


def prompt() -> list[int]:
    return [int(x) for x in np.random.default_rng(0).integers(5, 380, size=48)]


@pytest.mark.parametrize(("bake", "layout"), [("dense", "as-is"), ("pruned", "as-is"), ("dense", "ragged"),
                                              ("pruned", "ragged")])
def test_llama_cpp_f32_logits_equal_the_hooked_model(bakes: dict[str, Path], hooked: torch.nn.Module, tmp_path: Path,
                                                     bake: str, layout: str) -> None:
    out = tmp_path / "m.gguf"
    report = export_gguf(bakes[bake], out, gguf_type_name="f32", layout=layout, progress=False)
    manifest = json.loads((bakes[bake] / "bake_manifest.json").read_text())
    if layout == "ragged":
        assert report["arch"] == "openelm" and report["mlp_widths"] == manifest["kept_per_layer"]
        fields = gguf.GGUFReader(str(out)).fields
        assert list(fields["openelm.feed_forward_length"].contents()) == manifest["kept_per_layer"]
    else:
        assert report["arch"] == "qwen3" and set(report["mlp_widths"]) == {manifest["intermediate_size"]}
    ids = prompt()
    lm = LlamaCppLM(out, n_ctx=128, logits_all=True, f32_cache=True)
    (got,) = lm.score([ids])
    with torch.no_grad():
        want = hooked(torch.tensor([ids])).logits[0].numpy()
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4
    ours = [int(t[0]) for t in LlamaCppLM(out, n_ctx=128).stream([ids], 8, set(), 0)]
    ref = []
    with torch.no_grad():
        seq = list(ids)
        for _ in range(8):
            ref.append(int(hooked(torch.tensor([seq])).logits[0, -1].argmax()))
            seq.append(ref[-1])
    assert ours == ref  # greedy continuations are equal


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("layout", ["as-is", "ragged"])
def test_quantized_gguf_pass_verify_and_pad_ragged_widths_to_whole_blocks(bakes: dict[str, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str], kind: str,
                                                                          layout: str) -> None:
    out = tmp_path / "m.gguf"
    report = export_gguf(bakes["dense"], out, gguf_type_name=kind, layout=layout, progress=False)
    kept = json.loads((bakes["dense"] / "bake_manifest.json").read_text())["kept_per_layer"]
    if layout == "ragged":
        assert report["mlp_widths"] == [max(32, -(-k // 32) * 32) for k in kept]
        assert report["mlp_padding_neurons"] == sum(report["mlp_widths"]) - sum(kept)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_down.weight"] == kind.upper() and types["blk.0.attn_norm.weight"] == "F32"
    code = main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(out), *FAST])
    checkpoint, candidate = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0, candidate["failures"]
    assert candidate["weights"]["passed"] and candidate["weights"]["max_quant_error_steps"] <= 1.0 + 2e-3  # q4_0: +7 clips
    assert candidate["budget"]["dtype"] == {"q8_0": "int8", "q4_0": "int4"}[kind]


def test_verify_fails_ggufs_of_wrong_bakes_with_the_tensor_named(bakes: dict[str, Path], tiny_base: Path,
                                                                 tiny_gates: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    t = compute_gates(v.logits, SETTINGS, v.selected_thresholds).threshold
    lam = np.sort((1 / (1 + np.exp(-v.logits.astype(np.float64)))).astype(np.float32).reshape(-1))
    wrong = {"wrong scale mode": GateSettings(Cut("threshold", t), "hard", "mean"),
             "one neuron more off": GateSettings(Cut("threshold", float(lam[int((lam < np.float32(t)).sum()) + 1])),
                                                 "hard", "energy")}
    for case, settings in wrong.items():
        bake_checkpoint(tiny_base, v, settings, tmp_path / "w", BakeOptions(progress=False, overwrite=True))
        export_gguf(tmp_path / "w", tmp_path / "w.gguf", gguf_type_name="q8_0", overwrite=True, progress=False)
        code = main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(tmp_path / "w.gguf"), *FAST])
        _, c = json.loads(capsys.readouterr().out)["candidates"]
        assert code == 3 and not c["weights"]["passed"], case
        assert any(f["tensor"].endswith("ffn_down.weight") for f in c["weights"]["failures"]), case
    export_gguf(bakes["dense"], tmp_path / "s.gguf", gguf_type_name="f16", progress=False)
    data = bytearray((tmp_path / "s.gguf").read_bytes())
    reader = gguf.GGUFReader(str(tmp_path / "s.gguf"))
    target = next(t for t in reader.tensors if t.name == "blk.2.attn_q.weight")
    at = int(target.data_offset) + 2 * 7  # element 7: one float16 step up
    data[at:at + 2] = (np.frombuffer(bytes(data[at:at + 2]), np.uint16) + 1).astype(np.uint16).tobytes()
    (tmp_path / "s.gguf").write_bytes(bytes(data))
    code = main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(tmp_path / "s.gguf"), *FAST])
    _, c = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 3 and [f["tensor"] for f in c["weights"]["failures"]] == ["blk.2.attn_q.weight"]
    assert c["weights"]["failures"][0]["worst"]["bound"] == 0.0


def test_damaged_gguf_and_refused_requests_are_clear_errors(bakes: dict[str, Path], tiny_gates: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    export_gguf(bakes["dense"], tmp_path / "m.gguf", gguf_type_name="f16", progress=False)
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    for bad in ("cut.gguf",):
        code = main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(tmp_path / bad), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"{tmp_path / bad} cannot be read as a GGUF file" in err and "Traceback" not in err
        assert main(["generate", "--gguf", str(tmp_path / bad), "--prompt", "hi"]) == 2
        assert "Traceback" not in capsys.readouterr().err
    untied = build_tiny_qwen3(tmp_path / "untied", TinyQwen3Spec(tie_word_embeddings=False))
    assert main(["export", "--model", str(untied), "--format", "gguf", "--layout", "ragged", "--out",
                 str(tmp_path / "u.gguf"), "--quiet"]) == 2
    assert "ties the output to the embedding" in capsys.readouterr().err and not (tmp_path / "u.gguf").exists()
    assert not list(tmp_path.glob(".u.gguf*"))
    for cuts in (["--preset", "3"], ["--preset", "all"]):  # one cut, and a sweep: refused before any bake
        out = tmp_path / f"bake{len(cuts[1])}"
        assert main(["bake", "--base", str(untied), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                     *cuts, "--layout", "ragged", "--gguf", "--out", str(out), "--quiet"]) == 2
        assert "ties the output to the embedding" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--model", str(untied), "--format", "gguf", "--out", str(tmp_path / "u.gguf"),
                 "--quiet"]) == 0  # as-is: the qwen3 arch has its own output.weight
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(tmp_path / "u.gguf")).tensors}
    assert main(["export", "--model", str(bakes["dense"]), "--format", "gguf", "--quantize", "int4", "--out",
                 str(tmp_path / "x.gguf"), "--quiet"]) == 2
    assert "--quantize do not apply to --format gguf" in capsys.readouterr().err


def test_bake_gguf_verify_generate_and_push_alone(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from hub_fakes import FakeHfApi
    from huggingface_hub import ModelCard

    from bake.hub import push

    out = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_mean", "--preset",
                 "3", "--gguf", "--gguf-type", "q8_0", "--gguf-layout", "ragged", "--verify", "--greedy-tokens", "4",
                 "--base-id", "Qwen/Qwen3-0.6B", "--out", str(out), "--quiet", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["manifest"]
    assert "model-ragged-Q8_0.gguf" in m["files"] and [c["name"] for c in m["verification"]["candidates"]] == [
        "checkpoint (dense)", "gguf (openelm, ragged, q8_0, llama.cpp)"]
    fields = gguf.GGUFReader(str(out / "model-ragged-Q8_0.gguf")).fields
    # only the MLP widths are per layer; the rest says what the file is, as the Hub and llama.cpp's tools read it
    assert fields["openelm.attention.head_count"].contents() == 4 and fields["openelm.attention.head_count_kv"].contents() == 2
    assert len(fields["openelm.feed_forward_length"].contents()) == 4
    assert fields["general.basename"].contents() == "Qwen3-0.6B"
    assert fields["general.base_model.0.name"].contents() == "Qwen3-0.6B"
    assert fields["general.base_model.0.organization"].contents() == "Qwen"
    assert fields["general.base_model.0.repo_url"].contents() == "https://huggingface.co/Qwen/Qwen3-0.6B"
    assert fields["general.tags"].contents() == ["qwen3", "lambda-gates", "ragged", "dense", "variant-chat_mean",
                                                 f"off-{round(100 * m['off_fraction'])}pct"]
    assert str(tiny_base) not in json.dumps({k: str(f.contents()) for k, f in fields.items() if k.startswith("general.")})
    assert main(["generate", "--gguf", str(out / "model-ragged-Q8_0.gguf"), "--prompt", "What is 2+2?",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    api = FakeHfApi()
    push.push_folder(out / "model-ragged-Q8_0.gguf", "me/q8", api=api)
    assert api.uploaded == ["README.md", "model-ragged-Q8_0.Modelfile", "model-ragged-Q8_0.gguf"]
    card = ModelCard(api.readme)
    assert card.data.base_model == "Qwen/Qwen3-0.6B" and {"gguf", "ragged"} <= set(card.data.tags)
    assert "| GGUF `model-ragged-Q8_0.gguf` | Q8_0, llama.cpp arch `openelm`" in card.text
    # verified by bake --verify after its embedded manifest was written: the folder's report says so
    assert "Not verified" not in card.text and "| gguf (openelm, ragged, q8_0, llama.cpp) |" in card.text
    lone = tmp_path / "elsewhere" / "model-ragged-Q8_0.gguf"
    lone.parent.mkdir()
    shutil.copy(out / "model-ragged-Q8_0.gguf", lone)
    api = FakeHfApi()
    push.push_folder(lone, "me/q8", api=api)
    assert "Not verified at bake time: run `lambda-bake verify --gguf FILE --base BASE --gates GATES`" in api.readme
    assert "library_name" not in card.data.to_dict() and "openelm" in card.text and "from_pretrained" not in card.text
    code = card.text.split("```python\n")[1].split("```")[0].replace('"model/', f'"{out}/')
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['bake'] = None\n" + code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # the card's llama-cpp-python snippet, as written


@needs_llama_source
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
def test_same_tensors_and_metadata_as_llama_cpps_converter(bakes: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py on the same checkpoint: the same tensors (names, shapes, types, bytes) and
    the same model and tokenizer metadata (the tiny test tokenizer is named 'qwen2' to the converter; the real
    one it recognizes itself: test_gguf_vocab.py)."""
    folder = tmp_path / "pruned"
    shutil.copytree(bakes["pruned"], folder)
    (folder / "README.md").unlink()  # the converter copies a card's tags into general.tags
    run_converter(folder, tmp_path / "ref.gguf", kind, pre_tokenizer="qwen2")
    export_gguf(folder, tmp_path / "ours.gguf", gguf_type_name=kind, progress=False)
    ref, ours = gguf.GGUFReader(str(tmp_path / "ref.gguf")), gguf.GGUFReader(str(tmp_path / "ours.gguf"))

    def meta(r: gguf.GGUFReader) -> dict:
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith(("general.", "lambda_bake.", "GGUF."))}

    assert meta(ours) == meta(ref)
    assert ours.fields["general.file_type"].contents() == ref.fields["general.file_type"].contents()
    tensors = {t.name: (t.shape.tolist(), t.tensor_type, bytes(t.data)) for t in ref.tensors}
    assert {t.name: (t.shape.tolist(), t.tensor_type, bytes(t.data)) for t in ours.tensors} == tensors


def test_a_sweep_writes_and_verifies_one_gguf_per_cut(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "2", "4", "--layout", "pruned", "--pad-multiple", "8", "--gguf", "--gguf-type", "q8_0",
                 "--gguf-layout", "ragged", "--verify", *FAST, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in report["outputs"]] == ["chat_energy_optA-p2", "chat_energy_optA-p4"]
    for name in ("chat_energy_optA-p2", "chat_energy_optA-p4"):
        manifest = json.loads((out / name / "bake_manifest.json").read_text())
        widths = gguf.GGUFReader(str(out / name / "model-ragged-Q8_0.gguf")).fields["openelm.feed_forward_length"]
        assert list(widths.contents()) == [max(32, -(-k // 32) * 32) for k in manifest["kept_per_layer"]]
        assert [c["passed"] for c in manifest["verification"]["candidates"]] == [True, True]


@pytest.mark.parametrize(("kind", "layout", "budget"), [("bf16", "as-is", "bfloat16"), ("f32", "ragged", "bfloat16"),
                                                       ("q8_0", "ragged", "int8")])
def test_bf16_bakes_give_exact_or_proven_ggufs(tiny_base_bf16: Path, tiny_gates: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], kind: str, layout: str,
                                               budget: str) -> None:
    """Qwen3 ships bf16: a bf16 bake in bf16 or f32 is bit-exact in the file, and verify names the bake as the
    coarsest step for those (the budget follows the chain), the quantization for q8_0."""
    out = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base_bf16), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--gguf", "--gguf-type", kind, "--gguf-layout", layout, "--verify", *FAST,
                 "--out", str(out)]) == 0
    _, candidate = json.loads(capsys.readouterr().out)["manifest"]["verification"]["candidates"]
    assert candidate["chain"][0] == "bake bfloat16" and candidate["budget"]["dtype"] == budget
    assert candidate["weights"]["passed"]
    if kind != "q8_0":  # the file holds the bake's bf16 values exactly, and is compared with the bake itself
        assert candidate["weights"]["max_quant_error_steps"] is None
        (vs_bake,) = candidate["checks"]
        assert vs_bake["against"] == "the bake" and vs_bake["passed"]
        # f32: llama.cpp is the bake to float rounding; bf16 weights make llama.cpp round activations to bf16 too
        assert vs_bake["max_rel_diff"] < (1e-4 if kind == "f32" else 3e-2)


@pytest.mark.slow
def test_ragged_q8_gguf_of_a_bf16_bake_at_the_real_gate_shape(full_base_bf16: Path, full_gates: Path,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert main(["bake", "--base", str(full_base_bf16), "--gates", str(full_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--gguf", "--gguf-type", "q8_0", "--gguf-layout", "ragged", "--verify", *FAST,
                 "--out", str(out)]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    _, candidate = manifest["verification"]["candidates"]
    assert candidate["passed"] and candidate["weights"]["passed"]
    widths = gguf.GGUFReader(str(out / "model-ragged-Q8_0.gguf")).fields["openelm.feed_forward_length"].contents()
    assert list(widths) == [max(32, -(-k // 32) * 32) for k in manifest["kept_per_layer"]] and len(widths) == 28


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_a_lone_gguf_verifies_from_its_own_manifest(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """verify --gguf FILE with no baked folder: the bake is the one the file's embedded manifest records (a float
    file used to exit 2, "is a file, not a folder", reading the bake's config from the .gguf path)."""
    out = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--gguf", "--gguf-type", kind, "--gguf-layout", "ragged", "--out", str(out),
                 "--quiet"]) == 0
    lone = tmp_path / "lone.gguf"
    shutil.copy(out / f"model-ragged-{kind.upper()}.gguf", lone)
    assert main(["verify", "--gguf", str(lone), *FAST]) == 2  # the published manifest names no local folder
    assert "give --base with that folder" in capsys.readouterr().err
    assert main(["verify", "--gguf", str(lone), "--base", str(tiny_base), "--gates", str(tiny_gates), *FAST]) == 0
    (candidate,) = json.loads(capsys.readouterr().out)["candidates"]
    assert candidate["passed"] and candidate["weights"]["passed"]
    assert candidate["weights"]["bake"].startswith("the dense float32 bake that")


@pytest.mark.parametrize(("old", "new", "message"), [
    (b'"dtype": "float32"', b'"dtype": "float64"', "(lambda_bake.manifest): dtype is 'float64', expected one of"),
    (b"blk.0.attn_norm", b"blk.8.attn_norm", "tensor blk.8.attn_norm.weight names block 8, but the file has 4 blocks"),
])
def test_damaged_gguf_content_is_exit_2_naming_the_field(bakes: dict[str, Path], tiny_base: Path, tiny_gates: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         old: bytes, new: bytes, message: str) -> None:
    """Bytes changed in place (same length: the file still parses): both ended in exit 1, an internal error."""
    good = tmp_path / "good.gguf"
    export_gguf(bakes["dense"], good, gguf_type_name="f32", layout="ragged", progress=False)
    data = good.read_bytes()
    assert data.count(old) == 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data.replace(old, new))
    assert main(["verify", "--gguf", str(bad), "--base", str(tiny_base), "--gates", str(tiny_gates), *FAST]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "internal error" not in err


def test_verify_lets_go_of_the_files_it_mapped(bakes: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The parsed-file cache kept up to 4 memory maps for the life of the process, so a removed GGUF (a sweep's failed
    cut) kept its disk space; when verify ends, no map of the file is left."""
    path = tmp_path / "m.gguf"
    export_gguf(bakes["dense"], path, gguf_type_name="q8_0", layout="ragged", progress=False)
    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 0
    capsys.readouterr()
    assert str(path) not in Path("/proc/self/maps").read_text()


def test_bf16_file_of_a_float32_bake_is_proven_by_ml_dtypes_rounding(bakes: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A float32 bake written bf16 rounds every weight once: the proof rounds the bake with ml_dtypes (not the
    writer's gguf-py), and one element one bf16 step off fails with the tensor named."""
    path = tmp_path / "m.gguf"
    export_gguf(bakes["dense"], path, gguf_type_name="bf16", progress=False)
    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 0
    capsys.readouterr()
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.1.ffn_down.weight")
    offset = int(tensor.data_offset)
    data = bytearray(path.read_bytes())
    value = int.from_bytes(data[offset:offset + 2], "little")
    data[offset:offset + 2] = (value + 1).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 3
    failures = json.loads(capsys.readouterr().out)["candidates"][-1]["weights"]["failures"]
    assert [f["tensor"] for f in failures] == ["blk.1.ffn_down.weight"] and failures[0]["worst"]["index"] == [0, 0]


@pytest.mark.parametrize(("key", "value"), [("attention.layer_norm_rms_epsilon", 1e-3), ("rope.freq_base", 12345.0)])
def test_a_wrong_hyperparameter_fails_verify_naming_the_key(bakes: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], key: str,
                                                           value: float) -> None:
    """Every weight right and one hyperparameter wrong: a q8_0 file with rms_norm_eps 1e-3 passed verify before (its
    logits within the bound that 8-bit activations need); now the key is proven against the bake's config."""
    path = tmp_path / "m.gguf"
    export_gguf(bakes["dense"], path, gguf_type_name="q8_0", layout="ragged", progress=False)
    data = bytearray(path.read_bytes())
    name = f"openelm.{key}".encode()
    at = data.index(name) + len(name)
    assert int.from_bytes(data[at:at + 4], "little") == 6  # GGUF value type FLOAT32
    data[at + 4:at + 8] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))
    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 3
    failures = json.loads(capsys.readouterr().out)["candidates"][-1]["weights"]["failures"]
    assert [f["tensor"] for f in failures] == [f"openelm.{key}"]
    assert "a hyperparameter that changes the math" in failures[0]["message"]


def test_the_activation_bound_fails_a_wrong_norm_eps_that_the_weights_cannot_show(
        bakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The logits are a second line behind the hyperparameter proof: with that proof switched off, a q8_0 file with
    rms_norm_eps 1e-3 fails against its own dequantized weights, by the bound llama.cpp's emulated activation
    rounding sets, which the correct file passes with margin."""
    from bake.verify.weights import gguf_check

    monkeypatch.setattr(gguf_check._Checker, "hyperparameters", lambda self, widths: None)
    path = tmp_path / "m.gguf"
    export_gguf(bakes["dense"], path, gguf_type_name="q8_0", layout="ragged", progress=False)

    def against_dequantized() -> dict:
        checks = json.loads(capsys.readouterr().out)["candidates"][-1]["checks"]
        return next(c for c in checks if c["against"] == "its dequantized weights")

    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 0
    good = against_dequantized()
    assert 1e-3 < good["budget"]["max_rel_diff"] < 0.2 and good["max_rel_diff"] < good["budget"]["max_rel_diff"] / 1.5
    data = bytearray(path.read_bytes())
    name = b"openelm.attention.layer_norm_rms_epsilon"
    at = data.index(name) + len(name)
    data[at + 4:at + 8] = np.float32(1e-3).tobytes()
    path.write_bytes(bytes(data))
    assert main(["verify", "--baked", str(bakes["dense"]), "--gguf", str(path), *FAST]) == 3
    bad = against_dequantized()
    assert bad["max_rel_diff"] > bad["budget"]["max_rel_diff"] and not bad["passed"]

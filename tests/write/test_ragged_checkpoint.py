"""The ragged layout as a Hugging Face checkpoint: each layer keeps exactly its own neurons (padded per layer to the
pad multiple with zero neurons), config.json carries transformers' ``per_layer_config``, and the loader, verify and
every export read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_plain, logits, rel_diff
from safetensors.numpy import load_file, save_file

from bake.cli import main
from bake.demo.assets import write_gate_folder
from bake.errors import BaseModelError
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.base_model import mlp_name
from bake.io.pretrained import load_pretrained
from bake.io.tensor_io import CheckpointReader
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint

SETTINGS = GateSettings(Cut("preset", 3), "hard", "energy")


def bake(base: Path, gates: Path, out: Path, layout: str = "ragged", pad: int = 8, **kw: object) -> dict:
    v = load_variant(gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    return bake_checkpoint(base, v, SETTINGS, out, BakeOptions(layout=layout, pad_multiple=pad, progress=False, **kw))


@pytest.fixture(scope="module")
def ragged(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ragged") / "r8"
    bake(tiny_base, tiny_gates, out)
    return out


@pytest.fixture(scope="module")
def scale(tiny_gates: Path) -> np.ndarray:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    return compute_gates(v.logits, SETTINGS, v.selected_thresholds).scale


@pytest.mark.parametrize("pad", [1, 8, 64])
def test_each_layer_holds_its_kept_neurons_then_zeros(tiny_base: Path, tiny_gates: Path, scale: np.ndarray,
                                                      tmp_path: Path, pad: int) -> None:
    m = bake(tiny_base, tiny_gates, tmp_path / "r", pad=pad)
    kept = [int(k) for k in (scale != 0).sum(axis=1)]
    widths = [max(pad, -(-k // pad) * pad) for k in kept]
    assert m["layout"] == "ragged" and m["mlp_widths"] == widths and m["pad_multiple"] == pad
    assert m["intermediate_size"] == max(widths) and m["sizes"]["ragged"]["widths"] == widths
    assert all(0 <= w - k < pad for w, k in zip(widths, kept))  # at most pad - 1 zero neurons a layer
    base, out = CheckpointReader(tiny_base), CheckpointReader(tmp_path / "r")
    for layer, (k, w) in enumerate(zip(kept, widths)):
        keep = torch.from_numpy(np.flatnonzero(scale[layer] != 0))
        gate, up, down = (out.tensor(mlp_name(layer, p)) for p in ("gate_proj", "up_proj", "down_proj"))
        assert gate.shape == up.shape == (w, 64) and down.shape == (64, w)
        assert torch.equal(gate[:k], base.tensor(mlp_name(layer, "gate_proj"))[keep])
        s = torch.from_numpy(scale[layer])[keep]
        assert torch.equal(down[:, :k], base.tensor(mlp_name(layer, "down_proj"))[:, keep] * s)
        for zeros in (gate[k:], up[k:], down[:, k:]):
            assert not zeros.any()
    data = tmp_path / "r" / "model.safetensors"
    header = 8 + int.from_bytes(data.read_bytes()[:8], "little")
    assert m["sizes"]["ragged"]["weight_bytes"] == data.stat().st_size - header
    assert m["sizes"]["ragged"]["mlp_neurons"] == sum(widths) < m["sizes"]["pruned"]["mlp_neurons"] or pad == 64


def test_config_is_transformers_per_layer_config_round_trip(ragged: Path, tmp_path: Path) -> None:
    from transformers import Qwen3Config

    config = json.loads((ragged / "config.json").read_text())
    manifest = json.loads((ragged / "bake_manifest.json").read_text())
    widths = manifest["mlp_widths"]
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["intermediate_size"] == max(widths)
    assert config["per_layer_config"] == {str(i): {"intermediate_size": w} for i, w in enumerate(widths)
                                          if w != max(widths)}
    read = Qwen3Config.from_pretrained(ragged)
    assert read.is_heterogeneous and [read.per_layer_config[i].intermediate_size for i in range(4)] == widths
    read.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_bytes() == (ragged / "config.json").read_bytes()


def test_the_loader_gives_plain_qwen3_matching_the_hooked_model(ragged: Path, tiny_base: Path, scale: np.ndarray,
                                                               prompt_ids: torch.Tensor, tmp_path: Path) -> None:
    from transformers import Qwen3ForCausalLM

    model = load_pretrained(ragged, dtype=torch.float32)
    widths = json.loads((ragged / "bake_manifest.json").read_text())["mlp_widths"]
    assert type(model) is Qwen3ForCausalLM and not model.training
    assert [layer.mlp.down_proj.in_features for layer in model.model.layers] == widths
    hooked = load_hooked_model(tiny_base, scale)
    ref = logits(hooked, prompt_ids)
    assert rel_diff(ref, logits(model, prompt_ids)) <= 1e-4
    greedy = dict(max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt_ids[:1], **greedy), hooked.generate(prompt_ids[:1], **greedy))
    model.save_pretrained(tmp_path / "again")  # transformers writes the same per-layer widths back
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["per_layer_config"] == json.loads((ragged / "config.json").read_text())["per_layer_config"]
    assert rel_diff(ref, logits(load_pretrained(tmp_path / "again", dtype=torch.float32), prompt_ids)) <= 1e-4


def test_bf16_ragged_is_the_bf16_dense_bake_without_its_zero_neurons(tiny_base_bf16: Path, tiny_gates: Path,
                                                                    tmp_path: Path, prompt_ids: torch.Tensor) -> None:
    bake(tiny_base_bf16, tiny_gates, tmp_path / "dense", layout="dense")
    m = bake(tiny_base_bf16, tiny_gates, tmp_path / "ragged")
    assert m["dtype"] == "bfloat16"
    model = load_pretrained(tmp_path / "ragged")  # auto: the checkpoint's dtype
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    dense = logits(load_plain(tmp_path / "dense"), prompt_ids)
    assert rel_diff(dense, logits(load_pretrained(tmp_path / "ragged", dtype=torch.float32), prompt_ids)) <= 1e-5


@pytest.mark.slow
def test_real_28_by_3072_shape_in_bf16(full_base_bf16: Path, full_gates: Path, tmp_path: Path) -> None:
    v = load_variant(full_gates, "chat_energy_optA", num_layers=28, intermediate_size=3072)
    st = GateSettings(Cut("preset", 3), "hard", v.scale_mode)
    for layout in ("dense", "ragged"):
        bake_checkpoint(full_base_bf16, v, st, tmp_path / layout, BakeOptions(layout=layout, progress=False))
    m = json.loads((tmp_path / "ragged" / "bake_manifest.json").read_text())
    assert len(set(m["mlp_widths"])) > 1 and all(w % 64 == 0 for w in m["mlp_widths"])
    assert sum(m["mlp_widths"]) < m["sizes"]["pruned"]["mlp_neurons"]
    ids = torch.randint(5, 384, (1, 16), generator=torch.Generator().manual_seed(3))
    dense = logits(load_plain(tmp_path / "dense"), ids)
    assert rel_diff(dense, logits(load_pretrained(tmp_path / "ragged", dtype=torch.float32), ids)) <= 1e-5


def test_a_layer_with_nothing_left_keeps_one_block_of_zeros(tiny_base: Path, tmp_path: Path,
                                                            prompt_ids: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(5)
    gate_logits = torch.randn(4, 128, generator=g) * 0.5
    gate_logits[0] = -3.0  # layer 0 loses every neuron at t = 0.5
    v = load_variant(write_gate_folder(tmp_path / "chat_energy", gate_logits, scale_mode="energy"), num_layers=4,
                     intermediate_size=128)
    st = GateSettings(Cut("threshold", 0.5), "hard", "energy")
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "r", BakeOptions(layout="ragged", pad_multiple=8, progress=False))
    assert m["kept_per_layer"][0] == 0 and m["mlp_widths"][0] == 8
    model = load_pretrained(tmp_path / "r", dtype=torch.float32)
    with torch.no_grad():
        assert not model.model.layers[0].mlp(torch.randn(3, 5, 64)).any()  # exactly zero
    ref = logits(load_hooked_model(tiny_base, compute_gates(v.logits, st).scale), prompt_ids)
    assert rel_diff(ref, logits(model, prompt_ids)) <= 1e-4


def test_exports_of_the_ragged_checkpoint_equal_those_of_the_dense_bake(ragged: Path, tiny_base: Path,
                                                                         tiny_gates: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from bake.io.gguf_reader import open_gguf
    from export.gguf.writer import export_gguf
    from export.onnx.exporter import export_onnx

    dense = tmp_path / "dense"
    bake(tiny_base, tiny_gates, dense, layout="dense")
    for quantize in ("none", "int4"):
        graphs = []
        for src in (dense, ragged):
            out = tmp_path / f"onnx-{src.name}-{quantize}"
            export_onnx(src, out, layout="ragged", quantize=quantize, progress=False)
            graphs.append({t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer})
        assert graphs[0].keys() == graphs[1].keys()
        assert all(np.array_equal(graphs[0][k], graphs[1][k]) for k in graphs[0])
    files = []
    for src in (dense, ragged):
        report = export_gguf(src, tmp_path / f"{src.name}.gguf", gguf_type_name="q8_0", layout="ragged", progress=False)
        files.append(open_gguf(tmp_path / f"{src.name}.gguf").tensors)
    assert [t.name for t in files[0]] == [t.name for t in files[1]]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(*files))
    # llama.cpp's qwen3 sizes every layer from layer 0: a ragged checkpoint is written ragged whatever --layout says
    as_is = export_gguf(ragged, tmp_path / "as-is.gguf", gguf_type_name="q8_0", progress=False)
    assert (as_is["layout"], as_is["arch"]) == ("ragged", "openelm") and as_is["mlp_widths"] == report["mlp_widths"]


def test_mlx_export_of_the_ragged_checkpoint_equals_the_dense_bakes(ragged: Path, tiny_base: Path, tiny_gates: Path,
                                                                     tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm")
    from export.mlx.writer import export_mlx

    dense = tmp_path / "dense"
    bake(tiny_base, tiny_gates, dense, layout="dense")
    export_mlx(dense, tmp_path / "m-dense", layout="ragged", progress=False)
    report = export_mlx(ragged, tmp_path / "m-ragged", progress=False)  # as-is: a ragged checkpoint is openelm
    assert report["layout"] == "ragged" and report["model_type"] == "openelm"
    a, b = load_file(str(tmp_path / "m-dense" / "model.safetensors")), load_file(str(tmp_path / "m-ragged" /
                                                                                    "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_bake_verify_and_every_export_of_a_ragged_bake_pass(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_energy_optA"), "--preset", "3",
                 "--layout", "ragged", "--pad-multiple", "8", "--out", str(tmp_path / "r"), "--verify", "--onnx",
                 "--gguf", "--gguf-type", "q8_0", "--greedy-tokens", "4", "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    names = {c["name"]: c["passed"] for c in report["manifest"]["verification"]["candidates"]}
    assert names["checkpoint (ragged)"] and all(names.values()) and len(names) == 3
    assert (tmp_path / "r" / "model-ragged-Q8_0.gguf").is_file()
    card = (tmp_path / "r" / "README.md").read_text()
    widths = report["manifest"]["mlp_widths"]
    assert f"| layout | ragged: MLP widths {' '.join(map(str, widths))} (layers 0-3;" in card
    assert "| tensor-parallel sizes | 1, 2, 4, 8 (of 1-8" in card  # every width a multiple of 8
    sizes = report["manifest"]["sizes"]
    assert (f"| weights (safetensors) | {sizes['ragged']['weight_bytes']:,} bytes (dense "
            f"{sizes['dense']['weight_bytes']:,}, pruned {sizes['pruned']['weight_bytes']:,}) |") in card
    assert "from bake.io.pretrained import load_pretrained" in card and "per_layer_config" in card
    assert """--default-chat-template-kwargs '{"enable_thinking": false}'""" in card
    assert 'pip install "lambda-bake[vllm]"' in card


def test_a_ragged_bake_is_no_base(ragged: Path, tiny_gates: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bake", "--base", str(ragged), "--gates", str(tiny_gates / "chat_energy_optA"), "--preset", "3",
                 "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "it is a ragged bake, not a base" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def damage(folder: Path, out: Path, edit: object) -> Path:
    shutil.copytree(folder, out)
    path = out / "config.json"
    if callable(edit):
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))
    else:
        path.write_text(str(edit))
    return out


def _set(key: str, value: object) -> object:
    def edit(config: dict) -> None:
        entry = next(iter(config["per_layer_config"]))
        config["per_layer_config"][entry][key] = value
    return edit


def _drop_entry(config: dict) -> None:
    config["per_layer_config"].pop(next(iter(config["per_layer_config"])))


def _other_width(config: dict) -> None:
    entry = next(iter(config["per_layer_config"]))
    config["per_layer_config"][entry]["intermediate_size"] += 8


DAMAGES = {
    "wrong width": (_other_width, r"config.json says \[\d+, 64\] \(its per_layer_config\['\d'\] gives layer \d"),
    "missing entry": (_drop_entry, r"layer \d has no per_layer_config entry, so it takes the global intermediate_size"),
    "negative width": (_set("intermediate_size", -8), r"layer \d's intermediate_size in per_layer_config is -8"),
    "non-integer width": (_set("intermediate_size", 12.5), r"layer \d's intermediate_size in per_layer_config is 12.5"),
    "string width": (_set("intermediate_size", "96"), r"is '96', not a positive whole number"),
    "other override": (_set("num_key_value_heads", 1), r"overrides num_key_value_heads; lambda-bake reads per-layer "),
    "bad key": (lambda c: c["per_layer_config"].update({"x": {"intermediate_size": 8}}), r"has the key 'x', which is "
                                                                                           r"not a layer index"),
    "layer out of range": (lambda c: c["per_layer_config"].update({"9": {"intermediate_size": 8}}), r"key '9'"),
    "not an object": (lambda c: c.update({"per_layer_config": [1, 2]}), r"'per_layer_config' is a JSON list"),
    "damaged file": ('{"model_type": "qwen3", ', r"config.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_per_layer_config_is_named_by_every_reader(ragged: Path, tmp_path: Path, case: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    edit, message = DAMAGES[case]
    bad = damage(ragged, tmp_path / "bad", edit)
    with pytest.raises(BaseModelError, match=message):
        load_pretrained(bad)
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "a b c d e f"}\n')
    for args in (["export", "--model", str(bad), "--out", str(tmp_path / "o")],
                 ["export", "--model", str(bad), "--format", "mlx", "--out", str(tmp_path / "o")],
                 ["eval", "--model", str(bad), "--texts", f"t={texts}", "--reference", "none"],
                 ["export", "--model", str(bad), "--format", "gguf", "--out", str(tmp_path / "o.gguf")],
                 ["verify", "--baked", str(bad)]):
        code = main([*args, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "config.json" in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()


def test_the_loader_names_a_missing_or_extra_tensor(ragged: Path, tmp_path: Path) -> None:
    for case in ("missing", "extra"):
        folder = tmp_path / case
        shutil.copytree(ragged, folder)
        tensors = load_file(str(folder / "model.safetensors"))
        if case == "missing":
            del tensors["model.layers.2.self_attn.o_proj.weight"]
            message = "missing model.layers.2.self_attn.o_proj.weight"
        else:
            tensors["model.layers.1.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
            message = "not in the model: model.layers.1.mlp.extra.weight"
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(BaseModelError, match=message):
            load_pretrained(folder)


def test_the_cards_loader_snippet_runs_as_written(ragged: Path, tmp_path: Path) -> None:
    """The ragged card's transformers snippet, run on the folder (the download step's `model` is the bake)."""
    import re
    import subprocess
    import sys

    card = (ragged / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0]
    assert "load_pretrained" in code and "enable_thinking=False" in code
    (tmp_path / "model").symlink_to(ragged)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()

"""onnxruntime-genai (CPU package) runs every lambda-bake export as written, with no hand edits.

Bakes of the tiny model at the demo cut; exports dense/pruned/ragged, portable/cpu graph, float32,
float16 and int4. float32 continuations must equal the hooked model's; every export's
continuation must equal lambda-bake's own loop on the same graph (same kernels, same tokens).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bake.cli import main
from bake.errors import ExportError
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.verify.candidates import TorchRunner
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.onnx.exporter import export_onnx
from export.onnx.genai_config import genai_config
from export.runtime.chat import ChatTokenizer
from export.runtime.genai_loop import GenaiLM
from export.runtime.ort_loop import OnnxCausalLM

og = pytest.importorskip("onnxruntime_genai")

NEW_TOKENS = 12
# (bake layout, export target, export layout, dtype, quantize)
EXPORTS = [
    ("dense", "portable", "as-is", "float32", "none"),
    ("dense", "cpu", "as-is", "float32", "none"),
    ("dense", "cpu", "ragged", "float32", "none"),
    ("pruned", "portable", "ragged", "float32", "none"),
    ("pruned", "cpu", "as-is", "float32", "none"),
    ("dense", "cpu", "ragged", "float16", "none"),
    ("dense", "cpu", "ragged", "float32", "int4"),
    ("dense", "portable", "as-is", "float16", "int4"),
]


@pytest.fixture(scope="module")
def bakes(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    root = tmp_path_factory.mktemp("genai")
    settings = GateSettings(Cut("preset", 3), "hard", "energy")
    for layout in ("dense", "pruned"):
        bake_checkpoint(tiny_base, v, settings, root / layout, BakeOptions(layout=layout, pad_multiple=8,
                                                                          progress=False))
    return {layout: root / layout for layout in ("dense", "pruned")}


@pytest.fixture(scope="module")
def hooked(tiny_base: Path, tiny_gates: Path) -> TorchRunner:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    scale = compute_gates(v.logits, GateSettings(Cut("preset", 3), "hard", "energy"), v.selected_thresholds).scale
    return TorchRunner(load_hooked_model(tiny_base, scale))


@pytest.fixture(scope="module")
def prompts(bakes: dict[str, Path]) -> list[list[int]]:
    chat = ChatTokenizer(bakes["dense"])
    return [chat.prompt_ids([{"role": "user", "content": text}])
            for text in ("What is two plus two?", "List three prime numbers and say why each is prime.")]


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Tokens up to and including the first end-of-turn token."""
    for n, t in enumerate(tokens):
        if t in eos:
            return tokens[:n + 1]
    return tokens


def continuation(lm, ids: list[int], eos: set[int]) -> list[int]:
    return until_eos([int(step[0]) for step in lm.stream([ids], NEW_TOKENS, eos, 0)], eos)


@pytest.mark.parametrize(("bake", "target", "layout", "dtype", "quantize"), EXPORTS)
def test_genai_runs_the_export_as_written(bakes, hooked, prompts, tmp_path, bake, target, layout, dtype, quantize):
    out = tmp_path / "onnx"
    export_onnx(bakes[bake], out, target=target, layout=layout, dtype=dtype, quantize=quantize, progress=False)
    og.Config(str(out))  # genai's own parser accepts the file (it rejects unknown keys)
    genai, ours = GenaiLM(out, device="cpu"), OnnxCausalLM(out, device="cpu")
    eos = ChatTokenizer(out).eos_ids()
    for ids in prompts:
        got = continuation(genai, ids, eos)
        assert len(got) > 1
        assert got == continuation(ours, ids, eos)  # same graph and kernels: the same tokens
        if dtype == "float32" and quantize == "none":
            assert got == until_eos(hooked.greedy(ids, NEW_TOKENS), eos)


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_right_padded_batch_equals_single_runs(bakes, prompts, tmp_path, target):
    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target=target, layout="ragged", progress=False)
    genai = GenaiLM(out, device="cpu")
    eos = ChatTokenizer(out).eos_ids()
    assert len(prompts[0]) != len(prompts[1])
    batch = np.stack(list(genai.stream(prompts, NEW_TOKENS, eos, 0)), axis=1)
    for row, ids in zip(batch, prompts):
        assert until_eos(row.tolist(), eos) == continuation(genai, ids, eos)
    ours = OnnxCausalLM(out, device="cpu").greedy(prompts, NEW_TOKENS, eos, 0)
    assert [until_eos(r.tolist(), eos) for r in ours] == [until_eos(r.tolist(), eos) for r in batch]


def test_generate_text_is_the_same_through_both_loops_and_transformers(bakes, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", progress=False)
    texts = {}
    for engine in ("genai", "ort"):
        assert main(["generate", "--onnx", str(out), "--prompt", "What is two plus two?", "--system", "Be brief.",
                     "--max-new-tokens", "24", "--engine", engine]) == 0
        captured = capsys.readouterr()
        texts[engine] = captured.out
        assert ("onnxruntime-genai" if engine == "genai" else "lambda-bake's ONNX Runtime loop") in captured.err
    assert texts["genai"] == texts["ort"]
    tok = AutoTokenizer.from_pretrained(str(bakes["dense"]))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(str(bakes["dense"]))
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    eos = ChatTokenizer(out).eos_ids()
    reply = [t for t in until_eos(new, eos) if t not in eos]
    assert len(reply) > 3 and texts["ort"] == tok.decode(reply, skip_special_tokens=True) + "\n"


def test_genai_config_content(bakes, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", progress=False)
    cfg = json.loads((out / "genai_config.json").read_text())
    model, search = cfg["model"], cfg["search"]
    config = json.loads((out / "config.json").read_text())
    assert model["type"] == "qwen3" and model["vocab_size"] == config["vocab_size"] == 384
    assert model["context_length"] == search["max_length"] == config["max_position_embeddings"]
    assert model["eos_token_id"] == config["eos_token_id"] and model["pad_token_id"] == config["pad_token_id"]
    d = model["decoder"]
    assert (d["filename"], d["head_size"], d["num_key_value_heads"], d["num_hidden_layers"]) == ("model.onnx", 16, 2, 4)
    assert "position_ids" not in d["inputs"] and d["session_options"]["provider_options"] == []
    assert search["past_present_share_buffer"] is True and search["do_sample"] is False
    io = json.loads((out / "onnx_io.json").read_text())
    portable = genai_config(config, {"eos_token_id": [7, 9], "do_sample": True, "temperature": 0.6, "top_k": 20,
                                     "top_p": 0.95}, io | {"target": "portable", "kv_cache": "concat", "inputs": [
                                         {"name": "position_ids"}]})
    assert portable["model"]["eos_token_id"] == [7, 9] and portable["model"]["pad_token_id"] == config["pad_token_id"]
    assert portable["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    assert portable["search"]["past_present_share_buffer"] is False
    assert (portable["search"]["temperature"], portable["search"]["top_k"], portable["search"]["top_p"]) == (0.6, 20, 0.95)
    cuda = genai_config(config, {}, io | {"target": "cuda"}, cuda_graph=True)
    assert cuda["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {"enable_cuda_graph": "1"}}]
    assert cuda["model"]["pad_token_id"] == config["pad_token_id"]


@pytest.mark.parametrize("damage", ["genai_config missing", "genai_config corrupt", "genai_config unknown key",
                                    "data truncated"])
def test_broken_export_is_a_clear_error_not_a_traceback(bakes, tmp_path, capsys, damage):
    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", external_data_threshold=0, progress=False)
    cfg = out / "genai_config.json"
    if damage == "genai_config missing":
        cfg.unlink()
        expected = "has no genai_config.json"
    elif damage == "genai_config corrupt":
        cfg.write_text(cfg.read_text()[:50])
        expected = "genai_config.json is not valid JSON"  # read by lambda-bake first (its context length)
    elif damage == "genai_config unknown key":
        data = json.loads(cfg.read_text())
        data["model"]["decoder"]["no_such_key"] = 1
        cfg.write_text(json.dumps(data))
        expected = "onnxruntime-genai cannot load"
    else:
        data = out / "model.onnx.data"
        data.write_bytes(data.read_bytes()[:4096])
        expected = "truncated"
    assert main(["generate", "--onnx", str(out), "--prompt", "hi", "--engine", "genai"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_cuda_export_is_refused_on_cpu_by_both_loops(bakes, tmp_path, capsys):
    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cuda", dtype="float16", progress=False)
    og.Config(str(out))
    for engine in ("genai", "ort"):
        assert main(["generate", "--onnx", str(out), "--prompt", "hi", "--engine", engine, "--device", "cpu"]) == 2
        assert "runs only on CUDA" in capsys.readouterr().err
    shutil.rmtree(out)


def test_cpu_runs_use_every_available_core(bakes, tmp_path, monkeypatch):
    """Left to itself onnxruntime-genai ran one intra-op thread here; GenaiLM asks for every core."""
    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", progress=False)
    overlays: list[dict] = []
    real, real_model = og.Config, og.Model

    class Recording:
        def __init__(self, path: str):
            self.config = real(path)

        def overlay(self, text: str) -> None:
            overlays.append(json.loads(text))
            self.config.overlay(text)

        def __getattr__(self, name: str):
            return getattr(self.config, name)

    monkeypatch.setattr(og, "Config", Recording)
    monkeypatch.setattr(og, "Model", lambda config: real_model(config.config))
    GenaiLM(out, device="cpu")
    assert overlays == [{"model": {"decoder": {"session_options": {
        "intra_op_num_threads": len(os.sched_getaffinity(0)), "inter_op_num_threads": 1}}}}]
    overlays.clear()
    GenaiLM(out, device="cpu", threads=1)
    assert overlays[0]["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1


def test_a_refused_cuda_graph_falls_back_to_plain_cuda(tmp_path, monkeypatch, capsys):
    """Where ONNX Runtime refuses CUDA-graph capture at load, generate loads the model again without it."""
    from export.runtime import engines
    from export.runtime import genai_loop as genai_runtime

    loads: list[bool] = []

    class FakeGenai:
        def __init__(self, folder, device, threads, cuda_graph):
            loads.append(cuda_graph)
            if cuda_graph:
                raise ExportError("onnxruntime-genai cannot load x: graph capture needs every node on CUDA")
            self.device = "cuda"

    monkeypatch.setattr(genai_runtime, "GenaiLM", FakeGenai)
    monkeypatch.setattr(genai_runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(engines, "pick_device", lambda device: "cuda")
    lm = engines.open_engine(tmp_path, "genai", "cuda", cuda_graph=True)
    assert isinstance(lm, FakeGenai) and loads == [True, False]
    assert "CUDA-graph capture refused, running without it" in capsys.readouterr().err
    loads.clear()
    monkeypatch.setattr(engines, "pick_device", lambda device: "cpu")  # not CUDA: no second try
    with pytest.raises(ExportError, match="graph capture"):
        engines.open_engine(tmp_path, "genai", "auto", cuda_graph=True)
    assert loads == [True]


def test_cuda_graph_runs_batch_one_only_with_a_clear_message(bakes, tmp_path):
    """onnxruntime-genai's captured CUDA graph aborts at batch > 1 (static mask: GroupQueryAttention sees a past at
    the prompt); the loop refuses such a batch with the reason and the fix before onnxruntime-genai sees it."""
    from export.runtime.genai_loop import GenaiLM

    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", progress=False)
    lm = GenaiLM(out, device="cpu")
    assert lm.cuda_graph is False  # on the CPU there is no graph to capture, whatever was asked
    assert len(list(lm.stream([[5, 6, 7], [8, 9]], 2, set(), 0))) == 2  # without a graph, batches run
    lm.cuda_graph = True  # as GenaiLM(..., device="cuda", cuda_graph=True) sets it
    with pytest.raises(ExportError, match="CUDA graph at batch 1 only, and this is a batch of 2.*--no-cuda-graph"):
        next(lm.stream([[5, 6, 7], [8, 9]], 2, set(), 0))
    assert len(list(lm.stream([[5, 6, 7]], 2, set(), 0))) == 2


def test_prompt_and_new_tokens_past_the_context_are_a_clear_error(bakes, tmp_path, capsys):
    """onnxruntime-genai refused them with an internal error (exit 1: "max_length (670) cannot be greater than model
    context_length (512)"); the loop names the numbers and the fix before it is asked."""
    from export.runtime.genai_loop import GenaiLM

    out = tmp_path / "onnx"
    export_onnx(bakes["dense"], out, target="cpu", progress=False)
    lm = GenaiLM(out, device="cpu")
    with pytest.raises(ExportError, match="a 414-token prompt and 256 new tokens do not fit this export's context of "
                                          "512 tokens .*give --max-new-tokens 98 or less"):
        next(lm.stream([[7] * 414], 256, set(), 0))
    assert len(list(lm.stream([[7] * 414], 98, set(), 0))) == 98
    assert main(["generate", "--onnx", str(out), "--engine", "genai", "--prompt", "word " * 600]) == 2
    assert "shorten the prompt" in capsys.readouterr().err

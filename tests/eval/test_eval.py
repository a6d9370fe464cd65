"""lambda-bake eval: every number recomputed here by other code, the same numbers in every runtime, sweeps, QA, the
hooked model, the card, bad input. Tiny random Qwen3 models and sets built at test time (no network)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import write_jsonl

from bake.cli import main
from bake.eval.metrics import QATally, normalize_answer

RETAIN = [{"text": "What is 2 + 3? It is 5."},
          {"messages": [{"role": "user", "content": "Solve x + 1 = 3."}, {"role": "assistant", "content": "x = 2."}]},
          {"text": "Each step of the proof follows from the one before it, so the claim holds for every n."}]
FORGET = [{"text": "Paris is the capital of France."}, {"text": "The Eiffel Tower stands in Paris, on the Seine."}]
QA = [{"question": "What is the capital of France?", "answers": ["Paris"]},
      {"question": "Who wrote the novel?", "answers": ["Victor Hugo", "Hugo"], "context": "Victor Hugo wrote it."}]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"retain": write_jsonl(root / "retain.jsonl", RETAIN), "forget": write_jsonl(root / "forget.jsonl", FORGET),
            "qa": write_jsonl(root / "qa.jsonl", QA)}


@pytest.fixture(scope="module")
def bake3(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense bake at preset 3 with its float32 ragged ONNX export, an int4 one and a float32 ragged GGUF."""
    out = tmp_path_factory.mktemp("bake") / "b3"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(out), "--onnx", "--onnx-layout", "ragged", "--gguf", "--gguf-type", "f32",
                 "--gguf-layout", "ragged", "--quiet"]) == 0
    from export.onnx.exporter import export_onnx

    export_onnx(out, out.parent / "b3-int4", quantize="int4", layout="ragged", progress=False)
    return out


def run_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["eval", *args, "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def test_figures_are_recomputed_by_transformers_and_torch(tiny_base: Path, bake3: Path, data: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """tokens, nll, perplexity, delta_nll and mean KL as docs/EVAL.md defines them, recomputed with transformers'
    tokenizer and chat template and torch's cross entropy and KL (none of lambda-bake's code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, report, err = run_eval(capsys, "--model", str(bake3), "--texts", f"retain={data['retain']}")
    assert code == 0, err
    base, checkpoint = report["models"]
    assert base["is_reference"] and base["kind"] == "base" and checkpoint["model"] == "b3"
    tok = AutoTokenizer.from_pretrained(str(bake3))
    rows = [tok(r["text"])["input_ids"] if "text" in r else
            tok(tok.apply_chat_template(r["messages"], tokenize=False, enable_thinking=False), add_special_tokens=False)[
                "input_ids"] for r in RETAIN]

    def logits(folder: Path) -> list[torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            return [model(torch.tensor([ids])).logits[0, :-1].double() for ids in rows]

    ref, own = logits(tiny_base), logits(bake3)
    targets = [torch.tensor(ids[1:]) for ids in rows]
    tokens = sum(len(ids) - 1 for ids in rows)
    nll = sum(torch.nn.functional.cross_entropy(x, t, reduction="sum") for x, t in zip(own, targets)) / tokens
    ref_nll = sum(torch.nn.functional.cross_entropy(x, t, reduction="sum") for x, t in zip(ref, targets)) / tokens
    kl = sum(torch.nn.functional.kl_div(x.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="sum")
             for x, r in zip(own, ref)) / tokens
    got = checkpoint["sets"]["retain"]
    assert got["tokens"] == tokens and got["rows"] == 3 and got["truncated"] == 0
    assert got["nll"] == pytest.approx(float(nll), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-6)
    assert base["sets"]["retain"]["nll"] == pytest.approx(float(ref_nll), rel=1e-6)
    assert got["delta_nll"] == pytest.approx(float(nll - ref_nll), rel=1e-5, abs=1e-9)
    assert got["mean_kl"] == pytest.approx(float(kl), rel=1e-5)
    assert report["sets"]["retain"] == {"kind": "text", "file": "retain.jsonl", "rows": 3,
                                        "sha256": __import__("hashlib").sha256(data["retain"].read_bytes()).hexdigest()}


def test_every_runtime_gives_the_same_numbers(bake3: Path, data: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A float32 export's nll equals its bake's within 1e-4 relative in ONNX Runtime, llama.cpp and mlx-lm; an int4
    export shows its own cost. The forget set has no digits: llama.cpp splits the tiny test tokenizer's digits
    otherwise."""
    from export.mlx.writer import export_mlx

    export_mlx(bake3, tmp_path / "mlx", layout="ragged", dtype="float32", progress=False)
    code, report, err = run_eval(capsys, "--model", str(bake3), "--model", str(bake3 / "onnx"), "--model",
                                 str(bake3.parent / "b3-int4"), "--model", str(bake3 / "model-ragged-F32.gguf"),
                                 "--model", str(tmp_path / "mlx"),
                                 "--texts", f"forget={data['forget']}", "--texts", f"retain={data['retain']}")
    assert code == 0, err
    by = {m["model"]: m for m in report["models"]}
    bake_nll = by["b3"]["sets"]["forget"]["nll"]
    assert by[f"{tmp_path.name}/mlx"]["format"] == "mlx openelm ragged float32"
    for name in ("b3/onnx", "model-ragged-F32.gguf", f"{tmp_path.name}/mlx"):
        assert by[name]["sets"]["forget"]["nll"] == pytest.approx(bake_nll, rel=1e-4), name
        assert by[name]["sets"]["forget"]["mean_kl"] == pytest.approx(by["b3"]["sets"]["forget"]["mean_kl"], rel=1e-3)
    assert by["b3/onnx"]["sets"]["retain"]["nll"] == pytest.approx(by["b3"]["sets"]["retain"]["nll"], rel=1e-4)
    int4 = by["b3-int4"]["sets"]["forget"]
    assert abs(int4["nll"] - bake_nll) > 1e-3 and int4["mean_kl"] > by["b3"]["sets"]["forget"]["mean_kl"]
    assert by["model-ragged-F32.gguf"]["format"] == "gguf f32" and by["b3/onnx"]["format"] == "onnx cpu ragged float32"
    assert by["b3"]["selectivity"]["forget_minus_retain"] == pytest.approx(
        by["b3"]["sets"]["forget"]["delta_nll"] - by["b3"]["sets"]["retain"]["delta_nll"])


def test_qa_answers_are_the_same_greedy_answers_in_every_runtime(bake3: Path, data: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, report, err = run_eval(capsys, "--model", str(bake3), "--model", str(bake3 / "onnx"), "--qa",
                                 f"qa={data['qa']}", "--qa-max-new-tokens", "6", "--reference", "none")
    assert code == 0, err
    checkpoint, onnx = report["models"]
    assert checkpoint["sets"]["qa"]["answers"] == onnx["sets"]["qa"]["answers"]
    assert len(checkpoint["sets"]["qa"]["answers"]) == 2 and checkpoint["sets"]["qa"]["rows"] == 2
    assert report["reference"] is None and "delta_nll" not in json.dumps(report)


def test_answer_normalization_and_scores() -> None:
    assert normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert normalize_answer("An apple, a day.") == "apple day"
    t = QATally()
    t.add("Paris.", ("Paris",))  # exact after normalization
    t.add("It is the city of Paris", ("paris", "City of Light"))  # contains only
    t.add("London", ("Paris",))
    assert t.figures() == {"rows": 3, "exact_match": 1 / 3, "contains": 2 / 3}


def test_hooked_model_and_sweep_folder(tiny_base: Path, tiny_gates: Path, data: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The hooked model (as published) scores what its dense bake scores; a sweep folder is every cut in it, one row
    each, and --plot draws the trade-off."""
    sweep = tmp_path / "sweep"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "all", "--out", str(sweep), "--quiet"]) == 0
    code, report, err = run_eval(capsys, "--model", str(sweep), "--base", str(tiny_base), "--gates", str(tiny_gates),
                                 "--variant", "chat_energy_optA", "--preset", "3", "--texts", f"retain={data['retain']}",
                                 "--plot", str(tmp_path / "f.png"))
    assert code == 0, err
    rows = report["models"]
    assert [r["kind"] for r in rows] == ["base", "hooked"] + ["checkpoint"] * 5
    offs = [r["off_fraction"] for r in rows[2:]]
    assert offs == sorted(offs) and offs[0] < 0.1 < 0.9 < offs[-1]
    hooked = rows[1]["sets"]["retain"]["nll"]
    p3 = next(r for r in rows[2:] if r["model"].endswith("-p3"))
    assert p3["sets"]["retain"]["nll"] == pytest.approx(hooked, rel=1e-6)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from bake.plots.eval_plot import eval_series

    lines = eval_series(report)["retain"]["lines"]
    assert [x for x, _ in lines["chat_energy_optA / dense / checkpoint"]] == offs


def test_bake_eval_and_push_put_the_results_on_the_card(tiny_base: Path, tiny_gates: Path, data: dict[str, Path],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(out), "--onnx", "--eval", f"retain={data['retain']}", "--eval-qa",
                 f"qa={data['qa']}", "--eval-dataset", "qa=akariasai/PopQA::test", "--quiet"]) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert [r["model"] for r in saved["results"]] == ["checkpoint", "onnx"]
    assert "eval.json" in json.loads((out / "bake_manifest.json").read_text())["files"]
    assert str(tmp_path) not in (out / "eval.json").read_text()  # sets by file name and sha256, no local path
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(out), "--repo-id", "me/baked", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert "eval.json" in [f["path"] for f in plan["files"]]
    card = ModelCard(plan["card"])
    results = card.data.eval_results
    nll = next(r for r in results if r.dataset_name == "retain" and r.metric_type == "nll")
    assert nll.metric_value == pytest.approx(saved["results"][0]["sets"]["retain"]["nll"])
    # a local file is named as one, not as a Hub id (the Hub links dataset.type to a dataset page); a set whose
    # Hub dataset was named gets its id and split
    assert nll.dataset_type == "local file retain.jsonl" and nll.dataset_revision == saved["sets"]["retain"]["sha256"]
    assert {r.metric_type for r in results if r.dataset_name == "qa"} == {"exact_match", "contains"}
    qa = next(r for r in results if r.dataset_name == "qa")
    assert (qa.dataset_type, qa.dataset_config, qa.dataset_split) == ("akariasai/PopQA", None, "test")
    assert "## Evaluation" in plan["card"] and "| onnx |" in plan["card"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "ok"}\n{"text": \n', "line 2 is not a JSON object"),
    ('{"text": "ok"}\n{"prompt": "x"}\n', "line 2 has neither \"text\" nor \"messages\""),
    ('{"messages": [{"role": "user"}]}\n', "line 1: \"messages\" must be a non-empty list"),
    ("\n\n", "holds no rows"),
    ('["a"]\n', "line 1 holds a JSON list, not an object"),
])
def test_bad_sets_exit_2_naming_file_and_line(bake3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               content: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    before = sorted(p.name for p in bake3.iterdir())
    assert main(["eval", "--model", str(bake3), "--texts", f"x={bad}", "--save"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "Traceback" not in err
    assert sorted(p.name for p in bake3.iterdir()) == before  # nothing written


def test_bad_qa_rows_and_arguments_exit_2(bake3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answers": []}])
    assert main(["eval", "--model", str(bake3), "--qa", f"q={bad}"]) == 2
    assert "line 1: \"answers\" must be a non-empty list" in capsys.readouterr().err
    assert main(["eval", "--model", str(bake3), "--texts", "no-equals-sign.jsonl"]) == 2
    assert "give NAME=FILE" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "nothing to evaluate on" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    assert main(["eval", "--model", str(tmp_path / "none"), "--texts", f"t={good}"]) == 2
    assert "no such folder or .gguf file" in capsys.readouterr().err


def test_truncation_is_counted(bake3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = write_jsonl(tmp_path / "long.jsonl", [{"text": "word " * 200}, {"text": "short"}])
    code, report, _ = run_eval(capsys, "--model", str(bake3), "--texts", f"long={long}", "--max-length", "16",
                               "--no-kl")
    assert code == 0
    figures = report["models"][1]["sets"]["long"]
    from transformers import AutoTokenizer

    short = len(AutoTokenizer.from_pretrained(str(bake3))("short")["input_ids"])
    assert figures["truncated"] == 1 and figures["tokens"] == 15 + short - 1 and figures.get("mean_kl") is None
    assert np.isfinite(figures["nll"])
    reference = report["models"][0]["sets"]["long"]  # --no-kl drops the KL only: the change is still given
    assert reference["truncated"] == 1 and figures["delta_nll"] == pytest.approx(figures["nll"] - reference["nll"])


LM_EVAL_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_runs_on_checkpoints_and_onnx_with_a_local_task(bake3: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """EleutherAI's harness with a task YAML and data of our own, offline: HFLM on the checkpoint and the base,
    its onnxruntime-genai backend on the export (the same weights: the same accuracy)."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [{"question": f"{a} + {b} =", "choices": [f" {a + b}", f" {a + b + 1}", f" {a * b + 7}"], "label": k % 3}
            for k, (a, b) in enumerate([(2, 2), (3, 4), (5, 1), (6, 6), (1, 8), (7, 2)])]
    write_jsonl(tmp_path / "data.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(LM_EVAL_TASK.format(data=tmp_path / "data.jsonl"))
    code, report, err = run_eval(capsys, "--model", str(bake3), "--model", str(bake3 / "onnx"), "--lm-eval", "tiny_mc",
                                 "--lm-eval-include", str(tmp_path / "tasks"))
    assert code == 0, err[-2000:]
    accs = {m["model"]: m["lm_eval"]["tasks"]["tiny_mc"]["acc,none"] for m in report["models"]}
    assert set(accs) == {"base (base)", "b3", "b3/onnx"} and accs["b3"] == accs["b3/onnx"]
    assert all(m["lm_eval"]["tasks"]["tiny_mc"]["sample_len"] == 6 for m in report["models"])


def test_vllm_arguments_for_many_gpus(bake3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Where one machine is not enough, the same call hands checkpoints to lm-eval's vLLM backend (data-parallel
    over GPUs through Ray); without vLLM it says so, with the arguments it would pass."""
    from bake.errors import BakeError
    from bake.eval.harness import run_lm_eval, vllm_model_args
    from bake.eval.models import resolve

    args = vllm_model_args(bake3, data_parallel=4, tensor_parallel=1, max_length=2048)
    assert args == {"pretrained": str(bake3.absolute()), "tensor_parallel_size": 1, "data_parallel_size": 4,
                    "dtype": "auto", "gpu_memory_utilization": 0.9, "trust_remote_code": False, "max_model_len": 2048}
    pytest.importorskip("lm_eval")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(LM_EVAL_TASK.format(data=tmp_path / "data.jsonl"))
    write_jsonl(tmp_path / "data.jsonl", [{"question": "1 + 1 =", "choices": [" 2", " 3"], "label": 0}])
    long, tasks = write_jsonl(tmp_path / "t.jsonl", [{"text": "a b c d"}]), tmp_path / "tasks"
    # the path a user takes: eval adds the base as the reference row, which vLLM runs too (it is a checkpoint); without
    # vLLM the call stops before any model is scored, naming what it would have passed
    code, report, err = run_eval(capsys, "--model", str(bake3), "--texts", f"long={long}", "--lm-eval", "tiny_mc",
                                 "--lm-eval-include", str(tasks), "--lm-eval-backend", "vllm", "--data-parallel", "4")
    assert code == 2 and report == {} and "needs vLLM" in err and "'data_parallel_size': 4" in err
    with pytest.raises(BakeError, match="needs vLLM on a GPU machine.*'data_parallel_size': 4"):
        run_lm_eval(resolve(bake3)[0], ["tiny_mc"], backend="vllm", data_parallel=4)
    with pytest.raises(BakeError, match="runs Hugging Face checkpoints; b3/onnx is a onnx"):
        run_lm_eval(resolve(bake3 / "onnx")[0], ["tiny_mc"], backend="vllm")
    with pytest.raises(BakeError, match="at least 1"):
        vllm_model_args(bake3, data_parallel=0)


@pytest.mark.parametrize("content", ['{"results": "x", "sets": {}}', "{not json", "[]"])
def test_a_damaged_eval_json_stops_the_card_with_its_name(bake3: Path, tmp_path: Path, content: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The card must not say what a damaged eval.json does not: push names the file and the fix (exit 2)."""
    import shutil

    folder = tmp_path / "b"
    shutil.copytree(bake3, folder, symlinks=True)
    (folder / "eval.json").write_text(content)
    assert main(["push", str(folder), "--repo-id", "me/x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "eval.json" in err and "lambda-bake eval --save again" in err and "Traceback" not in err

"""What trying eval, bake --eval, MLX, GGUF and verify from outside found (issue 37): every argument, set, output and
optional package is checked before any model runs (exit 2 in about a second, nothing written); every number is
right in the unusual cases (no KL, twin folder names, no stop token, no rope_theta, empty aliases, outputs that are
not finite); the error names the file that is wrong."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl
from safetensors.numpy import load_file, save_file

from bake.cli import main
from bake.eval.metrics import QATally, TextTally, row_kl

TEXTS = [{"text": "What is 2 + 3? It is 5."}, {"text": "Paris is the capital of France."}]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"retain": write_jsonl(root / "retain.jsonl", TEXTS),
            "forget": write_jsonl(root / "forget.jsonl", [{"text": "The Eiffel Tower stands in Paris."}])}


@pytest.fixture(scope="module")
def bakes(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two cuts baked into folders of the same name under different parents (as two sweeps' cuts are)."""
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for parent, preset in (("x", "2"), ("y", "4")):
        folder = root / parent / "cut"
        assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                     "--preset", preset, "--out", str(folder), "--quiet"]) == 0
        out[parent] = folder
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    code = main([*args, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - start


def test_no_kl_keeps_delta_nll_and_selectivity(bakes: dict[str, Path], sets: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--model", str(bakes["x"]), "--texts", f"retain={sets['retain']}", "--texts",
            f"forget={sets['forget']}", "--json"]
    code, out, err, _ = run(capsys, *args)
    assert code == 0, err
    with_kl = json.loads(out)["models"][1]
    code, out, err, _ = run(capsys, *args, "--no-kl")
    assert code == 0, err
    without = json.loads(out)["models"][1]
    for name in ("retain", "forget"):
        assert without["sets"][name]["delta_nll"] == with_kl["sets"][name]["delta_nll"]
        assert with_kl["sets"][name]["mean_kl"] is not None and without["sets"][name].get("mean_kl") is None
        assert without["sets"][name]["kl_note"] == "--no-kl: KL not computed"
    assert without["selectivity"] == with_kl["selectivity"] is not None


def test_models_of_the_same_name_keep_their_own_results(bakes: dict[str, Path], sets: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err, _ = run(capsys, "eval", "--model", str(bakes["x"]), "--model", str(bakes["y"]), "--texts",
                            f"retain={sets['retain']}", "--json", "--save")
    assert code == 0, err
    _, x, y = json.loads(out)["models"]
    assert (x["model"], y["model"]) == (str(bakes["x"]), str(bakes["y"])) and x["off_fraction"] != y["off_fraction"]
    for folder, entry in ((bakes["x"], x), (bakes["y"], y)):
        (saved,) = json.loads((folder / "eval.json").read_text())["results"]
        assert saved["model"] == entry["model"] and saved["sets"]["retain"]["nll"] == entry["sets"]["retain"]["nll"]
    code, _, err, _ = run(capsys, "eval", "--model", str(bakes["x"]), "--model", str(bakes["x"]), "--texts",
                          f"retain={sets['retain']}")
    assert code == 2 and "is given twice" in err


@pytest.mark.parametrize("args,message", [
    (["--texts", "retain={retain}", "--max-length", "1"], "--max-length must be at least 2"),
    (["--texts", "retain={retain}", "--base", "{base}", "--preset", "3"], "give --gates too"),
    (["--lm-eval", ","], "names no task"),
    (["--lm-eval", "no_such_task_here"], "lm-eval knows no task 'no_such_task_here'"),
    (["--lm-eval", "arc_easy", "--lm-eval-limit", "0"], "--lm-eval-limit 0"),
    (["--lm-eval", "arc_easy", "--lm-eval-limit", "-1"], "--lm-eval-limit -1"),
    (["--texts", "retain={retain}", "--plot", "{tmp}/f.gif"], "unknown figure type '.gif'"),
    (["--texts", "retain={surrogate}"], "line 2 holds 'abc \\ud800 def'"),
])
def test_bad_arguments_stop_eval_before_any_model_runs(bakes: dict[str, Path], sets: dict[str, Path], tiny_base: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       args: list[str], message: str) -> None:
    pytest.importorskip("lm_eval")
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text('{"text": "fine"}\n{"text": "abc \\ud800 def"}\n')
    fill = {"retain": str(sets["retain"]), "base": str(tiny_base), "tmp": str(tmp_path), "surrogate": str(surrogate)}
    code, out, err, seconds = run(capsys, "eval", "--model", str(bakes["x"]),
                                  *[a.format(**fill) for a in args], "--save")
    assert code == 2 and message in err and "Traceback" not in err, err
    # refused before any model ran; naming an unknown task needs lm-eval's index of its tasks (about 10 s)
    assert out == "" and seconds < (30 if "knows no task" in message else 5)
    assert not (tmp_path / "f.gif").exists()


def test_missing_optional_packages_are_named_before_any_work(bakes: dict[str, Path], sets: dict[str, Path],
                                                             tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    import bake.plots.figure as figure

    real = importlib.util.find_spec
    gone = {"lm_eval", "llama_cpp", "vllm"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    retain = f"retain={sets['retain']}"
    code, _, err, seconds = run(capsys, "eval", "--model", str(bakes["x"]), "--texts", retain, "--lm-eval", "x")
    assert code == 2 and "--lm-eval needs EleutherAI's lm-evaluation-harness" in err and seconds < 5

    def no_matplotlib() -> None:
        raise figure.PlotError(f"--plot needs matplotlib; {figure.INSTALL_HINT}")

    monkeypatch.setattr(figure, "require_matplotlib", no_matplotlib)
    code, _, err, seconds = run(capsys, "eval", "--model", str(bakes["x"]), "--texts", retain, "--plot",
                                str(tmp_path / "f.png"))
    assert code == 2 and "--plot needs matplotlib" in err and seconds < 5
    code, _, err, _ = run(capsys, "bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant",
                          "chat_energy_optA", "--preset", "3", "--out", str(tmp_path / "b"), "--gguf", "--eval", retain)
    assert code == 2 and "llama-cpp-python" in err and not (tmp_path / "b").exists()


def test_the_vllm_backend_takes_the_base_row_and_refuses_the_rest_before_work(
        bakes: dict[str, Path], sets: dict[str, Path], tiny_base: Path, tiny_gates: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """lm-eval's vLLM backend runs Hugging Face folders: the bakes and the automatic base reference row; the hooked
    model is refused by name, and without vLLM the whole call stops before scoring."""
    pytest.importorskip("lm_eval")
    from bake.eval.harness import check_lm_eval
    from bake.eval.models import base_spec, resolve

    specs = [base_spec(tiny_base), *resolve(bakes["x"])]
    with pytest.raises(Exception, match="needs vLLM") as e:
        check_lm_eval(specs, "arc_easy", None, None, "vllm", 1)
    assert "'data_parallel_size': 1" in str(e.value)
    code, _, err, seconds = run(capsys, "eval", "--model", str(bakes["x"]), "--base", str(tiny_base), "--gates",
                                str(tiny_gates), "--variant", "chat_energy_optA", "--preset", "3", "--texts",
                                f"retain={sets['retain']}", "--lm-eval", "arc_easy", "--lm-eval-backend", "vllm")
    assert code == 2 and "is a hooked" in err and seconds < 10


def test_bake_checks_its_eval_length_before_baking(tiny_base: Path, tiny_gates: Path, sets: dict[str, Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for length in ("-3", "1"):
        code, _, err, _ = run(capsys, "bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant",
                              "chat_energy_optA", "--preset", "3", "--out", str(tmp_path / "b"), "--eval",
                              f"retain={sets['retain']}", "--eval-max-length", length)
        assert code == 2 and f"--eval-max-length {length}" in err and not (tmp_path / "b").exists()


def test_outputs_that_are_not_finite_give_valid_json_and_a_reason(bakes: dict[str, Path], sets: dict[str, Path],
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "nan"
    shutil.copytree(bakes["x"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.norm.weight"] = np.full_like(tensors["model.norm.weight"], np.nan)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code, out, err, _ = run(capsys, "eval", "--model", str(broken), "--texts", f"retain={sets['retain']}", "--json",
                            "--reference", "none")
    assert code == 0, err
    def not_json(word: str) -> None:
        raise AssertionError(f"the report holds a bare {word}, which is not JSON")

    figures = json.loads(out, parse_constant=not_json)["models"][0]["sets"]["retain"]
    assert figures["nll"] is None and "not finite" in figures["nll_note"]
    huge = TextTally()
    huge.add(5000.0, 2)
    f = huge.figures()
    assert f["nll"] == 2500.0 and f["perplexity"] is None and "past float64's range" in f["perplexity_note"]


def test_an_alias_of_nothing_matches_no_answer() -> None:
    tally = QATally()
    tally.add("", ("The The",))
    tally.add("the", ("A",))
    tally.add("The Beatles!", ("the beatles",))
    assert (tally.exact, tally.contains) == (1, 1)


def test_kl_sums_in_float64() -> None:
    """Over a 151,936-word vocabulary float32 sums lose the small terms; the sum is float64."""
    import torch

    rng = np.random.default_rng(0)
    ref = torch.log_softmax(torch.from_numpy(rng.standard_normal((3, 151936)).astype(np.float32)), -1)
    own = torch.log_softmax(torch.from_numpy(rng.standard_normal((3, 151936)).astype(np.float32)), -1)
    exact = float((ref.double().exp() * (ref.double() - own.double())).sum())
    assert math.isclose(row_kl(ref, own), exact, rel_tol=1e-6)


def test_a_lone_gguf_gets_the_base_its_manifest_names(tiny_base: Path, tiny_gates: Path, sets: dict[str, Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp")
    folder = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(folder), "--gguf", "--gguf-type", "f32", "--quiet"]) == 0
    lone = tmp_path / "lone.gguf"
    shutil.copy(folder / "model-as-is-F32.gguf", lone)
    for args in (["--model", str(folder / "model-as-is-F32.gguf")],  # found: the bake beside it names the base
                 ["--model", str(lone), "--base", str(tiny_base)]):  # given: a file on its own
        code, out, err, _ = run(capsys, "eval", *args, "--texts", f"retain={sets['retain']}", "--json")
        assert code == 0, err
        reference, gguf = json.loads(out)["models"]
        assert reference["is_reference"] and reference["kind"] == "base"
        figures = gguf["sets"]["retain"]
        if "kl_note" in figures:  # another tokenization: the change counts other tokens, so it is not given
            assert "delta_nll" not in figures
        else:
            assert figures["delta_nll"] is not None and figures["mean_kl"] is not None


def test_a_damaged_eval_json_is_named_by_push(bakes: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bakes["x"], folder)
    (folder / "eval.json").write_text(json.dumps({"created_by": "x", "settings": {"max_length": 8}, "sets": {},
                                                 "results": [{"sets": {"retain": {"nll": "high"}}}]}))
    code, _, err, _ = run(capsys, "push", str(folder), "--repo-id", "me/x", "--dry-run")
    assert code == 2 and "eval.json" in err and "bake_manifest.json" not in err and "'high', not a number" in err

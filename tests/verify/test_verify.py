"""verify: passes on correct bakes, fails (exit 3, metric named) on deliberately wrong ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bake.cli import main
from bake.demo.assets import write_gate_folder
from bake.gates.gate_math import Cut, GateSettings, gate_values
from bake.gates.variant import load_variant
from bake.write.pipeline import BakeOptions, bake_checkpoint

FAST = ["--quiet", "--greedy-tokens", "6"]


def claim(folder: Path, **fields: Any) -> None:
    """Make a bake's manifest claim something other than what was baked (a buggy or tampered bake)."""
    path = folder / "bake_manifest.json"
    m = json.loads(path.read_text())
    for dotted, value in fields.items():
        keys = dotted.split("__")
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    path.write_text(json.dumps(m))


def verify_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["verify", *args, "--json", *FAST])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


@pytest.mark.parametrize("layout", ["dense", "pruned"])
def test_correct_bake_passes(tiny_base: Path, tiny_gates: Path, tmp_path: Path, layout: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 4), "hard", "energy"), tmp_path / "b",
                    BakeOptions(layout=layout, pad_multiple=8, progress=False))
    code, report, _ = verify_json(["--baked", str(tmp_path / "b")], capsys)
    assert code == 0 and report["passed"]
    (c,) = report["candidates"]
    assert c["max_rel_diff"] < 1e-5 and c["mean_kl"] < 1e-9 and c["top1_agreement"] == 1.0
    assert c["greedy_first_divergence"] is None and c["greedy_steps"] == 6
    assert report["num_prompts"] == 6 and min(report["prompt_tokens"]) < 40 < max(report["prompt_tokens"])
    assert report["reference"]["variant"] == "chat_energy_optA" and report["reference"]["scale_mode"] == "energy"


def wrong_bakes(tiny_gates: Path, tmp_path: Path) -> tuple[dict[str, tuple[Any, GateSettings, dict[str, Any]]],
                                                             GateSettings]:
    """name -> (variant actually baked, settings actually used, what the manifest claims instead)."""
    right = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    t = right.selected_thresholds[2]
    lam = np.sort(gate_values(right.logits).reshape(-1))
    next_t = float(lam[int((lam < np.float32(t)).sum()) + 1])  # exactly one more neuron off
    shuffled = torch.from_numpy(right.logits.copy())
    shuffled[2] = shuffled[2][torch.randperm(128, generator=torch.Generator().manual_seed(0))]
    shuffled_v = load_variant(write_gate_folder(tmp_path / "shuf" / "chat_energy_optA", shuffled, scale_mode="energy"),
                              num_layers=4, intermediate_size=128)
    other = load_variant(tiny_gates, "chat_energy_optB", num_layers=4, intermediate_size=128)
    ok = GateSettings(Cut("threshold", t), "hard", "energy")
    return {
        "wrong scale mode": (right, GateSettings(Cut("threshold", t), "hard", "mean"), {}),
        "off-by-one threshold": (right, GateSettings(Cut("threshold", next_t), "hard", "energy"), {}),
        "a layer's gates shuffled": (shuffled_v, ok, {"gates__sha256": right.sha256,
                                                      "gates__source": str(tiny_gates),
                                                      "gates__local_path": str(tiny_gates)}),
        "swapped variant": (other, ok, {"gates__variant": "chat_energy_optA", "gates__sha256": right.sha256}),
    }, ok


@pytest.mark.parametrize("case", ["wrong scale mode", "off-by-one threshold", "a layer's gates shuffled",
                                  "swapped variant"])
def test_wrong_bake_fails_with_metric_named(tiny_base: Path, tiny_gates: Path, tmp_path: Path, case: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cases, ok = wrong_bakes(tiny_gates, tmp_path)
    variant, actual, extra = cases[case]
    bake_checkpoint(tiny_base, variant, actual, tmp_path / "b", BakeOptions(progress=False))
    claim(tmp_path / "b", scale_mode=ok.scale_mode, cut__threshold=ok.cut.value, **extra)
    code, report, err = verify_json(["--baked", str(tmp_path / "b")], capsys)
    assert code == 3 and not report["passed"]
    (c,) = report["candidates"]
    assert c["max_rel_diff"] > 1e-4
    assert "max |logit diff| / max |logit|" in err and "> 0.0001" in err


def test_manifest_mismatch_with_given_gates_is_a_user_error(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 2), "hard", "mean"), tmp_path / "b",
                    BakeOptions(progress=False))
    code, _, err = verify_json(["--baked", str(tmp_path / "b"), "--gates", str(tiny_gates), "--variant",
                                "chat_energy"], capsys)
    assert code == 2 and "not the ones the bake manifest records" in err and "--ignore-manifest" in err
    code, report, err = verify_json(["--baked", str(tmp_path / "b"), "--gates", str(tiny_gates), "--variant",
                                     "chat_energy", "--ignore-manifest"], capsys)
    assert code == 3 and "top-1 agreement" in err


def test_prompts_file_and_tightened_budget(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "mean"), tmp_path / "b",
                    BakeOptions(progress=False))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('[{"role": "user", "content": "Add 17 and 25."}]\n"What is 3 squared?"\n'
                       '{"messages": [{"role": "user", "content": "Name a prime."}]}\n')
    code, report, _ = verify_json(["--baked", str(tmp_path / "b"), "--prompts", str(prompts)], capsys)
    assert code == 0 and report["num_prompts"] == 3
    code, report, err = verify_json(["--baked", str(tmp_path / "b"), "--max-rel-diff", "0"], capsys)
    assert code == 3 and "max |logit diff| / max |logit| =" in err and "> 0" in err


def test_bake_verify_stores_report_and_failure_writes_nothing(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    base_args = ["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy",
                 "--preset", "2", "--verify", "--quiet", "--greedy-tokens", "4"]
    assert main([*base_args, "--out", str(tmp_path / "ok")]) == 0
    m = json.loads((tmp_path / "ok" / "bake_manifest.json").read_text())
    assert m["verification"]["passed"] and m["verification"]["candidates"][0]["top1_agreement"] == 1.0
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "## Verification against the hooked model" in card and "| pass |" in card
    assert main([*base_args, "--out", str(tmp_path / "bad"), "--max-rel-diff", "0"]) == 3
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")] == []


@pytest.mark.parametrize("variant", ["chat_energy", "chat_energy_optA", "chat_energy_optB", "chat_mean"])
def test_matrix_thresholds_layouts_torch_and_onnx(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                   variant: str) -> None:
    """Every selected threshold x {dense, pruned, ragged} x {torch, onnx portable/cpu graph} passes the float32
    budget."""
    from bake.verify.candidates import onnx_candidate, torch_candidate
    from bake.verify.prompts import DEFAULT_PROMPTS
    from bake.verify.verifier import VerifyOptions, spec_from_manifest, verify
    from export.onnx.exporter import export_onnx

    v = load_variant(tiny_gates, variant, num_layers=4, intermediate_size=128)
    options = VerifyOptions(prompts=DEFAULT_PROMPTS[:3], greedy_tokens=4)
    for k in range(1, 6):
        settings = GateSettings(Cut("preset", k), "hard", v.scale_mode)
        candidates, manifest = [], None
        for layout, target in (("dense", "portable"), ("pruned", "cpu")):
            out = tmp_path / f"{k}-{layout}"
            manifest = bake_checkpoint(tiny_base, v, settings, out, BakeOptions(layout=layout, pad_multiple=8,
                                                                                progress=False))
            candidates.append(torch_candidate(out))
            export_onnx(out, tmp_path / f"{k}-{layout}-onnx", target=target, progress=False)
            candidates.append(onnx_candidate(tmp_path / f"{k}-{layout}-onnx", device="cpu"))
        for target in ("portable", "cpu"):
            export_onnx(tmp_path / f"{k}-dense", tmp_path / f"{k}-ragged-{target}", target=target, layout="ragged",
                        progress=False)
            candidates.append(onnx_candidate(tmp_path / f"{k}-ragged-{target}", device="cpu"))
        report = verify(spec_from_manifest(manifest), candidates, options)
        names = [c["name"] for c in report["candidates"]]
        assert names == ["checkpoint (dense)", "onnx (portable graph, as-is, on cpu)", "checkpoint (pruned)",
                         "onnx (cpu graph, as-is, on cpu)", "onnx (portable graph, ragged, on cpu)",
                         "onnx (cpu graph, ragged, on cpu)"]
        assert report["passed"], [c["failures"] for c in report["candidates"]]
        assert max(c["max_rel_diff"] for c in report["candidates"]) <= 1e-4


def test_bake_with_onnx_and_verify_in_one_run(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "4", "--out", str(out), "--onnx", "--onnx-layout", "ragged", "--onnx-target", "cpu",
                 "--verify", "--quiet",
                 "--greedy-tokens", "4"]) == 0
    m = json.loads((out / "bake_manifest.json").read_text())
    assert [c["name"] for c in m["verification"]["candidates"]] == ["checkpoint (dense)",
                                                                    "onnx (cpu graph, ragged, on cpu)"]
    assert m["verification"]["passed"]
    io = json.loads((out / "onnx" / "onnx_io.json").read_text())
    assert io["layout"] == "ragged" and io["target"] == "cpu" and io["mlp_widths"] == m["kept_per_layer"]
    assert (out / "onnx" / "genai_config.json").is_file() and "onnx/genai_config.json" in m["files"]
    assert "onnx/model.onnx" in m["files"] and all((out / f).exists() for f in m["files"])
    assert not list(tmp_path.glob(".o*"))  # no staging leftovers


def test_verify_onnx_folder_alone_uses_its_manifest(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from export.onnx.exporter import export_onnx

    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 2), "hard", "mean"), tmp_path / "b",
                    BakeOptions(layout="pruned", pad_multiple=8, progress=False))
    export_onnx(tmp_path / "b", tmp_path / "x", dtype="float16", progress=False)
    code, report, _ = verify_json(["--onnx", str(tmp_path / "x")], capsys)
    (c,) = report["candidates"]
    assert code == 0 and c["dtype"] == "float16" and c["top1_agreement"] >= 0.98 and c["mean_kl"] < 1e-3


def test_reference_overrides_and_no_manifest(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "soft-masked", "mean", "global"), tmp_path / "b",
                    BakeOptions(progress=False))
    code, report, _ = verify_json(["--baked", str(tmp_path / "b")], capsys)
    assert code == 0 and (report["reference"]["gate_mode"], report["reference"]["scale_scope"]) == (
        "soft-masked", "global")
    code, report, err = verify_json(["--baked", str(tmp_path / "b"), "--gate-mode", "hard"], capsys)
    assert code == 3 and report["reference"]["gate_mode"] == "hard" and "max |logit diff|" in err
    code, report, _ = verify_json(["--baked", str(tmp_path / "b"), "--scale-mode", "energy"], capsys)
    assert code == 3 and report["reference"]["scale_mode"] == "energy"
    (tmp_path / "b" / "bake_manifest.json").unlink()  # a checkpoint baked elsewhere: the user names the reference
    code, _, err = verify_json(["--baked", str(tmp_path / "b")], capsys)
    assert code == 2 and "no bake manifest to take the reference from" in err
    code, report, _ = verify_json(["--baked", str(tmp_path / "b"), "--base", str(tiny_base), "--gates",
                                   str(tiny_gates), "--variant", "chat_mean", "--preset", "3", "--gate-mode",
                                   "soft-masked", "--scale-mode", "mean", "--scale-scope", "global"], capsys)
    assert code == 0 and report["candidates"][0]["name"] == "checkpoint (no manifest)"


def test_table_columns_stay_aligned_with_long_candidate_names() -> None:
    from bake.verify.metrics import CandidateResult, format_table

    def result(name: str) -> CandidateResult:
        return CandidateResult(name, "float32", 1e-6, 1e-7, 1e-7, 0.0, 0.0, 1.0, None, 16, passed=True)

    lines = format_table([result("checkpoint (dense)"), result("onnx (cpu graph, as-is, on cpu)")]).splitlines()
    assert lines[2].index("float32") == lines[3].index("float32") == lines[0].index("dtype")
    assert lines[2].index("16/16") == lines[3].index("16/16")


def test_float16_export_reports_the_hooked_models_largest_activations(tiny_base: Path, tiny_gates: Path,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """verify of a float16 export says how close the hooked model's activations come to float16's 65,504; the peak
    it reports is recomputed here from the layers' outputs (transformers' hidden states) on the same sequences."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bake.gates.gate_math import compute_gates
    from bake.verify.prompts import render_prompts
    from bake.verify.reference import attach_gate_hooks
    from export.onnx.exporter import export_onnx

    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    settings = GateSettings(Cut("preset", 2), "hard", "energy")
    bake_checkpoint(tiny_base, v, settings, tmp_path / "b", BakeOptions(progress=False))
    export_onnx(tmp_path / "b", tmp_path / "x", dtype="float16", progress=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"What is 2+2?"\n"Name a colour."\n')
    code, report, err = verify_json(["--baked", str(tmp_path / "b"), "--onnx", str(tmp_path / "x"),
                                     "--prompts", str(prompts)], capsys)
    assert code == 0, err
    checkpoint, onnx_candidate = report["candidates"]
    assert checkpoint["float16_headroom"] is None  # float32 checkpoint: nothing to say
    h = onnx_candidate["float16_headroom"]
    assert h == report["reference_activations"] and h["float16"] == "fits" and h["float16_max"] == 65504.0
    assert h["share_of_float16_max"] == pytest.approx(max(h["hidden_max_abs"], h["mlp_max_abs"]) / 65504.0)
    assert "of float16's 65,504; float16 fits these prompts" in err

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32).eval()
    attach_gate_hooks(model, compute_gates(v.logits, settings, v.selected_thresholds).scale)
    ids = render_prompts(AutoTokenizer.from_pretrained(str(tiny_base)), ["What is 2+2?", "Name a colour."])
    peaks = np.zeros(4)
    with torch.no_grad():
        for p in ids:
            seq = torch.tensor([p])
            for _ in range(6):  # the reference's greedy continuation, one step at a time as verify decodes it
                out = model(seq, output_hidden_states=True)
                seq = torch.cat([seq, out.logits[:, -1:].argmax(-1)], dim=1)
            # hidden_states[i + 1] is layer i's output, except the last, which transformers gives after the final norm
            for i, hs in enumerate(out.hidden_states[1:-1]):
                peaks[i] = max(peaks[i], float(hs.abs().max()))
    if h["hidden_layer"] < 3:
        assert h["hidden_max_abs"] == pytest.approx(peaks[:3].max(), rel=1e-5)
    else:
        assert h["hidden_max_abs"] >= peaks[:3].max()


def test_float16_headroom_verdicts() -> None:
    from bake.verify.reference import ActivationRange

    def verdict(hidden: float, mlp: float) -> str:
        return ActivationRange(hidden_max=hidden, hidden_layer=0, mlp_max=mlp, mlp_layer=1).float16_headroom()["float16"]

    assert [verdict(100.0, 10.0), verdict(10.0, 20000.0), verdict(70000.0, 1.0), verdict(float("nan"), 1.0)] == \
        ["fits", "tight", "overflows", "overflows"]


def test_verify_reports_time_and_peak_memory_per_stage(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import resource

    from export.onnx.exporter import export_onnx

    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 2), "hard", "energy"), tmp_path / "b",
                    BakeOptions(progress=False))
    export_onnx(tmp_path / "b", tmp_path / "x", progress=False)
    code, report, _ = verify_json(["--baked", str(tmp_path / "b"), "--onnx", str(tmp_path / "x")], capsys)
    assert code == 0
    assert [s["stage"] for s in report["stages"]] == ["hooked reference", "checkpoint (dense)",
                                                      "onnx (cpu graph, as-is, on cpu)"]
    assert all(s["seconds"] >= 0 for s in report["stages"])
    assert sum(s["seconds"] for s in report["stages"]) <= report["seconds"] + 0.05
    peaks = [s["peak_rss_mib"] for s in report["stages"]]
    assert peaks == sorted(peaks) and 0 < report["peak_rss_mib"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1

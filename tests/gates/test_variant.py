"""Gate loading: every container SPEC.md lists, the side files, and each bad input's error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bake.demo.assets import seed_gate_logits, write_gate_folder
from bake.errors import GateFileError
from bake.gates.variant import find_variant_folder, load_variant

L, I = 3, 8  # noqa: E741 - layers x neurons, as in SPEC.md
LOGITS = seed_gate_logits(L, I, seed=3)


def layer_dict(keys: list[object]) -> dict[object, torch.Tensor]:
    return {k: LOGITS[i].clone() for i, k in enumerate(keys)}


CONTAINERS = {
    "flat": LOGITS.reshape(-1).clone(),
    "matrix": LOGITS.clone(),
    "list": [LOGITS[i].clone() for i in range(L)],
    "tuple": tuple(LOGITS[i].clone() for i in range(L)),
    "dict_int": layer_dict([0, 1, 2]),
    "dict_digits": layer_dict(["0", "1", "2"]),
    "dict_names": layer_dict(["model.layers.0.mlp", "model.layers.1.mlp", "model.layers.2.mlp"]),
    "dict_names_unordered": {f"model.layers.{i}.mlp.down_proj": LOGITS[i].clone() for i in (2, 0, 1)},
    "wrapped_tensor": {"lambda_logits": LOGITS.reshape(-1).clone()},
    "wrapped_dict": {"state": layer_dict([0, 1, 2])},
    "wrapped_list": {"logits": [LOGITS[i].clone() for i in range(L)]},
}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_every_container_gives_the_same_layer_major_matrix(tmp_path: Path, kind: str) -> None:
    write_gate_folder(tmp_path / "chat_mean", LOGITS, scale_mode=None, container=CONTAINERS[kind])
    v = load_variant(tmp_path / "chat_mean", num_layers=L, intermediate_size=I)
    assert v.logits.dtype == np.float32 and np.array_equal(v.logits, LOGITS.numpy())
    assert v.scale_mode == "mean" and v.scale_mode_source == "folder name"


def test_safetensors_gate_file(tmp_path: Path) -> None:
    folder = tmp_path / "chat_energy"
    folder.mkdir()
    save_file({f"model.layers.{i}.mlp": LOGITS[i].clone() for i in range(L)}, str(folder / "lambda_logits.safetensors"))
    v = load_variant(folder, num_layers=L, intermediate_size=I)
    assert np.array_equal(v.logits, LOGITS.numpy()) and v.gate_file.name == "lambda_logits.safetensors"


def test_side_files_are_read(tmp_path: Path) -> None:
    write_gate_folder(tmp_path / "custom", LOGITS, scale_mode="energy")
    v = load_variant(tmp_path / "custom", num_layers=L, intermediate_size=I)
    lam = torch.sigmoid(LOGITS.double()).float()
    assert v.scale_mode == "energy" and v.scale_mode_source == "gate_stats.json"
    assert len(v.selected_thresholds) == 5
    assert v.selected_thresholds[2] == pytest.approx(float(lam.reshape(-1).sort().values[round(0.5 * L * I)]), abs=1e-8)
    assert v.knowledge_neurons == int((lam < 0.5).sum())
    assert v.stats["total_gates"] == L * I


def test_scale_mode_unknown_when_nothing_says(tmp_path: Path) -> None:
    write_gate_folder(tmp_path / "variant_x", LOGITS, scale_mode=None)
    assert load_variant(tmp_path / "variant_x", num_layers=L, intermediate_size=I).scale_mode is None


def test_wrong_neuron_count_names_both_counts(tmp_path: Path) -> None:
    write_gate_folder(tmp_path / "chat_mean", seed_gate_logits(L, I + 1, seed=0), scale_mode="mean")
    with pytest.raises(GateFileError, match=r"holds 27 gate logits but the base model has 3 layers x 8 neurons = 24"):
        load_variant(tmp_path / "chat_mean", num_layers=L, intermediate_size=I)
    write_gate_folder(tmp_path / "m2", seed_gate_logits(L + 1, I, seed=0), scale_mode="mean",
                      container=seed_gate_logits(L + 1, I, seed=0))
    with pytest.raises(GateFileError, match=r"shape \[4, 8\] .* different model size"):
        load_variant(tmp_path / "m2", num_layers=L, intermediate_size=I)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_refused(tmp_path: Path, bad: float) -> None:
    logits = LOGITS.clone()
    logits[1, 5] = bad
    write_gate_folder(tmp_path / "chat_mean", LOGITS, scale_mode="mean", container=logits)
    with pytest.raises(GateFileError, match="1 gate logits are NaN or infinite .first at layer 1, neuron 5"):
        load_variant(tmp_path / "chat_mean", num_layers=L, intermediate_size=I)


@pytest.mark.parametrize("container,found", [
    ({"a": LOGITS, "b": LOGITS}, "keys 'a', 'b'"),
    ("hello", "found a str"),
    ({"weights": "x"}, "keys 'weights'"),
    ([LOGITS[0], "x"], "found str"),
    ({0: LOGITS[0], 2: LOGITS[1]}, r"skips layers \[1\]"),
    (torch.zeros(2, 3, 4), r"found shape \[2, 3, 4\]"),
    (torch.zeros(L * I, dtype=torch.int64), "must be floating point"),
])
def test_unknown_container_names_what_was_found(tmp_path: Path, container: object, found: str) -> None:
    write_gate_folder(tmp_path / "chat_mean", LOGITS, scale_mode="mean", container=container)
    with pytest.raises(GateFileError, match=found):
        load_variant(tmp_path / "chat_mean", num_layers=L, intermediate_size=I)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "chat_mean"
    write_gate_folder(folder, LOGITS, scale_mode="mean", container={"logits": LOGITS, "x": _Exploit()})
    with pytest.raises(GateFileError, match="refused to load.*a pickle can run code"):
        load_variant(folder, num_layers=L, intermediate_size=I)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("name", ["lambda_logits.pt", "lambda_logits.safetensors"])
def test_truncated_gate_file_says_download_again(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "chat_mean"
    folder.mkdir()
    path = folder / name
    if name.endswith(".pt"):
        torch.save(LOGITS.reshape(-1).clone(), path)
    else:
        save_file({"logits": LOGITS.reshape(-1).clone()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GateFileError, match="download it again"):
        load_variant(folder, num_layers=L, intermediate_size=I)


def test_folder_lookup_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(GateFileError, match="empty is an empty folder; expected a gate variant folder"):
        find_variant_folder(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("no gates here")
    with pytest.raises(GateFileError, match="no gate file in .*other"):
        find_variant_folder(tmp_path / "other")
    with pytest.raises(GateFileError, match="nope does not exist; expected a gate variant folder"):
        find_variant_folder(tmp_path / "nope")
    with pytest.raises(GateFileError, match=r"notes.txt is a file, not a folder; expected a gate variant folder"):
        find_variant_folder(tmp_path / "other" / "notes.txt")
    for name in ("chat_mean", "chat_energy"):
        write_gate_folder(tmp_path / "root" / name, LOGITS, scale_mode=None)
    with pytest.raises(GateFileError, match="several variants; pick one with --variant: chat_energy, chat_mean"):
        find_variant_folder(tmp_path / "root")
    with pytest.raises(GateFileError, match="unknown variant 'chat_enrgy'.*are: chat_energy, chat_mean"):
        find_variant_folder(tmp_path / "root", "chat_enrgy")
    assert find_variant_folder(tmp_path / "root", "chat_energy") == tmp_path / "root" / "chat_energy"


def test_sha256_is_of_the_gate_file(tmp_path: Path) -> None:
    import hashlib

    write_gate_folder(tmp_path / "chat_mean", LOGITS, scale_mode="mean")
    v = load_variant(tmp_path / "chat_mean", num_layers=L, intermediate_size=I)
    assert v.sha256 == hashlib.sha256((tmp_path / "chat_mean" / "lambda_logits.pt").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "chat_mean" / "gate_stats.json").read_text())["scale_mode"] == "mean"

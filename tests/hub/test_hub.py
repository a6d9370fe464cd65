"""Hub resolution against a local huggingface_hub cache, and push against a fake HfApi.

Nothing here reaches the network: every test runs with HF_HUB_OFFLINE=1 (huggingface_hub then
refuses any HTTP request) and a cache folder built in tmp_path in the layout huggingface_hub 2.x
writes: ``models--OWNER--NAME/{refs/<rev>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
blobs/<etag>, trees/<commit>.json}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hub_fakes import COMMIT_B, FakeHfApi, git_blob_sha1
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils.tqdm import _create_progress_bar, hf_thread_map

from bake.commands import push_cmd
from bake.commands.common import add_hub_args
from bake.demo.assets import SEED_VARIANTS, TinyQwen3Spec, build_seed_variants, build_tiny_qwen3
from bake.errors import BaseModelError, GateFileError, HubError
from bake.gates.variant import find_variant_folder, load_variant
from bake.hub import download, push
from bake.io.base_model import open_base_model

BASE_ID = "Qwen/Qwen3-0.6B"
GATES_ID = "hyunseoki/qwen3-0.6b-lambda-gates-chat"
COMMIT_A = "a" * 40
SPEC = TinyQwen3Spec(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
ALL_VARIANTS = [v.name for v in SEED_VARIANTS]
LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".onnx")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_qwen3(tmp_path_factory.mktemp("src") / "base", SPEC)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny base\n")
    (folder / "LICENSE").write_text("Apache License 2.0\n")
    return folder


@pytest.fixture(scope="module")
def seed_gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    root = build_seed_variants(src / "gates", SPEC.num_layers, SPEC.intermediate_size)
    (root / "README.md").write_text("# gates card\n")
    return root


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME / HF_HUB_CACHE in tmp_path and HF_HUB_OFFLINE=1, in the env and in huggingface_hub's
    constants (read once at import, and read again by the library at call time)."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for key, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(
    cache: Path,
    repo_id: str,
    src: Path,
    *,
    commit: str = COMMIT_A,
    revision: str | None = "main",
    only: list[str] | None = None,
    listed_only: dict[str, int] | None = None,
    tree: bool = True,
) -> Path:
    """Lay ``src`` out as huggingface_hub caches a download of ``repo_id`` at ``commit``.

    ``only``: the files actually downloaded (default: all), as an ``allow_patterns`` download leaves
    them; the tree listing still names every file. ``listed_only``: files the repo has on the Hub
    but that were never downloaded (path -> size). ``tree=False``: no ``trees/<commit>.json``, as
    an older huggingface_hub leaves the cache.
    """
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        data = path.read_bytes()
        entry: dict[str, Any] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        etag = entry["blob_id"]
        if rel.endswith(LFS_SUFFIXES):  # LFS files: the blob is named by its sha256
            etag = hashlib.sha256(data).hexdigest()
            entry.update(lfs_sha256=etag, lfs_size=len(data))
        entries[rel] = entry
        if only is not None and rel not in only:
            continue
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for rel, size in (listed_only or {}).items():
        entries[rel] = {"size": size, "blob_id": "0" * 40}
    if revision is not None:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)  # no trailing newline, as the library writes it
    if tree:
        (storage / "trees").mkdir(parents=True, exist_ok=True)
        (storage / "trees" / f"{commit}.json").write_text(
            json.dumps({"format_version": 1, "files": dict(sorted(entries.items()))}, indent=1))
    return snapshot


# ---------------------------------------------------------------- base models


def test_base_patterns_take_safetensors_config_tokenizer_only() -> None:
    listing = [
        ".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt",
        "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.json", "chat_template.jinja",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "model.pth", "flax_model.msgpack", "tf_model.h5",
        "onnx/model.onnx", "onnx/model.onnx_data", "original/model.safetensors", "training_args.bin",
    ]
    chosen = set(filter_repo_objects(listing, allow_patterns=download.BASE_ALLOW_PATTERNS,
                                     ignore_patterns=download.BASE_IGNORE_PATTERNS))
    assert chosen == {
        "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.json", "chat_template.jinja",
    }


def test_resolve_base_uses_offline_cache(offline_cache: Path, tiny_base: Path) -> None:
    # The Hub listing also has pickled and ONNX weights that were never downloaded: offline resolution
    # still succeeds because the allow patterns exclude them (else huggingface_hub reports the
    # snapshot incomplete).
    snapshot = cache_repo(offline_cache, BASE_ID, tiny_base,
                          listed_only={"pytorch_model.bin": 10, "onnx/model.onnx": 10})
    folder = download.resolve_base(BASE_ID, progress=False)
    assert folder == snapshot
    assert (folder / "model.safetensors").is_symlink()
    base = open_base_model(folder)
    assert (base.num_layers, base.intermediate_size) == (SPEC.num_layers, SPEC.intermediate_size)


def test_resolve_base_revision_branch_and_commit(offline_cache: Path, tiny_base: Path) -> None:
    cache_repo(offline_cache, BASE_ID, tiny_base, commit=COMMIT_A)
    pinned = cache_repo(offline_cache, BASE_ID, tiny_base, commit=COMMIT_B, revision="v2")
    assert download.resolve_base(BASE_ID, revision="v2", progress=False) == pinned
    assert download.resolve_base(BASE_ID, revision=COMMIT_B, progress=False) == pinned
    assert download.resolve_base(BASE_ID, progress=False).name == COMMIT_A
    with pytest.raises(HubError, match=r"revision v3\) is not in the local Hugging Face cache"):
        download.resolve_base(BASE_ID, revision="v3")


def test_resolve_base_offline_not_cached_names_repo_and_fix(offline_cache: Path) -> None:
    with pytest.raises(HubError) as info:
        download.resolve_base(BASE_ID)
    text = str(info.value)
    assert "'Qwen/Qwen3-0.6B'" in text and "not in the local Hugging Face cache" in text
    assert "HF_HUB_OFFLINE is set" in text and str(offline_cache) in text
    assert '`hf download Qwen/Qwen3-0.6B --include "config.json"' in text and "local folder to --base" in text


def test_resolve_base_partial_snapshot_is_reported(offline_cache: Path, tiny_base: Path) -> None:
    cache_repo(offline_cache, BASE_ID, tiny_base, only=["config.json"])  # weights listed, never downloaded
    with pytest.raises(HubError, match=r"cached copy of Qwen/Qwen3-0.6B \(revision main\) is incomplete"):
        download.resolve_base(BASE_ID)


def test_resolve_base_cached_by_from_pretrained_without_card(
    offline_cache: Path, tiny_base: Path, capsys: pytest.CaptureFixture
) -> None:
    # transformers downloads config, weights and tokenizer but not README.md / LICENSE.
    only = [p.name for p in tiny_base.iterdir() if p.name not in ("README.md", "LICENSE")]
    snapshot = cache_repo(offline_cache, BASE_ID, tiny_base, only=only)
    assert download.resolve_base(BASE_ID, progress=False) == snapshot
    assert "lacks its README.md/LICENSE" in capsys.readouterr().err


def test_resolve_base_without_safetensors_is_refused(offline_cache: Path, tmp_path: Path) -> None:
    src = tmp_path / "binonly"
    src.mkdir()
    (src / "config.json").write_text("{}")
    cache_repo(offline_cache, "someone/bin-only", src, listed_only={"pytorch_model.bin": 10})
    with pytest.raises(HubError, match="never loads pickled .bin weights"):
        download.resolve_base("someone/bin-only")


def test_local_paths_are_returned_as_is(tiny_base: Path, seed_gates: Path) -> None:
    assert download.resolve_base(str(tiny_base)) == tiny_base
    assert download.resolve_gates(str(seed_gates), "chat_mean") == seed_gates
    assert download.resolve_gates(str(seed_gates / "chat_mean"), None) == seed_gates / "chat_mean"


def test_missing_path_and_repo_id_are_told_apart(tiny_base: Path) -> None:
    for ref in ("./no/such/model", "/no/such/model", "a/b/c"):
        with pytest.raises(BaseModelError, match=f"base model path {ref} does not exist"):
            download.resolve_base(ref)
    with pytest.raises(GateFileError, match="gates path ../gates does not exist"):
        download.resolve_gates("../gates", "chat_mean")
    with pytest.raises(HubError, match="'missing/model' is not a local path, so it was taken as a Hub repo"):
        download.resolve_base("missing/model")
    with pytest.raises(BaseModelError, match="a revision applies only to Hub repo ids"):
        download.resolve_base(str(tiny_base), revision="main")


# ---------------------------------------------------------------- gates


def test_resolve_gates_returns_snapshot_root_with_variant(offline_cache: Path, seed_gates: Path) -> None:
    only = [f"chat_energy_optA/{p.name}" for p in (seed_gates / "chat_energy_optA").iterdir()]
    snapshot = cache_repo(offline_cache, GATES_ID, seed_gates, only=only)
    root = download.resolve_gates(GATES_ID, "chat_energy_optA")
    assert root == snapshot
    assert find_variant_folder(root, "chat_energy_optA") == snapshot / "chat_energy_optA"
    variant = load_variant(root, "chat_energy_optA", num_layers=SPEC.num_layers,
                           intermediate_size=SPEC.intermediate_size)
    assert variant.scale_mode == "energy"
    assert variant.logits.shape == (SPEC.num_layers, SPEC.intermediate_size)


def test_resolve_gates_without_variant_lists_them(offline_cache: Path, seed_gates: Path) -> None:
    cache_repo(offline_cache, GATES_ID, seed_gates, only=["chat_mean/lambda_logits.pt"])
    expected = f"pick a gate variant of {GATES_ID} with --variant; variants in the cached listing"
    with pytest.raises(HubError, match=expected) as info:
        download.resolve_gates(GATES_ID, None)
    assert ", ".join(ALL_VARIANTS) in str(info.value)  # from the cached listing, not just the cached folder


def test_resolve_gates_unknown_variant_lists_existing(offline_cache: Path, seed_gates: Path) -> None:
    cache_repo(offline_cache, GATES_ID, seed_gates)
    with pytest.raises(HubError, match=f"has no variant 'chat_energy_optC'.*{', '.join(ALL_VARIANTS)}"):
        download.resolve_gates(GATES_ID, "chat_energy_optC")


def test_resolve_gates_variant_on_hub_but_not_cached(offline_cache: Path, seed_gates: Path) -> None:
    cache_repo(offline_cache, GATES_ID, seed_gates, only=["chat_mean/lambda_logits.pt"])
    with pytest.raises(HubError, match=r'is incomplete.*--include "chat_energy/\*"'):
        download.resolve_gates(GATES_ID, "chat_energy")


def test_resolve_gates_old_cache_without_tree_listing(offline_cache: Path, seed_gates: Path) -> None:
    only = [f"{v}/{p.name}" for v in ("chat_energy", "chat_mean") for p in (seed_gates / v).iterdir()]
    cache_repo(offline_cache, GATES_ID, seed_gates, only=only, tree=False)
    assert download.list_hub_variants(GATES_ID) == (["chat_energy", "chat_mean"], download.CACHED_FOLDERS)
    assert download.resolve_gates(GATES_ID, "chat_mean").name == COMMIT_A
    with pytest.raises(HubError, match=r"'chat_energy_optB' of .* not in the local cache.*energy, chat_mean"):
        download.resolve_gates(GATES_ID, "chat_energy_optB")
    with pytest.raises(HubError, match=r"--variant; variants cached so far \(the Hub cannot be reached"):
        download.resolve_gates(GATES_ID, None)


def test_resolve_gates_offline_not_cached(offline_cache: Path) -> None:
    with pytest.raises(HubError, match=f"'{GATES_ID}' is not a local path.*local folder to --gates"):
        download.resolve_gates(GATES_ID, "chat_energy_optA")
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        download.resolve_gates(GATES_ID, None)
    with pytest.raises(GateFileError, match="is not a folder name"):
        download.resolve_gates(GATES_ID, "chat_*")


def test_cli_takes_a_missing_owner_name_path_as_a_hub_id(seed_gates: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bake.cli import main

    code = main(["bake", "--base", "someone/missing-model", "--gates", str(seed_gates), "--variant", "chat_mean",
                 "--preset", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "'someone/missing-model' is not a local path, so it was taken as a Hub repo id" in capsys.readouterr().err


def test_hub_revision_args() -> None:
    parser = argparse.ArgumentParser()
    add_hub_args(parser)
    args = parser.parse_args(["--base-revision", "main", "--gates-revision", COMMIT_A])
    assert (args.base_revision, args.gates_revision) == ("main", COMMIT_A)


# ---------------------------------------------------------------- push


@pytest.fixture
def baked(tmp_path: Path, tiny_base: Path, seed_gates: Path) -> Path:
    """A real bake of the tiny base, declared a copy of Qwen/Qwen3-0.6B, plus upload-cache noise push never sends."""
    from bake.cli import main

    out = tmp_path / "baked"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(seed_gates), "--variant", "chat_energy_optA",
                 "--off-fraction", "0.25", "--base-id", BASE_ID, "--gates-id", GATES_ID, "--out", str(out),
                 "--quiet"]) == 0
    (out / ".cache" / "huggingface").mkdir(parents=True)
    (out / ".cache" / "huggingface" / "upload.lock").write_text("")
    return out


EXPECTED_UPLOAD = sorted(["LICENSE", "README.md", "bake_manifest.json", "chat_template.jinja", "config.json",
                          "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json"])


def test_push_creates_repo_and_branch_and_uploads_in_one_commit(baked: Path) -> None:
    api = FakeHfApi()
    url = push.push_folder(baked, "me/qwen3-baked", private=True, revision="optA-25", api=api)
    assert url == f"https://huggingface.co/me/qwen3-baked/commit/{COMMIT_B}"
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "repo_info", "create_branch", "create_commit"]
    calls = dict(api.calls)
    assert calls["create_repo"]["private"] is True and calls["create_repo"]["exist_ok"] is True
    assert calls["create_repo"]["repo_type"] == "model"
    assert calls["create_branch"]["branch"] == "optA-25" and calls["create_branch"]["exist_ok"] is True
    upload = calls["create_commit"]
    assert upload["revision"] == "optA-25" and upload["repo_type"] == "model"
    threshold = json.loads((baked / "bake_manifest.json").read_text())["cut"]["threshold"]
    assert upload["commit_message"] == (
        f"Bake chat_energy_optA into Qwen/Qwen3-0.6B: off_fraction 0.25 (threshold {threshold}, 25.0% off), "
        "dense layout")
    assert api.uploaded == EXPECTED_UPLOAD == push.upload_file_list(baked)
    card = ModelCard(api.readme)
    assert card.data.base_model == BASE_ID and card.data.base_model_relation == "finetune"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0" and "variant-chat_energy_optA" in card.data.tags


def test_push_to_main_public_with_own_message(baked: Path) -> None:
    api = FakeHfApi()
    push.push_folder(baked, "me/qwen3-baked", commit_message="my message", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "create_commit"]
    calls = dict(api.calls)
    assert calls["create_repo"]["private"] is False
    assert calls["create_commit"]["revision"] is None
    assert calls["create_commit"]["commit_message"] == "my message"


def test_push_private_into_existing_public_repo_is_refused(baked: Path) -> None:
    api = FakeHfApi(existing_private=False)
    with pytest.raises(HubError, match="already exists and is public"):
        push.push_folder(baked, "me/public", private=True, api=api)
    assert "create_commit" not in dict(api.calls)


def test_push_refuses_unbaked_or_incomplete_folders(baked: Path, tmp_path: Path) -> None:
    api = FakeHfApi()
    (baked / "tokenizer.json").unlink()
    with pytest.raises(HubError, match="lacks files its bake_manifest.json lists: tokenizer.json"):
        push.push_folder(baked, "me/x", api=api)
    (baked / "bake_manifest.json").unlink()
    with pytest.raises(HubError, match="has no bake_manifest.json.*--allow-unbaked"):
        push.push_folder(baked, "me/x", api=api)
    (baked / "model.safetensors").unlink()
    with pytest.raises(HubError, match="not a model folder"):
        push.push_folder(baked, "me/x", api=api)
    with pytest.raises(HubError, match="nowhere does not exist; expected a baked model folder"):
        push.push_folder(tmp_path / "nowhere", "me/x", api=api)
    with pytest.raises(HubError, match="not a Hub repo id"):
        push.push_folder(baked, "me/x/y", allow_unbaked=True, api=api)
    assert api.calls == []
    push.push_folder(baked, "me/x", allow_unbaked=True, api=api)
    assert dict(api.calls)["create_commit"]["commit_message"] == "Upload model folder with lambda-bake"


def test_push_with_real_api_offline_is_a_clear_error(baked: Path) -> None:
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set, so me/x cannot be reached on the Hub"):
        push.push_folder(baked, "me/x")


def test_push_command_json(
    baked: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    api = FakeHfApi()
    monkeypatch.setattr(push, "HfApi", lambda: api)
    parser = argparse.ArgumentParser()
    push_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["push", str(baked), "--repo-id", "me/qwen3-baked", "--private", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"repo_id": "me/qwen3-baked", "revision": "main", "private": True,
                      "commit_url": f"https://huggingface.co/me/qwen3-baked/commit/{COMMIT_B}",
                      "files": EXPECTED_UPLOAD}


def test_quiet_progress_bar_stays_silent(capsys: pytest.CaptureFixture) -> None:
    # snapshot_download builds its bars with _create_progress_bar and hf_thread_map from tqdm_class.
    assert hf_thread_map(lambda x: x * 2, [1, 2], tqdm_class=download._NoProgress, desc="files") == [2, 4]
    bar = _create_progress_bar(cls=download._NoProgress, log_level=logging.INFO, name="x", total=2, desc="bytes")
    bar.update(2)
    bar.close()
    assert bar.disable and capsys.readouterr().err == ""


# ---------------------------------------------------------------- end to end through the CLI


def test_bake_from_hub_ids_equals_bake_from_local_paths(
    offline_cache: Path, tiny_base: Path, seed_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from bake.cli import main
    from bake.io.tensor_io import CheckpointReader

    cache_repo(offline_cache, BASE_ID, tiny_base)
    cache_repo(offline_cache, GATES_ID, seed_gates, commit="b" * 40)
    common = ["--variant", "chat_energy_optA", "--preset", "3", "--quiet", "--json"]
    assert main(["bake", "--base", BASE_ID, "--gates", GATES_ID, *common, "--out", str(tmp_path / "hub")]) == 0
    from_hub = json.loads(capsys.readouterr().out)["manifest"]
    assert main(["bake", "--base", str(tiny_base), "--gates", str(seed_gates), *common,
                 "--out", str(tmp_path / "local")]) == 0
    from_local = json.loads(capsys.readouterr().out)["manifest"]
    assert from_hub["base"]["source"] == BASE_ID and from_hub["base"]["revision"] == COMMIT_A
    assert from_hub["gates"]["source"] == GATES_ID and from_hub["gates"]["revision"] == "b" * 40
    assert from_hub["gates"]["sha256"] == from_local["gates"]["sha256"]
    for key in ("cut", "off_fraction", "off_per_layer", "scale_mode", "layout", "sizes", "files"):
        assert from_hub[key] == from_local[key], key
    hub_reader, local_reader = CheckpointReader(tmp_path / "hub"), CheckpointReader(tmp_path / "local")
    assert hub_reader.names() == local_reader.names()
    assert all(hub_reader.read_bytes(n) == local_reader.read_bytes(n) for n in hub_reader.names())
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    assert card.data.base_model == BASE_ID and card.data.base_model_relation == "finetune"
    assert card.data.license == "apache-2.0"  # taken from the base's card
    # verify resolves the manifest's Hub ids from the cache, offline
    assert main(["verify", "--baked", str(tmp_path / "hub"), "--quiet", "--greedy-tokens", "4"]) == 0


def test_sweep_over_every_variant_of_a_hub_repo(offline_cache: Path, tiny_base: Path, seed_gates: Path,
                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bake.cli import main

    cache_repo(offline_cache, BASE_ID, tiny_base)
    cache_repo(offline_cache, GATES_ID, seed_gates)
    args = ["bake", "--base", BASE_ID, "--gates", GATES_ID, "--variant", "all", "--preset", "2", "--quiet", "--json"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in report["outputs"]] == [f"{v}-p2" for v in ALL_VARIANTS]
    assert {o["manifest"]["gates"]["source"] for o in report["outputs"]} == {GATES_ID}
    shutil.rmtree(offline_cache / f"models--{GATES_ID.replace('/', '--')}")
    only = [f"chat_mean/{p.name}" for p in (seed_gates / "chat_mean").iterdir()]
    cache_repo(offline_cache, GATES_ID, seed_gates, commit=COMMIT_B, only=only, tree=False)  # cannot list them all
    assert main([*args, "--out", str(tmp_path / "t")]) == 2
    assert "cache may hold only some variants" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_bake_push_to_uploads_the_real_bake(
    offline_cache: Path, tiny_base: Path, seed_gates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bake.cli import main

    api = FakeHfApi()
    monkeypatch.setattr(push, "HfApi", lambda: api)
    assert main(["bake", "--base", str(tiny_base), "--gates", str(seed_gates), "--variant", "chat_mean",
                 "--off-fraction", "0.5", "--layout", "pruned", "--out", str(tmp_path / "o"), "--quiet",
                 "--push-to", "me/tiny-baked", "--private"]) == 0
    uploads = [c for c in api.calls if c[0] == "create_commit"]
    assert len(uploads) == 1
    manifest = json.loads((tmp_path / "o" / "bake_manifest.json").read_text())
    assert uploads[0][1]["commit_message"] == push.default_commit_message(manifest)
    assert "chat_mean" in uploads[0][1]["commit_message"] and "pruned" in uploads[0][1]["commit_message"]
    assert api.uploaded == sorted(manifest["files"]) and api.private is True
    card = ModelCard(api.readme)
    assert card.data.library_name == "transformers" and "pruned" in card.data.tags
    assert 'from_pretrained("me/tiny-baked")' in api.readme  # the card the Hub gets names its repo

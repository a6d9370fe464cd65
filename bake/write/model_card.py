"""The baked model's ``README.md``: Hub metadata, what was baked, how it was verified, and how to run each kind of
file in the repo with the runtime's own API (transformers, onnxruntime-genai, llama.cpp): no lambda-bake needed.

Rendered from the manifest's public fields only (``source``, ``hub_id``, hashes: never ``local_path``), at bake
time and again by ``push``, which knows the repo id. The metadata follows the Hub's conventions:
``base_model`` is the base (a single id: a list would declare a merge), ``base_model_relation: finetune``
(the weights are changed, not adapted or quantized); the gate repo is linked in the text and the tags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bake.errors import OutputError

MLX_INFO = "mlx_export.json"  # export.mlx.folder.INFO_FILE (this wing is below the exporters)
EVAL_NAME = "eval.json"  # beside the manifest: lambda-bake eval --save / bake --eval results, which the card shows

CARD_NAME = "README.md"
HUB = "https://huggingface.co/"


def base_license(base_dir: Path) -> str | None:
    """The ``license`` field of the base model's card front matter, if it has one."""
    card = Path(base_dir) / CARD_NAME
    if not card.is_file():
        return None
    meta = _front_matter(card.read_text(errors="replace"))
    value = meta.get("license")
    return str(value) if value else None


def card_metadata(manifest: dict[str, Any], exports: dict[str, Any], checkpoint: bool = True) -> dict[str, Any]:
    """YAML metadata the Hub reads: base model and relation, licence, library, pipeline, tags."""
    meta: dict[str, Any] = {}
    base_id = manifest["base"].get("hub_id")
    if base_id:
        meta["base_model"] = base_id
        meta["base_model_relation"] = "finetune"
    if manifest["base"].get("license"):
        meta["license"] = manifest["base"]["license"]
    if exports.get("mlx_only"):  # an mlx-lm folder alone: the Hub's MLX library, as mlx-community's repos
        meta["library_name"] = "mlx"
    elif checkpoint:  # a GGUF-only repo: the Hub recognizes the file type itself
        meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    tags = ["qwen3", "lambda-gates", "lambda-bake", manifest["layout"]]
    if (manifest.get("cut") or {}).get("rule") == "uniform":
        tags.append("uniform-width")
    tags += [k for k in exports if k != "mlx_only"]
    if ("onnx" in exports and exports["onnx"].get("layout") == "ragged") or any(
            g["layout"] == "ragged" for g in exports.get("gguf", [])) or (exports.get("mlx") or {}).get("layout") == "ragged":
        tags.append("ragged")
    tags += [f"variant-{manifest['gates']['variant']}", f"off-{round(100 * manifest['off_fraction'])}pct"]
    meta["tags"] = tags
    return meta


def exports_in(folder: Path | None, gguf_files: list[Path] | None = None) -> dict[str, Any]:
    """The exports a baked folder holds: ``{"onnx": its onnx_io.json, "gguf": [{file, type, arch, layout}], "mlx":
    its mlx_export.json}``; an MLX folder itself gives its own description and ``mlx_only``."""
    found: dict[str, Any] = {}
    for key, path in (("onnx", "onnx/onnx_io.json"), ("mlx", "mlx/" + MLX_INFO), ("mlx", MLX_INFO)):
        if folder is not None and (Path(folder) / path).is_file():
            try:
                found[key] = json.loads((Path(folder) / path).read_text())
            except (OSError, ValueError):
                continue
            if path == MLX_INFO:
                found["mlx_only"] = True
    files = gguf_files if gguf_files is not None else sorted(Path(folder).glob("*.gguf")) if folder else []
    if files:
        found["gguf"] = [gguf_summary(f) for f in files]
    return found


def gguf_summary(path: Path) -> dict[str, Any]:
    """What a card says of a GGUF file: its name, type, llama.cpp arch and layout (from its own metadata)."""
    from bake.io.gguf_reader import read_gguf_metadata

    # the layout key is manifest.GGUF_LAYOUT_KEY, spelled out: manifest imports this module
    keys = {"general.file_type", "general.architecture", "lambda_bake.layout"}
    try:
        meta = read_gguf_metadata(path, keys)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise OutputError(f"{path} cannot be read as a GGUF file ({type(e).__name__}: {e}); it is damaged or "
                          "truncated: export it again") from e
    return {"file": Path(path).name, "type": _file_type(meta.get("general.file_type")),
            "arch": meta.get("general.architecture"), "layout": meta.get("lambda_bake.layout") or "as-is"}


def _file_type(value: Any) -> str:
    """gguf-py's name of a ``general.file_type`` without its prefix (``MOSTLY_Q4_K_M`` -> ``Q4_K_M``)."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        return str(value)


def render_model_card(manifest: dict[str, Any], folder: Path | None = None, repo_id: str | None = None,
                      gguf_files: list[Path] | None = None) -> str:
    """The full card text. ``folder``: the baked folder (which exports it holds); ``repo_id``: the repo it goes to;
    ``gguf_files``: a repo of GGUF files alone (no checkpoint)."""
    evaluation = read_eval(folder)  # first: a damaged eval.json is named as itself, not blamed on the manifest
    exports = exports_in(folder, gguf_files)
    checkpoint = gguf_files is None and not exports.get("mlx_only")
    meta = card_metadata(manifest, exports, checkpoint)
    if evaluation is not None:
        meta["model-index"] = model_index(evaluation, repo_id or "THIS_REPO")
    b, g, sizes, layout = manifest["base"], manifest["gates"], manifest["sizes"], manifest["layout"]
    size = sizes[layout] if layout in sizes else sizes["dense"]
    ragged = layout == "ragged"
    threshold = manifest["cut"]["threshold"]
    repo = repo_id or "THIS_REPO"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {b['source'].rstrip('/').split('/')[-1]} with lambda gates baked in ({g['variant']}, "
        f"{manifest['off_fraction']:.0%} of MLP neurons off)", "",
        f"{_link(b)} with the `{g['variant']}` lambda gates of {_link(g)} folded into its `down_proj` weights "
        f"(one learned sigmoid gate per MLP neuron; neurons whose gate is below the cut are switched off, the rest "
        f"rescaled). {_what_it_is(checkpoint, bool(exports.get('mlx_only')), ragged)} Baked with lambda-bake "
        f"{manifest['tool']['version']}.", "",
        "| what | value |", "|---|---|",
        f"| base model | {_link(b)}{_revision(b)} |",
        f"| gates | {_link(g)}{_revision(g)}, variant `{g['variant']}` (sha256 `{g['sha256'][:16]}...`) |",
        f"| cut | {manifest['cut']['kind']} {manifest['cut']['value']:g}, threshold on lambda "
        f"{'n/a' if threshold is None else f'{threshold:.6g}'} |",
        f"| cut rule | {_rule(manifest)} |",
        f"| neurons switched off | {manifest['off_fraction']:.2%} of {g['num_neurons']:,} |",
        f"| gate / scale | {manifest['gate_mode']} / {manifest['scale_mode']} ({manifest['scale_scope']} scope) |",
        f"| layout | {_layout(manifest)} |",
        f"| parameters | {size['params']:,}{_against(sizes, layout, 'params')} |",
        f"| MLP FLOPs per token | {size['mlp_flops_per_token']:,}{_against(sizes, layout, 'mlp_flops_per_token')} |",
    ]
    if checkpoint and "weight_bytes" in size:
        lines.append(f"| weights (safetensors) | {size['weight_bytes']:,} bytes{_against(sizes, layout, 'weight_bytes')} |")
    if checkpoint:
        lines.append(f"| tensor-parallel sizes | {_tensor_parallel(manifest)} |")
    lines.append(f"| dtype | {manifest['dtype']} |")
    if "onnx" in exports:
        lines.append(f"| ONNX export (`onnx/`) | {_onnx_summary(exports['onnx'])} |")
    if "mlx" in exports:
        lines.append(f"| MLX {'model' if exports.get('mlx_only') else 'export (`mlx/`)'} | "
                     f"{_mlx_summary(exports['mlx'])} |")
    for g_file in exports.get("gguf", []):
        lines.append(f"| GGUF `{g_file['file']}` | {g_file['type']}, llama.cpp arch `{g_file['arch']}` "
                     f"({_arch_why(g_file)}) |")
    lines.append("")
    lines += _verification_section(manifest.get("verification"), checkpoint)
    lines += _evaluation_section(evaluation)
    if checkpoint:
        lines += _ragged_usage(repo) if ragged else _transformers_usage(repo)
    if "onnx" in exports:
        lines += _genai_usage(repo, exports["onnx"])
    if exports.get("gguf"):
        lines += _llama_usage(repo, exports["gguf"])
    if "mlx" in exports:
        lines += _mlx_usage(repo, None if exports.get("mlx_only") else "mlx")
    if checkpoint:
        lines += _vllm_usage(repo, ragged)
    where = "`bake_manifest.json`" if checkpoint or exports.get("mlx_only") else \
        "the GGUF's `lambda_bake.manifest` metadata field"
    lines += [f"The full bake record (sources, hashes, the cut per layer, sizes, verification) is in {where}.", ""]
    return "\n".join(lines)


def read_eval(folder: Path | None) -> dict[str, Any] | None:
    """The folder's ``eval.json`` (``lambda-bake eval --save``, ``bake --eval``), or None; a damaged one is a clear
    error naming it (a card must not say what the file does not)."""
    from bake.io.json_files import read_json_object

    path = Path(folder) / EVAL_NAME if folder is not None else None
    if path is None or not path.is_file():
        return None
    fix = "run lambda-bake eval --save again, or delete it"
    data = read_json_object(path, OutputError, fix, "an evaluation")
    check_eval(data, path, fix)
    return data


_FIGURES = ("rows", "tokens", "nll", "perplexity", "delta_nll", "mean_kl", "exact_match", "contains")


def check_eval(data: dict[str, Any], path: Path, fix: str) -> None:
    """Every field the card reads of an eval.json, of its type: a damaged one is named, never blamed on another
    file or turned into a traceback."""
    def bad(what: str) -> OutputError:
        return OutputError(f"{path}: {what}; {fix}")

    if not isinstance(data.get("created_by"), str):
        raise bad("'created_by' is not a string")
    settings = data.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("max_length"), int):
        raise bad("'settings' does not give max_length")
    sets = data.get("sets")
    if not isinstance(sets, dict):
        raise bad("'sets' is not an object of set name -> description")
    for name, info in sets.items():
        if not (isinstance(info, dict) and isinstance(info.get("file"), str) and isinstance(info.get("sha256"), str)
                and info.get("kind") in ("text", "qa") and isinstance(info.get("rows"), int)):
            raise bad(f"set {name!r} lacks its file, sha256, kind (text or qa) or rows")
    results = data.get("results")
    if not isinstance(results, list):
        raise bad("'results' is not a list")
    for i, entry in enumerate(results + ([data["reference"]] if data.get("reference") is not None else [])):
        where = f"result {i}" if i < len(results) else "the reference"
        if not isinstance(entry, dict) or not isinstance(entry.get("sets", {}), dict):
            raise bad(f"{where} is not an object with per-set figures")
        for name, figures in entry.get("sets", {}).items():
            if not isinstance(figures, dict):
                raise bad(f"{where}'s figures on {name!r} are not an object")
            for key in _FIGURES:
                value = figures.get(key)
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                    raise bad(f"{where}'s {key} on {name!r} is {value!r}, not a number")


_INDEX_METRICS = (("perplexity", "perplexity"), ("nll", "NLL (nats/token)"), ("delta_nll", "change in NLL vs base"),
                  ("mean_kl", "mean KL(base || model)"), ("exact_match", "exact match"),
                  ("contains", "answer contains an alias"))


def model_index(evaluation: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The card's ``model-index``: the checkpoint's results (else the first model's), one entry per set and metric,
    as huggingface_hub's ``EvalResult`` writes them. A set made from a Hub dataset (``eval --dataset``) is named by
    its id, config, split and (a suite set: ``eval --suite``) the commit it was read at; a local file by a name that
    is no Hub id (``local file retain.jsonl``: the Hub links ``dataset.type`` to a dataset page), with the file's
    sha256 as its revision."""
    from huggingface_hub import EvalResult, ModelCardData

    results = evaluation["results"]
    own = next((r for r in results if r.get("kind") == "checkpoint"), results[0] if results else None)
    evals = []
    for set_name, info in evaluation["sets"].items():
        figures = (own or {}).get("sets", {}).get(set_name, {})
        for key, label in _INDEX_METRICS:
            if isinstance(figures.get(key), (int, float)):
                hub = info.get("dataset") or {}
                evals.append(EvalResult(
                    task_type="text-generation", dataset_type=hub.get("id") or f"local file {info['file']}",
                    dataset_name=set_name, dataset_config=hub.get("config"), dataset_split=hub.get("split"),
                    dataset_revision=hub.get("revision") or info["sha256"], metric_type=key, metric_name=label,
                    metric_value=float(figures[key])))
    return ModelCardData(model_name=name, eval_results=evals).to_dict()["model-index"] if evals else []


def _evaluation_section(evaluation: dict[str, Any] | None) -> list[str]:
    if evaluation is None:
        return []
    sets = evaluation["sets"]
    lines = ["## Evaluation", "",
             f"Measured with `lambda-bake eval` ({evaluation['created_by']}; rows truncated to "
             f"{evaluation['settings']['max_length']} tokens, chat template with thinking off). nll is nats per "
             "predicted token, perplexity exp(nll), the change and the KL against the base; QA: greedy answers, "
             "exact match / contains-an-alias after SQuAD v1.1's answer normalization. Sets: "
             + ", ".join(f"`{n}` = `{i['file']}` ({i['rows']} rows, sha256 `{i['sha256'][:16]}...`)"
                         for n, i in sets.items()) + ".", "",
             "| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    rows = ([evaluation["reference"]] if evaluation.get("reference") else []) + evaluation["results"]
    for r in rows:
        cells = []
        for n, info in sets.items():
            f = r.get("sets", {}).get(n, {})
            if info["kind"] == "text":
                delta = f" ({f['delta_nll']:+.4f})" if f.get("delta_nll") is not None else ""
                ppl = f"{f['perplexity']:.2f}" if f.get("perplexity") is not None else "past float64"
                cells.append(f"nll {f['nll']:.4f}{delta}, ppl {ppl}" if f.get("nll") is not None else "-")
            else:
                cells.append(f"EM {f['exact_match']:.1%}, contains {f['contains']:.1%}"
                             if f.get("rows") and f.get("exact_match") is not None else "-")
        lines.append(f"| {r.get('model')}{' (reference)' if r.get('is_reference') else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_model_card(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / CARD_NAME
    path.write_text(render_model_card(manifest, out_dir))
    return path


def _what_it_is(checkpoint: bool, mlx: bool = False, ragged: bool = False) -> str:
    if checkpoint and ragged:
        return ("Each layer keeps exactly its own neurons: a Qwen3 checkpoint whose config gives each layer's MLP width "
                "in transformers' `per_layer_config` (the architecture stays `Qwen3ForCausalLM`). lambda-bake's loader "
                "builds it from plain transformers classes (no remote code) and vLLM serves it with lambda-bake's "
                "plugin; `AutoModelForCausalLM` will load it once transformers builds per-layer Qwen3 models itself.")
    if mlx:
        return ("This repo holds it as an mlx-lm model folder (Apple silicon; LM Studio's MLX engine): the gates are "
                "in the weights, no hooks or custom code.")
    if checkpoint:
        return ("It is a plain Qwen3 checkpoint: it loads with `AutoModelForCausalLM.from_pretrained` and needs no "
                "hooks or custom code.")
    return "This repo holds it as GGUF for llama.cpp alone: the gates are in the weights, no hooks or custom code."


def _layout(manifest: dict[str, Any]) -> str:
    layout = manifest["layout"]
    if layout == "ragged":
        widths = manifest.get("mlp_widths") or []
        return (f"ragged: MLP widths {' '.join(map(str, widths))} (layers 0-{len(widths) - 1}; the cut's neurons "
                f"rounded up to multiples of {manifest.get('pad_multiple')} with zero neurons)")
    if layout == "pruned":
        return (f"pruned: intermediate_size {manifest['intermediate_size']} in every layer (the widest layer's kept "
                f"neurons rounded up to {manifest.get('pad_multiple')}; narrower layers padded with zero neurons)")
    return f"dense: intermediate_size {manifest['intermediate_size']}, switched-off neurons' weights zero"


def _against(sizes: dict[str, Any], layout: str, key: str) -> str:
    """The same figure for the other layouts, in brackets."""
    others = [f"{name} {sizes[name][key]:,}" for name in ("dense", "pruned", "ragged")
              if name != layout and key in sizes.get(name, {})]
    return f" ({', '.join(others)})" if others else ""


def tensor_parallel_sizes(widths: list[int]) -> list[int]:
    """The tensor-parallel sizes of 1 to 8 that split every layer's MLP width evenly: vLLM's column- and
    row-parallel layers need each width to be a multiple of the size."""
    return [t for t in range(1, 9) if all(w % t == 0 for w in widths)]


def _tensor_parallel(manifest: dict[str, Any]) -> str:
    widths = manifest.get("mlp_widths") or [manifest["intermediate_size"]]
    sizes = tensor_parallel_sizes(widths)
    return (f"{', '.join(map(str, sizes))} (of 1-8: those that divide every layer's MLP width; the attention heads "
            "must divide too)")


def _link(entry: dict[str, Any]) -> str:
    hub = entry.get("hub_id")
    return f"[{hub}]({HUB}{hub})" if hub else f"`{entry['source']}` (a local copy; not linked to a Hub repo)"


def _revision(entry: dict[str, Any]) -> str:
    return f" at commit `{entry['revision'][:12]}`" if entry.get("hub_id") and entry.get("revision") else ""


def _rule(manifest: dict[str, Any]) -> str:
    u = manifest.get("uniform_cut")
    if not u:
        return "threshold: a neuron is off when lambda < threshold (layers keep different widths)"
    return (f"uniform width: every layer switches off its {u['switched_off_per_layer']} lowest-lambda neurons "
            f"({u['on_to_off']:,} on -> off and {u['off_to_on']:,} off -> on against the threshold cut at the same "
            "off-fraction)")


def _onnx_summary(io: dict[str, Any]) -> str:
    quant = io.get("quantization")
    weights = f", {quant['weights']} weights" if quant else ""
    padding = sum(io.get("mlp_padding") or [])
    aligned = (f", MLP widths aligned to {io['width_multiple']} ({padding:,} zero neurons added)" if padding else "")
    return (f"target `{io.get('target', 'portable')}`, {io.get('dtype')}{weights}, layout {io.get('layout')}"
            f"{aligned}, with KV cache and genai_config.json")


_CHAT_LINES = [
    'messages = [{"role": "user", "content": "What is 2+2?"}]',
    "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,",
    '                                       return_tensors="pt", return_dict=True)  # thinking off, as the gates '
    "were trained",
    'output = model.generate(**inputs, max_new_tokens=64, do_sample=False)',
    'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
]


def _transformers_usage(repo: str) -> list[str]:
    return [
        "## Run with transformers", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        *_CHAT_LINES,
        "```", "",
    ]


def _ragged_usage(repo: str) -> list[str]:
    return [
        "## Run with transformers", "",
        "transformers reads this config (>= 5.15) but its Qwen3 modeling still sizes every MLP from one width, so load "
        "it with lambda-bake's loader: stock `Qwen3ForCausalLM` modules, each layer's MLP at its own width, the "
        "weights loaded strictly, no remote code.", "",
        "```bash",
        'pip install lambda-bake',
        f"hf download {repo} --local-dir model",
        "```", "",
        "```python",
        "from transformers import AutoTokenizer",
        "",
        "from bake.io.pretrained import load_pretrained",
        "",
        'model = load_pretrained("model")  # a transformers Qwen3ForCausalLM',
        'tokenizer = AutoTokenizer.from_pretrained("model")',
        *_CHAT_LINES,
        "```", "",
    ]


def _vllm_usage(repo: str, ragged: bool) -> list[str]:
    install = ('pip install "lambda-bake[vllm]"  # vLLM and the plugin that builds each layer at its own width'
               if ragged else "pip install vllm")
    note = ("lambda-bake registers a `vllm.general_plugins` entry point, so vLLM builds this model with each layer's "
            "MLP at its own width with no flag. " if ragged else "")
    return [
        "## Serve with vLLM", "",
        f"{note}Thinking off, as the gates were trained: the server's default chat-template arguments below, or "
        "`chat_template_kwargs` per request. `--tensor-parallel-size` must be one of the sizes in the table above.", "",
        "```bash",
        install,
        f"vllm serve {repo} --default-chat-template-kwargs " + """'{"enable_thinking": false}'""",
        "```", "",
        "```python",
        "from vllm import LLM, SamplingParams",
        "",
        f'llm = LLM(model="{repo}")',
        'messages = [{"role": "user", "content": "What is 2+2?"}]',
        'out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=64),',
        '               chat_template_kwargs={"enable_thinking": False})',
        "print(out[0].outputs[0].text)",
        "```", "",
    ]


def _mlx_summary(info: dict[str, Any]) -> str:
    quant = info.get("quantization")
    weights = f"{quant['bits']}-bit (mlx-lm affine, groups of {quant['group_size']})" if quant else "unquantized"
    why = ("ragged: each layer keeps exactly its own neurons, in mlx-lm's openelm model, which sizes each layer's MLP "
           "on its own and computes Qwen3's math" if info.get("layout") == "ragged" else "the checkpoint's shapes")
    return f"mlx-lm `{info.get('model_type')}`, {info.get('dtype')}, {weights} ({why})"


def _mlx_usage(repo: str, subfolder: str | None) -> list[str]:
    where = "model/mlx" if subfolder else repo
    fetch = [f'hf download {repo} --include "{subfolder}/*" --local-dir model'] if subfolder else []
    return [
        "## Run with mlx-lm", "",
        "```bash",
        'pip install mlx-lm  # Apple silicon; on Linux: pip install "mlx[cpu]" mlx-lm',
        *fetch,
        "```", "",
        "```python",
        "from mlx_lm import generate, load",
        "",
        f'model, tokenizer = load("{where}")',
        'messages = [{"role": "user", "content": "What is 2+2?"}]',
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)  # "
        "thinking off, as the gates were trained",
        "print(generate(model, tokenizer, prompt=prompt, max_tokens=256))",
        "```", "",
        f"As a server, thinking off: `mlx_lm.server --model {where} --chat-template-args "
        "'{\"enable_thinking\": false}'`.", "",
    ]


def _arch_why(g: dict[str, Any]) -> str:
    if g["arch"] == "openelm":
        return ("ragged: each layer keeps exactly its own neurons; llama.cpp's qwen3 loader sizes every layer's MLP "
                "from layer 0, its openelm loader sizes each layer on its own and computes Qwen3's math")
    return "the checkpoint's shapes, as llama.cpp's convert_hf_to_gguf.py writes them"


def _llama_usage(repo: str, files: list[dict[str, Any]]) -> list[str]:
    name = files[0]["file"]
    return [
        "## Run the GGUF with llama.cpp", "",
        "Any llama.cpp-based runtime loads the file as it is (llama-cli, llama-server, llama-cpp-python, Ollama, "
        "LM Studio). With llama-server, turn thinking off as the gates were trained: "
        "`llama-server -m " + name + " --jinja --chat-template-kwargs '{\"enable_thinking\": false}'`.", "",
        "```bash",
        "pip install llama-cpp-python",
        f"hf download {repo} {name} --local-dir model",
        "```", "",
        "```python",
        "from llama_cpp import Llama",
        "",
        f'llm = Llama("model/{name}", n_ctx=4096, verbose=False)',
        'prompt = "<|im_start|>user\\nWhat is 2+2?<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n"  '
        "# Qwen3's template, thinking off",
        'out = llm(prompt, max_tokens=64, temperature=0.0, stop=["<|im_end|>"])',
        'print(out["choices"][0]["text"])',
        "```", "",
        "With Ollama, create the model from the `Modelfile` beside the file (the Qwen3 chat template with thinking "
        "off, its stop tokens and the base's sampling defaults; without it Ollama falls back to a bare prompt):", "",
        "```bash",
        f"hf download {repo} {name} {Path(name).stem}.Modelfile --local-dir model",
        f"cd model && ollama create qwen3-lambda -f {Path(name).stem}.Modelfile && ollama run qwen3-lambda",
        "```", "",
    ]


def _genai_usage(repo: str, io: dict[str, Any]) -> list[str]:
    cuda = io.get("target") == "cuda"
    package = "onnxruntime-genai-cuda" if cuda else "onnxruntime-genai  # or onnxruntime-genai-cuda on an NVIDIA GPU"
    return [
        "## Run the ONNX export with onnxruntime-genai", "",
        "`onnx/` holds the graph, its weights, the tokenizer and `genai_config.json`, so onnxruntime-genai runs it as it"
        + (" is, on CUDA (this export's `cuda` target runs only there)." if cuda else " is, on the CPU or CUDA."), "",
        "```bash",
        f"pip install {package}",
        f'hf download {repo} --include "onnx/*" --local-dir model',
        "```", "",
        "```python",
        "import json",
        "",
        "import onnxruntime_genai as og",
        "",
        'model = og.Model("model/onnx")',
        "tokenizer = og.Tokenizer(model)",
        'messages = [{"role": "user", "content": "What is 2+2?"}]',
        "prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)",
        'prompt += "<think>\\n\\n</think>\\n\\n"  # thinking off, as the gates were trained (enable_thinking=False)',
        "params = og.GeneratorParams(model)",
        "params.set_search_options(max_length=256, do_sample=False)",
        "generator = og.Generator(model, params)",
        "generator.append_tokens(tokenizer.encode(prompt))",
        "stream = tokenizer.create_stream()",
        "while not generator.is_done():",
        "    generator.generate_next_token()",
        '    print(stream.decode(generator.get_next_tokens()[0]), end="", flush=True)',
        "```", "",
    ]


def _verification_section(report: dict[str, Any] | None, checkpoint: bool = True) -> list[str]:
    if not report:
        how = "`lambda-bake verify --baked .`" if checkpoint else \
            "`lambda-bake verify --gguf FILE --base BASE --gates GATES` (the base and gates this card names)"
        return [f"Not verified at bake time: run {how} before relying on it.", ""]
    rows = [
        "## Verification against the hooked model", "",
        f"{report.get('num_prompts', '?')} chat prompts, reference = base model with `down_proj` pre-hooks. Each "
        "candidate is judged by the coarsest precision it went through; its weights are proven tensor by tensor.", "",
        "| candidate | dtype | budget | max abs logit diff | mean KL | top-1 agreement | greedy match | weights "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.get("candidates", []):
        figures = (f"{c['max_abs_diff']:.3g} | {c['mean_kl']:.3g} | {c['top1_agreement']:.2%} | "
                   f"{c.get('greedy_summary', 'n/a')}" if c.get("mean_kl") is not None else "not run | | |")
        weights = c.get("weights")
        checked = "-" if weights is None else "pass" if weights["passed"] else "FAIL"
        budget = (c.get("budget") or {}).get("dtype", "-")
        rows.append(f"| {c['name']} | {c['dtype']} | {budget} | {figures} | {checked} | "
                    f"{'pass' if c['passed'] else 'FAIL'} |")
        for k in c.get("checks", []):
            rows.append(f"| &nbsp;&nbsp;vs {k['against']} | | {k['budget']['dtype']} | {k['max_abs_diff']:.3g} | "
                        f"{k['mean_kl']:.3g} | {k['top1_agreement']:.2%} | {k['greedy_summary']} | | "
                        f"{'pass' if k['passed'] else 'FAIL'} |")
    return rows + [""]


def _front_matter(text: str) -> dict[str, Any]:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}

"""The baked model's ``README.md``: Hub-rendered YAML metadata plus what was baked and how to load it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_license(base_dir: Path) -> str | None:
    """The ``license`` field of the base model's card front matter, if it has one."""
    card = Path(base_dir) / "README.md"
    if not card.is_file():
        return None
    meta = _front_matter(card.read_text(errors="replace"))
    value = meta.get("license")
    return str(value) if value else None


def card_metadata(manifest: dict[str, Any], license_name: str | None) -> dict[str, Any]:
    """YAML metadata the Hub renders: base model and relation, library, pipeline, tags, licence."""
    meta: dict[str, Any] = {}
    base = str(manifest["base"]["source"])
    if _REPO_ID.match(base):
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune"
    if license_name:
        meta["license"] = license_name
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["qwen3", "lambda-gates", "lambda-bake", f"layout-{manifest['layout']}",
                    f"variant-{manifest['gates']['variant']}"]
    return meta


def render_model_card(manifest: dict[str, Any], license_name: str | None = None) -> str:
    """The full card text."""
    meta = card_metadata(manifest, license_name)
    g, sizes = manifest["gates"], manifest["sizes"]
    layout = manifest["layout"]
    size = sizes["pruned" if layout == "pruned" else "dense"]
    threshold = manifest["cut"]["threshold"]
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {manifest['base']['source'].rstrip('/').split('/')[-1]} with lambda gates baked in ({g['variant']})", "",
        "Lambda gates (one learned sigmoid gate per MLP neuron) folded into the `down_proj` weights by "
        f"[lambda-bake](https://pypi.org/project/lambda-bake/) {manifest['tool']['version']}. This is a plain "
        "Qwen3 checkpoint: it loads with `AutoModelForCausalLM.from_pretrained` and needs no hooks or custom code.",
        "",
        "| what | value |", "|---|---|",
        f"| base model | `{manifest['base']['source']}` |",
        f"| gates | `{g['source']}` variant `{g['variant']}` (sha256 `{g['sha256'][:16]}...`) |",
        f"| cut | {manifest['cut']['kind']} {manifest['cut']['value']:g}, threshold on lambda "
        f"{'n/a' if threshold is None else f'{threshold:.6g}'} |",
        f"| cut rule | {_rule(manifest)} |",
        f"| neurons switched off | {manifest['off_fraction']:.2%} of {g['num_neurons']:,} |",
        f"| gate / scale | {manifest['gate_mode']} / {manifest['scale_mode']} ({manifest['scale_scope']} scope) |",
        f"| layout | {layout} (intermediate_size {manifest['intermediate_size']}) |",
        f"| parameters | {size['params']:,} |",
        f"| MLP FLOPs per token | {size['mlp_flops_per_token']:,} |",
        f"| dtype | {manifest['dtype']} |", "",
    ]
    lines += _verification_section(manifest.get("verification"))
    lines += [
        "## Load with transformers", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("THIS_REPO")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_REPO")',
        'messages = [{"role": "user", "content": "What is 2+2?"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,",
        '                                       return_tensors="pt", return_dict=True)',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))",
        "```", "",
        "## Run with ONNX Runtime", "",
        "If the repo has an `onnx/` folder (exported with `lambda-bake export`), run it without PyTorch:", "",
        "```bash",
        "pip install lambda-bake onnxruntime",
        'lambda-bake generate --onnx ./onnx --prompt "What is 2+2?"',
        "```", "",
        "The full bake record is in `bake_manifest.json`.", "",
    ]
    return "\n".join(lines)


def _rule(manifest: dict[str, Any]) -> str:
    u = manifest.get("uniform_cut")
    if not u:
        return "threshold: a neuron is off when lambda < threshold (layers keep different widths)"
    return (f"uniform width: every layer switches off its {u['switched_off_per_layer']} lowest-lambda neurons "
            f"({u['on_to_off']:,} on -> off and {u['off_to_on']:,} off -> on against the threshold cut at the same "
            "off-fraction)")


def write_model_card(out_dir: Path, manifest: dict[str, Any], base_dir: Path) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(manifest, base_license(base_dir)))
    return path


def _verification_section(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["Not verified at bake time: run `lambda-bake verify --baked .` before relying on it.", ""]
    rows = [
        "## Verification against the hooked model", "",
        f"{report.get('num_prompts', '?')} chat prompts, reference = base model with `down_proj` pre-hooks.", "",
        "| candidate | dtype | max abs logit diff | mean KL | top-1 agreement | greedy match | weights | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report.get("candidates", []):
        figures = (f"{c['max_abs_diff']:.3g} | {c['mean_kl']:.3g} | {c['top1_agreement']:.2%} | "
                   f"{c.get('greedy_summary', 'n/a')}" if c.get("mean_kl") is not None else "not run | | |")
        weights = c.get("weights")
        checked = "-" if weights is None else "pass" if weights["passed"] else "FAIL"
        rows.append(f"| {c['name']} | {c['dtype']} | {figures} | {checked} | {'pass' if c['passed'] else 'FAIL'} |")
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

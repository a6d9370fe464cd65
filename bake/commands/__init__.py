"""One module per lambda-bake subcommand; each defines ``register(subparsers)``.

``COMMANDS`` names every subcommand's module and its one-line help, so the
command line imports only the module of the command it runs (see ``bake.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "bake": Command("bake.commands.bake_cmd", "fold gates into a base model and write a checkpoint (or a sweep)"),
    "inspect": Command("bake.commands.inspect_cmd", "show gate statistics and what each threshold gives"),
    "demo": Command("bake.commands.demo_cmd", "offline end-to-end demo on a built-in model and the card's variants"),
    "verify": Command("bake.commands.verify_cmd", "check a baked model against the hooked reference"),
    "hooked": Command("bake.commands.hooked_cmd", "generate with the hooked reference model (no bake)"),
    "eval": Command("bake.commands.eval_cmd", "measure what a cut costs on text and QA sets, in every runtime"),
    "push": Command("bake.commands.push_cmd", "upload a baked model folder to the Hugging Face Hub"),
    "export": Command("bake.commands.export_cmd", "export a baked Qwen3 folder to ONNX with KV cache"),
    "generate": Command("bake.commands.generate_cmd",
                        "chat with an ONNX export (greedy, streamed; onnxruntime-genai or ONNX Runtime)"),
}

"""``lambda-bake generate``: chat with an ONNX export, streamed, through onnxruntime-genai or lambda-bake's loop."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bake.commands import COMMANDS
from bake.commands.output import say
from bake.errors import BakeError
from bake.io.paths import EXPORT_FOLDER, GGUF_FILE, MLX_FOLDER, path_arg
from export.options import ENGINES


def register(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help=COMMANDS["generate"].help,
        description=(
            "Render the prompt with the export's chat template (add_generation_prompt, thinking off), then "
            "decode greedily through the KV cache until the end-of-turn token or --max-new-tokens, printing "
            "the reply as it is produced. Runs in onnxruntime-genai's loop when it is installed (for the "
            "device), else in lambda-bake's own ONNX Runtime loop."
        ),
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", type=path_arg("folder", EXPORT_FOLDER), help="folder written by lambda-bake export")
    model.add_argument("--gguf", type=path_arg("file", GGUF_FILE), metavar="FILE",
                       help="GGUF file written by lambda-bake export --format gguf (or bake --gguf): runs in "
                            "llama.cpp (llama-cpp-python) on the CPU")
    model.add_argument("--mlx", type=path_arg("folder", MLX_FOLDER), metavar="DIR",
                       help="MLX folder written by lambda-bake export --format mlx (or bake --mlx): runs in mlx-lm "
                            "(Apple silicon's GPU, or the CPU of mlx's Linux build)")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", help="optional system message")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="upper bound on reply length (default 256)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="generation loop: genai (onnxruntime-genai), ort (lambda-bake's loop), auto (default: "
                        "onnxruntime-genai when it is installed for the device, else ort)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for ONNX Runtime (default: one per core)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="onnxruntime-genai on CUDA: capture the decoding step as a CUDA graph (default on)")
    p.set_defaults(func=run_generate)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_generate(args: argparse.Namespace) -> int:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    if args.gguf is not None or args.mlx is not None:
        runtime = "llama.cpp runs a GGUF on the CPU" if args.gguf is not None else \
            "mlx-lm runs an MLX folder on mlx's own device (Apple silicon's GPU, else the CPU)"
        given = [f for f, on in (("--device cuda", args.device == "cuda"), (f"--engine {args.engine}",
                                 args.engine != "auto"), ("--cuda-graph/--no-cuda-graph", args.cuda_graph is not None),
                                 ("--threads", args.threads is not None and args.mlx is not None)) if on]
        if given:
            raise BakeError(f"{', '.join(given)} only apply to an ONNX export (--onnx); {runtime}: drop them")
        return _generate_gguf(args, messages) if args.gguf is not None else _generate_mlx(args, messages)
    from export.install import require_onnxruntime

    require_onnxruntime()
    from export.runtime.chat import ChatTokenizer
    from export.runtime.engines import describe, open_engine, stream_reply

    lm = open_engine(args.onnx, args.engine, args.device, args.threads, args.cuda_graph is not False)
    chat = ChatTokenizer(args.onnx)
    say(f"running {args.onnx} with {describe(lm)}")
    for piece in stream_reply(lm, chat, messages, args.max_new_tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _generate_gguf(args: argparse.Namespace, messages: list[dict[str, str]]) -> int:
    from export.runtime.engines import stream_reply
    from export.runtime.llama_loop import GgufChat, LlamaCppLM

    lm = LlamaCppLM(args.gguf, n_ctx=4096, threads=args.threads)
    say(f"running {args.gguf} with llama.cpp (llama-cpp-python) on the CPU")
    for piece in stream_reply(lm, GgufChat(lm), messages, args.max_new_tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _generate_mlx(args: argparse.Namespace, messages: list[dict[str, str]]) -> int:
    from export.runtime.chat import ChatTokenizer
    from export.runtime.engines import stream_reply
    from export.runtime.mlx_loop import MlxLM

    lm = MlxLM(args.mlx)
    say(f"running {args.mlx} with mlx-lm on {lm.device}")
    for piece in stream_reply(lm, ChatTokenizer(args.mlx), messages, args.max_new_tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0

"""Run an export folder with ONNX Runtime: prefill, then greedy decoding one token at a time.

The KV cache never leaves the execution provider: ``present.*`` outputs are bound (IO binding) as
OrtValues on the device and fed back as the next step's ``past_key_values.*``. CUDA is used when
``onnxruntime-gpu`` provides it, otherwise the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bake.errors import ExportError
from bake.json_files import read_json

# The export folder format (written by export.exporter).
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
IO_FILE = "onnx_io.json"
FORMAT = "lambda-bake-onnx"
FORMAT_VERSION = 1
NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def read_export_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete export (onnx_io.json, model, external data); return onnx_io."""
    folder = Path(folder)
    io_path = folder / IO_FILE
    if not io_path.is_file():
        raise ExportError(f"{folder} is not a lambda-bake ONNX export (no {IO_FILE}); create one with lambda-bake export")
    io = read_json(io_path, ExportError, "export again")
    if io.get("format") != FORMAT:
        raise ExportError(f"{io_path} does not describe a {FORMAT} export; export again with lambda-bake export")
    model = folder / io["model_file"]
    if not model.is_file():
        raise ExportError(f"{folder}: {io['model_file']} is missing; copy the whole export folder or export again")
    data_name = io.get("external_data_file")
    if data_name:
        data = folder / data_name
        if not data.is_file():
            raise ExportError(
                f"{folder}: external-data file {data_name} is missing ({io['external_data_bytes']} bytes of "
                f"weights that {io['model_file']} refers to); copy it next to {io['model_file']} or export again"
            )
        if data.stat().st_size < io["external_data_bytes"]:
            raise ExportError(
                f"{data}: {data.stat().st_size} bytes, expected {io['external_data_bytes']}; the file is truncated: "
                "copy it again or export again"
            )
    return io


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when onnxruntime has the CUDA provider, else 'cpu'; 'cuda' must be available."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ExportError("--device cuda: this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu "
                          "(pip install 'lambda-bake[gpu]') or use --device cpu")
    if device not in ("cpu", "cuda"):
        raise ExportError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return device


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for 'cpu' or 'cuda' (CPU as the fallback)."""
    return (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]


def load_check_session(model: Path, device: str) -> ort.InferenceSession:
    """Load an export the cheap way, to check that it loads: ONNX Runtime parses and checks the graph,
    gives every node a kernel on ``device`` and maps the weights from the external-data file (it
    memory-maps page-aligned external tensors), but makes no copies of them: no pre-packing, no memory
    arena, and basic graph optimizations without constant folding (constant folding is where the CPU
    provider turns float16 weights into float32 copies). Nothing is run, so no weight is read.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(model), options, providers=providers_for(device),
                                disabled_optimizers=["ConstantFolding"])


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions counting real tokens from 0 (padding gets 1, as transformers' generate does)."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, pos).astype(np.int64)


class OnnxCausalLM:
    """An export folder loaded in ONNX Runtime, with greedy generation through the KV cache."""

    def __init__(self, folder: Path, device: str = "auto", threads: int | None = None):
        self.folder = Path(folder)
        self.io = read_export_folder(self.folder)
        self.device = pick_device(device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers_for(self.device)
        try:
            self.session = ort.InferenceSession(str(self.folder / self.io["model_file"]), options,
                                                providers=providers)
        except Exception as e:  # ORT raises its own exception types; name the folder and the fix
            raise ExportError(f"ONNX Runtime cannot load {self.folder}: {e}; export the model again") from e
        self.np_dtype = NP_DTYPES[self.io["dtype"]]
        self.past_names = [f"past_key_values.{i}.{p}" for i in range(self.io["num_layers"]) for p in ("key", "value")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self._tokenizer: Any = None

    def empty_past(self, batch: int) -> list[ort.OrtValue]:
        shape = (batch, self.io["num_key_value_heads"], 0, self.io["head_dim"])
        return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.np_dtype), self.device, 0)
                for _ in self.past_names]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray,
             past: list[ort.OrtValue]) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One forward pass: logits [batch, new, vocab] on the host, the new KV cache on the device."""
        limit = self.io.get("max_position_id")
        if limit is not None and positions.max(initial=0) > limit:
            raise ExportError(
                f"position {int(positions.max())} is past this fused export's RoPE tables (max_position_id {limit}, "
                "from max_position_embeddings); shorten the input or export without --fused (no position limit)"
            )
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, dtype=np.int64))
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of a whole (left-padded) prompt in one pass, from an empty cache."""
        return self.step(input_ids, attention_mask, position_ids(attention_mask), self.empty_past(len(input_ids)))[0]

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int,
               eos_ids: set[int], pad_id: int) -> np.ndarray:
        """Greedy decoding like transformers' generate(do_sample=False): [batch, new] ids; rows
        that finished early are filled with ``pad_id``; stops when every row has emitted an eos."""
        mask = np.asarray(attention_mask, dtype=np.int64)
        positions = position_ids(mask)
        logits, past = self.step(input_ids, mask, positions, self.empty_past(len(input_ids)))
        done = np.zeros(len(input_ids), dtype=bool)
        new: list[np.ndarray] = []
        while len(new) < max_new_tokens:
            token = np.where(done, pad_id, logits[:, -1].argmax(-1)).astype(np.int64)
            new.append(token)
            done |= np.isin(token, list(eos_ids))
            if done.all() or len(new) == max_new_tokens:
                break
            mask = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits, past = self.step(token[:, None], mask, positions, past)
        return np.stack(new, axis=1) if new else np.zeros((len(input_ids), 0), np.int64)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .chat_tokenizer import ChatTokenizer  # no transformers: generating imports no Hub client

            self._tokenizer = ChatTokenizer(self.folder)
        return self._tokenizer

    def special_ids(self) -> tuple[set[int], int]:
        """(eos ids, pad id) from generation_config.json, else config.json, else the tokenizer."""
        eos: set[int] = set()
        pad = None
        for name in ("generation_config.json", "config.json"):
            path = self.folder / name
            if path.is_file():
                cfg = read_json(path, ExportError, "export again")
                value = cfg.get("eos_token_id")
                eos |= set(value if isinstance(value, list) else [] if value is None else [value])
                pad = cfg.get("pad_token_id") if pad is None else pad
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        if not eos:
            raise ExportError(f"{self.folder}: no eos_token_id in generation_config.json, config.json or tokenizer")
        return eos, int(pad if pad is not None else min(eos))

    def generate(self, prompt_messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        """Chat-templated prompt (add_generation_prompt, thinking off) -> greedy reply text, up to eos."""
        text = self.tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)
        ids = np.array([self.tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=np.int64)
        eos, pad = self.special_ids()
        new = self.greedy(ids, np.ones_like(ids), max_new_tokens, eos, pad)[0].tolist()
        return self.tokenizer.decode([t for t in new if t not in eos], skip_special_tokens=True)

"""Run an export folder with ONNX Runtime: logits for verify, and greedy decoding through the KV cache.

Two cache conventions, read from onnx_io.json:

- ``concat`` (the portable graph): ``present.*`` is past plus the new keys; it is fed back as the next
  step's ``past_key_values.*``. The graph returns logits for every position and takes ``position_ids``.
- ``shared-buffer`` (the ONNX Runtime graph): one buffer per layer of length ``capacity`` is bound as
  both ``past_key_values.*`` and ``present.*``, and GroupQueryAttention writes the new keys in place at
  each row's length. Rows are right-padded; the graph returns logits of each row's last real token.

The cache never leaves the execution provider (IO binding; on CUDA the buffers live on the GPU).
CUDA is used when ``onnxruntime-gpu`` provides it, otherwise the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bake.errors import ExportError
from bake.io.resident import drop_file_pages
from export.install import pick_device, providers_for
from export.onnx.folder import read_export_folder

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bfloat16: its raw bits
ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16 (generate does not import onnx)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options for an export: ``threads`` intra-op threads (None: one per core)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return options


@dataclass
class KVCache:
    """Per-row token counts and the cache tensors of one batch (see the module docstring)."""

    lengths: np.ndarray  # [batch] tokens held per row
    values: list[ort.OrtValue]  # concat: last present.* (empty at start); shared: the buffers
    capacity: int | None = None  # shared: buffer length
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # concat: mask so far


class OnnxCausalLM:
    """An export folder loaded in ONNX Runtime, with greedy generation through the KV cache."""

    def __init__(self, folder: Path, device: str = "auto", threads: int | None = None,
                 graph: tuple[bytes, dict[str, np.ndarray]] | None = None, all_logits: bool = False):
        """``graph``: run this serialized model instead of the folder's ``model.onnx`` (same inputs and outputs), with
        the arrays of its externally stored initializers by name (verify runs a variant of the shipped graph).
        ``all_logits``: a last-token graph runs as its variant with logits at every position (``score_batch``)."""
        self.folder = Path(folder)
        self.io = read_export_folder(self.folder)
        if all_logits and self.io.get("logits") == "last":
            import onnx

            from export.onnx.variants import all_position_logits, with_external

            model = onnx.load(str(self.folder / self.io["model_file"]), load_external_data=False)
            graph = with_external(self.folder, all_position_logits(model))
            self.io = self.io | {"logits": "all"}
        self.device = pick_device(device)
        if self.io.get("target") == "cuda" and self.device == "cpu":
            raise ExportError(f"{self.folder} is a --target cuda export: its fused q/k norm runs only on CUDA; run it "
                              "on a GPU, or export again with --target cpu for the CPU")
        providers = providers_for(self.device)
        options = session_options(threads)
        source: str | bytes = str(self.folder / self.io["model_file"])
        if graph is not None:
            source, external = graph
            if external:
                names = list(external)
                self._external = [ort.OrtValue.ortvalue_from_numpy(external[n]) for n in names]  # kept alive here
                options.add_external_initializers(names, self._external)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as e:  # ORT raises its own exception types; name the folder and the fix
            raise ExportError(f"ONNX Runtime cannot load {self.folder}: {e}; export the model again") from e
        if graph is None:  # the initializers it kept mapped: their pages read while pre-packing leave the RSS
            drop_file_pages(p for p in self.folder.iterdir() if p.is_file())
        self.np_dtype = NP_DTYPES[self.io["dtype"]]
        self.shared_kv = self.io.get("kv_cache", "concat") == "shared-buffer"
        self.last_logits_only = self.io.get("logits", "all") == "last"
        layers = self.io["num_layers"]
        self.past_names = [f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]

    # ---- one forward pass ---------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``capacity`` tokens each."""
        shape = [batch, self.io["num_key_value_heads"], capacity if self.shared_kv else 0, self.io["head_dim"]]
        values = [self._zeros(shape) for _ in self.past_names]
        return KVCache(np.zeros(batch, np.int64), values, capacity if self.shared_kv else None,
                       np.zeros((batch, 0), np.int64))

    def _zeros(self, shape: list[int]) -> ort.OrtValue:
        """A zero-filled cache buffer on the device, in the model dtype, as onnxruntime-genai's cache is (one array
        each: on the CPU the OrtValue is the array). numpy has no bfloat16: its buffer is filled from raw bits."""
        if self.io["dtype"] == "bfloat16":
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, ONNX_BFLOAT16, self.device, 0)
            value.update_inplace(np.zeros(shape, np.uint16))
            return value
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.np_dtype), self.device, 0)

    def forward(self, tokens: np.ndarray, valid: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed ``tokens`` [batch, S], right-padded (row b holds ``valid[b]`` real tokens), and extend the cache.

        Returns float32 logits: [batch, S, vocab] for a graph with logits at every position, else
        [batch, 1, vocab] for each row's last real token.
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        batch, seq = tokens.shape
        valid = np.asarray(valid, dtype=np.int64)
        new = (np.arange(seq)[None, :] < valid[:, None]).astype(np.int64)
        self._check_positions(cache.lengths + valid)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", tokens)
        binding.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        if self.shared_kv:
            total = cache.lengths + valid
            width = seq if not cache.lengths.any() else int(total.max())
            if width > cache.capacity:
                raise ExportError(f"{width} tokens do not fit the KV cache of {cache.capacity}; start a larger cache")
            mask = (np.arange(width)[None, :] < total[:, None]).astype(np.int64)
            for name, present, value in zip(self.past_names, self.present_names, cache.values):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(present, value)
        else:
            mask = np.concatenate([cache.mask, new], axis=1)
            positions = np.where(new == 1, cache.lengths[:, None] + np.arange(seq)[None, :], 1)
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, dtype=np.int64))
            for name, value in zip(self.past_names, cache.values):
                binding.bind_ortvalue_input(name, value)
            for name in self.present_names:
                binding.bind_output(name, self.device, 0)
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask))
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not self.shared_kv:
            cache.values, cache.mask = list(outputs[1:]), mask
        cache.lengths = cache.lengths + valid
        return outputs[0].numpy().astype(np.float32, copy=False)

    def _check_positions(self, totals: np.ndarray) -> None:
        limit = self.io.get("max_position_id")
        if limit is not None and totals.max(initial=0) - 1 > limit:
            raise ExportError(f"position {int(totals.max()) - 1} is past this export's RoPE tables (max_position_id "
                              f"{limit}, from max_position_embeddings); shorten the input")

    def last_rows(self, logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[batch, vocab]: each row's logits at its last real token."""
        if self.last_logits_only:
            return logits[:, 0]
        return logits[np.arange(len(valid)), np.asarray(valid) - 1]

    def score_batch(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """[len(seq), vocab] float32 logits at every position of each sequence, all in one right-padded pass (a graph
        with logits at every position: the portable one, or any loaded with ``all_logits``)."""
        if self.last_logits_only:
            raise ExportError("score_batch needs logits at every position: load the export with all_logits=True")
        lengths = np.array([len(s) for s in seqs], np.int64)
        tokens = np.zeros((len(seqs), int(lengths.max())), np.int64)
        for b, s in enumerate(seqs):
            tokens[b, :len(s)] = s
        logits = self.forward(tokens, lengths, self.new_cache(len(seqs), tokens.shape[1]))
        return [logits[b, :n] for b, n in enumerate(lengths)]

    # ---- what verify and generate use ---------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[S, vocab] float32 logits of one prompt at every position (``score`` of one sequence)."""
        return self.score([ids])[0]

    def score(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """[len(seq), vocab] float32 logits at every position of each sequence.

        A graph with logits at every position runs each sequence in one pass; a last-token graph is ``score_from``
        every sequence's first position (one token of prefill, then a step per position, all rows as one batch).
        """
        seqs = [list(s) for s in seqs]
        if not self.last_logits_only:
            return [self.forward(np.asarray([s], np.int64), np.array([len(s)]), self.new_cache(1, len(s)))[0]
                    for s in seqs]
        return [logits for _, logits in self.score_from(seqs, [0] * len(seqs))]

    def score_from(self, seqs: Sequence[Sequence[int]], firsts: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        """Each sequence's logits from position ``firsts[i]`` on (at least): (first position, [len - first, vocab]).

        A graph with logits at every position scores every position (``score``: first 0). A last-token graph gives
        exactly the logits a deployment reads, the way it reads them: one batched prefill of every row up to and
        including its position ``firsts[i]`` (right-padded: the graph's prefill path, each row's last real token),
        then the rest of each row stepped one token at a time through the KV cache, all rows as one batch (a row past
        its end is fed its last token again and those logits are dropped: rows never see each other). For verify's
        sequences, a prompt and the tokens after it, that is one prefill and a step per continuation token, not a
        step per position of the prompt.
        """
        if not self.last_logits_only:
            return [(0, logits) for logits in self.score(seqs)]
        seqs = [list(s) for s in seqs]
        lengths = np.array([len(s) for s in seqs], np.int64)
        prefill = np.minimum(np.asarray(firsts, np.int64), lengths - 1) + 1
        if (prefill < 1).any():
            raise ExportError("score_from needs at least one token in every sequence")
        batch, steps = len(seqs), int((lengths - prefill).max())
        tokens = np.zeros((batch, int(prefill.max())), np.int64)
        for b, s in enumerate(seqs):
            tokens[b, :prefill[b]] = s[:prefill[b]]
        out = [np.empty((n - k + 1, int(self.io["vocab_size"])), np.float32) for n, k in zip(lengths, prefill)]
        cache = self.new_cache(batch, int((prefill + steps).max()))
        last = self.forward(tokens, prefill, cache)[:, 0]
        for b in range(batch):
            out[b][0] = last[b]
        ones = np.ones(batch, np.int64)
        for t in range(steps):
            at = np.minimum(prefill + t, lengths - 1)
            step = self.forward(np.array([[s[k]] for s, k in zip(seqs, at)], np.int64), ones, cache)[:, 0]
            for b in np.flatnonzero(prefill + t < lengths):
                out[b][t + 1] = step[b]
        return [(int(k) - 1, o) for k, o in zip(prefill, out)]

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: set[int],
               pad_id: int) -> Iterator[np.ndarray]:
        """Greedy decoding of a batch of prompts (right-padded inside): yields [batch] next tokens per step.

        Rows that finished (emitted an eos) get ``pad_id``; stops when every row has finished.
        """
        batch, longest = len(prompts), max(len(p) for p in prompts)
        tokens = np.full((batch, longest), pad_id, np.int64)
        for b, p in enumerate(prompts):
            tokens[b, :len(p)] = p
        valid = np.array([len(p) for p in prompts], np.int64)
        cache = self.new_cache(batch, longest + max_new_tokens)
        logits = self.last_rows(self.forward(tokens, valid, cache), valid)
        done = np.zeros(batch, dtype=bool)
        ones = np.ones(batch, np.int64)
        for step in range(max_new_tokens):
            token = np.where(done, pad_id, logits.argmax(-1)).astype(np.int64)
            yield token
            done |= np.isin(token, list(eos_ids))
            if done.all() or step + 1 == max_new_tokens:
                return
            logits = self.last_rows(self.forward(token[:, None], ones, cache), ones)

    def greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: set[int],
               pad_id: int) -> np.ndarray:
        """Greedy decoding like transformers' generate(do_sample=False): [batch, new] ids (see ``stream``)."""
        steps = list(self.stream(prompts, max_new_tokens, eos_ids, pad_id))
        return np.stack(steps, axis=1) if steps else np.zeros((len(prompts), 0), np.int64)

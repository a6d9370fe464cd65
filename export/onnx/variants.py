"""Variants of a shipped export's graph, run in place of it without writing anything: the same nodes and weights
(read from the export's own data file), one thing changed.

- ``all_position_logits``: the ONNX Runtime graph (``graph_ort``) computes logits of each row's last real token
  only; scoring a text needs them at every position, so the last-token gather is taken out and the lm_head runs
  on every row: logits [batch, sequence, vocab]. Everything before the lm_head is the shipped graph's.
- ``with_external``: a graph proto serialized, with its externally stored weights as memory-mapped arrays, for
  ``OnnxCausalLM(graph=...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bake.errors import ExportError

ROWS = "last/rows/out0"  # graph_ort.last_token: the final norm's output as [batch * S, hidden]
LAST = "last/hidden"  # ... and the Gather of each row's last real token from it
HEAD_OUT = "lm_head/Unsqueeze"  # [batch, vocab] -> logits [batch, 1, vocab]


def all_position_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (the ORT graph, logits of the last token) with logits at every position, in place; returned."""
    g = model.graph
    nodes = {n.name: n for n in g.node}
    if LAST not in nodes or HEAD_OUT not in nodes:
        raise ExportError("this graph has no last-token gather to take out (not a lambda-bake cpu/cuda graph of this "
                          "version); export it again")
    gathered = nodes[LAST].output[0]
    for n in g.node:
        n.input[:] = [ROWS if i == gathered else i for i in n.input]
    g.node.remove(nodes[LAST])
    head = nodes[HEAD_OUT]
    ids_shape = helper.make_node("Shape", ["input_ids"], ["all_logits/ids_shape"], name="all_logits/ids_shape")
    vocab = onnx.numpy_helper.from_array(np.array([g.output[0].type.tensor_type.shape.dim[2].dim_value], np.int64),
                                         "all_logits/vocab")
    shape = helper.make_node("Concat", ["all_logits/ids_shape", "all_logits/vocab"], ["all_logits/shape"],
                             name="all_logits/shape", axis=0)
    reshape = helper.make_node("Reshape", [head.input[0], "all_logits/shape"], ["logits"], name="all_logits/Reshape")
    at = list(g.node).index(head)
    g.node.remove(head)
    for k, node in enumerate((ids_shape, shape, reshape)):
        g.node.insert(at + k, node)
    g.initializer.append(vocab)
    g.output[0].type.tensor_type.shape.dim[1].ClearField("dim_value")
    g.output[0].type.tensor_type.shape.dim[1].dim_param = "sequence"
    live = _live_nodes(g)
    kept = [n for k, n in enumerate(g.node) if k in live]
    del g.node[:]
    g.node.extend(kept)
    read = {i for n in g.node for i in n.input}
    used = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(used)
    return model


def _live_nodes(g: onnx.GraphProto) -> set[int]:
    """Indices of the nodes some output of which reaches a graph output (the nodes are in topological order); the
    others (the last-token index computation, once nothing is gathered) are dead."""
    needed = {o.name for o in g.output}
    live: set[int] = set()
    for k in range(len(g.node) - 1, -1, -1):
        n = g.node[k]
        if any(o in needed for o in n.output if o):
            needed.update(i for i in n.input if i)
            live.add(k)
    return live


def with_external(folder: Path, model: onnx.ModelProto) -> tuple[bytes, dict[str, np.ndarray]]:
    """``model`` serialized, and its externally stored initializers memory-mapped from ``folder``'s data file."""
    external = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            external[t.name] = np.memmap(Path(folder) / info["location"],
                                         dtype=helper.tensor_dtype_to_np_dtype(t.data_type), mode="r",
                                         offset=int(info.get("offset", 0)), shape=tuple(t.dims))
    return model.SerializeToString(), external


def all_logits_folder(folder: Path, out: Path) -> Path:
    """A copy of the export in ``folder`` whose graph has logits at every position, in the new folder ``out``: the
    variant ``model.onnx`` and links to every other file (the weights too), for tools that load a folder, such as
    lm-evaluation-harness's onnxruntime-genai backend (it reads every position's logits from one pass)."""
    from export.onnx.folder import read_export_folder

    folder, out = Path(folder).absolute(), Path(out)
    io = read_export_folder(folder)
    out.mkdir(parents=True)
    for f in folder.iterdir():
        if f.name != io["model_file"]:
            (out / f.name).symlink_to(f)
    model = onnx.load(str(folder / io["model_file"]), load_external_data=False)
    if io.get("logits") == "last":
        all_position_logits(model)
    onnx.save(model, str(out / io["model_file"]))
    return out

"""The weights of an ONNX export as its graph stores them: every initializer, and the nodes that read it.

Read with the ``onnx`` protobuf only (no ONNX Runtime session), so a graph for any execution
provider can be read on any machine. Inline data is viewed in place; external data is read from
its file by offset and length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bake.errors import ExportError


@dataclass(frozen=True)
class Use:
    """One node input that reads an initializer."""

    node: str
    op_type: str
    index: int
    inputs: tuple[str, ...]
    attrs: dict[str, Any]


class ExportGraph:
    """``model.onnx`` of an export folder, loaded without its external data."""

    def __init__(self, model_path: Path):
        self.path = Path(model_path)
        try:
            self.model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # protobuf decode errors have no common base class
            raise ExportError(f"{self.path} cannot be read as an ONNX model ({e}); export it again") from e
        self.initializers = {t.name: t for t in self.model.graph.initializer}
        self.uses: dict[str, list[Use]] = {name: [] for name in self.initializers}
        for node in self.model.graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            for i, name in enumerate(node.input):
                if name in self.uses:
                    self.uses[name].append(Use(node.name, node.op_type, i, tuple(node.input), attrs))

    def names(self) -> list[str]:
        return list(self.initializers)

    def dtype_name(self, name: str) -> str:
        """numpy's name for the stored type: float32, float16, uint8, int64, ..."""
        return helper.tensor_dtype_to_np_dtype(self.initializers[name].data_type).name

    def tensor(self, name: str) -> np.ndarray:
        """The initializer's values, shaped as stored (float16 stays float16; inline data is a read-only view)."""
        try:
            return self._tensor(name)
        except (KeyError, ValueError, TypeError, OverflowError) as e:  # a protobuf that parses but does not hold
            raise ExportError(f"{self.path}: initializer {name} cannot be read ({type(e).__name__}: {e}); the export is "
                              "damaged: export again") from e

    def _tensor(self, name: str) -> np.ndarray:
        t = self.initializers[name]
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        shape = tuple(t.dims)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            file = self.path.parent / info["location"]
            count = int(np.prod(shape, dtype=np.int64))
            array = np.fromfile(file, dtype=dtype, count=count, offset=int(info.get("offset", 0)))
            if array.size != count:
                raise ExportError(f"{file}: initializer {name} is cut short; the export is truncated: export again")
        elif t.HasField("raw_data"):
            array = np.frombuffer(t.raw_data, dtype=dtype)
        else:
            array = numpy_helper.to_array(t)
        return array.reshape(shape)

"""The export and generate option values, in a module that imports nothing heavy (the CLI reads them
to build its parser before any model library is loaded)."""

TARGETS = ("portable", "cpu", "cuda")
DTYPES = ("float32", "float16")
LAYOUTS = ("as-is", "ragged")
QUANTIZATIONS = ("none", "int4", "int8")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "genai", "ort")
# export's graph options and their defaults (bake --onnx takes the same, named --onnx-*)
GRAPH_DEFAULTS = {"target": "cpu", "dtype": "float32", "layout": "as-is", "quantize": "none",
                  "cuda_graph": False}

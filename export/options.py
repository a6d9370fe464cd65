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
# export.gguf.writer writes these: the first five with gguf-py, the K-quants through llama.cpp's quantizer
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m")

"""The export and generate option values, in a module that imports nothing heavy (the CLI reads them
to build its parser before any model library is loaded)."""

TARGETS = ("portable", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")  # bfloat16: --target cuda only (no CPU kernels)
LAYOUTS = ("as-is", "ragged")
QUANTIZATIONS = ("none", "int4", "int8")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "genai", "ort")
# auto: a quantized cpu/cuda export looks tokens up in int codes (the tied table shared with lm_head); float keeps
# the export-dtype table. quantized: insist on the codes
EMBEDDINGS = ("auto", "quantized", "float")
# export's graph options and their defaults (bake --onnx takes the same, named --onnx-*)
GRAPH_DEFAULTS = {"target": "cpu", "dtype": "float32", "layout": "as-is", "quantize": "none",
                  "cuda_graph": False, "width_multiple": None, "embedding": "auto", "quant_scheme": "symmetric"}
QUANT_SCHEMES = ("symmetric", "asymmetric")  # export.onnx.quantize's
# Each layer's MLP width is rounded up to this multiple with zero neurons (exact). CUDA: ONNX Runtime's fast
# MatMulNBits kernels need N and K divisible by 8 (8-bit: K by the block size too), else the weight is dequantized
# and multiplied by cuBLAS on every call; 64 also gives cuBLAS aligned fp16 GEMMs. CPU and portable: no rounding.
WIDTH_MULTIPLES = {"cuda": 64}


def width_multiple_for(target: str, given: int | None = None) -> int:
    """The MLP width multiple of an export: ``given``, else the target's default (64 for cuda, 1 elsewhere)."""
    return given if given is not None else WIDTH_MULTIPLES.get(target, 1)
# export.gguf.writer writes these: the first five with gguf-py, the K-quants through llama.cpp's quantizer
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m")

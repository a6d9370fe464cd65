"""The weight-level proof: a bake as named tensors, an export's weights as its graph stores them, the unpacker of
MatMulNBits codes, and the check that every export tensor is the bake's, rounded or quantized as it claims.

Part of ``bake.verify``: may import the wings below it and ``export.onnx``'s folder format; never torch."""

"""vLLM's plugin hook (the ``vllm.general_plugins`` entry point ``lambda_bake``): serve ragged bakes.

vLLM calls ``register`` in every process it starts (the server, the engine core, each worker). It points the
``Qwen3ForCausalLM`` architecture at ``export.runtime.vllm_qwen3`` by name, so the model module is imported only
where a model is built. Only vLLM imports this module.
"""

from __future__ import annotations

ARCHITECTURE = "Qwen3ForCausalLM"
MODEL_CLASS = "export.runtime.vllm_qwen3:RaggedQwen3ForCausalLM"
# The vLLM releases whose Qwen3 the model class follows (its __init__ is copied from vLLM 0.32's)
TESTED_VLLM = ">=0.32,<0.33"


def register() -> None:
    """Register the per-layer Qwen3 (idempotent: vLLM may call it more than once per process); warn on a vLLM whose
    Qwen3 it was not tested against."""
    import vllm
    from packaging.specifiers import SpecifierSet
    from vllm import ModelRegistry
    from vllm.logger import init_logger

    if vllm.__version__.split("+")[0] not in SpecifierSet(TESTED_VLLM):
        init_logger(__name__).warning(
            "lambda-bake's Qwen3 for ragged bakes follows vLLM %s and this is vLLM %s; if a ragged bake fails to "
            "load, install a tested vLLM (pip install 'lambda-bake[vllm]')", TESTED_VLLM, vllm.__version__)
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)

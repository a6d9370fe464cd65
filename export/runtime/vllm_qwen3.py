"""vLLM's Qwen3, each decoder layer built from its own ``per_layer_config``: it serves a ragged bake.

Only vLLM imports this module (through ``export.runtime.vllm_plugin``, registered as the ``Qwen3ForCausalLM``
architecture). vLLM's own Qwen3 (0.32) sizes every MLP from the global ``intermediate_size``, which transformers
refuses to give for a config whose layers differ (``AmbiguousGlobalPerLayerAttributeError``). Here each decoder layer
gets its layer's config, as vLLM's Gemma 4 does; everything else is vLLM's Qwen3 class itself (quantization,
pipeline parallelism, LoRA, Eagle). A config without ``per_layer_config`` builds exactly vLLM's modules.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3Model
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index, maybe_prefix


def layer_config(config: Any, prefix: str) -> Any:
    """The config of the decoder layer at ``prefix`` (``model.layers.<i>``): its ``per_layer_config`` view when the
    layers differ (checked for what vLLM's kernels need), else ``config`` itself."""
    if not getattr(config, "is_heterogeneous", False):
        return config
    index = extract_layer_index(prefix)
    own = config.per_layer_config[index]
    width, tp = own.intermediate_size, get_tensor_model_parallel_world_size()
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"layer {index}'s MLP width (per_layer_config intermediate_size) is {width!r}; vLLM needs a "
                         "positive whole number (lambda-bake writes one block of zero neurons for a layer with none)")
    if width % tp:
        raise ValueError(f"layer {index}'s MLP width {width} is not a multiple of tensor_parallel_size {tp}, so it "
                         "cannot be split across the GPUs; serve with a tensor-parallel size that divides every "
                         "layer's width (the model card lists them), or bake with --pad-multiple 64")
    return own


class RaggedQwen3DecoderLayer(Qwen3DecoderLayer):
    """vLLM's Qwen3 decoder layer, built from its own layer's config."""

    def __init__(self, config: Any, *args: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(layer_config(config, prefix), *args, prefix=prefix, **kwargs)


class RaggedQwen3Model(Qwen3Model):
    decoder_layer_type = RaggedQwen3DecoderLayer


class RaggedQwen3ForCausalLM(Qwen3ForCausalLM):
    """vLLM's ``Qwen3ForCausalLM`` over ``RaggedQwen3Model``; its ``__init__`` is vLLM 0.32's, naming that model."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super(Qwen3ForCausalLM, self).__init__()  # nn.Module's: the body below is Qwen3ForCausalLM.__init__
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.config = config
        self.vllm_config = vllm_config
        self.quant_config = quant_config
        self.model = RaggedQwen3Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=quant_config,
                                          prefix=maybe_prefix(prefix, "lm_head"))
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

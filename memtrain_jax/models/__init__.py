"""One pure-functional decoder for Llama, Qwen2/2.5 and Qwen3, with HF and GGUF loading."""

from memtrain_jax.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from memtrain_jax.models.decoder import (cache_capacity, forward, forward_hidden, forward_with_cache,
                                         init_cache, logits_from_hidden)
from memtrain_jax.models.loading import (BUNDLED_MODEL, bundled_gguf_path, checkpoint_kind,
                                         load_pretrained, save_pretrained)
from memtrain_jax.models.params import (compute_params, init_params, param_logical_axes,
                                        param_shapes, stack_layers, unembedding, unstack_layers)
from memtrain_jax.models.tokenizer import load_tokenizer

__all__ = [
    "BUNDLED_MODEL", "ModelConfig", "SUPPORTED_ARCHITECTURES", "bundled_gguf_path", "cache_capacity",
    "checkpoint_kind", "compute_params", "forward", "forward_hidden", "forward_with_cache",
    "init_cache", "init_params", "load_pretrained", "load_tokenizer", "logits_from_hidden",
    "param_logical_axes", "param_shapes", "save_pretrained", "stack_layers", "unembedding",
    "unstack_layers",
]

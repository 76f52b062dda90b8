"""memtrain_jax: train the context memory of LLM agents with GRPO, in JAX."""

__version__ = "0.1.0"

"""Rollout sampling: bucketed prefill, a donated-cache decode loop, prefix sharing, log-probs."""

from memtrain_jax.sampling.compiles import CompileCounter
from memtrain_jax.sampling.logits import SamplingParams, choose_tokens, truncate_logits
from memtrain_jax.sampling.sampler import SampleBatch, Sampler, SamplerConfig

__all__ = ["CompileCounter", "SampleBatch", "Sampler", "SamplerConfig", "SamplingParams",
           "choose_tokens", "truncate_logits"]

"""Sharded forward on 8 CPU devices, export to `transformers`, and bad-input errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax import models, sharding
from memtrain_jax.models.safetensors_io import SafetensorsFile, save_safetensors
from tests.hf_fixtures import hf_logits, make_tiny_checkpoint

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return make_tiny_checkpoint("sharded", str(tmp_path_factory.mktemp("sharded")))


def _tokens(vocab, batch, length, seed=0):
  return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).astype(np.int32)


@pytest.mark.parametrize("rules", ["train", "rollout"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_single_device(tiny_dir, rules, scan_layers):
  assert jax.device_count() == 8
  config, params = models.load_pretrained(tiny_dir)
  tokens = _tokens(config.vocab_size, 4, 24)
  single = np.asarray(jax.jit(lambda p, t: models.forward(config, p, t))(params, jnp.asarray(tokens)))

  mesh = sharding.make_mesh((2, 2, 2))
  cfg_s, params_s = models.load_pretrained(tiny_dir, mesh=mesh, rules=rules, scan_layers=scan_layers)
  expected = sharding.param_shardings(cfg_s, mesh, rules)
  for leaf, want in zip(jax.tree.leaves(params_s), jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
  wq = params_s["layers"]["wq"] if scan_layers else params_s["layers"][0]["wq"]
  # Each device holds a shard, not the whole tensor: tensor-parallel over heads (and fsdp on embed
  # under the training rules).
  shard_shape = wq.addressable_shards[0].data.shape
  assert shard_shape[-3] == wq.shape[-3] // 2  # wq [q_heads, head_dim, embed]
  assert shard_shape[-1] == (wq.shape[-1] // 2 if rules == "train" else wq.shape[-1])

  batch_sharding = sharding.batch_sharding(mesh, rules)
  tok_s = jax.device_put(jnp.asarray(tokens), batch_sharding)
  fwd = jax.jit(lambda p, t: models.forward(cfg_s, p, t),
                out_shardings=sharding.batch_sharding(mesh, rules, ndim=3))
  out = np.asarray(fwd(params_s, tok_s))
  np.testing.assert_array_less(np.abs(out - single).max(), 1e-5)


def test_mesh_shape_fill_and_errors():
  assert sharding.mesh_shape_from_config((1, -1, 2), 8) == (1, 4, 2)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.mesh_shape_from_config((3, -1, 1), 8)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape_from_config((-1, -1, 1), 8)


def test_rules_reject_two_dims_on_one_mesh_axis():
  bad = (("embed", "tensor"), ("mlp", "tensor"))
  with pytest.raises(ValueError, match="both map to mesh axis 'tensor'"):
    sharding.logical_to_spec(("embed", "mlp"), bad)


def test_mesh_that_does_not_divide_heads(tmp_path):
  path = make_tiny_checkpoint("qwen2", str(tmp_path / "q"))  # 6 q heads, 2 kv heads
  mesh = sharding.make_mesh((1, 2, 4))
  with pytest.raises(ValueError, match=r"not divisible by mesh axes tensor of size 4.*heads"):
    models.load_pretrained(path, mesh=mesh)


def test_export_then_transformers_load_gives_identical_logits(tiny_dir, tmp_path):
  from transformers import PreTrainedTokenizerFast
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

  config, params = models.load_pretrained(tiny_dir, scan_layers=True)
  vocab = {f"w{i}": i for i in range(config.vocab_size)}
  backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="w0"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", pad_token="w2")
  out = models.save_pretrained(config, params, tokenizer, str(tmp_path / "export"))
  tokens = _tokens(config.vocab_size, 2, 16)
  before = hf_logits(tiny_dir, tokens)
  after = hf_logits(out, tokens)
  np.testing.assert_array_equal(before, after)
  ours = np.asarray(models.forward(config, params, jnp.asarray(tokens)))
  np.testing.assert_array_less(np.abs(ours - after).max(), 1e-4)
  assert os.path.exists(os.path.join(out, "tokenizer.json"))


def test_path_that_is_neither(tmp_path):
  junk = tmp_path / "notes.txt"
  junk.write_text("hello")
  with pytest.raises(ValueError, match="neither a Hugging Face directory nor a GGUF"):
    models.load_pretrained(str(junk))
  with pytest.raises(ValueError, match="without config.json"):
    models.load_pretrained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    models.load_pretrained(str(tmp_path / "missing"))


def test_unsupported_architecture_lists_supported(tiny_dir, tmp_path):
  bad = shutil.copytree(tiny_dir, tmp_path / "gpt2")
  cfg = json.load(open(bad / "config.json"))
  cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
  json.dump(cfg, open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM.*Qwen2ForCausalLM.*Qwen3ForCausalLM"):
    models.load_pretrained(str(bad))


def test_missing_tensor_is_named(tiny_dir, tmp_path):
  bad = shutil.copytree(tiny_dir, tmp_path / "missing")
  f = SafetensorsFile(str(bad / "model.safetensors"))
  kept = [(k, np.array(f.get(k))) for k in f.keys() if k != "model.layers.1.mlp.up_proj.weight"]
  del f
  save_safetensors(str(bad / "model.safetensors"), kept)
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    models.load_pretrained(str(bad))


def test_misshaped_tensor_is_named(tiny_dir, tmp_path):
  bad = shutil.copytree(tiny_dir, tmp_path / "shape")
  cfg = json.load(open(bad / "config.json"))
  cfg["intermediate_size"] = 100
  json.dump(cfg, open(bad / "config.json", "w"))
  with pytest.raises(ValueError, match=r"layers\.0\.w_gate has shape \(128, 64\).*expected \(100, 64\)"):
    models.load_pretrained(str(bad))


def test_bad_tokens_rejected(tiny_dir):
  config, params = models.load_pretrained(tiny_dir)
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    models.forward(config, params, jnp.zeros((5,), jnp.int32))

"""A tiny training loop with checkpoints, the shape of the real one, for resume and signal tests.

Run as a script (the subprocess tests) or call `train` (the in-process tests). Each step draws its
batch from the data position and its advantages' noise from an RNG key carried across steps, so a
resume that lost either would diverge from the uninterrupted run.

  python tests/train/tiny_train_script.py --workdir DIR --num_steps 8 --every 2 --out params.npz
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

# Runnable as a file: make `tests.` and `memtrain_jax` importable from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from memtrain_jax import checkpoint, sharding  # noqa: E402
from memtrain_jax.models.params import init_params  # noqa: E402
from memtrain_jax.rl import train_step as ts  # noqa: E402
from memtrain_jax.rl.loss import LossConfig  # noqa: E402
from tests.train.train_fixtures import TINY_MODEL, optim_config, synthetic_packed  # noqa: E402


def _batch(data_position: int, key: jax.Array, mesh):
  packed = synthetic_packed(seed=100 + data_position, micro_batch_size=2, num_rows=6,
                            num_micro_batches_multiple=3)
  noise = np.asarray(jax.random.normal(key, packed.advantages.shape), np.float32)
  packed.advantages = packed.advantages + 0.1 * noise * packed.loss_mask
  return ts.shard_batch(packed, mesh)


def train(workdir: str, num_steps: int, every: int, keep: int = 2, step_sleep: float = 0.0,
          async_save: bool = True, handle_signals: bool = True, stop_after: int | None = None):
  """Trains (resuming from `workdir` if it holds a checkpoint); returns (params, last step).

  `stop_after` simulates a stop request after that many steps of this run.
  """
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  optimizer = ts.make_optimizer(optim_config())
  step_fn = ts.make_train_step(TINY_MODEL, LossConfig(kl_coef=0.0), optimizer, mesh, chunk_size=8)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=every, keep=keep,
                                 async_save=async_save, handle_signals=handle_signals)
  restored = ckpt.restore(ts.abstract_state(TINY_MODEL, optimizer, mesh))
  if restored is None:
    state = ts.create_train_state(TINY_MODEL, init_params(TINY_MODEL, seed=0), optimizer, mesh)
    done, key = 0, jax.random.key(42)
  else:
    state, extra = restored
    done, key = extra["step"], checkpoint.rng_from_json(extra["rng"])
    assert extra["data_position"] == done and extra["meta"]["model"] == "tiny"
  print(f"start {done}", flush=True)
  steps_this_run = 0
  while done < num_steps:
    key, batch_key = jax.random.split(key)
    state, _ = step_fn(state, _batch(done, batch_key, mesh))
    done += 1
    steps_this_run += 1
    extra = {"data_position": done, "rng": checkpoint.rng_to_json(key), "meta": {"model": "tiny"}}
    if stop_after is not None and steps_this_run == stop_after:
      ckpt.request_stop("test")
    if ckpt.step_end(done, state, extra):
      print(f"stopping at {done}", flush=True)
      break
    print(f"step {done}", flush=True)
    time.sleep(step_sleep)
  ckpt.save(done, state, {"data_position": done, "rng": checkpoint.rng_to_json(key),
                          "meta": {"model": "tiny"}})
  ckpt.close()
  return jax.device_get(state.params), done


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_steps", type=int, required=True)
  parser.add_argument("--every", type=int, default=2)
  parser.add_argument("--step_sleep", type=float, default=0.0)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  params, done = train(args.workdir, args.num_steps, args.every, step_sleep=args.step_sleep)
  if args.out:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(args.out, **flat)
  print(f"done {done}", flush=True)


if __name__ == "__main__":
  main()

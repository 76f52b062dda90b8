"""One process of the host-crossing test: 2 processes x 4 CPU devices (see test_host_crossings)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from memtrain_jax import sharding as shd  # noqa: E402


def main() -> int:
  assert shd.maybe_initialize_distributed()
  me, count = jax.process_index(), jax.process_count()
  mesh = shd.make_mesh((1, -1, 1))
  rows = shd.batch_sharding(mesh, ndim=2)
  out = {"process": me, "processes": count, "devices": jax.device_count(),
         "local_devices": jax.local_device_count()}

  # The same global array on every process.
  whole = np.arange(16 * 3, dtype=np.int32).reshape(16, 3)
  placed = shd.put_host_array(whole, rows)
  out["global_spans_processes"] = not placed.is_fully_addressable
  doubled = jax.jit(lambda x: x * 2, out_shardings=rows)(placed)
  out["global_roundtrip"] = bool(np.array_equal(shd.to_host(doubled), whole * 2))

  # Each process holds only its own rows: process p's rows are 100 * p + arange(8).
  local = (100 * me + np.arange(8 * 3, dtype=np.int32)).reshape(8, 3)
  placed_local = shd.put_host_array(local, rows, process_local=True)
  expected = np.concatenate([(100 * p + np.arange(8 * 3, dtype=np.int32)).reshape(8, 3)
                             for p in range(count)])
  out["local_shape"] = list(placed_local.shape)
  out["local_roundtrip"] = bool(np.array_equal(shd.to_host(placed_local), expected))

  # A reduction over the global array: replicated output, no gather needed.
  total = jax.jit(jnp.sum, out_shardings=shd.replicated(mesh))(placed_local)
  before = shd.TRANSFERS.gathered_calls
  out["sum"] = int(shd.to_host(total))
  out["replicated_needed_no_gather"] = shd.TRANSFERS.gathered_calls == before

  out["any_of_process_1"] = shd.any_process(me == 1)
  out["any_of_none"] = shd.any_process(False)
  shd.sync("crossings_done")
  print("RESULT " + json.dumps(out), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

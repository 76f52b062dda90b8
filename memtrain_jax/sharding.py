"""Device mesh and logical-axis sharding rules.

One mesh with axes ('data', 'fsdp', 'tensor'). Every array names its dimensions with logical axes
('batch', 'embed', 'q_heads', ...); a rules table maps each logical axis to mesh axes. Two tables:
- TRAIN_RULES: parameters sharded FSDP-style over 'fsdp' on the embed dimension and tensor-parallel
  over 'tensor' on heads / MLP / vocab; the batch over ('data', 'fsdp').
- ROLLOUT_RULES: parameters tensor-parallel only (replicated across data and fsdp), so decoding
  needs no per-step all-gathers of weights; the batch over ('data', 'fsdp').

It is also the one place where host arrays meet global arrays (`put_host_array` in, `to_host`
out) and where the processes of a multi-host job meet (`maybe_initialize_distributed`,
`is_primary`, `sync`, `any_process`, `from_primary`); see docs/multihost.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]

_COMMON = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)
TRAIN_RULES: Rules = (("embed", "fsdp"),) + _COMMON
ROLLOUT_RULES: Rules = (("embed", None),) + _COMMON

RULE_SETS = {"train": TRAIN_RULES, "rollout": ROLLOUT_RULES}


def resolve_rules(rules: Rules | str | None) -> Rules:
  if rules is None:
    return TRAIN_RULES
  if isinstance(rules, str):
    if rules not in RULE_SETS:
      raise ValueError(f"unknown rule set {rules!r}; use one of {sorted(RULE_SETS)}")
    return RULE_SETS[rules]
  return tuple(rules)


def mesh_shape_from_config(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with at most one -1, which fills the remaining devices."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries for {MESH_AXES}; got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if known <= 0 or num_devices % known:
    raise ValueError(f"mesh shape {shape} does not divide the {num_devices} available devices")
  filled = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(filled) != num_devices:
    raise ValueError(
        f"mesh shape {shape} uses {math.prod(filled)} devices but {num_devices} are available; "
        "use -1 for one axis to fill the rest")
  return filled


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types (GSPMD-style propagation)."""
  devices = list(jax.devices() if devices is None else devices)
  filled = mesh_shape_from_config(shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.make_mesh(filled, MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """PartitionSpec for one array; errors when two of its dimensions land on one mesh axis."""
  table = dict(rules)
  out, used = [], {}
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    mesh_axes = table[name]
    for ax in (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)):
      if ax is None:
        continue
      if ax in used:
        raise ValueError(
            f"logical axes {used[ax]!r} and {name!r} of {tuple(logical_axes)} both map to mesh "
            f"axis {ax!r}; change the rules so each mesh axis shards one dimension")
      used[ax] = name
    out.append(mesh_axes)
  return PartitionSpec(*out)


def _axis_size(mesh: Mesh, mesh_axes) -> int:
  if mesh_axes is None:
    return 1
  names = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
  return math.prod(mesh.shape[n] for n in names)


def check_divisible(name: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh,
                    logical_axes: Sequence[str] | None = None) -> None:
  for dim, (size, mesh_axes) in enumerate(zip(shape, spec)):
    n = _axis_size(mesh, mesh_axes)
    if size % n:
      what = f" ({logical_axes[dim]})" if logical_axes else ""
      raise ValueError(
          f"cannot shard {name}: dimension {dim}{what} of size {size} is not divisible by mesh "
          f"axes {mesh_axes} of size {n} (mesh {dict(mesh.shape)}); pick a mesh whose "
          f"'tensor' size divides the number of heads, or map that logical axis to None")


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules | str | None,
                   shape: Sequence[int] | None = None, name: str = "array") -> NamedSharding:
  spec = logical_to_spec(logical_axes, resolve_rules(rules))
  if shape is not None:
    check_divisible(name, shape, spec, mesh, logical_axes)
  return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, logical_tree: Any, shape_tree: Any, rules: Rules | str | None) -> Any:
  """NamedShardings for a pytree given its logical axes (tuples as leaves) and its shapes."""
  rules = resolve_rules(rules)
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  flat_axes, treedef = jax.tree.flatten(logical_tree, is_leaf=is_axes)
  flat_shapes = treedef.flatten_up_to(shape_tree)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      logical_tree, is_leaf=is_axes)[0]]
  out = [named_sharding(mesh, ax, rules, tuple(s.shape), name=f"params{path}")
         for ax, s, path in zip(flat_axes, flat_shapes, paths)]
  return jax.tree.unflatten(treedef, out)


def param_shardings(config, mesh: Mesh, rules: Rules | str | None = None,
                    stacked: bool | None = None) -> Any:
  from memtrain_jax.models.params import param_logical_axes, param_shapes
  return tree_shardings(mesh, param_logical_axes(config, stacked), param_shapes(config, stacked),
                        rules)


def batch_sharding(mesh: Mesh, rules: Rules | str | None = None, ndim: int = 2) -> NamedSharding:
  """Sharding for [batch, ...] arrays: the batch over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), resolve_rules(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


# ----------------------------------------------------------------------------------------------
# Where host arrays meet global arrays. On a multi-process job (TPU pod slice, multi-node GPU) a
# global array's shards live on every process's devices; a process can read only its own. These
# two helpers are the package's only crossings between host numpy and global arrays, so the same
# code runs on one process or many.


@dataclasses.dataclass
class TransferStats:
  """Wall time this process spent fetching device arrays to the host (`to_host`), cumulative.

  On a multi-process job a fetch of an array that spans other processes is a collective
  (`process_allgather`): every process waits for the slowest, so this is where host imbalance
  shows.
  """
  seconds: float = 0.0
  calls: int = 0
  gathered_calls: int = 0  # calls that needed a cross-process gather


TRANSFERS = TransferStats()


def put_host_array(array: np.ndarray, sharding: NamedSharding, *,
                   process_local: bool = False) -> jax.Array:
  """A host array placed on `sharding`; each device receives only its own shard.

  Args:
    array: with `process_local=False` (the default), the whole global array, the same on every
      process (each process slices out its own devices' shards). With `process_local=True`, only
      this process's rows: the global array is the concatenation, in process order, of every
      process's `array` along axis 0 (`jax.make_array_from_process_local_data`).
    sharding: the target sharding over the global mesh.
  """
  array = np.asarray(array)
  if process_local and jax.process_count() > 1:
    global_shape = (array.shape[0] * jax.process_count(),) + array.shape[1:]
    return jax.make_array_from_process_local_data(sharding, array, global_shape)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(tree: Any) -> Any:
  """A pytree of (global) device arrays as numpy arrays holding the whole global value.

  Arrays whose shards this process holds in full (one process, or replicated outputs) are copied
  as `jax.device_get` would; arrays that span other processes' devices are gathered with
  `multihost_utils.process_allgather`, a collective: on a multi-process job every process must
  call this with the same arrays, in the same order. Other leaves pass through unchanged.
  """
  start = time.perf_counter()
  leaves, treedef = jax.tree.flatten(tree)
  spans = [isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)
           for x in leaves]
  if any(spans):
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather([x for x, s in zip(leaves, spans) if s],
                                                 tiled=True)
    it = iter(gathered)
    leaves = [next(it) if s else x for x, s in zip(leaves, spans)]
    TRANSFERS.gathered_calls += 1
  out = [np.asarray(x) if isinstance(x, (jax.Array, np.ndarray)) else x
         for x in jax.device_get(leaves)]
  TRANSFERS.seconds += time.perf_counter() - start
  TRANSFERS.calls += 1
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------
# Processes.


def is_primary() -> bool:
  """Whether this is process 0, the one that writes metrics, dumps, configs and exports."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op on one): e.g. process 0 built the data, the others wait."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any (a collective; on one process, `flag`)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32), tiled=True)
  return bool(np.asarray(flags).any())


def from_primary(value: Any) -> Any:
  """Process 0's `value` (JSON-able) on every process; `value` itself on a one-process job.

  A collective on a multi-process job: every process calls it at the same point (the others'
  `value` is ignored). The JSON text travels as bytes, padded to a power of two so that a run
  compiles few broadcast programs; floats survive it bit for bit.
  """
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  data = json.dumps(value).encode("utf-8") if is_primary() else b""
  size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int32)))
  buffer = np.zeros(1 << max(size - 1, 0).bit_length(), np.uint8)
  buffer[:len(data)] = np.frombuffer(data, np.uint8)
  received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return json.loads(received[:size].tobytes().decode("utf-8"))


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` on multi-host jobs (TPU pods, multi-node GPU).

  On TPU VM pod slices (MEMTRAIN_DISTRIBUTED=1) and SLURM/Open MPI clusters JAX discovers the
  cluster itself; elsewhere pass the coordinator address, the number of processes and this
  process's id (or set MEMTRAIN_COORDINATOR / MEMTRAIN_NUM_PROCESSES / MEMTRAIN_PROCESS_ID). Cross-process
  collectives between CPU devices go over gloo (the local multi-process runs of the tests).
  Returns True when initialised (or already initialised); single-process runs return False and
  need nothing. Call it before anything else touches jax's devices.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator = coordinator or os.environ.get("MEMTRAIN_COORDINATOR")
  if num_processes is None and os.environ.get("MEMTRAIN_NUM_PROCESSES"):
    num_processes = int(os.environ["MEMTRAIN_NUM_PROCESSES"])
  if process_id is None and os.environ.get("MEMTRAIN_PROCESS_ID"):
    process_id = int(os.environ["MEMTRAIN_PROCESS_ID"])
  # MEMTRAIN_DISTRIBUTED=1 asks JAX to discover the cluster (a TPU VM pod slice finds its
  # workers through the VM metadata, not the environment).
  auto_cluster = os.environ.get("MEMTRAIN_DISTRIBUTED", "") not in ("", "0") or any(
      k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))
  if coordinator is None and not auto_cluster:
    return False
  if coordinator is not None and (num_processes is None or process_id is None):
    raise ValueError(
        f"MEMTRAIN_COORDINATOR={coordinator} is set but MEMTRAIN_NUM_PROCESSES or "
        "MEMTRAIN_PROCESS_ID is not: set all three on every process (ids 0 .. N-1)")
  # Without it, a computation over CPU devices of several processes fails to compile.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  return True

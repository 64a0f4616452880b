"""Device mesh and logical-axis sharding rules, from the config.

Parallelism is a config change: `config.mesh` names the size of each mesh axis and
`config.mesh.rules` picks a table that maps the logical axis names carried by every parameter
to mesh axes. Nothing else in the code places arrays by hand.

Axes: 'data' (replicas), 'fsdp' (batch and parameter shards), 'tensor' (heads / MLP). One of
them may be -1, "the rest of the devices". `config.mesh.slices` (default 1) puts the outer
factor of 'data' across slices (multi-slice TPU over DCN, or groups of GPU hosts).

Per-process data: every process feeds the rows of the global batch its devices hold
(`process_rows`, `local_rows`), and `global_batch` assembles the global jax.Arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from closp_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
# Axes over which the batch is split (data parallel and fully-sharded data parallel).
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. Replicated data parallelism: every parameter on every device.
DP_RULES: tuple[tuple[str, Any], ...] = ()
# FSDP: the largest parameter dimensions are split over 'fsdp'; 'tensor' splits heads/mlp when > 1.
FSDP_RULES: tuple[tuple[str, Any], ...] = (
  ("embed", "fsdp"),
  ("conv_out", "fsdp"),
  ("vocab", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
)
RULES = {"dp": DP_RULES, "fsdp": FSDP_RULES}


class MeshConfigError(UserError, ValueError):
  """The mesh in the config does not fit the devices of this run."""


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the sizes of (data, fsdp, tensor); one of them may be -1 ("the rest")."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshConfigError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    if num_devices % known:
      raise MeshConfigError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by "
        f"{known}; set the fixed axes to divisors of {num_devices}"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshConfigError(
      f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but this run has "
      f"{num_devices}; set one axis to -1 (e.g. --config.mesh.data=-1) to take the rest"
    )
  return tuple(sizes)


def num_slices(mesh_cfg, devices: Sequence[jax.Device]) -> int:
  """config.mesh.slices resolved: 1 (default), N, or -1 = the number of TPU slices seen."""
  slices = int(mesh_cfg.get("slices", 1)) if hasattr(mesh_cfg, "get") else 1
  if slices == -1:
    return len({getattr(d, "slice_index", 0) for d in devices})
  if slices < 1:
    raise MeshConfigError(f"config.mesh.slices={slices}: expected a positive count or -1 (all slices)")
  return slices


def _slice_grid(devices: Sequence[jax.Device], ici: tuple[int, ...], slices: int) -> np.ndarray:
  """Devices arranged (slices * ici[0], ici[1], ici[2]), one slice per block of the 'data' axis.

  TPU devices of several slices carry `slice_index` and go through
  `mesh_utils.create_hybrid_device_mesh`; otherwise (GPU hosts, CPU processes) consecutive
  processes form the slices, each an equal group.
  """
  seen = {getattr(d, "slice_index", None) for d in devices}
  if None not in seen and len(seen) > 1:
    if len(seen) != slices:
      raise MeshConfigError(
        f"config.mesh.slices={slices}, but the devices span {len(seen)} TPU slices; "
        f"set --config.mesh.slices={len(seen)} (or -1)"
      )
    return mesh_utils.create_hybrid_device_mesh(ici, (slices, 1, 1), devices, allow_split_physical_axes=True)
  procs = sorted({d.process_index for d in devices})
  if len(procs) % slices:
    raise MeshConfigError(
      f"config.mesh.slices={slices}: the devices span {len(seen - {None}) or 1} slice(s) and "
      f"{len(procs)} process(es); the slices must be TPU slices or whole groups of processes"
    )
  per = len(procs) // slices
  blocks = []
  for k in range(slices):
    members = set(procs[k * per : (k + 1) * per])
    group = sorted((d for d in devices if d.process_index in members), key=lambda d: (d.process_index, d.id))
    blocks.append(np.asarray(group, dtype=object).reshape(ici))
  return np.concatenate(blocks, axis=0)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over all devices (of all processes) with axes (data, fsdp, tensor), Auto axis types.

  With `config.mesh.slices` = S > 1 (multi-slice TPU over DCN, or S groups of GPU hosts) the
  'data' axis is S x (data / S): its outer factor crosses the slower network (DCN), so only
  the data-parallel gradient all-reduce travels between slices while 'fsdp' and 'tensor'
  stay inside a slice (ICI / NVLink).
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  slices = num_slices(mesh_cfg, devices)
  if slices > 1:
    if shape[0] % slices:
      raise MeshConfigError(
        f"config.mesh.data={shape[0]} must be a multiple of config.mesh.slices={slices}: the slices "
        f"split the 'data' axis (e.g. --config.mesh.data={slices} --config.mesh.fsdp=-1)"
      )
    grid = _slice_grid(devices, (shape[0] // slices, shape[1], shape[2]), slices)
    return Mesh(grid, MESH_AXES, axis_types=auto)
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split (the product of the batch axes)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_rules(name: str):
  if name not in RULES:
    raise MeshConfigError(f"config.mesh.rules={name!r}: expected one of {sorted(RULES)}")
  return RULES[name]


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis split over the data axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (small tensors stay replicated there)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def param_shardings(boxed_abstract_params, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (possibly abstract) tree of nn.Partitioned params."""
  specs = nn.get_partition_spec(boxed_abstract_params)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  plain = nn.unbox(boxed_abstract_params)
  return jax.tree.map(
    lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, tuple(leaf.shape), mesh)),
    mesh_specs,
    plain,
    is_leaf=lambda x: isinstance(x, P),
  )


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
  """Indices of the global batch rows this process feeds, in the order its local batch holds them.

  `make_array_from_process_local_data` fills the rows addressed by this process's devices,
  in increasing order, from the rows of the local batch. With the meshes `make_mesh` builds
  they are one contiguous block per process (process p: rows p*b .. (p+1)*b), but nothing
  relies on that: feed `global_rows[process_rows(...)]` and any layout is right.
  """
  dp = data_parallel_size(mesh)
  if global_batch_size % dp:
    raise MeshConfigError(
      f"global batch {global_batch_size} is not divisible by the data-parallel size {dp} (mesh data x fsdp)"
    )
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch_size,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  per_device = global_batch_size // dp
  return np.concatenate([np.arange(s, s + per_device) for s in starts])


def process_slice(mesh: Mesh, global_batch_size: int) -> slice:
  """This process's rows of the global batch as one slice; an error if they are not contiguous."""
  rows = process_rows(mesh, global_batch_size)
  if not np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
    raise MeshConfigError("this process's batch rows are not contiguous on this mesh; use process_rows()")
  return slice(int(rows[0]), int(rows[0]) + rows.size)


def local_rows(global_tree, mesh: Mesh):
  """This process's share of a batch every process holds whole (a pytree of host arrays)."""
  leaves = jax.tree.leaves(global_tree)
  if not leaves:
    return global_tree
  rows = process_rows(mesh, int(np.shape(leaves[0])[0]))
  return jax.tree.map(lambda x: np.asarray(x)[rows], global_tree)


def global_batch(local_batch, mesh: Mesh):
  """Assembles process-local numpy batches into global jax.Arrays sharded over the data axes.

  Each process passes its own rows (`local_rows` of a shared batch, or its own pipeline's
  batch of global_batch / process_count rows); the result has the global batch size.
  """

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return jax.tree.map(put, local_batch)


def bytes_per_device(tree, shardings) -> tuple[int, int]:
  """(total bytes, bytes held by each device) of a tree of arrays or ShapeDtypeStructs.

  Works with shardings over a `jax.sharding.AbstractMesh` too, so the per-chip size of a
  pod's state can be computed on a laptop. Shardings from `param_shardings` divide evenly,
  so every device holds the same number of bytes.
  """
  total = per_device = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shape, itemsize = tuple(leaf.shape), np.dtype(leaf.dtype).itemsize
    total += math.prod(shape) * itemsize
    per_device += math.prod(sharding.shard_shape(shape)) * itemsize
  return total, per_device

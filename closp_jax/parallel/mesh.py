"""Device mesh and logical-axis sharding rules, from the config.

Parallelism is a config change: `config.mesh` names the size of each mesh axis and
`config.mesh.rules` picks a table that maps the logical axis names carried by every parameter
to mesh axes. Nothing else in the code places arrays by hand.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


class MeshConfigError(ValueError):
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
          f"{known}; set the fixed axes to divisors of {num_devices}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshConfigError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but this run has "
        f"{num_devices}; set one axis to -1 (e.g. --config.mesh.data=-1) to take the rest")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over all devices (of all processes) with axes (data, fsdp, tensor), Auto axis types."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


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
      mesh_specs, plain, is_leaf=lambda x: isinstance(x, P))


def global_batch(local_batch, mesh: Mesh):
  """Assembles process-local numpy batches into global jax.Arrays sharded over the data axes."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
  return jax.tree.map(put, local_batch)

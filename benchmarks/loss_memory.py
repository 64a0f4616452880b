"""Per-device temporary memory of the dense vs shard_map (ring) contrastive losses.

Compiles (never runs) the loss and its gradient for a global batch sharded
over N fake CPU devices and prints XLA's `temp_size_in_bytes` for each.

  python benchmarks/loss_memory.py --global_batch 32768 --dim 384 --num_devices 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--global_batch", type=int, default=32768)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--num_devices", type=int, default=64)
  parser.add_argument("--kind", choices=("softmax", "sigmoid"), default="softmax")
  parser.add_argument(
    "--json", action="store_true", help="print one JSON object {label: {dense, shard_map}} instead of the table"
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  # The fake device count must be set before jax initialises its backends.
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.num_devices}"
  )
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P

  from closp_jax import losses  # pylint: disable=import-outside-toplevel

  if jax.device_count() != args.num_devices:
    raise SystemExit(
      f"expected {args.num_devices} devices, jax sees {jax.device_count()}; run this script in a fresh process."
    )
  mesh = jax.make_mesh((args.num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = NamedSharding(mesh, P("data", None))
  scalar = NamedSharding(mesh, P())
  emb = jax.ShapeDtypeStruct((args.global_batch, args.dim), jnp.float32, sharding=batch)
  one = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)

  def dense(x, y, s, b):
    return losses.contrastive_loss(x, y, s, b if args.kind == "sigmoid" else None, kind=args.kind)

  def chunked(x, y, s, b):
    return losses.contrastive_loss(
      x, y, s, b if args.kind == "sigmoid" else None, kind=args.kind, mesh=mesh, chunked=True
    )

  def temp_bytes(fn):
    compiled = jax.jit(fn).lower(emb, emb, one, one).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  results = {}
  for label, wrap in (("loss", lambda f: f), ("value_and_grad", lambda f: jax.value_and_grad(f, argnums=(0, 1, 2)))):
    results[label] = {"dense": int(temp_bytes(wrap(dense))), "shard_map": int(temp_bytes(wrap(chunked)))}
  if args.json:
    print(json.dumps(results))
    return 0
  print(
    f"{args.kind} loss, global batch {args.global_batch}, dim {args.dim}, "
    f"{args.num_devices} devices (per-device temp bytes)"
  )
  for label, r in results.items():
    d, c = r["dense"], r["shard_map"]
    print(f"{label:15s} dense {d:>13,d}  shard_map {c:>11,d}  ratio {d / max(c, 1):8.1f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

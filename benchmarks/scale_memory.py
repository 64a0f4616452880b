"""Per-chip memory and cost of a config's train step: compiled analysis, sharded state, measured time.

Three reports, each optional:

* state:  bytes of parameters and optimizer state per chip when the config's rules shard them
          over a mesh (an abstract one: no devices needed), e.g. `--state_meshes 1x256x1,2x128x1`;
* step:   the train step (all towers trainable, the heaviest phase) compiled on this machine's
          devices for a per-device batch: XLA's memory analysis (arguments, outputs, temporaries)
          and cost analysis (FLOPs, bytes accessed) per device;
* time:   that step run `--time_steps` times on random data: seconds per step and achieved FLOP/s.

  python benchmarks/scale_memory.py --config configs/geoclosp.py:pod --per_device_batch 128,512 \
      --state_meshes 1x256x1,2x128x1 --time_steps 10 --json out.json

Text weights are not loaded (`init.text=''`): the same shapes and FLOPs, no files needed.
The contrastive loss here sees only this machine's batch; docs/scale.md adds the pod's
global-batch loss (benchmarks/loss_memory.py) separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "geoclosp.py") + ":pod")
  p.add_argument("--per_device_batch", type=_ints, default=[128], help="per sensor, comma-separated")
  p.add_argument(
    "--state_meshes", default="", help="data x fsdp x tensor meshes for the sharded-state report, e.g. 1x256x1,2x128x1"
  )
  p.add_argument("--time_steps", type=int, default=0, help="also run the step this many times and time it")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor over this machine's devices")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override, e.g. --set model.s2_encoder=resnet_tiny (repeatable)",
  )
  p.add_argument("--json", default="", help="write the results here (after every report)")
  return p.parse_args(argv)


def load_config(args):
  import ml_collections  # pylint: disable=import-outside-toplevel

  from closp_jax.config import load_config  # pylint: disable=import-outside-toplevel

  cfg = ml_collections.ConfigDict(load_config(args.config).to_dict())
  cfg.init.text = ""
  cfg.optim.frozen = ()
  cfg.optim.freeze_steps = 0
  cfg.train.steps = 1000
  data, fsdp, tensor = _ints(args.mesh)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
  for item in args.set:
    key, _, value = item.partition("=")
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    current = node[leaf]
    node[leaf] = (
      type(current)(value)
      if current is not None and not isinstance(current, bool)
      else (value.lower() in ("1", "true") if isinstance(current, bool) else value)
    )
  return cfg


def state_report(cfg, shape: tuple[int, int, int]) -> dict:
  """Parameter and optimizer-state bytes per chip with the config's rules on a (data, fsdp, tensor) mesh."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import AbstractMesh  # pylint: disable=import-outside-toplevel

  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.train import setup  # pylint: disable=import-outside-toplevel
  from closp_jax.train.optimizer import make_optimizer  # pylint: disable=import-outside-toplevel

  chips = shape[0] * shape[1] * shape[2]
  mesh = AbstractMesh(shape, mesh_lib.MESH_AXES)
  model = CLOSP(cfg.model)
  boxed = jax.eval_shape(lambda r: model.init(r, *setup.dummy_inputs(cfg), train=False), jax.random.key(0))
  param_sh = mesh_lib.param_shardings(boxed["params"], mesh, mesh_lib.logical_rules(cfg.mesh.rules))
  params = nn.unbox(boxed["params"])
  optimizer = make_optimizer(cfg.optim, params, int(cfg.train.steps))
  opt = jax.eval_shape(optimizer.init, params)
  opt_sh = setup._opt_shardings(opt, params, param_sh, mesh)  # pylint: disable=protected-access
  p_total, p_chip = mesh_lib.bytes_per_device(params, param_sh)
  o_total, o_chip = mesh_lib.bytes_per_device(opt, opt_sh)
  count = sum(x.size for x in jax.tree.leaves(params))
  return {
    "chips": chips,
    "mesh": dict(zip(mesh_lib.MESH_AXES, shape)),
    "rules": cfg.mesh.rules,
    "parameters": int(count),
    "param_bytes": p_total,
    "param_bytes_per_chip": p_chip,
    "opt_bytes": o_total,
    "opt_bytes_per_chip": o_chip,
  }


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def step_report(cfg, per_device_batch: int, time_steps: int) -> dict:
  """Compiles (and optionally times) the train step for a per-device batch on this machine's devices."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.train import setup  # pylint: disable=import-outside-toplevel
  from closp_jax.train.step import Phase, make_train_step, phase_at  # pylint: disable=import-outside-toplevel

  mesh = mesh_lib.make_mesh(cfg.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  batch = per_device_batch * dp
  cfg.data.batch_size = batch
  model, variables, shardings, optimizer, _ = setup.build_model_and_optimizer(cfg, mesh, int(cfg.train.steps))
  state, state_sh = setup.create_state(variables, optimizer, shardings, mesh, 0)
  del variables
  phase = Phase(phase_at(cfg, sorted(state.params), 10**9).trainable, text_table=False)
  fn = make_train_step(cfg, phase, model=model, optimizer=optimizer, mesh=mesh)
  step = jax.jit(fn, donate_argnums=(0,), out_shardings=(state_sh, mesh_lib.replicated(mesh)))

  rng = np.random.default_rng(0)
  max_len = int(cfg.data.max_len)

  def sensor_batch(chans):
    ids = rng.integers(1000, 30000, (batch, max_len)).astype(np.int32)
    mask = np.zeros((batch, max_len), np.int32)
    mask[:, :12] = 1
    return {
      "image": rng.normal(size=(batch, 120, 120, chans)).astype(np.float32),
      "input_ids": ids,
      "attention_mask": mask,
      "lonlat": rng.uniform(-60, 60, (batch, 2)).astype(np.float32),
      "text_id": np.zeros((batch,), np.int32),
    }

  host = {"s2": sensor_batch(int(cfg.model.s2_in_chans)), "s1": sensor_batch(int(cfg.model.s1_in_chans))}
  gbatch = mesh_lib.global_batch(host, mesh)
  table = jnp.zeros((1, 1), jnp.float32)

  t0 = time.perf_counter()
  compiled = step.lower(state, gbatch, table).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  out = {
    "per_device_batch": per_device_batch,
    "global_batch": batch,
    "devices": jax.device_count(),
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "mesh": dict(mesh.shape),
    "dtype": str(cfg.model.dtype),
    "compile_seconds": round(compile_s, 1),
    "memory": {
      k: int(getattr(mem, k))
      for k in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
      )
    },
    "cost": _cost(compiled),
  }
  m = out["memory"]
  out["memory"]["peak_estimate_bytes"] = (
    m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"] + m["temp_size_in_bytes"]
  )
  if time_steps > 0:
    for _ in range(2):  # warm-up (the first call also uploads the program)
      state, metrics = compiled(state, gbatch, table)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(time_steps):
      t = time.perf_counter()
      state, metrics = compiled(state, gbatch, table)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    median = float(np.median(times))
    out["step_seconds_median"] = median
    out["step_seconds_min"] = float(np.min(times))
    out["achieved_flops_per_second"] = out["cost"]["flops"] / median
    out["loss_after"] = float(metrics["loss"])
    if jax.devices()[0].platform == "gpu":
      stats = jax.devices()[0].memory_stats() or {}
      out["device_peak_bytes_in_use"] = int(stats.get("peak_bytes_in_use", 0))
  return out


def main(argv=None) -> int:
  args = _parse(argv)
  cfg = load_config(args)
  results = {"config": args.config, "overrides": args.set, "state": [], "step": []}

  def save():
    if args.json:
      tmp = args.json + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
      os.replace(tmp, args.json)

  for text in filter(None, args.state_meshes.split(",")):
    shape = tuple(int(v) for v in text.split("x"))
    if len(shape) != 3:
      raise SystemExit(f"--state_meshes: {text!r} is not DATAxFSDPxTENSOR")
    r = state_report(cfg, shape)
    chips = r["chips"]
    results["state"].append(r)
    save()
    print(
      f"state on {chips} chips ({r['rules']}, mesh {r['mesh']}): {r['parameters'] / 1e6:.1f}M parameters; "
      f"params {r['param_bytes_per_chip'] / 2**20:.1f} MiB/chip of {r['param_bytes'] / 2**20:.1f} MiB, "
      f"optimizer {r['opt_bytes_per_chip'] / 2**20:.1f} MiB/chip of {r['opt_bytes'] / 2**20:.1f} MiB",
      flush=True,
    )
  for b in args.per_device_batch:
    r = step_report(cfg, b, args.time_steps)
    results["step"].append(r)
    save()
    m = r["memory"]
    line = (
      f"step, {b} per sensor per device on {r['devices']} {r['device_kind']} ({r['dtype']}): "
      f"args {m['argument_size_in_bytes'] / 2**30:.2f} GiB, temp {m['temp_size_in_bytes'] / 2**30:.2f} GiB, "
      f"peak~{m['peak_estimate_bytes'] / 2**30:.2f} GiB; {r['cost']['flops'] / 1e12:.2f} TFLOP/step/device; "
      f"compiled in {r['compile_seconds']} s"
    )
    if "step_seconds_median" in r:
      line += (
        f"; {r['step_seconds_median'] * 1e3:.1f} ms/step, {r['achieved_flops_per_second'] / 1e12:.1f} TFLOP/s achieved"
      )
    print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

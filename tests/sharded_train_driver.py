"""Runs a few GeoCLOSP training steps on whatever devices and processes it is started with.

Driven by tests/test_sharding.py and tests/test_multiprocess.py: each device count or process
layout needs its own interpreter (XLA_FLAGS is read when JAX starts), so the tests run this
file in subprocesses and compare what it writes.

The data do not depend on the layout: every process reads the same global batch (the real
grain pipeline over crisis_landmark/tiny, not sharded by process) and feeds only its own rows
(`mesh.local_rows`), so 1 process x 8 devices and 2 processes x 4 devices see identical global
arrays. (The trainer shards records by process instead, which is cheaper but layout-dependent.)

  python tests/sharded_train_driver.py --data_dir D --out run.npz --steps 5 --mesh 8,1,1 --rules dp
      [--save_steps 3,5 --ckpt_dir C] [--resume_step 3 --ckpt_dir C]
      [--coordinator_address H:P --num_processes N --process_id I]
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--out", required=True, help="npz written by process 0: losses and final params")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=16, help="global, per sensor")
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
  p.add_argument("--slices", type=int, default=1)
  p.add_argument("--rules", default="dp")
  p.add_argument("--chunked", action="store_true", help="shard_map ring loss")
  p.add_argument("--adam_eps", type=float, default=None, help="config.optim.eps (default: the config's)")
  p.add_argument("--train_text", action="store_true", help="train the text tower too (no text table)")
  p.add_argument("--ckpt_dir", default="")
  p.add_argument("--save_steps", default="", help="comma-separated steps to checkpoint after")
  p.add_argument("--resume_step", type=int, default=0, help="restore this checkpoint first")
  p.add_argument("--coordinator_address", default=None)
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _args(argv)
  from closp_jax.parallel import distributed

  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from closp_jax import checkpoint as ckpt_lib
  from closp_jax.config import load_config
  from closp_jax.data import pipeline
  from closp_jax.data.tokenize import load_tokenizer
  from closp_jax.parallel import data_checkpoint
  from closp_jax.parallel import mesh as mesh_lib
  from closp_jax.train import setup
  from closp_jax.train.step import Phase, make_train_step, phase_at, text_table

  config = load_config(os.path.join(REPO, "configs", "geoclosp.py") + ":sample")
  data, fsdp, tensor = (int(v) for v in args.mesh.split(","))
  with config.unlocked():
    config.data.name = "crisis_landmark/tiny"
    config.data.data_dir = args.data_dir
    config.data.batch_size = args.batch_size
    config.data.eval_batch_size = args.batch_size
    config.train.steps = args.steps
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
    config.mesh.slices = args.slices
    config.mesh.rules = args.rules
    config.loss.chunked = bool(args.chunked)
    # A one-layer, randomly initialised text tower keeps compiles short; the parallel code paths
    # (sharded embeddings and attention weights) are the same as MiniLM's.
    config.init.text = ""
    config.model.text.layers = 1
    config.model.text.intermediate = 256
    config.optim.frozen = () if args.train_text else ("text_model",)
    if args.adam_eps is not None:
      config.optim.eps = args.adam_eps

  mesh = mesh_lib.make_mesh(config.mesh)
  setup.check_batch(config, mesh)
  builder = pipeline.get_builder(config.data.name, data_dir=args.data_dir, prepare=False)
  cfg = setup.resolve_steps(config, {s: pipeline.split_size(builder, "train", s) for s in ("s2", "s1")})
  model, variables, shardings, optimizer, _ = setup.build_model_and_optimizer(cfg, mesh, args.steps)
  state, state_shardings = setup.create_state(variables, optimizer, shardings, mesh, int(cfg.seed))
  tokenizer = load_tokenizer()
  it = pipeline.train_iterator(
    builder,
    batch_size=args.batch_size,
    seed=int(cfg.seed),
    tokenizer=tokenizer,
    max_len=int(cfg.data.max_len),
    shard_by_process=False,
    read_threads=1,
  )
  ckpt = ckpt_lib.Checkpointer(args.ckpt_dir, keep=10, async_save=False) if args.ckpt_dir else None
  if args.resume_step:
    # The train state through the trainer's Checkpointer (onto this run's shardings); the data
    # position through parallel.data_checkpoint, which also reads another layout's files.
    state = ckpt.restore(args.resume_step, ckpt_lib.abstract_like(state))
    note = data_checkpoint.restore_iterator(os.path.join(args.ckpt_dir, str(args.resume_step), "data"), it)
    distributed.main_print(note or "data iterator: same layout")

  texts = pipeline.dataset_texts(builder)
  table = text_table(model, {"params": state.params, "batch_stats": state.batch_stats}, tokenizer, texts, cfg)
  table = jax.device_put(table, mesh_lib.replicated(mesh))
  groups = sorted(state.params)
  compiled = {}
  save_steps = {int(s) for s in args.save_steps.split(",") if s}
  losses = []
  for step in range(int(state.step), args.steps):
    phase = Phase(phase_at(cfg, groups, step).trainable, text_table=not args.train_text)
    if phase not in compiled:
      fn = make_train_step(cfg, phase, model=model, optimizer=optimizer, mesh=mesh)
      compiled[phase] = jax.jit(fn, donate_argnums=(0,), out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    batch = next(it)
    keep = ("image", "input_ids", "attention_mask", "lonlat", "text_id")
    local = mesh_lib.local_rows({s: {k: batch[s][k] for k in keep} for s in ("s2", "s1")}, mesh)
    state, metrics = compiled[phase](state, mesh_lib.global_batch(local, mesh), table)
    m = jax.device_get(metrics)
    losses.append(
      [float(m["loss"])] + [float(m[f"loss/{k}"]) for k in sorted(k[5:] for k in m if k.startswith("loss/"))]
    )
    if ckpt is not None and step + 1 in save_steps:
      ckpt.save(step + 1, state, it, force=True)
  if ckpt is not None:
    ckpt.close()

  params = multihost_utils.process_allgather(state.params, tiled=True)
  stats = multihost_utils.process_allgather(state.batch_stats, tiled=True)
  flat = {}
  for prefix, tree in (("params", params), ("batch_stats", stats)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      flat[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
  sharded = sum(1 for s in jax.tree.leaves(state_shardings.params) if not s.is_fully_replicated)
  total, per_device = mesh_lib.bytes_per_device(state.params, state_shardings.params)
  if distributed.is_main_process():
    tmp = args.out + ".tmp.npz"
    np.savez(
      tmp,
      losses=np.asarray(losses, np.float64),
      sharded_params=sharded,
      param_bytes=total,
      param_bytes_per_device=per_device,
      mesh=np.asarray([mesh.shape[a] for a in mesh_lib.MESH_AXES]),
      processes=jax.process_count(),
      devices=jax.device_count(),
      **flat,
    )
    os.replace(tmp, args.out)
    print(f"{distributed.describe()}; mesh {dict(mesh.shape)}; losses {[round(l[0], 6) for l in losses]}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

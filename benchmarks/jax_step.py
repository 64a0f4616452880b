"""The closp-jax train step, built from the library exactly as the trainer builds it, on synthetic batches.

    step = ClospStep.build("paper", batch_size=64, overrides={"optim.frozen": ()})
    step.run()                       # one optimizer step, blocks until done
    step.flops                       # XLA's FLOP count of one step

closp_jax.train.loop does: setup.build_model_and_optimizer -> setup.create_state ->
make_train_step(cfg, phase_at(...)) -> jax.jit with the state
donated and the state shardings as outputs. The same calls are made here; the batch has the
trainer's format ({"s2"|"s1": {"image", "input_ids", "attention_mask", "lonlat", "text_id"}}) and
is placed on the devices once, so the figure is the step alone (the input pipeline has its own row).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from closp_jax import config as config_lib
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup
from closp_jax.train.step import make_train_step, phase_at

NUM_TEXTS = 512  # distinct texts of the synthetic batches (the cached-embedding table's rows)
TOTAL_STEPS = 1000  # only shapes the learning-rate schedule


def closp_config(
  variant: str, overrides: Mapping[str, Any] | None = None, *, geo: bool = False
) -> ml_collections.ConfigDict:
  """The packaged recipe closp:VARIANT (geoclosp with geo) with dotted overrides ({'optim.frozen': (), 'data.batch_size': 8}).

  Every tower starts from random weights (init.text, init.s2, init.s1, init.location = '') unless an
  override says otherwise: speed does not depend on the values, and nothing is read or downloaded.
  """
  cfg = config_lib.load_config(f"{'geoclosp' if geo else 'closp'}:{variant}")
  cfg.unlock()
  cfg.init.text = cfg.init.s2 = cfg.init.s1 = cfg.init.location = ""
  for dotted, value in dict(overrides or {}).items():
    config_lib.set_key(cfg, dotted, value)
  cfg.lock()
  return cfg


def synthetic_batch(cfg, batch_size: int, *, seed: int = 0, text_len: int | None = None) -> dict:
  """A host batch in the trainer's format: S2 / S1 images scaled like the pipeline's, token ids
  of short label-like texts ([CLS] 3-12 tokens [SEP], then padding to `text_len`, default
  data.max_len), text ids into a table of NUM_TEXTS texts, lon/lat in degrees."""
  rng = np.random.default_rng(seed)
  t = int(text_len or cfg.data.max_len)
  out = {}
  for sensor in ("s2", "s1"):
    chans = int(cfg.model[f"{sensor}_in_chans"])
    image = rng.normal(size=(batch_size, 120, 120, chans)).astype(np.float32)
    if sensor == "s2":
      image = np.abs(image) * 0.1
    lengths = rng.integers(5, min(14, t) + 1, size=batch_size)
    ids = rng.integers(1000, 30000, size=(batch_size, t)).astype(np.int32)
    ids[:, 0] = 101
    pos = np.arange(t)[None, :]
    ids = np.where(pos == lengths[:, None] - 1, 102, ids)
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    out[sensor] = {
      "image": image,
      "input_ids": ids,
      "attention_mask": mask,
      "lonlat": np.stack([rng.uniform(-180, 180, batch_size), rng.uniform(-60, 70, batch_size)], 1).astype(np.float32),
      "text_id": rng.integers(0, NUM_TEXTS, size=batch_size).astype(np.int32),
    }
  return out


def lr_table(cfg, steps: int = TOTAL_STEPS) -> np.ndarray:
  """The base learning rate of steps 0..steps-1 (closp_jax.train.optimizer.base_schedule), for the
  reference's LambdaLR: both sides then take the same update sizes step by step."""
  from closp_jax.train.optimizer import base_schedule  # pylint: disable=import-outside-toplevel

  sched = base_schedule(cfg.optim, steps)
  return np.asarray([float(sched(i)) for i in range(steps)], np.float64)


def text_table(dim: int, seed: int = 1) -> np.ndarray:
  """Unit-norm stand-ins for the cached text model outputs [NUM_TEXTS, dim] (dim: the text model's
  hidden size). Without a text projection the step only normalises them, so the same rows serve the
  PyTorch reference as its text embeddings."""
  x = np.random.default_rng(seed).normal(size=(NUM_TEXTS, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclasses.dataclass
class ClospStep:
  """A compiled closp-jax train step with its state and a device-resident batch."""

  cfg: Any
  compiled: Any
  state: Any
  batch: Any
  table: Any
  host_batch: dict
  samples_per_step: int
  use_text_table: bool
  trainable_params: int
  flops: float
  compile_seconds: float
  last_metrics: Any = None

  @classmethod
  def build(
    cls,
    variant: str,
    *,
    batch_size: int,
    overrides: Mapping[str, Any] | None = None,
    text_len: int | None = None,
    mesh_devices=None,
    use_text_table: bool | None = None,
  ) -> ClospStep:
    """use_text_table: None as the trainer decides (closp_jax.train.step.phase_at); False runs the text
    model every step even where the trainer would look its outputs up (for A/B measurements)."""
    cfg = closp_config(variant, {"data.batch_size": batch_size, **dict(overrides or {})})
    mesh = mesh_lib.make_mesh(cfg.mesh, mesh_devices)
    setup.check_batch(cfg, mesh)
    model, variables, shardings, optimizer, _ = setup.build_model_and_optimizer(cfg, mesh, TOTAL_STEPS)
    state, state_shardings = setup.create_state(variables, optimizer, shardings, mesh, int(cfg.seed))
    phase = phase_at(cfg, sorted(state.params), int(state.step))
    if use_text_table is not None:
      phase = dataclasses.replace(phase, text_table=phase.text_table and use_text_table)
    trainable, use_table = phase.trainable, phase.text_table
    fn = make_train_step(cfg, phase, model=model, optimizer=optimizer, mesh=mesh)
    jitted = jax.jit(fn, donate_argnums=(0,), out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    host = synthetic_batch(cfg, batch_size, text_len=text_len)
    keys = ("image", "input_ids", "attention_mask", "lonlat", "text_id")
    batch = mesh_lib.global_batch({s: {k: host[s][k] for k in keys} for s in ("s2", "s1")}, mesh)
    table = (
      jax.device_put(text_table(int(cfg.model.text.hidden)), mesh_lib.replicated(mesh))
      if use_table
      else jax.device_put(np.zeros((1, 1), np.float32), mesh_lib.replicated(mesh))
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, table).compile()
    seconds = time.perf_counter() - start
    trainable_params = sum(int(np.size(x)) for g in trainable for x in jax.tree.leaves(state.params[g]))
    return cls(
      cfg=cfg,
      compiled=compiled,
      state=state,
      batch=batch,
      table=table,
      host_batch=host,
      samples_per_step=2 * batch_size,
      use_text_table=use_table,
      trainable_params=trainable_params,
      flops=compiled_flops(compiled),
      compile_seconds=seconds,
    )

  def run(self, steps: int = 1) -> None:
    """`steps` optimizer steps (the state is donated and replaced each time), dispatched back to
    back; returns when the last is done."""
    for _ in range(steps):
      self.state, self.last_metrics = self.compiled(self.state, self.batch, self.table)
    jax.block_until_ready((self.state, self.last_metrics))

  def metrics(self) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(self.last_metrics).items()}


def compiled_flops(compiled) -> float:
  """XLA's FLOP estimate of a compiled computation (NaN if the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))

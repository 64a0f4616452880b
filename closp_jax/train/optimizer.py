"""AdamW with per-tower learning rates, a freeze schedule and a weight-decay mask.

Every top-level parameter group (a tower such as `s2_encoder`, a projection, the temperature)
gets its own learning-rate schedule: base schedule x multiplier x freeze gate. A frozen tower's
gate is 0 until `optim.freeze_steps`, so neither its Adam update nor its weight decay moves it;
towers listed in `optim.frozen` never train and carry no optimizer state (their update is zero).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def base_schedule(optim_cfg, total_steps: int) -> Schedule:
  """The learning-rate schedule shared by all groups (before multipliers and gates)."""
  lr = float(optim_cfg.lr)
  total_steps = max(int(total_steps), 1)
  if optim_cfg.schedule == "one_cycle":
    return one_cycle_schedule(total_steps, lr, float(optim_cfg.pct_start), float(optim_cfg.div_factor),
                              float(optim_cfg.final_div_factor))
  if optim_cfg.schedule == "warmup_cosine":
    warmup = min(int(optim_cfg.warmup_steps), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total_steps,
        end_value=lr * float(optim_cfg.end_lr_factor))
  if optim_cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(
      f"config.optim.schedule={optim_cfg.schedule!r}: expected 'one_cycle', 'warmup_cosine' or 'constant'")


def one_cycle_schedule(total_steps: int, peak: float, pct_start: float = 0.3, div_factor: float = 25.0,
                       final_div_factor: float = 1e4) -> Schedule:
  """The one-cycle policy as the original trains with it (PyTorch OneCycleLR, cosine, two phases).

  Cosine from peak/div_factor up to peak, reached at step pct_start*T - 1, then cosine down to
  peak/(div_factor*final_div_factor) at step T - 1.
  """
  initial = peak / div_factor
  final = initial / final_div_factor
  up_end = float(pct_start * total_steps) - 1.0
  down_end = float(total_steps - 1)

  def cos_anneal(start, end, pct):
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    up = cos_anneal(initial, peak, jnp.clip(step / max(up_end, 1e-9), 0.0, 1.0))
    down = cos_anneal(peak, final, jnp.clip((step - up_end) / max(down_end - up_end, 1e-9), 0.0, 1.0))
    return jnp.where(step <= up_end, up, down)
  return schedule


def group_of(path: tuple[str, ...]) -> str:
  """The parameter group of a parameter path: its top-level module name."""
  return path[0]


def decay_mask(params) -> Any:
  """True where weight decay applies: kernels and embeddings; not norms, biases or the temperature."""
  def wants_decay(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    last = names[-1]
    if last in ("bias", "scale") or "norm" in "/".join(names).lower() or names[0].startswith("logit"):
      return False
    return leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def group_labels(params) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: group_of(tuple(getattr(k, "key", str(k)) for k in path)), params)


def tower_schedule(optim_cfg, group: str, total_steps: int) -> Schedule:
  base = base_schedule(optim_cfg, total_steps)
  multiplier = float(dict(optim_cfg.multipliers).get(group, 1.0))
  if group in tuple(optim_cfg.frozen):
    return lambda step: jnp.zeros([], jnp.float32)
  freeze_until = int(optim_cfg.freeze_steps) if group in tuple(optim_cfg.freeze_towers) else 0

  def schedule(step):
    gate = (jnp.asarray(step) >= freeze_until).astype(jnp.float32)
    return base(step) * multiplier * gate
  return schedule


def make_optimizer(optim_cfg, params, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation for `params` (a plain, unboxed pytree)."""
  groups = sorted(set(jax.tree.leaves(group_labels(params))))
  unknown = [g for g, m in dict(optim_cfg.multipliers).items() if g not in groups and float(m) != 1.0]
  unknown += [g for g in tuple(optim_cfg.frozen) + tuple(optim_cfg.freeze_towers) if g not in groups]
  if unknown:
    raise ValueError(
        f"config.optim names parameter groups that this model does not have: {sorted(set(unknown))}; "
        f"the groups are {groups}")
  transforms = {}
  for g in groups:
    if g in tuple(optim_cfg.frozen):
      # Never trained: no Adam moments to keep or update (the text tower of :sample is 22.7M values).
      transforms[g] = optax.set_to_zero()
      continue
    transforms[g] = optax.adamw(
        learning_rate=tower_schedule(optim_cfg, g, total_steps),
        b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay), mask=decay_mask)
  chain = []
  if optim_cfg.grad_clip and float(optim_cfg.grad_clip) > 0:
    chain.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
  chain.append(optax.multi_transform(transforms, group_labels(params)))
  tx = optax.chain(*chain)
  if int(optim_cfg.grad_accum_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(optim_cfg.grad_accum_steps))
  return tx


def trainable_groups(optim_cfg, groups, step: int) -> frozenset[str]:
  """Groups that receive gradients at `step` (used to stop gradients through frozen towers)."""
  frozen = set(optim_cfg.frozen)
  if step < int(optim_cfg.freeze_steps):
    frozen |= set(optim_cfg.freeze_towers)
  return frozenset(g for g in groups if g not in frozen)

"""Adam / AdamW as PyTorch computes them, with per-tower learning rates, freezing and one-cycle momentum.

Every top-level parameter group (a tower such as `s2_encoder`, a projection, the temperature) gets
its own transformation:

- towers in `optim.frozen` never train and carry no optimizer state (their update is zero);
- towers in `optim.freeze_towers` start training at update `optim.freeze_steps`; until then their
  Adam state is not touched, so when they start, their moments and bias correction start fresh,
  as PyTorch's Adam does for a parameter whose `requires_grad` is switched on (no gradient, no
  state, no step);
- every other group trains from the first update.

The update is PyTorch's (torch.optim.Adam / AdamW, `foreach` maths): moments with the *current*
beta1, bias corrections `1 - beta1**t` and `1 - beta2**t` with the group's own step count t,
`eps` added to the corrected square root; AdamW decays `p * (1 - lr * wd)` (decoupled), Adam adds
`wd * p` to the gradient (L2). The learning rate and beta1 follow the *global* update index, so a
group that starts late joins the schedule where it is (PyTorch's schedulers act on the optimizer,
not on parameters). With `optim.cycle_momentum` the one-cycle schedule moves beta1 between
`max_momentum` and `base_momentum` opposite to the learning rate, as torch.optim.lr_scheduler.
OneCycleLR does for Adam's betas[0].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
OPTIMIZERS = ("adamw", "adam")
DECAY = ("all", "matrices")


# ---- schedules ----------------------------------------------------------------------------------


def _cos_anneal(start, end, done, left):
  """PyTorch's `end + (start - end) / 2 * (cos(pi * pct) + 1)` with pct = done / (done + left),
  written as start * cos^2(pi pct / 2) + end * sin^2(pi pct / 2), each factor taken from the smaller
  of pct and 1 - pct. The same value, without the cancellations that cost float32 its precision
  when start and end are a million-fold apart (the authors' 1e-12 .. 1e-6 .. 1e-18): relative
  error stays near float32's own."""
  length = jnp.maximum(done + left, 1e-9)
  pct = jnp.clip(done / length, 0.0, 1.0)
  rest = jnp.clip(left / length, 0.0, 1.0)
  early = pct <= 0.5
  a, b = jnp.pi * pct / 2.0, jnp.pi * rest / 2.0
  cos_half = jnp.where(early, jnp.cos(a), jnp.sin(b))
  sin_half = jnp.where(early, jnp.sin(a), jnp.cos(b))
  return start * cos_half**2 + end * sin_half**2


def _two_phase(total_steps: int, pct_start: float, first: tuple[float, float], second: tuple[float, float]) -> Schedule:
  """OneCycleLR's two cosine phases: first[0] -> first[1] until step pct_start*T - 1, then
  second[0] -> second[1] at step T - 1 (PyTorch's phase boundaries, float end steps included)."""
  up_end = float(pct_start * total_steps) - 1.0
  down_end = float(total_steps - 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.result_type(float))  # float32, or float64 with jax_enable_x64
    up = _cos_anneal(first[0], first[1], jnp.maximum(step, 0.0), jnp.maximum(up_end - step, 0.0))
    down = _cos_anneal(second[0], second[1], jnp.maximum(step - up_end, 0.0), jnp.maximum(down_end - step, 0.0))
    return jnp.where(step <= up_end, up, down)

  return schedule


def one_cycle_schedule(
  total_steps: int, peak: float, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4
) -> Schedule:
  """The one-cycle learning rate of torch.optim.lr_scheduler.OneCycleLR (cos, two phases):
  peak/div_factor up to peak, then down to peak/(div_factor*final_div_factor)."""
  initial = peak / div_factor
  return _two_phase(total_steps, pct_start, (initial, peak), (peak, initial / final_div_factor))


def one_cycle_momentum(total_steps: int, pct_start: float, base: float = 0.85, top: float = 0.95) -> Schedule:
  """OneCycleLR's momentum (Adam's beta1) cycle: top down to base while the rate rises, back up after."""
  return _two_phase(total_steps, pct_start, (top, base), (base, top))


def base_schedule(optim_cfg, total_steps: int) -> Schedule:
  """The learning-rate schedule shared by all groups (before multipliers and freezing)."""
  lr = float(optim_cfg.lr)
  total_steps = max(int(total_steps), 1)
  if optim_cfg.schedule == "one_cycle":
    return one_cycle_schedule(
      total_steps, lr, float(optim_cfg.pct_start), float(optim_cfg.div_factor), float(optim_cfg.final_div_factor)
    )
  if optim_cfg.schedule == "warmup_cosine":
    warmup = min(int(optim_cfg.warmup_steps), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=total_steps,
      end_value=lr * float(optim_cfg.end_lr_factor),
    )
  if optim_cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}: expected 'one_cycle', 'warmup_cosine' or 'constant'")


def beta1_schedule(optim_cfg, total_steps: int) -> Schedule:
  """Adam's beta1 per update: the one-cycle momentum cycle when enabled, else optim.b1."""
  if optim_cfg.schedule == "one_cycle" and bool(optim_cfg.cycle_momentum):
    return one_cycle_momentum(
      max(int(total_steps), 1),
      float(optim_cfg.pct_start),
      float(optim_cfg.base_momentum),
      float(optim_cfg.max_momentum),
    )
  b1 = float(optim_cfg.b1)
  return lambda step: jnp.asarray(b1, jnp.result_type(float))


# ---- groups and masks ---------------------------------------------------------------------------


def group_of(path: tuple[str, ...]) -> str:
  """The parameter group of a parameter path: its top-level module name."""
  return path[0]


def decay_mask(params, which: str = "matrices") -> Any:
  """True where weight decay applies. 'all': every parameter (PyTorch's default, the authors');
  'matrices': kernels and embeddings only, not norms, biases or the temperature."""
  if which not in DECAY:
    raise ValueError(f"config.optim.decay={which!r}: expected one of {DECAY}")

  def wants_decay(path, leaf):
    if which == "all":
      return True
    names = [getattr(k, "key", str(k)) for k in path]
    last = names[-1]
    if last in ("bias", "scale") or "norm" in "/".join(names).lower() or names[0].startswith("logit"):
      return False
    return leaf.ndim >= 2

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def group_labels(params) -> Any:
  return jax.tree_util.tree_map_with_path(
    lambda path, _: group_of(tuple(getattr(k, "key", str(k)) for k in path)), params
  )


def freeze_until(optim_cfg, group: str) -> int:
  """The first update at which `group` trains (0 unless it is in optim.freeze_towers)."""
  return int(optim_cfg.freeze_steps) if group in tuple(optim_cfg.freeze_towers) else 0


def tower_schedule(optim_cfg, group: str, total_steps: int) -> Schedule:
  """The learning rate `group` gets at each update: base x multiplier, 0 while frozen."""
  base = base_schedule(optim_cfg, total_steps)
  multiplier = float(dict(optim_cfg.multipliers).get(group, 1.0))
  if group in tuple(optim_cfg.frozen):
    return lambda step: jnp.zeros([], jnp.float32)
  start = freeze_until(optim_cfg, group)

  def schedule(step):
    gate = (jnp.asarray(step) >= start).astype(jnp.float32)
    return base(step) * multiplier * gate

  return schedule


# ---- the update ---------------------------------------------------------------------------------


class TorchAdamState(NamedTuple):
  step: jnp.ndarray  # int32: updates seen (the schedules' index)
  count: jnp.ndarray  # int32: updates this group has taken (its bias-correction step)
  mu: Any
  nu: Any


def torch_adam(
  learning_rate: Schedule,
  beta1: Schedule,
  *,
  b2: float,
  eps: float,
  weight_decay: float,
  decoupled: bool,
  mask: Any,
  start: int = 0,
  updates_per_step: int = 1,
) -> optax.GradientTransformation:
  """PyTorch's Adam (decoupled=False) / AdamW (decoupled=True) for one parameter group.

  learning_rate and beta1 are read at the global step `state.step // updates_per_step` (several
  updates per trainer step share one scheduler step, as the authors' older per-sensor updates did).
  Until update `start` the group is frozen: zero update, state unchanged except `step`.
  `mask`: pytree of bools (or a callable params -> bools) where weight decay applies.
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)  # moments in the parameters' dtype (float32), as torch
    return TorchAdamState(
      step=jnp.zeros([], jnp.int32), count=jnp.zeros([], jnp.int32), mu=zeros, nu=jax.tree.map(jnp.copy, zeros)
    )

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("torch_adam needs params (weight decay)")
    index = state.step // updates_per_step
    lr = learning_rate(index)
    b1 = beta1(index)
    active = state.step >= start
    decay = mask(params) if callable(mask) else mask
    g = jax.tree.map(
      lambda g, p, m: g.astype(p.dtype) + (weight_decay * p if (m and not decoupled) else 0), grads, params, decay
    )
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: (b1 * m + (1.0 - b1) * g).astype(m.dtype), state.mu, g)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, g)
    # 1 - beta**t as -expm1(t log beta): torch computes it in float64 on the host; this keeps float32
    # from cancelling (1 - 0.999 in float32 is 1e-5 off).
    t = count.astype(jnp.result_type(float))
    bc1 = -jnp.expm1(t * jnp.log(b1))
    bc2_sqrt = jnp.sqrt(-jnp.expm1(t * math.log(b2)))

    def step(m, v, p, d):
      u = -lr * (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps)
      if decoupled and d:
        u = u - lr * weight_decay * p
      return jnp.where(active, u, 0.0).astype(p.dtype)

    updates = jax.tree.map(step, mu, nu, params, decay)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
    new_state = TorchAdamState(
      step=state.step + 1, count=jnp.where(active, count, state.count), mu=keep(mu, state.mu), nu=keep(nu, state.nu)
    )
    return updates, new_state

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg, params, total_steps: int, updates_per_step: int = 1) -> optax.GradientTransformation:
  """The optax transformation for `params` (a plain, unboxed pytree).

  updates_per_step: optimizer updates per trainer step (2 with train.sensor_updates='alternate').
  """
  groups = sorted(set(jax.tree.leaves(group_labels(params))))
  unknown = [g for g, m in dict(optim_cfg.multipliers).items() if g not in groups and float(m) != 1.0]
  unknown += [g for g in tuple(optim_cfg.frozen) + tuple(optim_cfg.freeze_towers) if g not in groups]
  if unknown:
    raise ValueError(
      f"config.optim names parameter groups that this model does not have: {sorted(set(unknown))}; "
      f"the groups are {groups}"
    )
  if optim_cfg.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={optim_cfg.name!r}: expected one of {OPTIMIZERS}")
  base = base_schedule(optim_cfg, total_steps)
  beta1 = beta1_schedule(optim_cfg, total_steps)
  which = str(optim_cfg.decay)
  transforms = {}
  for g in groups:
    if g in tuple(optim_cfg.frozen):
      # Never trained: no Adam moments to keep or update (the text tower of :sample is 22.7M values).
      transforms[g] = optax.set_to_zero()
      continue
    multiplier = float(dict(optim_cfg.multipliers).get(g, 1.0))
    transforms[g] = torch_adam(
      lambda step, m=multiplier: base(step) * m,
      beta1,
      b2=float(optim_cfg.b2),
      eps=float(optim_cfg.eps),
      weight_decay=float(optim_cfg.weight_decay),
      decoupled=optim_cfg.name == "adamw",
      mask=lambda p, w=which: decay_mask(p, w),
      start=freeze_until(optim_cfg, g) * updates_per_step,
      updates_per_step=updates_per_step,
    )
  chain = []
  if optim_cfg.grad_clip and float(optim_cfg.grad_clip) > 0:
    chain.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
  chain.append(optax.multi_transform(transforms, group_labels(params)))
  return optax.chain(*chain)  # gradient accumulation happens inside the step (closp_jax/train/step.py)


def trainable_groups(optim_cfg, groups, step: int) -> frozenset[str]:
  """Groups that receive gradients at `step` (used to stop gradients through frozen towers)."""
  frozen = set(optim_cfg.frozen)
  if step < int(optim_cfg.freeze_steps):
    frozen |= set(optim_cfg.freeze_towers)
  return frozenset(g for g in groups if g not in frozen)

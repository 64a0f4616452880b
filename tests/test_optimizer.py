"""Schedules, per-tower freeze gates and the weight-decay mask of the trainer's optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from closp_jax.train import optimizer as opt_lib


def _cfg(**kw):
  c = ml_collections.ConfigDict(
    dict(
      name="adamw",
      lr=1e-2,
      schedule="constant",
      warmup_steps=0,
      end_lr_factor=0.0,
      pct_start=0.3,
      div_factor=25.0,
      final_div_factor=1e4,
      cycle_momentum=False,
      base_momentum=0.85,
      max_momentum=0.95,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.1,
      decay="matrices",
      grad_clip=0.0,
      grad_accum_steps=1,
      multipliers={},
      freeze_towers=("enc",),
      freeze_steps=0,
      frozen=(),
    )
  )
  c.update(kw)
  return c


def _params():
  return {
    "enc": {"conv": {"kernel": jnp.ones((3, 4))}, "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)}},
    "proj": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
    "logit_scale": jnp.zeros([]),
  }


@pytest.mark.torch
def test_one_cycle_matches_torch_onecyclelr():
  torch = pytest.importorskip("torch")
  total, peak = 97, 1e-6
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([p], lr=peak)
  sched = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=peak, total_steps=total, pct_start=0.3, anneal_strategy="cos", cycle_momentum=False
  )
  expected = []
  for i in range(total):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    if i < total - 1:
      sched.step()
  ours = opt_lib.one_cycle_schedule(total, peak, 0.3, 25.0, 1e4)
  got = np.array([float(ours(i)) for i in range(total)])
  np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-14)


# The authors' schedule: OneCycleLR(max_lr=1e-6, pct_start=0.1, div_factor=1e6, final_div_factor=1e6)
# with its default momentum cycling of AdamW's beta1 (0.95 -> 0.85 -> 0.95).
PAPER_ONE_CYCLE = dict(
  schedule="one_cycle",
  lr=1e-6,
  pct_start=0.1,
  div_factor=1e6,
  final_div_factor=1e6,
  cycle_momentum=True,
  base_momentum=0.85,
  max_momentum=0.95,
  weight_decay=0.01,
  decay="all",
)


def _torch_one_cycle(torch, total, opt):
  return torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=1e-6, total_steps=total, pct_start=0.1, div_factor=1e6, final_div_factor=1e6
  )


@pytest.mark.torch
@pytest.mark.parametrize("total", [1000, 97])
def test_paper_lr_and_beta1_per_step_match_torch(total):
  """lr and beta1 of every update, read from torch.optim.AdamW's param group as OneCycleLR sets them
  before each optimizer.step(), against ours at the same update index (relative 1e-6)."""
  torch = pytest.importorskip("torch")
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([p], lr=1e-6)
  sched = _torch_one_cycle(torch, total, opt)
  lrs, betas = [], []
  for i in range(total):
    lrs.append(opt.param_groups[0]["lr"])
    betas.append(opt.param_groups[0]["betas"][0])
    opt.step()
    if i < total - 1:
      sched.step()
  cfg = _cfg(**PAPER_ONE_CYCLE)
  ours_lr = opt_lib.base_schedule(cfg, total)
  ours_b1 = opt_lib.beta1_schedule(cfg, total)
  got_lr = np.array([float(ours_lr(i)) for i in range(total)], np.float64)
  got_b1 = np.array([float(ours_b1(i)) for i in range(total)], np.float64)
  np.testing.assert_allclose(got_lr, np.array(lrs), rtol=1e-6, atol=0)
  np.testing.assert_allclose(got_b1, np.array(betas), rtol=1e-6, atol=0)
  # the shape itself: starts at 1e-12 and beta1 0.95; with T=1000 the peak 1e-6 (beta1 0.85) is
  # update 0.1*T - 1 = 99 and the last update's rate is 1e-18
  assert got_lr[0] == pytest.approx(1e-12, rel=1e-6) and got_b1[0] == pytest.approx(0.95, rel=1e-6)
  if total == 1000:
    assert got_lr[99] == pytest.approx(1e-6, rel=1e-6) and got_b1[99] == pytest.approx(0.85, rel=1e-6)
    assert got_lr[-1] == pytest.approx(1e-18, rel=1e-6)


def _torch_params(torch, tree):
  return {k: torch.nn.Parameter(torch.tensor(np.asarray(v, np.float64))) for k, v in _flat_items(tree)}


def _flat_items(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat_items(v, prefix + k + ".")
    else:
      yield prefix + k, v


@pytest.mark.torch
@pytest.mark.parametrize("name,freeze_steps", [("adamw", 0), ("adamw", 4), ("adam", 0)])
def test_updates_follow_torch_adam_and_adamw_with_one_cycle(name, freeze_steps):
  """Parameters after each update equal torch's optimizer driven by OneCycleLR (float64 on both
  sides, lr raised to 1e-2 so that updates are visible). A tower frozen for the first updates joins
  later with fresh moments and bias correction, as a torch parameter whose requires_grad is switched
  on (its gradient is None until then, so torch keeps no state for it)."""
  torch = pytest.importorskip("torch")
  jax.config.update("jax_enable_x64", True)
  try:
    total = 12
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), _params())
    cfg = _cfg(
      **{**PAPER_ONE_CYCLE, "lr": 1e-2, "weight_decay": 0.1},
      name=name,
      freeze_towers=("enc",),
      freeze_steps=freeze_steps,
    )
    tx = opt_lib.make_optimizer(cfg, params, total)
    state = tx.init(params)
    tparams = _torch_params(torch, params)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    opt = cls(list(tparams.values()), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
      opt, max_lr=1e-2, total_steps=total, pct_start=0.1, div_factor=1e6, final_div_factor=1e6
    )
    rng = np.random.default_rng(0)
    for i in range(total):
      grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
      for k, g in _flat_items(grads):
        frozen = k.startswith("enc.") and i < freeze_steps
        tparams[k].grad = None if frozen else torch.tensor(np.asarray(g))
      opt.step()
      sched.step()
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      for k, v in _flat_items(params):
        np.testing.assert_allclose(
          np.asarray(v), tparams[k].detach().numpy(), rtol=1e-10, atol=1e-14, err_msg=f"{k} after update {i}"
        )
  finally:
    jax.config.update("jax_enable_x64", False)


def test_decay_all_covers_every_parameter():
  mask = opt_lib.decay_mask(_params(), "all")
  assert all(jax.tree.leaves(mask))


def test_decay_mask_excludes_norms_biases_and_temperature():
  mask = opt_lib.decay_mask(_params())
  assert mask["enc"]["conv"]["kernel"] and mask["proj"]["kernel"]
  assert not mask["enc"]["norm"]["scale"] and not mask["enc"]["norm"]["bias"]
  assert not mask["proj"]["bias"] and not mask["logit_scale"]


def test_frozen_tower_does_not_move_until_freeze_steps_then_trains():
  cfg = _cfg(freeze_steps=3)
  params = _params()
  tx = opt_lib.make_optimizer(cfg, params, total_steps=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  history = []
  for _ in range(5):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    history.append(params)
  # steps 0..2 frozen: neither Adam nor weight decay moves the tower
  for h in history[:3]:
    np.testing.assert_array_equal(h["enc"]["conv"]["kernel"], 1.0)
  assert not np.allclose(history[3]["enc"]["conv"]["kernel"], 1.0)
  # the projection trains from the start
  assert not np.allclose(history[0]["proj"]["kernel"], 1.0)


def test_permanently_frozen_and_multipliers():
  cfg = _cfg(frozen=("enc",), freeze_towers=(), multipliers={"proj": 0.5})
  params = _params()
  s_enc = opt_lib.tower_schedule(cfg, "enc", 10)
  s_proj = opt_lib.tower_schedule(cfg, "proj", 10)
  assert float(s_enc(5)) == 0.0
  assert float(s_proj(5)) == pytest.approx(0.5e-2)
  tx = opt_lib.make_optimizer(cfg, params, 10)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_array_equal(updates["enc"]["conv"]["kernel"], 0.0)


def test_unknown_group_is_named():
  with pytest.raises(ValueError, match="s3_encoder"):
    opt_lib.make_optimizer(_cfg(multipliers={"s3_encoder": 2.0}), _params(), 10)


def test_trainable_groups_follow_the_freeze_schedule():
  cfg = _cfg(freeze_towers=("enc",), freeze_steps=2, frozen=("text",))
  groups = ["enc", "proj", "text"]
  assert opt_lib.trainable_groups(cfg, groups, 0) == {"proj"}
  assert opt_lib.trainable_groups(cfg, groups, 2) == {"enc", "proj"}

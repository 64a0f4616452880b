"""Schedules, per-tower freeze gates and the weight-decay mask of the trainer's optimizer."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from closp_jax.train import optimizer as opt_lib


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      lr=1e-2, schedule="constant", warmup_steps=0, end_lr_factor=0.0, pct_start=0.3, div_factor=25.0,
      final_div_factor=1e4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=0.0,
      grad_accum_steps=1, multipliers={}, freeze_towers=("enc",), freeze_steps=0, frozen=()))
  c.update(kw)
  return c


def _params():
  return {"enc": {"conv": {"kernel": jnp.ones((3, 4))}, "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)}},
          "proj": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
          "logit_scale": jnp.zeros([])}


@pytest.mark.torch
def test_one_cycle_matches_torch_onecyclelr():
  torch = pytest.importorskip("torch")
  total, peak = 97, 1e-6
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([p], lr=peak)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=0.3,
                                              anneal_strategy="cos", cycle_momentum=False)
  expected = []
  for i in range(total):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    if i < total - 1:
      sched.step()
  ours = opt_lib.one_cycle_schedule(total, peak, 0.3, 25.0, 1e4)
  got = np.array([float(ours(i)) for i in range(total)])
  np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-14)


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

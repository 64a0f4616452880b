"""The train step in-process: dropout keys, deterministic evaluation, the objective's terms,
alternating per-sensor updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO

from closp_jax.config import load_config
from closp_jax.models.towers import CLOSP
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup
from closp_jax.train import step as step_lib
from closp_jax.train.optimizer import TorchAdamState

B = 8


def small_config(**overrides):
  """GeoCLOSP's sample recipe with a 1-layer random text tower (fast), overridden by dotted keys."""
  cfg = load_config(f"{REPO}/configs/geoclosp.py")
  cfg.unlock()
  cfg.init.text = ""
  cfg.model.text.update(dict(layers=1, hidden=32, heads=2, intermediate=64))
  cfg.model.text.text_projection = True
  cfg.model.location.update(dict(degree=3, hidden=16, out=16))
  cfg.data.max_len = 8
  cfg.optim.frozen = ()
  cfg.optim.schedule = "constant"
  cfg.optim.grad_clip = 0.0
  for key, value in overrides.items():
    node = cfg
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return cfg


def batch(seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for sensor, chans in (("s2", 13), ("s1", 2)):
    out[sensor] = {
      "image": rng.normal(size=(B, 32, 32, chans)).astype(np.float32),
      "input_ids": rng.integers(1, 1000, size=(B, 8)).astype(np.int32),
      "attention_mask": np.ones((B, 8), np.int32),
      "lonlat": np.stack([rng.uniform(-180, 180, B), rng.uniform(-60, 60, B)], -1).astype(np.float32),
      "text_id": np.arange(B, dtype=np.int32),
    }
  return out


_BUILT = {}


def build(cfg, seed=0):
  """(model, initial state with run key `seed`, jitted step); compiled once per config."""
  key = cfg.to_json(sort_keys=True)
  if key not in _BUILT:
    mesh = mesh_lib.make_mesh(cfg.mesh)
    model = CLOSP(cfg.model)
    variables, shardings = setup.init_variables(model, cfg, mesh, jax.random.key(0))
    updates_per_step = 2 if cfg.train.sensor_updates == "alternate" else 1
    optimizer = setup.make_optimizer(cfg.optim, variables["params"], 10, updates_per_step=updates_per_step)
    phase = step_lib.Phase(frozenset(variables["params"]), text_table=False)
    fn = jax.jit(step_lib.make_train_step(cfg, phase, model=model, optimizer=optimizer))
    _BUILT[key] = (model, variables, shardings, mesh, optimizer, fn)
  model, variables, shardings, mesh, optimizer, fn = _BUILT[key]
  state, _ = setup.create_state(variables, optimizer, shardings, mesh, seed)
  return model, state, fn


@pytest.mark.slow
def test_dropout_masks_follow_the_run_key_and_the_step():
  """With dropout on (text 0.1, SatCLIP 0.5) the loss of one step depends on the run's key, not only
  on the weights and the batch; the same key gives the same step bit for bit."""
  cfg = small_config(**{"model.text.dropout": 0.1, "model.location.dropout": 0.5})
  _, state_a, fn = build(cfg, seed=1)
  _, state_b, _ = build(cfg, seed=2)
  _, state_a2, _ = build(cfg, seed=1)
  b = batch()
  _, m_a = fn(state_a, b, jnp.zeros((1, 1)))
  _, m_b = fn(state_b, b, jnp.zeros((1, 1)))
  _, m_a2 = fn(state_a2, b, jnp.zeros((1, 1)))
  assert float(m_a["loss"]) == float(m_a2["loss"])
  assert float(m_a["loss/s2_text"]) != float(m_b["loss/s2_text"])
  assert float(m_a["loss/s2_location"]) != float(m_b["loss/s2_location"])
  # a later step of the same run draws other masks: step 1 with step 0's weights differs from step 0
  later = state_a2.replace(step=state_a2.step + 1)
  _, m_later = fn(later, b, jnp.zeros((1, 1)))
  assert float(m_later["loss"]) != float(m_a["loss"])


def test_without_dropout_the_key_does_not_matter():
  cfg = small_config(**{"model.text.dropout": 0.0, "model.location.dropout": 0.0, "model.location.enabled": False})
  _, state_a, fn = build(cfg, seed=1)
  _, state_b, _ = build(cfg, seed=2)
  b = batch()
  assert float(fn(state_a, b, jnp.zeros((1, 1)))[1]["loss"]) == float(fn(state_b, b, jnp.zeros((1, 1)))[1]["loss"])


def test_evaluation_is_deterministic_whatever_the_key():
  cfg = small_config(**{"model.text.dropout": 0.1, "model.location.dropout": 0.5})
  model, state, _ = build(cfg)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  b = batch()
  runs = [step_lib.compute_terms(model, variables, b, cfg, train=False, key=jax.random.key(k))[0] for k in (0, 1)]
  for k in runs[0]:
    assert float(runs[0][k]) == float(runs[1][k])


def _ce(logits):
  """Mean cross-entropy with target i for row i (numpy, float64)."""
  logits = np.asarray(logits, np.float64)
  m = logits.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
  return float(np.mean(lse - np.diag(logits)))


@pytest.mark.parametrize("directions", ["both", "location_to_image"])
def test_geoclosp_objective_is_the_authors_mean_of_cross_entropies(directions):
  """The objective of one GeoCLOSP step, recomputed in numpy from the towers' embeddings as the
  authors' train.py does it: per sensor the mean over the logit matrices it returns of
  CrossEntropy(logits, arange) -- (img->txt, txt->img, loc->img, img->loc) divided by 4, or, in the
  earlier version, the first three divided by 4 -- then the mean over the two sensors."""
  cfg = small_config(
    **{
      "loss.location_directions": directions,
      "model.temperature.learnable": False,
      "model.temperature.init_scale": 3.0,
    }
  )
  model, state, _ = build(cfg)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  b = batch()
  terms, _, scale = step_lib.compute_terms(model, variables, b, cfg, train=False)
  got = float(step_lib.objective(terms, step_lib.loss_weights(cfg)))
  per_sensor = []
  for sensor in ("s2", "s1"):
    img = np.asarray(
      model.apply(variables, b[sensor]["image"], method=model.encode_s2 if sensor == "s2" else model.encode_s1),
      np.float64,
    )
    txt = np.asarray(
      model.apply(variables, b[sensor]["input_ids"], b[sensor]["attention_mask"], method=model.encode_text), np.float64
    )
    loc = np.asarray(model.apply(variables, b[sensor]["lonlat"], method=model.encode_location), np.float64)
    s = float(scale)
    ces = [_ce(s * img @ txt.T), _ce(s * txt @ img.T), _ce(s * loc @ img.T)]
    if directions == "both":
      ces.append(_ce(s * img @ loc.T))
    per_sensor.append(sum(ces) / 4)
  assert got == pytest.approx(np.mean(per_sensor), rel=1e-5)


@pytest.mark.slow
def test_alternate_updates_are_an_s2_update_then_an_s1_update():
  """One 'alternate' step equals two joint steps, the first with only the S2 terms, the second with
  only the S1 terms, sharing the optimizer state (Adam's count goes 1, 2) and one learning rate."""
  alt = small_config(
    **{
      "train.sensor_updates": "alternate",
      "model.location.enabled": False,
      "loss.weights.s2_location": 0.0,
      "loss.weights.s1_location": 0.0,
    }
  )
  _, state, fn = build(alt)
  b = batch()
  after, metrics = fn(state, b, jnp.zeros((1, 1)))

  def only(sensor):
    other = "s1" if sensor == "s2" else "s2"
    return small_config(
      **{
        "model.location.enabled": False,
        "loss.weights.s2_location": 0.0,
        "loss.weights.s1_location": 0.0,
        f"loss.weights.{other}_text": 0.0,
      }
    )

  _, ref, _ = build(only("s2"))
  for sensor in ("s2", "s1"):
    _, _, fn_ref = build(only(sensor))
    ref, m = fn_ref(ref, b, jnp.zeros((1, 1)))
    assert float(m[f"loss/{sensor}_text"]) == pytest.approx(float(metrics[f"loss/{sensor}_text"]), rel=1e-6)
  for a, r in zip(jax.tree.leaves(after.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-7)
  moved = sum(not np.allclose(a, s) for a, s in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)))
  assert moved > 0


def test_paper_recipe_keeps_the_towers_frozen_and_trains_the_projections():
  cfg = load_config(f"{REPO}/configs/geoclosp.py:paper")
  assert set(cfg.optim.frozen) == {"s2_encoder", "s1_encoder", "text_model", "location_encoder"}
  assert cfg.data.normalization.s1 == "none" and cfg.data.normalization.s2 == "scale"
  assert cfg.data.augment == "flips" and cfg.optim.cycle_momentum and cfg.optim.decay == "all"
  assert cfg.model.text.dropout == 0.1 and cfg.model.location.dropout == 0.5


@pytest.mark.slow
def test_gradient_accumulation_is_one_update_on_the_mean_gradient_of_the_micro_batches():
  """grad_accum_steps=2: one update from the mean of the gradients of rows 0,2,4,... and rows 1,3,5,...
  (each its own contrastive set); Adam's step count advances once. Checked against gradients taken
  directly from compute_terms on those two halves, then the optimizer applied by hand."""
  cfg = small_config(
    **{
      "optim.grad_accum_steps": 2,
      "model.location.enabled": False,
      "loss.weights.s2_location": 0.0,
      "loss.weights.s1_location": 0.0,
      "model.text.dropout": 0.0,
      "optim.freeze_towers": (),
    }
  )
  model, state, fn = build(cfg)
  b = batch()
  after, metrics = fn(state, b, jnp.zeros((1, 1)))
  weights = step_lib.loss_weights(cfg)

  def loss(params, half):
    terms, _, _ = step_lib.compute_terms(
      model, {"params": params, "batch_stats": state.batch_stats}, half, cfg, train=True
    )
    return step_lib.objective(terms, weights)

  halves = [jax.tree.map(lambda x, i=i: x[i::2], b) for i in range(2)]
  grads = [jax.grad(loss)(state.params, h) for h in halves]
  mean = jax.tree.map(lambda a, c: (a + c) / 2, *grads)
  optimizer = setup.make_optimizer(cfg.optim, state.params, 10)
  updates, opt_state = optimizer.update(mean, state.opt_state, state.params)
  want = jax.tree.map(lambda p, u: p + u, state.params, updates)
  # Adam's first update is about lr * sign(g): compare where the gradient is well above float32 noise.
  for a, w, g in zip(jax.tree.leaves(after.params), jax.tree.leaves(want), jax.tree.leaves(mean)):
    clear = np.abs(np.asarray(g)) > 1e-5
    np.testing.assert_allclose(np.asarray(a)[clear], np.asarray(w)[clear], rtol=2e-5, atol=1e-7)
  assert sum(int((np.abs(np.asarray(g)) > 1e-5).sum()) for g in jax.tree.leaves(mean)) > 1000
  assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(mean)), rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(np.mean([float(loss(state.params, h)) for h in halves]), rel=1e-5)
  adam = lambda x: isinstance(x, TorchAdamState)
  counts = [int(s.count) for s in jax.tree.leaves(after.opt_state, is_leaf=adam) if adam(s)]
  assert counts and set(counts) == {1}


@pytest.mark.slow
def test_a_tower_unfreezes_at_the_configured_update_with_accumulation_on():
  """freeze_steps=2 with grad_accum_steps=2: the phases of updates 0 and 1 keep the S2 tower frozen
  and update 2's trains it; run through the step, the tower does not move in updates 0-1 and moves in
  update 2, and the learning rate of each update is the schedule's at that update."""
  cfg = small_config(
    **{
      "optim.grad_accum_steps": 2,
      "optim.freeze_towers": ("s2_encoder",),
      "optim.freeze_steps": 2,
      "model.location.enabled": False,
      "loss.weights.s2_location": 0.0,
      "loss.weights.s1_location": 0.0,
      "model.text.dropout": 0.0,
    }
  )
  model, state, _ = build(cfg)
  optimizer = setup.make_optimizer(cfg.optim, state.params, 10)
  groups = sorted(state.params)
  b = batch()
  history = [state.params["s2_encoder"]]
  compiled = {}
  for update in range(3):
    phase = step_lib.phase_at(cfg, groups, update)
    assert ("s2_encoder" in phase.trainable) == (update >= 2)
    if phase not in compiled:
      compiled[phase] = jax.jit(step_lib.make_train_step(cfg, phase, model=model, optimizer=optimizer))
    state, _ = compiled[phase](state, b, jnp.zeros((1, 1)))
    history.append(state.params["s2_encoder"])
    assert int(state.step) == update + 1
  same = lambda a, c: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
  assert same(history[0], history[1]) and same(history[1], history[2])
  assert not same(history[2], history[3])


def test_a_training_step_updates_both_towers_batchnorm_statistics():
  """Train-mode BatchNorm moves the running statistics of the S2 and of the S1 tower (flax returns the
  whole batch_stats collection from each tower's pass; the S1 pass must not put back a stale copy of
  the S2 statistics), and they move to what the S2 tower alone computes for that batch."""
  cfg = small_config(
    **{
      "model.location.enabled": False,
      "loss.weights.s2_location": 0.0,
      "loss.weights.s1_location": 0.0,
      "model.text.dropout": 0.0,
    }
  )
  model, state, fn = build(cfg)
  b = batch()
  after, _ = fn(state, b, jnp.zeros((1, 1)))
  _, alone = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats},
    b["s2"]["image"],
    train=True,
    method=model.encode_s2,
    mutable=["batch_stats"],
  )
  for tower in ("s2_encoder", "s1_encoder"):
    before, now = jax.tree.leaves(state.batch_stats[tower]), jax.tree.leaves(after.batch_stats[tower])
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(before, now)), tower
  for got, want in zip(
    jax.tree.leaves(after.batch_stats["s2_encoder"]), jax.tree.leaves(alone["batch_stats"]["s2_encoder"])
  ):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_the_text_table_path_equals_running_the_frozen_text_model():
  """With the text model frozen and without dropout the step looks its outputs up in the table of the
  dataset's texts and applies the (trained) text projection itself: the loss terms and the projection's
  gradient are those of running the text model on the batch's tokens."""
  cfg = small_config(**{"model.text.dropout": 0.0, "optim.frozen": ("text_model",)})
  model, state, _ = build(cfg)
  groups = sorted(state.params)
  assert "text_projection" in groups
  phase = step_lib.phase_at(cfg, groups, 0)
  assert phase.text_table and "text_projection" in phase.trainable and "text_model" not in phase.trainable
  b = jax.tree.map(jnp.asarray, batch(3))
  ids = jnp.concatenate([b["s2"]["input_ids"], b["s1"]["input_ids"]])
  mask = jnp.concatenate([b["s2"]["attention_mask"], b["s1"]["attention_mask"]])
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  table = model.apply(variables, ids, mask, method=model.text_backbone)  # rows 0..2B-1
  b["s1"]["text_id"] = b["s1"]["text_id"] + B

  def loss(params, text_table):
    v = {"params": params, "batch_stats": state.batch_stats}
    terms, _, _ = step_lib.compute_terms(model, v, b, cfg, train=True, text_table=text_table, key=jax.random.key(1))
    return sum(terms.values()), terms

  (full, full_terms), g_full = jax.value_and_grad(loss, has_aux=True)(state.params, None)
  (looked, looked_terms), g_table = jax.value_and_grad(loss, has_aux=True)(state.params, table)
  for k in full_terms:
    np.testing.assert_allclose(looked_terms[k], full_terms[k], rtol=1e-6)
  for a, c in zip(jax.tree.leaves(g_table["text_projection"]), jax.tree.leaves(g_full["text_projection"])):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(jax.tree.leaves(g_full["text_projection"])[0]).max()) > 0  # the projection does learn

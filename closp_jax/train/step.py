"""The CLOSP / GeoCLOSP training objective and the jitted train step.

Each step takes one Sentinel-2 batch and one Sentinel-1 batch (not paired). Each sensor's
image embeddings are contrasted with their own texts; text is the only bridge between sensors
(or, with `loss.cross_sensor_negatives`, both sensors' images form one contrastive set).
GeoCLOSP adds location<->image terms. The objective is the weighted mean of the terms
(`objective`), the same function for training and validation.

`train.sensor_updates`: 'joint' (one update from the mean of both sensors' losses, the authors'
final train.py) or 'alternate' (an S2 update, then an S1 update on the updated parameters, the
authors' earlier train.py; both share one learning-rate step).

Dropout (text 0.1, SatCLIP 0.5 by default) runs in training with the key
fold_in(state.rng, state.step): every step draws new masks, a resumed run draws the same ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from closp_jax import losses
from closp_jax.models import embed as embed_lib
from closp_jax.parallel.mesh import BATCH_AXES
from closp_jax.train.optimizer import trainable_groups
from closp_jax.train.state import TrainState

SENSORS = ("s2", "s1")
LOCATION_DIRECTIONS = ("both", "location_to_image")
SENSOR_UPDATES = ("joint", "alternate")


def loss_weights(cfg) -> dict[str, float]:
  """Active loss terms and their weights (zero-weight terms are not computed)."""
  w = {k: float(v) for k, v in cfg.loss.weights.items()}
  if not cfg.model.location.enabled:
    w = {k: v for k, v in w.items() if not k.endswith("_location")}
  if cfg.loss.cross_sensor_negatives:
    text_w = w.pop("s2_text", 0.0) + w.pop("s1_text", 0.0)
    w["all_text"] = text_w / 2.0
  return {k: v for k, v in w.items() if v > 0}


def objective(terms: dict, weights: dict) -> jnp.ndarray:
  """The weighted mean of the loss terms present (training and validation alike)."""
  norm = sum(weights[k] for k in terms)
  return sum(weights[k] * terms[k] for k in terms) / norm


def uses_text_table(cfg, trainable) -> bool:
  """A frozen text model without dropout gives every text one output: computed once for the dataset's
  texts, looked up by text_id; a text projection on top (trained or not) is applied in the step."""
  return "text_model" not in trainable and float(cfg.model.text.dropout) == 0


def step_key(state: TrainState) -> jax.Array:
  """The step's random key: fold_in(the run's key, the step)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def contrast_fn(cfg, scale, bias, mesh=None) -> Callable:
  """(x, y) -> the configured symmetric contrastive loss (softmax or sigmoid, dense or chunked)."""
  kind = cfg.loss.kind

  def contrast(x, y):
    return losses.contrastive_loss(
      x,
      y,
      scale,
      bias if kind == "sigmoid" else None,
      kind=kind,
      mesh=mesh,
      chunked=bool(cfg.loss.chunked) and mesh is not None,
      axis_names=BATCH_AXES,
    )

  return contrast


def location_term(cfg, img, loc, scale, contrast) -> jnp.ndarray:
  """The location<->image term. 'both': symmetric (location->image and image->location);
  'location_to_image': only location->image, counted as half a symmetric term (the other
  direction contributes zero), as the authors' earlier train.py averaged 3 of 4 cross-entropies."""
  if cfg.loss.location_directions == "both":
    return contrast(img, loc)
  return 0.5 * losses.directional_softmax_loss(loc, img, scale)


def sensor_terms(cfg, sensor: str, img, txt, loc, scale, bias, weights: dict, mesh=None) -> dict:
  """Loss terms of one sensor from its (normalised) image, text and location embeddings."""
  contrast = contrast_fn(cfg, scale, bias, mesh)
  terms = {}
  if f"{sensor}_text" in weights:
    terms[f"{sensor}_text"] = contrast(img, txt)
  if f"{sensor}_location" in weights and loc is not None:
    terms[f"{sensor}_location"] = location_term(cfg, img, loc, scale, contrast)
  return terms


def _encode_images(model, variables, images, sensor: str, train: bool, rngs):
  """(embeddings, {'<sensor>_encoder': its updated BatchNorm statistics} or {})."""
  method = model.encode_s2 if sensor == "s2" else model.encode_s1
  if train:
    emb, updates = model.apply(variables, images, train=True, method=method, mutable=["batch_stats"], rngs=rngs)
    # flax returns the whole collection: keep only this tower's statistics, or the other sensor's pass
    # would put back its stale copy of them
    tower = f"{sensor}_encoder"
    stats = updates.get("batch_stats", {})
    return emb, ({tower: stats[tower]} if tower in stats else {})
  return model.apply(variables, images, train=False, method=method), {}


def compute_terms(model, variables, batch, cfg, *, train: bool, mesh=None, text_table=None, key=None, sensors=SENSORS):
  """Per-term losses of `sensors`, the updated BatchNorm statistics and the logit scale.

  key: the step's random key (dropout); needed when train=True and a tower has dropout.
  """
  scale, bias = model.apply(variables, method=model.logit_params)
  weights = loss_weights(cfg)

  def rngs(i: int):
    return {"dropout": jax.random.fold_in(key, i)} if (train and key is not None) else None

  new_stats = {}
  img, txt, loc = {}, {}, {}
  for s in sensors:
    b = batch[s]
    i = SENSORS.index(s)
    img[s], upd = _encode_images(model, variables, b["image"], s, train, rngs(3 * i))
    new_stats.update(upd)
    if text_table is not None:  # the frozen text model's outputs; the projection (if any) runs here
      txt[s] = model.apply(variables, jnp.take(text_table, b["text_id"], axis=0), method=model.project_text)
    else:
      txt[s] = model.apply(
        variables, b["input_ids"], b["attention_mask"], train=train, method=model.encode_text, rngs=rngs(3 * i + 1)
      )
    loc[s] = None
    if f"{s}_location" in weights:
      loc[s] = model.apply(variables, b["lonlat"], train=train, method=model.encode_location, rngs=rngs(3 * i + 2))

  terms = {}
  if "all_text" in weights and len(sensors) == len(SENSORS):
    terms["all_text"] = contrast_fn(cfg, scale, bias, mesh)(
      jnp.concatenate([img["s2"], img["s1"]]), jnp.concatenate([txt["s2"], txt["s1"]])
    )
  for s in sensors:
    terms.update(sensor_terms(cfg, s, img[s], txt[s], loc[s], scale, bias, weights, mesh))
  return terms, new_stats, scale


@dataclasses.dataclass(frozen=True)
class Phase:
  """What a compiled step does at a point of the run: which parameter groups train (the rest sit
  behind stop_gradient, so no backward pass runs through them) and whether text embeddings come from
  the precomputed table of every dataset text (a frozen text tower without dropout)."""

  trainable: frozenset
  text_table: bool


def phase_at(cfg, groups, step: int) -> Phase:
  """The Phase of update `step` (0-based) for a model with parameter groups `groups`."""
  trainable = frozenset(trainable_groups(cfg.optim, groups, step))
  return Phase(trainable, uses_text_table(cfg, trainable))


def phase_name(phase: Phase, groups) -> str:
  """Short name of a phase for logs: 'all groups train' or 'trains a, b', plus ', text table'."""
  groups = sorted(groups)
  trains = "all groups train" if set(groups) <= phase.trainable else "trains " + ", ".join(sorted(phase.trainable))
  return trains + (", text table" if phase.text_table else "")


def make_train_step(cfg, phase: Phase, *, model, optimizer: optax.GradientTransformation, mesh=None) -> Callable:
  """(state, batch, text_table) -> (state, metrics): one optimizer update; jit it with shardings.

  The one step builder of the project (the loop, the tests and the benchmarks use it). With
  `optim.grad_accum_steps` = k the batch (per sensor B) is split into k micro-batches of B / k
  (rows i, i+k, ..., so each stays spread over the data axes), their gradients are averaged and
  one update follows: steps, the learning-rate schedule and freezing all count updates. Each
  micro-batch is its own contrastive set, as with any accumulation. On a non-finite loss or
  gradient norm the state is left unchanged (only the step advances) and metrics['finite'] is False.
  """
  weights = loss_weights(cfg)
  trainable, use_text_table = phase.trainable, phase.text_table
  if cfg.train.sensor_updates == "alternate" and "all_text" in weights:
    raise ValueError(
      "config.train.sensor_updates='alternate' updates one sensor at a time; it cannot "
      "use loss.cross_sensor_negatives (both sensors in one contrastive set)"
    )
  groups = (SENSORS,) if cfg.train.sensor_updates == "joint" else tuple((s,) for s in SENSORS)
  accum = int(cfg.optim.grad_accum_steps)

  def loss_fn(params, batch_stats, batch, text_table, key, sensors):
    params = {k: (v if k in trainable else jax.lax.stop_gradient(v)) for k, v in params.items()}
    variables = {"params": params, "batch_stats": batch_stats}
    terms, new_stats, scale = compute_terms(
      model,
      variables,
      batch,
      cfg,
      train=True,
      mesh=mesh,
      text_table=text_table if use_text_table else None,
      key=key,
      sensors=sensors,
    )
    return objective(terms, weights), (terms, new_stats, scale)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(params, batch_stats, batch, text_table, key, sensors):
    """(loss, terms, new batch_stats, scale, grads), averaged over the micro-batches."""
    if accum == 1:
      (loss, (terms, new_stats, scale)), grads = grad_fn(params, batch_stats, batch, text_table, key, sensors)
      return loss, terms, {**batch_stats, **new_stats} if batch_stats else batch_stats, scale, grads

    def micro(i):
      return jax.tree.map(lambda x: jnp.take(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), i, axis=1), batch)

    def body(carry, i):
      stats, acc = carry
      (loss, (terms, new_stats, scale)), grads = grad_fn(
        params, stats, micro(i), text_table, jax.random.fold_in(key, i), sensors
      )
      stats = {**stats, **new_stats} if stats else stats
      acc = jax.tree.map(lambda a, x: a + x / accum, acc, (loss, terms, scale, grads))
      return (stats, acc), None

    shapes = jax.eval_shape(lambda: grad_fn(params, batch_stats, micro(0), text_table, key, sensors))
    (_, (terms0, _, scale0)), grads0 = shapes
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (shapes[0][0], terms0, scale0, grads0))
    (stats, (loss, terms, scale, grads)), _ = jax.lax.scan(body, (batch_stats, zeros), jnp.arange(accum))
    return loss, terms, stats, scale, grads

  def update(state: TrainState, batch, text_table, key, sensors):
    loss, terms, batch_stats, scale, grads = gradients(state.params, state.batch_stats, batch, text_table, key, sensors)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state), (loss, grad_norm, terms, scale)

  def step(state: TrainState, batch, text_table):
    key = step_key(state)
    new_state, losses_, norms, terms = state, [], [], {}
    for i, sensors in enumerate(groups):
      new_state, (loss, grad_norm, t, scale) = update(new_state, batch, text_table, jax.random.fold_in(key, i), sensors)
      losses_.append(loss)
      norms.append(grad_norm)
      terms.update(t)
    loss = losses_[0] if len(groups) == 1 else objective(terms, weights)
    grad_norm = norms[0] if len(norms) == 1 else jnp.sqrt(sum(n * n for n in norms) / len(norms))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for v in terms.values():
      finite &= jnp.isfinite(v)
    new_state = new_state.replace(step=state.step + 1)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = keep(new_state, state.replace(step=state.step + 1))
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "logit_scale": scale,
      "finite": finite,
      **{f"loss/{k}": v for k, v in terms.items()},
    }
    return new_state, metrics

  return step


def text_table(model, variables, tokenizer, texts, cfg) -> jnp.ndarray:
  """The frozen text model's output for every distinct dataset text [len(texts), hidden] (the table a
  Phase with text_table=True looks texts up in; CLOSP.project_text turns rows into embeddings)."""
  return jnp.asarray(
    embed_lib.embed_texts(model, variables, tokenizer, texts, max_len=int(cfg.data.max_len), backbone=True)
  )

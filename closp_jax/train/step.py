"""The CLOSP / GeoCLOSP training objective and the jitted train and eval steps.

Each step takes one Sentinel-2 batch and one Sentinel-1 batch (not paired). Each sensor's
image embeddings are contrasted with their own texts; text is the only bridge between sensors
(or, with `loss.cross_sensor_negatives`, both sensors' images form one contrastive set).
GeoCLOSP adds location<->image terms. The total is the weighted mean of the terms.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from closp_jax import losses
from closp_jax.parallel.mesh import BATCH_AXES
from closp_jax.train.state import TrainState

SENSORS = ("s2", "s1")


def loss_weights(cfg) -> dict[str, float]:
  """Active loss terms and their weights (zero-weight terms are not computed)."""
  w = {k: float(v) for k, v in cfg.loss.weights.items()}
  if not cfg.model.location.enabled:
    w = {k: v for k, v in w.items() if not k.endswith("_location")}
  if cfg.loss.cross_sensor_negatives:
    text_w = w.pop("s2_text", 0.0) + w.pop("s1_text", 0.0)
    w["all_text"] = text_w / 2.0
  return {k: v for k, v in w.items() if v > 0}


def _encode_images(model, variables, images, sensor: str, train: bool):
  method = model.encode_s2 if sensor == "s2" else model.encode_s1
  if train:
    emb, updates = model.apply(variables, images, train=True, method=method, mutable=["batch_stats"])
    return emb, updates.get("batch_stats", {})
  return model.apply(variables, images, train=False, method=method), {}


def compute_terms(model, variables, batch, cfg, *, train: bool, mesh=None, text_table=None):
  """Per-term losses, the updated BatchNorm statistics and the logit scale."""
  scale, bias = model.apply(variables, method=model.logit_params)
  kind = cfg.loss.kind
  def contrast(x, y):
    return losses.contrastive_loss(
        x, y, scale, bias if kind == "sigmoid" else None, kind=kind, mesh=mesh,
        chunked=bool(cfg.loss.chunked) and mesh is not None, axis_names=BATCH_AXES)

  new_stats = {}
  img, txt = {}, {}
  for sensor in SENSORS:
    b = batch[sensor]
    img[sensor], upd = _encode_images(model, variables, b["image"], sensor, train)
    new_stats.update(upd)
    if text_table is not None:
      txt[sensor] = jnp.take(text_table, b["text_id"], axis=0)
    else:
      txt[sensor] = model.apply(variables, b["input_ids"], b["attention_mask"], method=model.encode_text)

  weights = loss_weights(cfg)
  terms = {}
  if "all_text" in weights:
    terms["all_text"] = contrast(jnp.concatenate([img["s2"], img["s1"]]),
                                 jnp.concatenate([txt["s2"], txt["s1"]]))
  for sensor in SENSORS:
    if f"{sensor}_text" in weights:
      terms[f"{sensor}_text"] = contrast(img[sensor], txt[sensor])
    if f"{sensor}_location" in weights:
      loc = model.apply(variables, batch[sensor]["lonlat"], method=model.encode_location)
      terms[f"{sensor}_location"] = contrast(img[sensor], loc)
  return terms, new_stats, scale


def total_loss(terms: dict, weights: dict) -> jnp.ndarray:
  norm = sum(weights[k] for k in terms)
  return sum(weights[k] * terms[k] for k in terms) / norm


def make_train_step(model, cfg, optimizer: optax.GradientTransformation, *, trainable: frozenset[str],
                    use_text_table: bool, mesh=None) -> Callable:
  """(state, batch, text_table) -> (state, metrics); jit it with shardings in the loop.

  Parameter groups not in `trainable` are behind stop_gradient, so no backward pass runs
  through frozen towers. On a non-finite loss or gradient norm the state is left unchanged
  and metrics['finite'] is False (the loop then stops or skips, by config).
  """
  weights = loss_weights(cfg)

  def loss_fn(params, batch_stats, batch, text_table):
    params = {k: (v if k in trainable else jax.lax.stop_gradient(v)) for k, v in params.items()}
    variables = {"params": params, "batch_stats": batch_stats}
    terms, new_stats, scale = compute_terms(
        model, variables, batch, cfg, train=True, mesh=mesh,
        text_table=text_table if use_text_table else None)
    return total_loss(terms, weights), (terms, new_stats, scale)

  def step(state: TrainState, batch, text_table):
    (loss, (terms, new_stats, scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, text_table)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = {**state.batch_stats, **new_stats} if state.batch_stats else state.batch_stats
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for v in terms.values():
      finite &= jnp.isfinite(v)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = keep(new_state, state.replace(step=state.step + 1))
    metrics = {"loss": loss, "grad_norm": grad_norm, "logit_scale": scale, "finite": finite,
               **{f"loss/{k}": v for k, v in terms.items()}}
    return new_state, metrics

  return step


def make_eval_step(model, cfg, *, mesh=None) -> Callable:
  """(params, batch_stats, batch, text_table) -> per-term validation losses (no state change)."""
  weights = loss_weights(cfg)

  def step(params, batch_stats, batch, text_table):
    variables = {"params": params, "batch_stats": batch_stats}
    terms, _, _ = compute_terms(model, variables, batch, cfg, train=False, mesh=mesh, text_table=text_table)
    return {"loss": total_loss(terms, weights), **{f"loss/{k}": v for k, v in terms.items()}}

  return step


def encode_texts(model, variables, input_ids, attention_mask) -> jnp.ndarray:
  return model.apply(variables, input_ids, attention_mask, method=model.encode_text)


def tree_size(tree: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))

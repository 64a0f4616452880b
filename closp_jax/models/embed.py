"""Embedding a split, or a list of texts, on the devices of this run (all processes)."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from closp_jax.parallel import mesh as mesh_lib


def _to_host(x) -> np.ndarray:
  """A global (possibly multi-process) array, fully on this host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _tower_spec(model):
  """The hashable TowerSpec of a CLOSP model (None for other modules): the key of the jit caches."""
  cfg = getattr(model, "cfg", None)
  if cfg is None:
    return None
  from closp_jax.models.towers import CLOSP, tower_spec  # pylint: disable=import-outside-toplevel

  return tower_spec(cfg) if isinstance(model, CLOSP) else None


@functools.lru_cache(maxsize=16)
def _cached_image_embedder(spec, mesh, sensor: str, with_location: bool) -> Callable:
  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel

  return _image_embedder(CLOSP(spec), mesh, sensor, with_location)


def make_image_embedder(model, mesh, sensor: str, with_location: bool) -> Callable:
  """jit(variables, images, lonlat) -> (image_emb, location_emb | None), batch sharded.

  For CLOSP models the jitted function is cached by tower geometry, mesh and sensor, so
  repeated passes (the trainer's validation every eval.every_steps) compile once.
  """
  spec = _tower_spec(model)
  if spec is not None:
    return _cached_image_embedder(spec, mesh, sensor, with_location)
  return _image_embedder(model, mesh, sensor, with_location)


def _image_embedder(model, mesh, sensor: str, with_location: bool) -> Callable:
  method = model.encode_s2 if sensor == "s2" else model.encode_s1

  def embed(variables, images, lonlat):
    img = model.apply(variables, images, train=False, method=method)
    loc = model.apply(variables, lonlat, method=model.encode_location) if with_location else None
    return img, loc

  return jax.jit(embed, out_shardings=mesh_lib.batch_sharding(mesh, 2))


def embed_split(
  model,
  variables,
  batches,
  mesh,
  sensor: str,
  *,
  with_location: bool = False,
  num_batches: int | None = None,
  max_items: int = 0,
  progress: bool = True,
) -> dict[str, np.ndarray]:
  """Embeds every sample that `batches` (an eval iterator, process-local) yields.

  Returns host numpy arrays: 'emb' [N,D] float32, 'key' [N], 'labels' [N,12], 'text_id' [N],
  'lonlat' [N,2] and 'loc' [N,D] when with_location. Padding rows (mask False) are dropped.
  All processes must call this together (the forward pass is one global computation).
  """
  embed = make_image_embedder(model, mesh, sensor, with_location)
  out: dict[str, list] = {k: [] for k in ("emb", "loc", "key", "labels", "text_id", "lonlat", "mask")}
  template = None
  count = 0
  t0 = time.perf_counter()
  it = iter(batches)
  i = 0
  while True:
    batch = next(it, None)
    if batch is None:
      if num_batches is None or i >= num_batches:
        break
      # This process ran out before the others: contribute a fully masked batch.
      batch = {k: (np.zeros_like(v) if k != "key" else np.full_like(v, "")) for k, v in template.items()}
      batch["mask"] = np.zeros_like(template["mask"])
    template = template or batch
    g = mesh_lib.global_batch({"image": batch["image"], "lonlat": batch["lonlat"]}, mesh)
    img, loc = embed(variables, g["image"], g["lonlat"])
    local_mask = np.asarray(batch["mask"], bool)
    out["emb"].append(_to_host(img))
    if with_location:
      out["loc"].append(_to_host(loc))
    # Per-sample host fields are gathered the same way, in process order.
    for k in ("labels", "text_id", "lonlat"):
      out[k].append(_gather_host(np.asarray(batch[k])))
    out["key"].append(_gather_host(np.asarray(batch["key"]).astype(str)))
    out["mask"].append(_gather_host(local_mask))
    count += int(local_mask.sum())
    i += 1
    if progress and jax.process_index() == 0 and i % 10 == 0:
      rate = count * jax.process_count() / max(time.perf_counter() - t0, 1e-9)
      print(f"  embedding {sensor}: {count * jax.process_count()} samples ({rate:.0f}/s)", file=sys.stderr, flush=True)
    if max_items and count >= max_items:
      break
  if not out["emb"]:
    raise ValueError(f"the {sensor} split yielded no samples to embed")
  mask = np.concatenate(out["mask"])
  result = {k: np.concatenate(v)[mask] for k, v in out.items() if v and k != "mask"}
  if max_items:
    result = {k: v[:max_items] for k, v in result.items()}
  return result


def _gather_host(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  if x.dtype.kind in "US":
    width = 128
    codes = np.zeros(x.shape + (width,), np.uint8)
    for idx, s in np.ndenumerate(x):
      b = s.encode()[:width]
      codes[idx][: len(b)] = np.frombuffer(b, np.uint8)
    gathered = multihost_utils.process_allgather(codes, tiled=True)
    return np.array([bytes(r).rstrip(b"\0").decode() for r in np.asarray(gathered).reshape(-1, width)])
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def embed_texts(
  model, variables, tokenizer, texts: list[str], *, max_len: int = 64, batch_size: int = 256, backbone: bool = False
) -> np.ndarray:
  """[len(texts), D] normalised text embeddings (replicated computation, host result); with
  `backbone` the text model's pooled output before any projection [len(texts), hidden] instead."""
  from closp_jax.data.tokenize import tokenize  # pylint: disable=import-outside-toplevel

  spec = _tower_spec(model)
  enc = _cached_text_encoder(spec, backbone) if spec is not None else _text_encoder(model, backbone)
  out = []
  for start in range(0, len(texts), batch_size):
    chunk = list(texts[start : start + batch_size])
    n = len(chunk)
    padded = chunk + [""] * (batch_size - n) if len(texts) > batch_size else chunk
    ids, mask = tokenize(tokenizer, padded, max_len=max_len)
    out.append(np.asarray(enc(variables, jnp.asarray(ids), jnp.asarray(mask)))[:n])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _text_encoder(model, backbone: bool = False) -> Callable:
  @jax.jit
  def enc(variables, ids, mask):
    return model.apply(variables, ids, mask, method=model.text_backbone if backbone else model.encode_text)

  return enc


@functools.lru_cache(maxsize=16)
def _cached_text_encoder(spec, backbone: bool = False) -> Callable:
  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel

  return _text_encoder(CLOSP(spec), backbone)


def num_eval_batches(num_items: int, batch_size_per_process: int) -> int:
  """Batches every process runs so that all take part in each global step."""
  per_process = math.ceil(num_items / jax.process_count())
  return math.ceil(per_process / batch_size_per_process)


SENSORS = ("s2", "s1")


def embed_corpus(
  model,
  variables,
  builder,
  mesh,
  split: str,
  *,
  eval_batch_size: int,
  inputs: dict | None = None,
  with_location: bool = False,
  max_items: int = 0,
  sensors=SENSORS,
  progress: bool = False,
) -> dict[str, dict]:
  """{sensor: embed_split(...) result} for the sensors of a split, sharded over all processes.

  `inputs`: the iterator's input arguments (pipeline.input_kwargs(config): normalisation, rgb);
  eval_batch_size is global; each process reads its own contiguous share of the split
  (`pipeline.eval_iterator`) and all processes run the same number of batches.
  """
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  nproc = jax.process_count()
  if eval_batch_size <= 0 or eval_batch_size % nproc:
    raise ValueError(f"eval_batch_size={eval_batch_size} must be a positive multiple of the process count {nproc}")
  per_process = eval_batch_size // nproc
  out = {}
  for sensor in sensors:
    it = pipeline.eval_iterator(builder, split, sensor, batch_size=per_process, **dict(inputs or {}))
    n = pipeline.split_size(builder, split, sensor)
    out[sensor] = embed_split(
      model,
      variables,
      it,
      mesh,
      sensor,
      with_location=with_location,
      num_batches=num_eval_batches(n, per_process),
      max_items=max_items,
      progress=progress,
    )
  return out

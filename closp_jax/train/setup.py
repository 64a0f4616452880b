"""Building the pieces of a run from the config: model, variables, optimizer, state, shardings."""

from __future__ import annotations

import math
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from closp_jax.errors import UserError
from closp_jax.models.towers import CLOSP
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train.optimizer import make_optimizer
from closp_jax.train.state import TrainState


class RunConfigError(UserError, ValueError):
  """The config does not fit this run (devices, dataset, workdir); the message says the fix."""


def check_workdir(workdir: str | os.PathLike) -> Path:
  path = Path(workdir).expanduser().absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_bytes(b"0" * 4096)
    probe.unlink()
  except OSError as e:
    raise RunConfigError(
      f"workdir {path} is not writable ({e.strerror or e}); pass --workdir to a folder you can write, "
      f"with free space for checkpoints"
    ) from e
  return path


def check_batch(cfg, mesh) -> None:
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  nproc = jax.process_count()
  accum = int(cfg.optim.grad_accum_steps)
  if accum > 1 and int(cfg.data.batch_size) % (accum * data_shards):
    b = int(cfg.data.batch_size)
    raise RunConfigError(
      f"config.optim.grad_accum_steps={accum} splits each batch into {accum} micro-batches over the "
      f"{data_shards} data-parallel shards: config.data.batch_size={b} must be a multiple of {accum * data_shards}; "
      f"e.g. --config.data.batch_size={accum * data_shards * max(1, round(b / (accum * data_shards)))}"
    )
  for name in ("batch_size", "eval_batch_size"):
    b = int(cfg.data[name])
    if b <= 0 or b % data_shards or b % nproc:
      raise RunConfigError(
        f"config.data.{name}={b} must be a positive multiple of the data-parallel size "
        f"{data_shards} (mesh data x fsdp) and of the process count {nproc}; e.g. "
        f"--config.data.{name}={max(data_shards, nproc) * max(1, round(b / max(data_shards, nproc)))}"
      )


def check_train_sizes(cfg, sizes: dict[str, int], dataset: str) -> None:
  """Every sensor's train split must fill at least one batch on every process (before any model work)."""
  nproc = jax.process_count()
  batch = int(cfg.data.batch_size)
  for sensor, size in sizes.items():
    if size // nproc < batch // nproc:
      raise RunConfigError(
        f"{dataset} has {size} {sensor} training samples ({size // nproc} per process), fewer than "
        f"config.data.batch_size={batch} ({batch // nproc} per process); lower --config.data.batch_size "
        f"or use a bigger dataset (--config.data.name)"
      )


def resolve_steps(cfg: ml_collections.ConfigDict, train_sizes: dict[str, int]) -> ml_collections.ConfigDict:
  """A copy of cfg with train.steps / optim.freeze_steps resolved from the dataset size."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  steps_per_epoch = max(1, math.ceil(max(train_sizes.values()) / int(cfg.data.batch_size)))
  if float(cfg.train.epochs) > 0:
    cfg.train.steps = int(math.ceil(float(cfg.train.epochs) * steps_per_epoch))
  if int(cfg.train.steps) <= 0:
    raise RunConfigError("config.train.steps must be > 0 (or set config.train.epochs > 0)")
  if int(cfg.optim.freeze_steps) < 0:
    cfg.optim.freeze_steps = steps_per_epoch
  cfg.train.steps_per_epoch = steps_per_epoch
  return cfg


def dummy_inputs(cfg, batch: int = 1):
  m = cfg.model
  s2 = jnp.zeros((batch, 120, 120, int(m.s2_in_chans)), jnp.float32)
  s1 = jnp.zeros((batch, 120, 120, int(m.s1_in_chans)), jnp.float32)
  ids = jnp.zeros((batch, int(cfg.data.max_len)), jnp.int32)
  mask = jnp.ones((batch, int(cfg.data.max_len)), jnp.int32)
  lonlat = jnp.zeros((batch, 2), jnp.float32)
  return s2, s1, ids, mask, lonlat


def init_variables(model: CLOSP, cfg, mesh, rng) -> tuple[dict, dict]:
  """Initialises the variables directly into their shardings. Returns (variables, shardings)."""
  rules = mesh_lib.logical_rules(cfg.mesh.rules)
  inputs = dummy_inputs(cfg)

  def init(rng):
    return model.init(rng, *inputs, train=False)

  abstract = jax.eval_shape(init, rng)
  shardings = {}
  for col, tree in abstract.items():
    shardings[col] = mesh_lib.param_shardings(tree, mesh, rules)
  variables = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  variables = dict(variables)
  variables.setdefault("batch_stats", {})
  shardings.setdefault("batch_stats", {})
  return variables, shardings


def load_pretrained(variables: dict, cfg, shardings: dict, *, weights_table=None) -> tuple[dict, list[str]]:
  """Puts the pretrained weights named in config.init into the variables. Returns notes.

  init.s2 / init.s1 / init.location take a weights name (closp_jax.weights.registry; resolved through
  the Hugging Face cache, downloaded and checked once when absent), a local file, or '' (random).
  `weights_table` replaces the registry (tests).
  """
  notes = []
  params = dict(variables["params"])
  stats = dict(variables.get("batch_stats", {}))
  init_cfg = cfg.init
  if init_cfg.text:
    from closp_jax.weights import load_minilm  # pylint: disable=import-outside-toplevel

    path = None if init_cfg.text == "minilm" else init_cfg.text
    _, text_params, _ = load_minilm(path)
    params["text_model"] = _checked_replace(params["text_model"], text_params, "text_model")
    notes.append(f"text_model <- all-MiniLM-L6-v2 ({'installed package' if path is None else path})")
  for sensor in ("s2", "s1"):
    value = init_cfg[sensor]
    if not value:
      continue
    key = f"{sensor}_encoder"
    p, bs, path = _image_weights(value, cfg, sensor, params[key], weights_table)
    if bs is not None:
      stats[key], _ = _checked_merge(stats[key], bs, key + " (batch_stats)")
    params[key], kept = _checked_merge(params[key], p, key)
    notes.append(
      f"{key} <- {value}{'' if str(path) == str(value) else f' ({path})'}"
      + (f" (kept initialised: {', '.join(kept)})" if kept else "")
    )
  location = init_cfg.get("location", "")
  if location:
    loc_vars, path = _location_weights(location, cfg, weights_table)
    params["location_encoder"] = _checked_replace(params["location_encoder"], loc_vars["params"], "location_encoder")
    if "batch_stats" in loc_vars:
      stats["location_encoder"] = _checked_replace(
        stats["location_encoder"], loc_vars["batch_stats"], "location_encoder (batch_stats)"
      )
    notes.append(f"location_encoder <- {location}{'' if str(path) == str(location) else f' ({path})'}")
  out = {"params": params, "batch_stats": stats}
  out = jax.device_put(out, {"params": shardings["params"], "batch_stats": shardings["batch_stats"]})
  return out, notes


# MAE pre-training checkpoints hold a decoder next to the encoder; only the encoder is imported.
_MAE_DECODER = ("decoder_", "mask_token")


def _entry_for(value: str, slot: str, table):
  """The registry entry `value` names (checked to fit the slot), or None for a path."""
  from closp_jax.weights import registry  # pylint: disable=import-outside-toplevel

  entry = registry.lookup(value, table)
  if entry is not None:
    registry.require_slot(entry, slot)
  return entry


def _image_weights(value: str, cfg, sensor: str, current, table):
  """(params, batch_stats or None, file) for the `sensor` image tower from a name or a file."""
  # pylint: disable=import-outside-toplevel
  from closp_jax.weights import convert, hub, timm_import
  from closp_jax.weights.safe_load import load_state_dict

  key = f"{sensor}_encoder"
  encoder, in_chans = str(cfg.model[key]), int(cfg.model[f"{sensor}_in_chans"])
  entry = _entry_for(value, sensor, table)
  if entry is not None:
    wrong = []
    if entry.architecture and entry.architecture != encoder:
      wrong.append(f"--config.model.{key}={entry.architecture} (config: {encoder})")
    if entry.in_chans and entry.in_chans != in_chans:
      wrong.append(f"--config.model.{sensor}_in_chans={entry.in_chans} (config: {in_chans})")
    if wrong:
      raise RunConfigError(
        f"config.init.{sensor}={value!r} ({entry.description}) does not fit the model: set " + ", ".join(wrong)
      )
  path = hub.resolve(value, table=table)
  sd = load_state_dict(path)
  tower = next((k[: k.index(key + ".") + len(key) + 1] for k in sd if key + "." in k), None)
  if tower is not None:  # a whole CLOSP checkpoint: this tower's tensors only
    sd = {k[len(tower) :]: v for k, v in sd.items() if k.startswith(tower)}
  head = "fc" if encoder.startswith("resnet") else "head"
  if encoder.startswith("resnet"):
    p, bs = timm_import.load_timm_resnet(sd, name=encoder, in_chans=in_chans, source=str(path))
  else:
    sd = {k: v for k, v in sd.items() if not k.startswith(_MAE_DECODER)}
    p, bs = timm_import.load_timm_vit(sd, name=encoder, in_chans=in_chans, source=str(path)), None
  if head in current and f"{head}.weight" in sd:  # the model keeps a classifier and the file has one
    want = {"params": {head: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32), current[head])}}
    p = {
      **p,
      head: convert.import_state_dict(
        {k: v for k, v in sd.items() if k.startswith(head + ".")},
        convert.dense_rules(head, (head,)),
        want,
        source=f"{path} ({head})",
      )["params"][head],
    }
  return p, bs, path


def _location_weights(value: str, cfg, table):
  """({'params'[, 'batch_stats']}, file) for the location encoder, checked against config.model.location."""
  # pylint: disable=import-outside-toplevel
  from closp_jax.weights import convert, hub
  from closp_jax.weights.geoclip_import import load_geoclip_location
  from closp_jax.weights.satclip import load_satclip

  loc = cfg.model.location
  if not loc.enabled:
    raise RunConfigError(
      f"config.init.location={value!r} but the model has no location encoder: set "
      "--config.model.location.enabled=True (or train configs/geoclosp.py)"
    )
  entry = _entry_for(value, "location", table)
  facts = dict(entry.location) if entry is not None else {}
  _check_location(value, facts, loc)  # what the table knows, before any download
  path = hub.resolve(value, table=table)
  kind = facts.get("kind", str(loc.kind))
  if kind == "satclip":
    module, p = load_satclip(path, sh_convention=entry.sh_convention if entry is not None else None)
    _check_location(
      value,
      {
        "kind": "satclip",
        "degree": module.degree,
        "hidden": module.hidden,
        "layers": module.layers,
        "out": module.out,
        "sh_convention": module.sh_convention,
      },
      loc,
    )
    return {"params": p}, path
  try:
    module, variables = load_geoclip_location(path, sigmas=tuple(float(s) for s in loc.sigmas))
  except convert.WeightMismatchError as e:
    raise RunConfigError(
      f"config.init.location={value!r}: {e}; set --config.model.location.sigmas to as many "
      "values as the file has branches"
    ) from None
  _check_location(
    value,
    {"kind": "geoclip", "hidden": module.hidden, "layers": module.depth, "out": module.out, "rff_dim": module.rff_dim},
    loc,
  )
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}, path


def _check_location(value: str, needs: dict, loc) -> None:
  """RunConfigError naming every --config.model.location.* flag whose value differs from `needs`."""
  wrong = [f"--config.model.location.{k}={v} (config: {loc[k]})" for k, v in needs.items() if loc[k] != v]
  if wrong:
    raise RunConfigError(
      f"config.init.location={value!r} needs a location encoder the config does not describe: set {', '.join(wrong)}"
    )


def _checked_merge(current, new, where: str):
  """Pretrained tensors into a subtree: every pretrained tensor must exist with the same shape;
  model tensors the file lacks (e.g. a classifier head) keep their initial values and are named."""
  cur_flat = dict(jax.tree_util.tree_flatten_with_path(current)[0])
  new_flat = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  extra = sorted(map(jax.tree_util.keystr, set(new_flat) - set(cur_flat)))
  if extra:
    raise ValueError(f"pretrained {where}: tensors the model does not have: {extra[:8]}")
  for k, v in new_flat.items():
    if tuple(cur_flat[k].shape) != tuple(np.shape(v)):
      raise ValueError(
        f"pretrained {where}{jax.tree_util.keystr(k)}: shape {tuple(np.shape(v))}, "
        f"model expects {tuple(cur_flat[k].shape)}"
      )
  kept = sorted({jax.tree_util.keystr(k[:1]) for k in set(cur_flat) - set(new_flat)})
  merged = jax.tree_util.tree_map_with_path(
    lambda path, c: jnp.asarray(new_flat[path], c.dtype) if path in new_flat else c, current
  )
  return merged, kept


def _checked_replace(current, new, where: str):
  cur_flat = dict(jax.tree_util.tree_flatten_with_path(current)[0])
  new_flat = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  if set(cur_flat) != set(new_flat):
    missing = sorted(map(jax.tree_util.keystr, set(cur_flat) - set(new_flat)))[:5]
    extra = sorted(map(jax.tree_util.keystr, set(new_flat) - set(cur_flat)))[:5]
    raise ValueError(
      f"pretrained {where}: parameter names differ from the model (missing {missing}, unexpected {extra})"
    )
  for k, v in cur_flat.items():
    if tuple(v.shape) != tuple(np.shape(new_flat[k])):
      raise ValueError(
        f"pretrained {where}{jax.tree_util.keystr(k)}: shape {tuple(np.shape(new_flat[k]))}, "
        f"model expects {tuple(v.shape)}"
      )
  return jax.tree.map(lambda c, n: jnp.asarray(n, c.dtype), current, new)


def create_state(variables, optimizer, shardings, mesh, seed: int) -> tuple[TrainState, TrainState]:
  """The initial TrainState and its sharding tree (optimizer state follows the params)."""
  params, batch_stats = variables["params"], variables["batch_stats"]
  abstract_opt = jax.eval_shape(optimizer.init, params)
  opt_shardings = _opt_shardings(abstract_opt, params, shardings["params"], mesh)
  rep = mesh_lib.replicated(mesh)
  state_shardings = TrainState(
    step=rep, params=shardings["params"], batch_stats=shardings["batch_stats"], opt_state=opt_shardings, rng=rep
  )

  def make(params, batch_stats):
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=optimizer.init(params),
      rng=jax.random.key_data(jax.random.key(seed)),
    )

  state = jax.jit(make, out_shardings=state_shardings)(params, batch_stats)
  return state, state_shardings


def _opt_shardings(abstract_opt, params, param_shardings, mesh):
  """Optimizer leaves that mirror a parameter (Adam moments) share its sharding; the rest are replicated.

  A moment's key path ends with its parameter's key path (optax nests the params tree inside its
  states), which is how it is matched; the shape must agree too.
  """
  rep = mesh_lib.replicated(mesh)
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings)):
    by_path[_dict_keys(path)] = (tuple(p.shape), s)

  def assign(path, leaf):
    keys = _dict_keys(path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return rep

  return jax.tree_util.tree_map_with_path(assign, abstract_opt)


def _dict_keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def build_model_and_optimizer(cfg, mesh, total_steps: int):
  model = CLOSP(cfg.model)
  rng = jax.random.key(int(cfg.seed))
  variables, shardings = init_variables(model, cfg, mesh, rng)
  variables, notes = load_pretrained(variables, cfg, shardings)
  optimizer = make_optimizer(
    cfg.optim, variables["params"], total_steps, updates_per_step=2 if cfg.train.sensor_updates == "alternate" else 1
  )
  return model, variables, shardings, optimizer, notes

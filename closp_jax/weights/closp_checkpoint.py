"""The authors' CLOSP / GeoCLOSP checkpoints <-> closp_jax CLOSP variables.

    cfg = infer_model_config("best_model.pth")            # or model_config(**RELEASED_LAYOUTS["CLOSP-RN"])
    variables = load_closp_checkpoint("best_model.pth", cfg)
    z = CLOSP(cfg).apply(variables, s2, method=CLOSP.encode_s2)

A checkpoint is the PyTorch model's state dict (`torch.save(model.state_dict())`, or safetensors) with
the prefixes s2_encoder., s1_encoder. (timm ResNet / ViT, optionally with TorchGeo's 1000-way `fc` /
`head`), text_model. (Hugging Face BertModel), s2_projection., s1_projection. and, for GeoCLOSP,
location_encoder. (SatCLIP: `location_encoder.nnet.*`; GeoCLIP: `location_encoder.LocEnc<i>.*`) and
location_projection.. A leading wrapper prefix (`model.`, `module.`) is removed. Skipped on import:
BatchNorm `num_batches_tracked`, the BERT pooler and `text_model.embeddings.position_ids`.

All tensors are checked at once: a mismatch names the tensor and both shapes, and lists missing and
unexpected tensors (with a hint when a classifier head or the location encoder does not match cfg).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.models import image as image_models
from closp_jax.models.towers import CLOSP, model_config, tower_spec
from closp_jax.weights import convert, timm_import
from closp_jax.weights.geoclip_import import geoclip_rules
from closp_jax.weights.minilm import bert_rules, normalize_bert_names
from closp_jax.weights.safe_load import load_state_dict
from closp_jax.weights.satclip import siren_rules

_log = logging.getLogger(__name__)

TOWER_PREFIXES = (
  "s2_encoder.",
  "s1_encoder.",
  "text_model.",
  "s2_projection.",
  "s1_projection.",
  "location_encoder.",
  "location_projection.",
)
IGNORED = ("*num_batches_tracked", "text_model.pooler.*", "text_model.embeddings.position_ids")


# ---- rules --------------------------------------------------------------------------------------


def _nest(rules: list[convert.TensorRule], torch_prefix: str, module: str) -> list[convert.TensorRule]:
  """Rules of a submodule moved under `module` (Flax) and `torch_prefix` (PyTorch)."""
  return [
    convert.TensorRule(torch_prefix + r.torch_name, (r.flax_path[0], module, *r.flax_path[1:]), r.to_flax, r.to_torch)
    for r in rules
  ]


def _plain(tree: Any) -> dict[str, Any]:
  return convert.unflatten_tree(convert.flatten_tree(tree))


def closp_rules(params: Mapping[str, Any], spec) -> list[convert.TensorRule]:
  """All TensorRules of a CLOSP model whose (plain or abstract) params tree is `params`."""
  rules: list[convert.TensorRule] = []
  for tower in ("s2", "s1"):
    name = getattr(spec, f"{tower}_encoder")
    enc = {k: v for k, v in params[f"{tower}_encoder"].items() if k not in ("fc", "head")}
    sub = timm_import.resnet_rules(enc) if name.startswith("resnet") else timm_import.vit_rules(enc)
    rules += _nest(sub, f"{tower}_encoder.", f"{tower}_encoder")
    for head in ("fc", "head"):
      if head in params[f"{tower}_encoder"]:
        rules += convert.dense_rules(f"{tower}_encoder.{head}", (f"{tower}_encoder", head))
    rules += convert.dense_rules(f"{tower}_projection", (f"{tower}_projection",))
  rules += _nest(bert_rules(dict(spec.text)["layers"]), "text_model.", "text_model")
  if "text_projection" in params:
    rules += convert.dense_rules("text_projection", ("text_projection",))
  if spec.location is not None:
    loc = dict(spec.location)
    if spec.location_kind == "satclip":
      rules += _nest(siren_rules(loc["layers"]), "location_encoder.nnet.", "location_encoder")
    else:
      rules += _nest(geoclip_rules(len(loc["sigmas"]), loc["depth"]), "location_encoder.", "location_encoder")
    rules += convert.dense_rules("location_projection", ("location_projection",))
  for scalar in ("logit_scale", "logit_bias"):
    if scalar in params:
      rules.append(convert.TensorRule(scalar, ("params", scalar)))
  return rules


def abstract_variables(cfg: Any) -> dict[str, Any]:
  """Shapes of CLOSP(cfg)'s variables (jax.ShapeDtypeStruct leaves), without computing anything."""
  spec = tower_spec(cfg)
  size = spec.image_size or 32
  s2 = jnp.zeros((1, size, size, spec.s2_in_chans), jnp.float32)
  s1 = jnp.zeros((1, size, size, spec.s1_in_chans), jnp.float32)
  ids = jnp.zeros((1, 4), jnp.int32)
  lonlat = jnp.zeros((1, 2), jnp.float32)
  return jax.eval_shape(lambda: CLOSP(spec).init(jax.random.key(0), s2, s1, ids, ids, lonlat))


# ---- import / export ----------------------------------------------------------------------------


def _strip_wrapper(sd: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Removes a prefix put in front of every tower name (e.g. 'model.' of a Lightning module)."""
  for k in sd:
    for tower in ("s2_encoder.", "s2_projection."):
      i = k.find(tower)
      if i > 0:
        wrapper = k[:i]
        return {n[len(wrapper) :]: v for n, v in sd.items() if n.startswith(wrapper)}
      if i == 0:
        return dict(sd)
  raise convert.WeightMismatchError(
    f"{source}: not a CLOSP checkpoint (no tensor under s2_encoder.; names look like: {', '.join(list(sd)[:8])})"
  )


def _text_names(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Old-style BERT LayerNorm names (gamma/beta) under text_model. renamed to weight/bias."""
  text = {k[len("text_model.") :]: v for k, v in sd.items() if k.startswith("text_model.")}
  out = {k: v for k, v in sd.items() if not k.startswith("text_model.")}
  out.update({"text_model." + k: v for k, v in normalize_bert_names(text).items()})
  return out


def _read(path_or_sd: Any) -> tuple[dict[str, np.ndarray], str]:
  if isinstance(path_or_sd, (str, os.PathLike)):
    return load_state_dict(path_or_sd), str(path_or_sd)
  if not isinstance(path_or_sd, Mapping):
    raise TypeError(f"expected a checkpoint path or a state dict, got {type(path_or_sd).__name__}")
  return dict(path_or_sd), "state dict"


def _hints(message: str, spec) -> str:
  hints = []
  for tower in ("s2", "s1"):
    head = "head" if getattr(spec, f"{tower}_encoder").startswith("vit") else "fc"
    if f"{tower}_encoder.{head}." in message:
      hints.append(
        f"{tower}_encoder.{head}: the file and cfg.{tower}_head_classes="
        f"{getattr(spec, f'{tower}_head_classes')} disagree on the classifier head"
      )
  if "location_encoder." in message or "location_projection." in message:
    hints.append(f"location encoder: cfg.location.enabled={spec.location is not None}, kind={spec.location_kind!r}")
  return message + ("\n  hints: " + "; ".join(hints) if hints else "")


def load_closp_checkpoint(path: str | os.PathLike | Mapping[str, np.ndarray], cfg: Any) -> dict[str, Any]:
  """{'params', 'batch_stats'} (numpy float32) for CLOSP(cfg) from an original checkpoint.

  `path` is a .pth/.pt/.bin (read with weights_only=True) or .safetensors file, or a state dict.
  The logit scale of the original is not a tensor: a learnable cfg keeps its init value unless the
  file has `logit_scale` (as files exported by `export_closp_state_dict` do).
  """
  spec = tower_spec(cfg)
  sd, source = _read(path)
  sd = _text_names(_strip_wrapper(sd, source))
  want = {c: _plain(t) for c, t in abstract_variables(spec).items()}
  rules = closp_rules(want["params"], spec)
  absent = [n for n in ("logit_scale", "logit_bias") if n in want["params"] and n not in sd]
  rules = [r for r in rules if r.torch_name not in absent]
  for name in absent:
    del want["params"][name]
  try:
    variables = convert.import_state_dict(sd, rules, want, ignore=IGNORED, source=source)
  except convert.WeightMismatchError as e:
    raise convert.WeightMismatchError(_hints(str(e), spec)) from None
  params = variables["params"]
  for name in absent:
    init = math.log(spec.init_scale) if name == "logit_scale" else (spec.sigmoid_bias or 0.0)
    params[name] = np.asarray(init, np.float32)
  return {"params": params, "batch_stats": variables.get("batch_stats", {})}


def export_closp_state_dict(
  variables: Mapping[str, Any], cfg: Any, *, include_pooler: bool = True
) -> dict[str, np.ndarray]:
  """The original-named flat state dict (numpy) of CLOSP variables.

  BatchNorm `num_batches_tracked` counters are written as int64 zeros; with include_pooler=True the
  BERT pooler (unused by CLOSP) is written as zeros so Hugging Face's BertModel loads strictly.
  `logit_scale` / `logit_bias` are written only when they are parameters.
  """
  spec = tower_spec(cfg)
  params = _plain(variables["params"])
  rules = closp_rules(params, spec)
  constants = {
    r.torch_name.rsplit(".", 1)[0] + ".num_batches_tracked": np.array(0, np.int64)
    for r in rules
    if r.torch_name.endswith(".running_mean")
  }
  if include_pooler:
    hidden = dict(spec.text)["hidden"]
    constants["text_model.pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
    constants["text_model.pooler.dense.bias"] = np.zeros((hidden,), np.float32)
  flat = {"params": params}
  if variables.get("batch_stats"):
    flat["batch_stats"] = _plain(variables["batch_stats"])
  return convert.export_state_dict(flat, rules, constants=constants)


def merge_submodule(variables: Mapping[str, Any], name: str, sub: Mapping[str, Any]) -> dict[str, Any]:
  """`variables` with the submodule `name` replaced by `sub` ({collection: tree}), shapes checked.

  E.g. pretrained MiniLM into a fresh model: merge_submodule(v, "text_model", {"params": minilm_params}).
  """
  out = {c: dict(flax.core.unfreeze(t)) for c, t in variables.items()}
  for collection, tree in sub.items():
    if collection not in out or name not in out[collection]:
      raise KeyError(f"the model has no {collection}/{name} (has {collection}: {sorted(out.get(collection, {}))})")
    have = convert.flatten_tree(out[collection][name])
    new = convert.flatten_tree(tree)
    problems = [
      f"{'/'.join(p)}: model {tuple(np.shape(have[p]))}, given {tuple(np.shape(new[p]))}"
      for p in have
      if p in new and tuple(np.shape(have[p])) != tuple(np.shape(new[p]))
    ]
    missing = sorted("/".join(p) for p in have if p not in new)
    extra = sorted("/".join(p) for p in new if p not in have)
    if problems or missing or extra:
      raise convert.WeightMismatchError(
        f"cannot put the given {collection} into {name}: shape mismatches {problems}, missing {missing}, "
        f"unexpected {extra}"
      )
    boxed = out[collection][name]
    out[collection][name] = jax.tree.map(  # keeps logical-partitioning boxes and dtypes
      lambda old, v: (
        old.replace_boxed(jnp.asarray(v, old.value.dtype))
        if hasattr(old, "replace_boxed")
        else jnp.asarray(v, getattr(old, "dtype", None))
      ),
      boxed,
      _like(boxed, tree),
      is_leaf=lambda x: hasattr(x, "replace_boxed"),
    )
  return out


def _like(boxed: Any, plain: Mapping[str, Any]) -> Any:
  """`plain` (nested dicts) arranged as the (possibly boxed, FrozenDict) tree `boxed`."""
  if isinstance(boxed, Mapping):
    return {k: _like(v, plain[k]) for k, v in boxed.items()}
  return plain


# ---- config inference ---------------------------------------------------------------------------


def _image_encoder_name(sd: Mapping[str, np.ndarray], tower: str, source: str) -> tuple[str, int]:
  """(closp_jax encoder name, in_chans) whose timm tensors match `<tower>_encoder.*` in `sd`."""
  prefix = f"{tower}_encoder."
  sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
  if "conv1.weight" in sub:
    family, in_chans = "resnet", int(np.shape(sub["conv1.weight"])[1])
  elif "patch_embed.proj.weight" in sub:
    family, in_chans = "vit", int(np.shape(sub["patch_embed.proj.weight"])[1])
  else:
    raise convert.WeightMismatchError(f"{source}: {prefix} holds neither a timm ResNet nor a ViT")
  for name in image_models.encoder_names():
    if not name.startswith(family):
      continue
    model = image_models.image_encoder(name, in_chans)
    size = image_models.default_input_size(name)
    shapes = jax.eval_shape(
      lambda m=model, s=size: m.init(jax.random.key(0), jnp.zeros((1, s, s, in_chans)), train=False)
    )
    params = _plain(shapes["params"])
    rules = timm_import.resnet_rules(params) if family == "resnet" else timm_import.vit_rules(params)
    flat = convert.flatten_tree(shapes)
    names = {r.torch_name for r in rules}
    extra = {k for k in sub if k not in names and not re.match(r"(fc|head)\.|.*num_batches_tracked$", k)}
    if extra:
      continue
    if all(r.torch_name in sub and _fits(r, sub[r.torch_name], flat[r.flax_path].shape) for r in rules):
      return name, in_chans
  raise convert.WeightMismatchError(
    f"{source}: {prefix} matches none of the closp_jax encoders {image_models.encoder_names()}"
  )


def _fits(rule: convert.TensorRule, value: np.ndarray, shape: tuple[int, ...]) -> bool:
  try:
    return tuple(rule.to_flax(np.zeros(np.shape(value), np.float32)).shape) == tuple(shape)
  except Exception:  # pylint: disable=broad-except
    return False


def infer_model_config(
  path: str | os.PathLike | Mapping[str, np.ndarray],
  *,
  text_heads: int | None = None,
  sh_convention: str = "analytic_2023",
  **overrides: Any,
):
  """A model_config matching the towers stored in a CLOSP / GeoCLOSP checkpoint.

  Read from tensor shapes: image encoders and their input channels and heads, embed_dim, the BERT
  geometry, the location encoder. Not stored in the weights, so given here: the number of attention
  heads (`text_heads`; default hidden // 32, i.e. 12 for MiniLM's 384) and the spherical-harmonics
  convention of a SatCLIP location encoder (default "analytic_2023", the table SatCLIP's released
  checkpoints were trained with, from which GeoCLOSP starts; see docs/models.md). ViT towers get
  image_size=224 with resize_align_corners=True, as the original resizes their input (kornia's
  K.Resize(224): bilinear, corners aligned). `overrides` are applied last.
  """
  sd, source = _read(path)
  sd = _text_names(_strip_wrapper(sd, source))
  fields: dict[str, Any] = {}
  for tower in ("s2", "s1"):
    name, chans = _image_encoder_name(sd, tower, source)
    fields[f"{tower}_encoder"], fields[f"{tower}_in_chans"] = name, chans
    head = sd.get(f"{tower}_encoder.fc.weight", sd.get(f"{tower}_encoder.head.weight"))
    fields[f"{tower}_head_classes"] = int(np.shape(head)[0]) if head is not None else 0
  if any(fields[f"{t}_encoder"].startswith("vit") for t in ("s2", "s1")):
    fields["image_size"] = 224
    fields["resize_align_corners"] = True
  fields["embed_dim"] = int(np.shape(sd["s2_projection.weight"])[0])
  word = np.shape(sd["text_model.embeddings.word_embeddings.weight"])
  layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layer.")})
  hidden = int(word[1])
  text = {
    "vocab_size": int(word[0]),
    "hidden": hidden,
    "layers": layers,
    "heads": text_heads or max(hidden // 32, 1),
    "intermediate": int(np.shape(sd["text_model.encoder.layer.0.intermediate.dense.weight"])[0]),
    "max_position": int(np.shape(sd["text_model.embeddings.position_embeddings.weight"])[0]),
    "type_vocab": int(np.shape(sd["text_model.embeddings.token_type_embeddings.weight"])[0]),
    "text_projection": "text_projection.weight" in sd,
  }
  fields["text"] = text
  if "location_encoder.nnet.last_layer.weight" in sd:
    from closp_jax.weights.satclip import siren_geometry  # pylint: disable=import-outside-toplevel

    geo = siren_geometry(sd, "location_encoder.nnet.", source=source)
    fields["location"] = {"enabled": True, "kind": "satclip", "sh_convention": sh_convention, **geo}
  elif "location_encoder.LocEnc0.capsule.0.b" in sd:
    from closp_jax.weights.geoclip_import import geoclip_geometry  # pylint: disable=import-outside-toplevel

    sub = {k[len("location_encoder.") :]: v for k, v in sd.items() if k.startswith("location_encoder.")}
    geo = geoclip_geometry(sub, source=source)
    sigmas = tuple(2.0 ** (4 * i) for i in range(geo["branches"]))
    fields["location"] = {
      "enabled": True,
      "kind": "geoclip",
      "hidden": geo["hidden"],
      "layers": geo["depth"],
      "out": geo["out"],
      "rff_dim": geo["rff_dim"],
      "sigmas": sigmas,
    }
  if "logit_scale" in sd:
    fields["temperature"] = {"learnable": True, "init_scale": float(np.exp(np.asarray(sd["logit_scale"])))}
    if "logit_bias" in sd:
      fields["temperature"]["sigmoid_bias"] = float(np.asarray(sd["logit_bias"]))
  fields.update(overrides)
  return model_config(**fields)

"""timm / TorchGeo image-encoder weights <-> closp_jax ResNet and ViT variables.

TorchGeo's SSL4EO ResNet-50 weights are timm `resnet50` state dicts (in_chans 13); its SSL4EO ViT
weights, like CLOSP's encoders, are timm `vit_small_patch16_224` / `vit_large_patch16_224` state
dicts (in_chans 13 or 2). A CLOSP checkpoint holding several towers is read one tower at a time with
`prefix` (e.g. prefix="s2_encoder.").

Import checks every tensor name and shape against the closp_jax model and reports all problems at
once (tensor name, both shapes, missing and unexpected tensors). Ignored on import, with a log note:
the classifier head ('fc.*' for ResNets, 'head.*' for ViTs; the encoders output pooled features,
timm num_classes=0) and BatchNorm 'num_batches_tracked' counters. Export writes timm names (float32
numpy, BatchNorm counters as int64 zeros) that `timm.create_model(...).load_state_dict(sd, strict=False)`
accepts with only the head missing.

Files are read with closp_jax.weights.safe_load: safetensors, or torch files with weights_only=True
(a pickle that would run code is refused with UnsafeWeightsError).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.models import image as image_models
from closp_jax.models.resnet import ResNet
from closp_jax.models.vit import VisionTransformer
from closp_jax.weights import convert
from closp_jax.weights.convert import TensorRule, WeightMismatchError
from closp_jax.weights.safe_load import load_state_dict

RESNET_IGNORE = ("fc.*", "*num_batches_tracked")
VIT_IGNORE = ("head.*",)

_LAYER = re.compile(r"^layer(\d+)_(\d+)$")
_BLOCK = re.compile(r"^blocks_(\d+)$")


def _read(state_dict: Any, prefix: str, source: str | None) -> tuple[dict[str, np.ndarray], str]:
  if isinstance(state_dict, (str, os.PathLike)):
    source = source or str(state_dict)
    state_dict = load_state_dict(state_dict)
  source = source or "state dict"
  if not isinstance(state_dict, Mapping):
    raise TypeError(f"{source}: expected a state dict (name -> array) or a file path, got {type(state_dict).__name__}")
  return convert.strip_prefix(state_dict, prefix, source=source), source


@functools.lru_cache(maxsize=32)
def _shapes(name: str, in_chans: int) -> dict[str, Any]:
  """The variables `image_encoder(name, in_chans).init` would make, as shapes (traced, not computed)."""
  model = image_models.image_encoder(name, in_chans)
  size = getattr(model, "img_size", 64)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, in_chans)), train=False))


def _in_chans(sd: Mapping[str, np.ndarray], key: str, source: str) -> int:
  if key not in sd:
    raise WeightMismatchError(
      f"{source}: tensor {key!r} not found, cannot tell the number of input channels "
      f"(names look like: {', '.join(list(sd)[:8])})"
    )
  return int(np.shape(sd[key])[1])


# ---- ResNet -------------------------------------------------------------------------------------


def resnet_rules(params: Mapping[str, Any]) -> list[TensorRule]:
  """Rules for a closp_jax ResNet param tree (structure read from the tree's keys)."""
  rules: list[TensorRule] = []
  for key in params:
    if key == "conv1":
      rules += convert.conv_rules("conv1", ("conv1",))
    elif key == "bn1":
      rules += convert.batchnorm_rules("bn1", ("bn1",))
    elif m := _LAYER.match(key):
      base = f"layer{m.group(1)}.{m.group(2)}"
      for sub in params[key]:
        torch_sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(sub, sub)
        if sub.startswith("conv") or sub == "downsample_conv":
          rules += convert.conv_rules(f"{base}.{torch_sub}", (key, sub))
        elif sub.startswith("bn") or sub == "downsample_bn":
          rules += convert.batchnorm_rules(f"{base}.{torch_sub}", (key, sub))
        else:
          raise ValueError(f"unknown ResNet block member {key}/{sub}")
    else:
      raise ValueError(f"unknown ResNet param {key!r}")
  return rules


def _resnet_model(name: str, in_chans: int) -> ResNet:
  model = image_models.image_encoder(name, in_chans)
  if not isinstance(model, ResNet):
    raise ValueError(
      f"{name!r} is not a ResNet; ResNets: {[n for n in image_models.encoder_names() if n.startswith('resnet')]}"
    )
  return model


def load_timm_resnet(
  state_dict: Mapping[str, np.ndarray] | str | os.PathLike,
  name: str = "resnet50",
  in_chans: int | None = None,
  *,
  prefix: str = "",
  source: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, batch_stats) for `image_encoder(name, in_chans)` from a timm/torchvision ResNet state dict.

  Args:
    state_dict: {name: array}, or a path to a safetensors / torch file.
    name: closp_jax encoder name ("resnet50", "resnet18", "resnet_tiny").
    in_chans: expected input channels; None reads them from `conv1.weight`.
    prefix: only tensors starting with it are read, with it removed (e.g. "s2_encoder.").
    source: name used in error messages (defaults to the file path).
  """
  sd, source = _read(state_dict, prefix, source)
  if in_chans is None:
    in_chans = _in_chans(sd, "conv1.weight", source)
  _resnet_model(name, in_chans)  # refuses non-ResNet names before any tensor is read
  expected = _shapes(name, in_chans)
  variables = convert.import_state_dict(
    sd, resnet_rules(_plain(expected["params"])), expected, ignore=RESNET_IGNORE, source=source
  )
  return variables["params"], variables["batch_stats"]


def export_timm_resnet(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """timm-named state dict (float32 numpy; BatchNorm counters int64 zeros) from ResNet variables."""
  rules = resnet_rules(_plain(params))
  counters = {
    r.torch_name.rsplit(".", 1)[0] + ".num_batches_tracked": np.array(0, np.int64)
    for r in rules
    if r.torch_name.endswith(".running_mean")
  }
  return convert.export_state_dict({"params": params, "batch_stats": batch_stats}, rules, constants=counters)


# ---- ViT ----------------------------------------------------------------------------------------


def vit_rules(params: Mapping[str, Any]) -> list[TensorRule]:
  """Rules for a closp_jax VisionTransformer param tree."""
  rules: list[TensorRule] = []
  for key in params:
    if key == "patch_embed":
      rules += convert.conv_rules("patch_embed.proj", ("patch_embed",), bias=True)
    elif key in ("cls_token", "pos_embed"):
      rules.append(TensorRule(key, ("params", key)))
    elif key == "norm":
      rules += convert.layernorm_rules("norm", ("norm",))
    elif m := _BLOCK.match(key):
      t = f"blocks.{m.group(1)}"
      blk = params[key]
      d, three, h, hd = blk["attn"]["qkv"]["kernel"].shape
      rules += convert.layernorm_rules(f"{t}.norm1", (key, "norm1"))
      rules += convert.layernorm_rules(f"{t}.norm2", (key, "norm2"))
      rules.append(
        convert.reshape_rule(
          f"{t}.attn.qkv.weight",
          ("params", key, "attn", "qkv", "kernel"),
          torch_shape=(three * h * hd, d),
          split_shape=(three, h, hd, d),
          perm=(3, 0, 1, 2),
          flax_shape=(d, three, h, hd),
        )
      )
      rules.append(
        convert.reshape_rule(
          f"{t}.attn.qkv.bias",
          ("params", key, "attn", "qkv", "bias"),
          torch_shape=(three * h * hd,),
          split_shape=(three, h, hd),
          flax_shape=(three, h, hd),
        )
      )
      rules.append(
        convert.reshape_rule(
          f"{t}.attn.proj.weight",
          ("params", key, "attn", "proj", "kernel"),
          torch_shape=(d, h * hd),
          split_shape=(d, h, hd),
          perm=(1, 2, 0),
          flax_shape=(h, hd, d),
        )
      )
      rules.append(TensorRule(f"{t}.attn.proj.bias", ("params", key, "attn", "proj", "bias")))
      rules += convert.dense_rules(f"{t}.mlp.fc1", (key, "mlp", "fc1"))
      rules += convert.dense_rules(f"{t}.mlp.fc2", (key, "mlp", "fc2"))
    else:
      raise ValueError(f"unknown ViT param {key!r}")
  return rules


def load_timm_vit(
  state_dict: Mapping[str, np.ndarray] | str | os.PathLike,
  name: str = "vit_s16",
  in_chans: int | None = None,
  *,
  prefix: str = "",
  source: str | None = None,
) -> dict[str, Any]:
  """params for `image_encoder(name, in_chans)` from a timm ViT state dict (see `load_timm_resnet`).

  The position embeddings must be for the model's grid (224 px / 16 = 14x14 for vit_s16/vit_l16);
  other input sizes are handled at run time by the model, which resamples them like timm.
  """
  sd, source = _read(state_dict, prefix, source)
  if in_chans is None:
    in_chans = _in_chans(sd, "patch_embed.proj.weight", source)
  model = image_models.image_encoder(name, in_chans)
  if not isinstance(model, VisionTransformer):
    raise ValueError(f"{name!r} is not a ViT; ViTs: {[n for n in image_models.encoder_names() if n.startswith('vit')]}")
  expected = _shapes(name, in_chans)
  variables = convert.import_state_dict(
    sd, vit_rules(_plain(expected["params"])), expected, ignore=VIT_IGNORE, source=source
  )
  return variables["params"]


def export_timm_vit(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """timm-named state dict (float32 numpy) from ViT params."""
  return convert.export_state_dict({"params": params}, vit_rules(_plain(params)))


def _plain(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested plain dicts without Partitioned boxes (keys in tree order)."""
  return convert.unflatten_tree(convert.flatten_tree(tree))

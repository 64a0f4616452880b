"""Image encoder factory: one name -> a Flax module mapping NHWC images to pooled features.

    enc = image_encoder("resnet50", in_chans=13)
    variables = enc.init(rng, x, train=False)            # {'params', 'batch_stats'} for ResNets
    feats = enc.apply(variables, x, train=False)         # [B, num_features("resnet50")] float32
    feats, upd = enc.apply(variables, x, train=True, mutable=["batch_stats"])   # ResNet, bn_mode="batch"

ViTs have only 'params' and ignore `bn_mode` (it is still validated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from closp_jax.models.resnet import BN_MODES, ResNet
from closp_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class _ResNetSpec:
  block: str
  layers: tuple[int, ...]
  widths: tuple[int, ...]
  stem_width: int
  input_size: int = 120  # CLOSP runs ResNets on the native 120 px patches

  @property
  def num_features(self) -> int:
    return self.widths[-1] * (4 if self.block == "bottleneck" else 1)


@dataclasses.dataclass(frozen=True)
class _ViTSpec:
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  img_size: int  # the grid the position embeddings are made for (img_size // patch_size)

  @property
  def num_features(self) -> int:
    return self.embed_dim

  @property
  def input_size(self) -> int:
    return self.img_size


_SPECS: dict[str, Any] = {
  "resnet50": _ResNetSpec("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
  "resnet18": _ResNetSpec("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
  "resnet_tiny": _ResNetSpec("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
  "vit_s16": _ViTSpec(16, 384, 12, 6, 224),
  "vit_l16": _ViTSpec(16, 1024, 24, 16, 224),
  "vit_tiny": _ViTSpec(8, 96, 2, 3, 120),
}


def encoder_names() -> tuple[str, ...]:
  """All names `image_encoder` accepts."""
  return tuple(_SPECS)


def _spec(name: str) -> Any:
  if name not in _SPECS:
    raise ValueError(f"unknown image encoder {name!r}; valid names: {', '.join(_SPECS)}")
  return _SPECS[name]


def num_features(name: str) -> int:
  """Width F of the features [B, F] the encoder `name` returns."""
  return _spec(name).num_features


def default_input_size(name: str) -> int:
  """Side length in pixels the encoder is meant to run at (120 for ResNets, the ViT's img_size)."""
  return _spec(name).input_size


def image_encoder(name: str, in_chans: int, *, dtype: Any = jnp.float32, bn_mode: str = "batch") -> nn.Module:
  """A Flax module `module(x, train) -> [B, num_features(name)]` for NHWC float input [B, H, W, in_chans].

  Args:
    name: one of `encoder_names()`.
    in_chans: input channels (13 for the Sentinel-2 tower, 2 for Sentinel-1).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters are always float32, features float32.
    bn_mode: "batch" (train-mode statistics over the global batch) or "frozen" (running averages
      always); see closp_jax/models/resnet.py. Checked for every encoder, used by ResNets.
  """
  spec = _spec(name)
  if bn_mode not in BN_MODES:
    raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
  if not isinstance(in_chans, int) or in_chans < 1:
    raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
  if isinstance(spec, _ResNetSpec):
    return ResNet(
      block=spec.block,
      layers=spec.layers,
      widths=spec.widths,
      stem_width=spec.stem_width,
      in_chans=in_chans,
      bn_mode=bn_mode,
      dtype=dtype,
    )
  return VisionTransformer(
    patch_size=spec.patch_size,
    embed_dim=spec.embed_dim,
    depth=spec.depth,
    num_heads=spec.num_heads,
    img_size=spec.img_size,
    in_chans=in_chans,
    dtype=dtype,
  )

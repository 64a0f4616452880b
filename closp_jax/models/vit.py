"""Vision Transformer encoders (timm `vit_*_patch16_224` layout), NHWC, any channel count and input size.

Output: timm's pre-logits with global_pool='token': the CLS token after the final LayerNorm, [B, D]
float32 (num_classes=0).

Param tree:
  patch_embed/{kernel (p, p, C, D), bias}     timm patch_embed.proj (a stride-p conv)
  cls_token (1, 1, D), pos_embed (1, 1 + N, D)
  blocks_{i}/norm1, attn/qkv/{kernel (D, 3, H, hd), bias (3, H, hd)}, attn/proj/{kernel (H, hd, D), bias},
             norm2, mlp/fc1, mlp/fc2          timm blocks.{i}.*
  norm                                        final LayerNorm
LayerNorm epsilon 1e-6, exact (erf) GELU, qkv bias, no layer scale, no dropout: timm defaults.

Input size: the patch grid is floor(H / p) x floor(W / p) (a VALID stride-p conv; trailing pixels
that do not fill a patch are dropped, like timm's PatchEmbed built for that image size). When the grid
differs from the one the position embeddings were made for (`img_size // patch_size`), they are
resampled on the fly with `resample_pos_embed`, which reproduces timm's `resample_abs_pos_embed`
(PyTorch bicubic interpolation with antialias=True, align_corners=False), so a model run at 120 px
matches timm's `img_size=120` model loaded from 224 px weights, and any multiple of p matches timm's
`dynamic_img_size=True`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

_lp = nn.with_logical_partitioning


def _cubic_aa(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys cubic convolution kernel with a=-0.5 (the antialiased bicubic filter of PyTorch and PIL)."""
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_aa_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of 1-D antialiased bicubic resampling, align_corners=False.

  The same sampling as torch.nn.functional.interpolate(mode='bicubic', antialias=True): output
  pixel i is centred at scale*(i + 0.5) in input coordinates (scale = in/out); the filter is widened
  by `scale` when shrinking; taps outside the input are dropped and the weights renormalised.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"resample sizes must be positive, got {in_size} -> {out_size}")
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    j = np.arange(lo, hi)
    w = _cubic_aa((j - center + 0.5) * invscale)
    total = w.sum()
    m[i, lo:hi] = w / total if total != 0.0 else w
  return m


def resample_pos_embed(grid_embed: jnp.ndarray, new_grid: tuple[int, int]) -> jnp.ndarray:
  """Resamples position embeddings laid out as [gh, gw, D] to [new_h, new_w, D] (float32)."""
  gh, gw, _ = grid_embed.shape
  if (gh, gw) == tuple(new_grid):
    return grid_embed
  mh = jnp.asarray(bicubic_aa_matrix(gh, new_grid[0]), jnp.float32)
  mw = jnp.asarray(bicubic_aa_matrix(gw, new_grid[1]), jnp.float32)
  g = grid_embed.astype(jnp.float32)
  return jnp.einsum("oh,hwd,pw->opd", mh, g, mw, precision="highest")


class Attention(nn.Module):
  """Multi-head self attention with a fused qkv projection (timm Attention)."""

  dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    hd = self.dim // self.num_heads
    qkv = nn.DenseGeneral(
      (3, self.num_heads, hd),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="qkv",
      kernel_init=_lp(nn.initializers.xavier_uniform(), ("embed", None, "heads", "kv")),
      bias_init=_lp(nn.initializers.zeros, (None, "heads", "kv")),
    )(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * (hd**-0.5), k).astype(jnp.float32)
    weights = nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(
      self.dim,
      axis=(-2, -1),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="proj",
      kernel_init=_lp(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
      bias_init=_lp(nn.initializers.zeros, ("embed",)),
    )(out)


def _layernorm(dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=1e-6,
    dtype=dtype,
    param_dtype=jnp.float32,
    use_fast_variance=False,
    name=name,
    scale_init=_lp(nn.initializers.ones, ("norm",)),
    bias_init=_lp(nn.initializers.zeros, ("norm",)),
  )


class Mlp(nn.Module):
  dim: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform()
    x = nn.Dense(
      self.hidden,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="fc1",
      kernel_init=_lp(init, ("embed", "mlp")),
      bias_init=_lp(nn.initializers.zeros, ("mlp",)),
    )(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(
      self.dim,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="fc2",
      kernel_init=_lp(init, ("mlp", "embed")),
      bias_init=_lp(nn.initializers.zeros, ("embed",)),
    )(x)


class Block(nn.Module):
  """Pre-norm transformer block."""

  dim: int
  num_heads: int
  mlp_hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x + Attention(self.dim, self.num_heads, self.dtype, name="attn")(_layernorm(self.dtype, "norm1")(x))
    return x + Mlp(self.dim, self.mlp_hidden, self.dtype, name="mlp")(_layernorm(self.dtype, "norm2")(x))


class VisionTransformer(nn.Module):
  """ViT feature extractor: x [B, H, W, in_chans] -> CLS features [B, embed_dim]."""

  patch_size: int = 16
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  img_size: int = 224
  in_chans: int = 3
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.embed_dim

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or BatchNorm: train and eval are the same function
    p, d = self.patch_size, self.embed_dim
    if self.embed_dim % self.num_heads:
      raise ValueError(f"ViT embed_dim {d} is not divisible by num_heads {self.num_heads}")
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f"ViT expects NHWC input [B, H, W, {self.in_chans}], got shape {tuple(x.shape)}")
    if x.shape[1] < p or x.shape[2] < p:
      raise ValueError(f"ViT input {x.shape[1]}x{x.shape[2]} is smaller than one {p}x{p} patch")
    b = x.shape[0]
    x = nn.Conv(
      d,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="patch_embed",
      kernel_init=_lp(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "embed")),
      bias_init=_lp(nn.initializers.zeros, ("embed",)),
    )(x.astype(self.dtype))
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, d)
    grid = self.img_size // p
    cls = self.param("cls_token", _lp(nn.initializers.normal(1e-6), (None, None, "embed")), (1, 1, d), jnp.float32)
    pos = self.param(
      "pos_embed",
      _lp(nn.initializers.truncated_normal(0.02), (None, "pos", "embed")),
      (1, 1 + grid * grid, d),
      jnp.float32,
    )
    patch_pos = resample_pos_embed(pos[0, 1:].reshape(grid, grid, d), (gh, gw)).reshape(1, gh * gw, d)
    pos = jnp.concatenate([pos[:, :1], patch_pos], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(self.dtype), x], axis=1)
    x = x + pos.astype(self.dtype)
    hidden = int(d * self.mlp_ratio)
    for i in range(self.depth):
      x = Block(d, self.num_heads, hidden, self.dtype, name=f"blocks_{i}")(x)
    x = _layernorm(self.dtype, "norm")(x)
    return x[:, 0].astype(jnp.float32)

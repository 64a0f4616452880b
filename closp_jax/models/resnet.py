"""ResNet image encoders (timm / torchvision layout), NHWC, any channel count and input size.

Output: the global-average-pooled features of the last stage, [B, F] float32 (timm
`forward_features` + average pool with num_classes=0).

Param tree (names follow timm so the weight mapping reads line by line):
  conv1, bn1                                  stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool
  layer{s}_{b}/conv1, bn1, conv2, bn2[, conv3, bn3][, downsample_conv, downsample_bn]
                                              timm `layer{s}.{b}.conv1` ... `layer{s}.{b}.downsample.{0,1}`
BatchNorm statistics live in the 'batch_stats' collection (`mean`, `var`).

BatchNorm modes (`bn_mode`):
  "batch":  train=True normalises with the statistics of the batch given to `apply` and updates the
            running averages (apply with mutable=['batch_stats']); train=False uses the running averages.
            Under jax.jit with the batch sharded over devices, the batch mean is a reduction over the
            GLOBAL batch, so the statistics are synchronised across data-parallel devices by
            construction (no axis_name). Inside shard_map/pmap they would be per device.
  "frozen": always the running averages (fine-tuning from pretrained statistics); 'batch_stats' is
            never updated.
Running variance: Flax stores the biased batch variance in the running average; PyTorch stores the
unbiased one (factor n/(n-1), n = B*H*W values per channel). Train-mode outputs are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_MODES = ("batch", "frozen")

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # timm/torchvision kaiming fan_out


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    kernel_init=nn.with_logical_partitioning(_conv_init, ("conv_h", "conv_w", "conv_in", "conv_out")),
  )


# BatchNorm batch statistics in one pass (E[x] and E[x^2] in the same reduction, flax's default) rather
# than two (the mean, then the mean squared deviation, as PyTorch computes them): 5.5% fewer bytes moved
# by the ResNet-50 train step (benchmarks/step_waste.py, row bn_fast_variance; docs/benchmarks.md); the
# torch parity tests in tests/test_resnet.py hold at their tolerances either way.
FAST_VARIANCE = True


def _bn(use_running_average: bool, dtype: Any, name: str, zero_init: bool = False) -> nn.BatchNorm:
  scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
  return nn.BatchNorm(
    use_running_average=use_running_average,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    param_dtype=jnp.float32,
    use_fast_variance=FAST_VARIANCE,
    name=name,
    scale_init=nn.with_logical_partitioning(scale_init, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
  )


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); the stride sits on conv1."""

  width: int
  stride: int
  use_running_average: bool
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x):
    out_ch = self.width * self.expansion
    y = nn.relu(
      _bn(self.use_running_average, self.dtype, "bn1")(_conv(self.width, 3, self.stride, self.dtype, "conv1")(x))
    )
    y = _bn(self.use_running_average, self.dtype, "bn2", zero_init=True)(_conv(out_ch, 3, 1, self.dtype, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _bn(self.use_running_average, self.dtype, "downsample_bn")(
        _conv(out_ch, 1, self.stride, self.dtype, "downsample_conv")(x)
      )
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 expansion), stride on the 3x3 conv (ResNet v1.5, as timm and torchvision)."""

  width: int
  stride: int
  use_running_average: bool
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out_ch = self.width * self.expansion
    ura, dt = self.use_running_average, self.dtype
    y = nn.relu(_bn(ura, dt, "bn1")(_conv(self.width, 1, 1, dt, "conv1")(x)))
    y = nn.relu(_bn(ura, dt, "bn2")(_conv(self.width, 3, self.stride, dt, "conv2")(y)))
    y = _bn(ura, dt, "bn3", zero_init=True)(_conv(out_ch, 1, 1, dt, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _bn(ura, dt, "downsample_bn")(_conv(out_ch, 1, self.stride, dt, "downsample_conv")(x))
    return nn.relu(y + x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """ResNet feature extractor: x [B, H, W, in_chans] -> pooled features [B, widths[-1] * expansion]."""

  block: str = "bottleneck"
  layers: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  in_chans: int = 3
  bn_mode: str = "batch"
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.widths[-1] * BLOCKS[self.block].expansion

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"ResNet bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
    if self.block not in BLOCKS:
      raise ValueError(f"ResNet block must be one of {tuple(BLOCKS)}, got {self.block!r}")
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f"ResNet expects NHWC input [B, H, W, {self.in_chans}], got shape {tuple(x.shape)}")
    ura = self.bn_mode == "frozen" or not train
    block = BLOCKS[self.block]
    x = x.astype(self.dtype)
    x = nn.relu(_bn(ura, self.dtype, "bn1")(_conv(self.stem_width, 7, 2, self.dtype, "conv1")(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (n_blocks, width) in enumerate(zip(self.layers, self.widths)):
      for b in range(n_blocks):
        stride = 2 if (s > 0 and b == 0) else 1
        x = block(width, stride, ura, self.dtype, name=f"layer{s + 1}_{b}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

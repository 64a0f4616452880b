"""Input normalisation per sensor: one definition for the training pipeline and the exported encoders.

Every mode is an affine map per band, `(x - shift) * scale`:

- `none`: as stored (the authors feed Sentinel-1 this way);
- `scale`: x / divisor (Sentinel-2 reflectance x 10,000 -> reflectance, the authors' S2 input);
- `standardize`: (x - mean) / std with the train split's band statistics; a constant band (the
  zero B10) is only centred.

`affine()` returns the two vectors; the grain pipeline applies them with numpy and the exported
functions carry the same numbers in their spec, so both see identical inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MODES = ("none", "scale", "standardize")
# The divisor `scale` uses unless the config gives another: Sentinel-2 values are reflectance x 10,000.
DEFAULT_DIVISOR = {"s2": 10000.0, "s1": 1.0}


def affine(
  sensor: str, mode: str, channels: int, *, divisor: float | None = None, stats: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(shift, scale) float32 [channels] of `mode` for `sensor`; stats = {"mean": [...], "std": [...]}."""
  if mode not in MODES:
    raise ValueError(f"{sensor} normalization {mode!r}: expected one of {', '.join(MODES)}")
  shift = np.zeros(channels, np.float32)
  if mode == "none":
    return shift, np.ones(channels, np.float32)
  if mode == "scale":
    d = float(DEFAULT_DIVISOR[sensor] if divisor is None else divisor)
    if not (d > 0 and np.isfinite(d)):
      raise ValueError(f"{sensor} normalization 'scale': the divisor must be a positive number, got {d!r}")
    return shift, np.full(channels, 1.0 / d, np.float32)
  if not stats:
    raise ValueError(
      f"standardising {sensor} needs band statistics of the train split, which this dataset "
      "lacks (no train samples of that sensor?)"
    )
  mean = np.asarray(stats["mean"], np.float32)
  std = np.asarray(stats["std"], np.float32)
  if mean.shape != (channels,) or std.shape != (channels,):
    raise ValueError(f"{sensor} band statistics: mean {mean.shape} / std {std.shape}, expected ({channels},)")
  scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0).astype(np.float32)
  return mean, scale


def modes_from_config(cfg) -> dict[str, str]:
  """{'s2': mode, 's1': mode} from config.data.normalization."""
  return {s: str(cfg.data.normalization[s]) for s in ("s2", "s1")}


def divisors_from_config(cfg) -> dict[str, float]:
  return {s: float(cfg.data.scale_divisor[s]) for s in ("s2", "s1")}


def needs_stats(modes: Mapping[str, str]) -> bool:
  return any(m == "standardize" for m in modes.values())

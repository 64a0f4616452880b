"""Location encoders: SatCLIP's (spherical harmonics + SIREN) and GeoCLIP's (Equal Earth + RFF MLPs).

Both take `lonlat` [B, 2] = (longitude, latitude) in degrees and return [B, out] features (the tower
adds a projection into the shared space). Both compute in float32 whatever the model's compute dtype:
sine activations with w0 = 30 and Fourier features at sigma 256 lose their meaning in bfloat16.

Spherical harmonics follow SatCLIP: phi = rad(lon + 180), theta = rad(lat + 90), x = cos(theta);
features for l = 0..L-1, m = -l..l (in that order, L**2 in all), real harmonics
  m = 0:  N_l^0 P_l^0(x)
  m > 0:  sqrt(2) N_l^m P_l^m(x) cos(m phi)
  m < 0:  sqrt(2) N_l^|m| P_l^|m|(x) sin(|m| phi)
with N_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!) and P_l^m the associated Legendre functions WITH the
Condon-Shortley phase (-1)^m: SatCLIP's "closed-form" calculation. They are evaluated with the
normalised three-term recurrence, so any degree works in float32 (no factorials, no table).

SatCLIP's default "analytic" calculation is a generated table that differs from the closed form in
two ways; `convention` reproduces either, so released checkpoints can be evaluated as trained:
  "analytic":       no Condon-Shortley phase (every m != 0 feature multiplied by (-1)^m);
  "analytic_2023":  as "analytic", and every m = 0 feature multiplied by pi (the table SatCLIP shipped
                    until its 2024 regeneration computed sqrt((2l+1)/4*pi) for m = 0; SatCLIP's
                    released checkpoints were trained with it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SH_CONVENTIONS = ("closed_form", "analytic", "analytic_2023")

# Equal Earth projection constants (Savric, Patterson & Jenny 2018), as GeoCLIP uses them.
_EE_A1, _EE_A2, _EE_A3, _EE_A4 = 1.340264, -0.081106, 0.000893, 0.003796
_EE_SF = 66.50336  # GeoCLIP's scale factor; projected coordinates are x * SF / 180


# ---- spherical harmonics ------------------------------------------------------------------------


@functools.cache
def _recurrence_tables(degree: int) -> tuple[np.ndarray, ...]:
  """float64 constants of the normalised Legendre recurrence for l, m < degree.

  diag[m]:    |Pbar_m^m| / |Pbar_{m-1}^{m-1}| factor sqrt((2m+1)/(2m)) (diag[0] = sqrt(1/(4 pi))).
  sub[m]:     Pbar_{m+1}^m = sub[m] x Pbar_m^m, sub[m] = sqrt(2m+3).
  a[l, m], b[l, m]: Pbar_l^m = a (x Pbar_{l-1}^m - b Pbar_{l-2}^m) for m <= l-2 (0 elsewhere).
  """
  m = np.arange(degree, dtype=np.float64)
  diag = np.sqrt((2 * m + 1) / np.maximum(2 * m, 1))
  diag[0] = math.sqrt(1.0 / (4.0 * math.pi))
  sub = np.sqrt(2 * m + 3)
  a = np.zeros((degree, degree))
  b = np.zeros((degree, degree))
  for l in range(2, degree):
    mm = np.arange(l - 1, dtype=np.float64)
    a[l, : l - 1] = np.sqrt((4.0 * l * l - 1) / (l * l - mm * mm))
    b[l, : l - 1] = np.sqrt(((l - 1.0) ** 2 - mm * mm) / (4.0 * (l - 1.0) ** 2 - 1))
  return diag, sub, a, b


@functools.cache
def _output_layout(degree: int, convention: str) -> tuple[np.ndarray, np.ndarray]:
  """Gather indices into the [3, L, L] (sin, m=0, cos) table, and per-feature convention factors."""
  if convention not in SH_CONVENTIONS:
    raise ValueError(f"unknown spherical-harmonics convention {convention!r}; expected one of {SH_CONVENTIONS}")
  index, factor = [], []
  for l in range(degree):
    for m in range(-l, l + 1):
      part = 0 if m < 0 else (1 if m == 0 else 2)
      index.append((part * degree + l) * degree + abs(m))
      f = 1.0
      if convention != "closed_form" and m % 2:
        f = -1.0
      if convention == "analytic_2023" and m == 0:
        f = math.pi
      factor.append(f)
  return np.asarray(index, np.int32), np.asarray(factor, np.float64)


def spherical_harmonics(lonlat_deg: jax.Array, degree: int, convention: str = "closed_form") -> jax.Array:
  """Real spherical harmonics of (lon, lat) in degrees: [N, 2] -> [N, degree**2].

  Computed in the dtype of `lonlat_deg` (float32, or float64 when x64 is enabled); see the module
  docstring for the convention. Works for any degree >= 1.
  """
  lonlat_deg = jnp.asarray(lonlat_deg)
  if lonlat_deg.ndim != 2 or lonlat_deg.shape[-1] != 2:
    raise ValueError(f"lonlat must have shape [N, 2] (longitude, latitude in degrees), got {lonlat_deg.shape}")
  if not isinstance(degree, (int, np.integer)) or degree < 1:
    raise ValueError(f"degree must be a positive int (the number of Legendre degrees L), got {degree!r}")
  degree = int(degree)
  dtype = lonlat_deg.dtype if jnp.issubdtype(lonlat_deg.dtype, jnp.floating) else jnp.float32
  lonlat_deg = lonlat_deg.astype(dtype)
  phi = jnp.deg2rad(lonlat_deg[:, 0] + 180.0)
  theta = jnp.deg2rad(lonlat_deg[:, 1] + 90.0)
  x = jnp.cos(theta)
  # sqrt(1 - x**2), as SatCLIP computes it, but without the cancellation near the poles.
  s = jnp.abs(jnp.sin(theta))

  diag_c, sub_c, a_c, b_c = (jnp.asarray(t, dtype) for t in _recurrence_tables(degree))
  # Pbar_m^m for m = 0..L-1 (the Condon-Shortley phase is the minus sign).
  diag = [jnp.full_like(x, diag_c[0])]
  for m in range(1, degree):
    diag.append(-diag_c[m] * s * diag[-1])
  diag = jnp.stack(diag, axis=-1)  # [N, L] indexed by m
  sub = sub_c * x[:, None] * diag  # Pbar_{m+1}^m, indexed by m

  m_idx = np.arange(degree)
  rows = []
  prev2 = jnp.zeros_like(diag)
  prev1 = jnp.zeros_like(diag)
  for l in range(degree):
    rec = a_c[l] * (x[:, None] * prev1 - b_c[l] * prev2)  # valid where m <= l-2, zero elsewhere
    row = jnp.where(m_idx == l, diag, rec)
    if l >= 1:
      # Pbar_l^{l-1} is `sub` at column m = l-1.
      row = jnp.where(m_idx == l - 1, sub, row)
    row = jnp.where(m_idx > l, 0.0, row)
    rows.append(row)
    prev2, prev1 = prev1, row
  p = jnp.stack(rows, axis=1)  # [N, L(l), L(m)]

  mphi = phi[:, None] * jnp.asarray(m_idx, dtype)
  root2 = jnp.asarray(math.sqrt(2.0), dtype)
  table = jnp.stack([root2 * p * jnp.sin(mphi)[:, None, :], p, root2 * p * jnp.cos(mphi)[:, None, :]], axis=1)
  index, factor = _output_layout(degree, convention)
  out = jnp.take(table.reshape(table.shape[0], -1), jnp.asarray(index), axis=1)
  return out * jnp.asarray(factor, dtype)


# ---- SatCLIP: spherical harmonics + SIREN -------------------------------------------------------


def _siren_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class SatCLIPLocationEncoder(nn.Module):
  """SatCLIP's location encoder: spherical harmonics of degree L, then a SIREN.

  SIREN (as SatCLIP's SirenNet): `layers` hidden layers `sin(w0 * (W x + b))` of width `hidden`,
  w0 = `w0_initial` (30) in the first and `w0` (1) after; a linear last layer to `out`. Dropout
  (p = `dropout`, before the sine, as SatCLIP) acts only with train=True and a 'dropout' rng.
  Parameters are named after the PyTorch module: layers_<i>, last_layer.
  """

  degree: int = 10
  hidden: int = 256
  layers: int = 2
  out: int = 256
  w0_initial: float = 30.0
  w0: float = 1.0
  dropout: float = 0.5
  sh_convention: str = "closed_form"

  @nn.compact
  def __call__(self, lonlat: jax.Array, train: bool = False) -> jax.Array:
    x = spherical_harmonics(jnp.asarray(lonlat, jnp.float32), self.degree, self.sh_convention)
    for i in range(self.layers):
      first = i == 0
      fan_in = x.shape[-1]
      w0 = self.w0_initial if first else self.w0
      bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / w0
      # The L**2 harmonics axis is left unsharded: L**2 rarely divides a mesh axis.
      in_axis = None if first else "embed"
      x = nn.Dense(
        self.hidden,
        name=f"layers_{i}",
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_siren_uniform(bound), (in_axis, "mlp")),
        bias_init=nn.with_logical_partitioning(_siren_uniform(bound), ("mlp",)),
      )(x)
      if train and self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=False)(x)
      x = jnp.sin(w0 * x)
    bound = math.sqrt(6.0 / x.shape[-1]) / self.w0
    return nn.Dense(
      self.out,
      name="last_layer",
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(_siren_uniform(bound), ("mlp", "embed")),
      bias_init=nn.with_logical_partitioning(_siren_uniform(bound), ("embed",)),
    )(x)


# ---- GeoCLIP: Equal Earth + random Fourier features + summed MLP branches -----------------------


def equal_earth(lat_deg: jax.Array, lon_deg: jax.Array) -> jax.Array:
  """Equal Earth projection of (lat, lon) degrees, scaled as GeoCLIP: [N] x 2 -> [N, 2] (x, y)."""
  lat = jnp.deg2rad(lat_deg)
  lon = jnp.deg2rad(lon_deg)
  root3 = jnp.sqrt(jnp.asarray(3.0, lat.dtype))
  t = jnp.arcsin(root3 / 2 * jnp.sin(lat))
  denom = 3 * (9 * _EE_A4 * t**8 + 7 * _EE_A3 * t**6 + 3 * _EE_A2 * t**2 + _EE_A1)
  x = (2 * root3 * lon * jnp.cos(t)) / denom
  y = _EE_A4 * t**9 + _EE_A3 * t**7 + _EE_A2 * t**3 + _EE_A1 * t
  return jnp.stack([x, y], axis=1) * _EE_SF / 180


class _GeoCLIPBranch(nn.Module):
  """One GeoCLIP branch: Gaussian random Fourier features at one sigma, then an MLP.

  The Fourier matrix `b` [rff_dim, 2] is fixed (never trained): it lives in the non-trainable
  'batch_stats' collection, the collection this project carries for every non-trainable buffer.
  """

  sigma: float
  rff_dim: int = 256
  hidden: int = 1024
  depth: int = 3
  out: int = 512

  @nn.compact
  def __call__(self, xy: jax.Array) -> jax.Array:
    b = self.variable(
      "batch_stats", "b", lambda: self.sigma * jax.random.normal(self.make_rng("params"), (self.rff_dim, 2))
    )
    vp = (2 * np.pi * xy) @ b.value.T
    x = jnp.concatenate([jnp.cos(vp), jnp.sin(vp)], axis=-1)
    for i in range(self.depth):
      x = nn.relu(
        nn.Dense(
          self.hidden,
          name=f"capsule_{2 * i + 1}",
          param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
        )(x)
      )
    return nn.Dense(
      self.out,
      name="head_0",
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
    )(x)


class GeoCLIPLocationEncoder(nn.Module):
  """GeoCLIP's location encoder: Equal Earth, then one RFF + MLP branch per sigma, outputs summed.

  Input is (lon, lat) like every encoder here (GeoCLIP's own module takes (lat, lon)); output
  [B, out]. Branch i is named LocEnc<i> with layers capsule_1/3/5 and head_0, as the PyTorch module.
  """

  sigmas: Sequence[float] = (2.0**0, 2.0**4, 2.0**8)
  rff_dim: int = 256
  hidden: int = 1024
  depth: int = 3
  out: int = 512

  @nn.compact
  def __call__(self, lonlat: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout in GeoCLIP
    lonlat = jnp.asarray(lonlat, jnp.float32)
    if lonlat.ndim != 2 or lonlat.shape[-1] != 2:
      raise ValueError(f"lonlat must have shape [N, 2] (longitude, latitude in degrees), got {lonlat.shape}")
    xy = equal_earth(lonlat[:, 1], lonlat[:, 0])
    total = 0.0
    for i, sigma in enumerate(self.sigmas):
      total = total + _GeoCLIPBranch(float(sigma), self.rff_dim, self.hidden, self.depth, self.out, name=f"LocEnc{i}")(
        xy
      )
    return total


LOCATION_KINDS = ("satclip", "geoclip")


def location_encoder(kind: str, **kwargs: Any) -> nn.Module:
  """The location encoder `kind` ('satclip' or 'geoclip') with the given fields."""
  if kind == "satclip":
    return SatCLIPLocationEncoder(**kwargs)
  if kind == "geoclip":
    return GeoCLIPLocationEncoder(**kwargs)
  raise ValueError(f"unknown location encoder kind {kind!r}; expected one of {LOCATION_KINDS}")

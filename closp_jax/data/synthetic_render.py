"""Draw and render synthetic CrisisLandMark scenes (Sentinel-2 and Sentinel-1 patches).

A scene is a set of regions (one per label, plus now and then a small unlabelled
feature), each a recipe of materials (synthetic_world.py), covering the patch in
given area shares. Rendering is batched over a chunk of scenes:
1. per region, a smooth random field turned into Gumbel noise; a low-temperature
   softmax of (field + log share) at 40x40 gives abundance maps whose expected
   area equals the share (Gumbel-max), soft at boundaries (mixed pixels);
   each region is split in two variants by another smooth field (fields at
   different growth stages, wetter/drier patches); bilinear upsampling to 120x120;
2. per scene and variant, material spectra / backscatter drawn around the tables
   (season, soil moisture, brightness, incidence angle, calibration);
3. image = spectra @ abundances, times a smooth illumination/topography field,
   plus haze (S2), sensor noise (S2) or thermal noise and gamma speckle (S1).
Noise and speckle come from one random bank per chunk, read through random
120x120 windows, which keeps the per-pixel random work small.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from closp_jax.data import geo
from closp_jax.data import synthetic_world as W
from closp_jax.data.labels import CLASSES, CORINE_TO_CLASS

SIZE = 120
LOW = 40
NAN_RATE = 0.01
S1_LOOKS = 4.4
_HAZE = np.array([1.0, 0.9, 0.7, 0.5, 0.45, 0.4, 0.35, 0.33, 0.32, 0.3, 0.15, 0.1])  # W.S2_BANDS order
_MATS = W.material_arrays()
_RUBBLE, _BUILT = W.MATERIAL_INDEX["rubble"], W.MATERIAL_INDEX["built"]
_CORINE_ORDER = {name: i for i, name in enumerate(CORINE_TO_CLASS)}
_CLASS_ORDER = {name: i for i, name in enumerate(CLASSES)}


@dataclasses.dataclass
class Scene:
  """Everything needed to render and describe one sample."""

  key: str
  source: str
  labels: list[str]  # stored labels (CORINE names for benv2*, class names otherwise)
  recipes: list[dict[str, float]]  # one per region
  areas: np.ndarray  # [n_regions], sums to 1
  place: str
  lon: float
  lat: float
  epsg: int
  x: float  # centre pixel x/y in epsg
  y: float
  timestamp: str
  event: bool
  greenness: float  # phenology 0 (dormant) .. 1 (peak)
  moisture: float  # 0 dry .. 1 wet
  incidence: float  # S1 incidence angle, degrees
  nan_pixels: bool
  elevation: float = 0.0  # metres above sea level
  day: dt.date | None = None  # acquisition date (local)


def _phenology(lat: float, day: dt.date) -> float:
  doy = day.timetuple().tm_yday
  if abs(lat) < 23.5:
    peak = 80 if lat < 0 else 250
    return 0.65 + 0.25 * np.cos(2 * np.pi * (doy - peak) / 365.0)
  peak = 196 if lat >= 0 else 15
  return 0.5 + 0.5 * np.cos(2 * np.pi * (doy - peak) / 365.0)


def _timestamp(day: dt.date, lon: float, sensor: str, rng: np.random.Generator) -> str:
  local = 10.5 if sensor == "s2" else (6.0 if rng.random() < 0.5 else 18.0)
  hours = local - lon / 15.0 + rng.normal(0, 0.1)
  t = dt.datetime.combine(day, dt.time()) + dt.timedelta(hours=float(hours))
  return t.replace(microsecond=0).isoformat()


def _choose(rng, prior: dict[str, float], k: int, exclude=()) -> list[str]:
  names = [n for n, w in prior.items() if w > 0 and n not in exclude]
  p = np.array([prior[n] for n in names])
  k = min(k, len(names))
  return [str(n) for n in rng.choice(names, size=k, replace=False, p=p / p.sum())]


def _shares(rng, k: int, floor: float = 0.03) -> np.ndarray:
  s = np.maximum(rng.dirichlet(np.full(k, 0.9)), floor)
  return s / s.sum()


def _location(rng, place: W.Place, near: bool) -> tuple[float, float]:
  """A point of the place's box: uniform, or (near) within the reach of its footprint."""
  if near and place.footprint is not None:
    fp = place.footprint
    pts = np.asarray(fp.line, np.float64)
    seg = int(rng.integers(max(len(pts) - 1, 1)))
    a, b = pts[seg], pts[min(seg + 1, len(pts) - 1)]
    lon, lat = a + rng.random() * (b - a)
    r, angle = fp.reach_km * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    lat += r * np.sin(angle) / 110.57
    lon += r * np.cos(angle) / (111.32 * np.cos(np.radians(lat)))
  else:
    lon, lat = rng.uniform(*place.lon), rng.uniform(*place.lat)
  return float(np.clip(lon, *place.lon)), float(np.clip(lat, *place.lat))


def _benv2_day(rng, lat: float, elevation: float) -> dt.date:
  """A BigEarthNet date without seasonal snow: redrawn while the spot lies above the seasonal but
  below the permanent snowline (BigEarthNet left out snow-covered patches)."""
  start, end = W.BENV2_PERIOD
  for _ in range(50):
    day = start + dt.timedelta(days=int(rng.integers(0, (end - start).days + 1)))
    if not W.seasonal_snowline_m(lat, day) <= elevation < W.snowline_m(lat):
      return day
  return dt.date(2017, 7, 15) if lat >= 0 else dt.date(2018, 1, 15)


def draw_scene(rng: np.random.Generator, source: W.Source, index: int) -> Scene:
  """Draw labels, regions, place, date and acquisition conditions of one sample by the world's
  rules (synthetic_world.py, docs/data.md "Geography")."""
  places = source.places
  place = places[rng.choice(len(places), p=np.array([p.weight for p in places]) / sum(p.weight for p in places))]
  event = False
  if source.event_label is None:
    lon, lat = _location(rng, place, near=False)
    elevation = float(rng.uniform(*place.elevation))
    day = _benv2_day(rng, lat, elevation)
    labels = _choose(rng, W.local_prior(place, lat, elevation), 1 + min(int(rng.poisson(1.8)), 6))
    labels.sort(key=_CORINE_ORDER.__getitem__)
    recipes = [W.RECIPES[n] for n in labels]
    areas = _shares(rng, len(labels))
  else:
    after = bool(rng.random() < source.after_rate)
    lon, lat = _location(rng, place, near=bool(rng.random() < source.near_rate))
    elevation = float(rng.uniform(*place.elevation))
    reach = place.footprint.reach_km
    dist = W.distance_km(lon, lat, place.footprint.line)
    event = after and dist <= reach
    if after:
      day = place.date + dt.timedelta(days=int(rng.integers(2, 40)))
    else:
      day = place.date - dt.timedelta(days=int(rng.integers(10, 150)))
    context = _choose(rng, place.prior, 1 + int(rng.binomial(2, 0.5)))
    if elevation >= W.seasonal_snowline_m(lat, day) and "Snow and Ice" not in context:
      context.append("Snow and Ice")
    if event and source.event_label == "Earthquake Damage" and "Built" not in context:
      context.append("Built")
    areas = _shares(rng, len(context))
    if event:
      lo, hi = W.EVENT_SHARE[source.event_label]
      share = rng.uniform(lo, hi) * (1.0 - 0.5 * dist / reach)  # less of it at the edge of the reach
      context.append(source.event_label)
      areas = np.append(areas * (1 - share), share)
    recipes = [W.RECIPES[n] for n in context]
    labels = sorted(context, key=_CLASS_ORDER.__getitem__)
  if rng.random() < 0.3:  # small unlabelled feature below the mapping unit
    recipes = recipes + [W.CLUTTER_RECIPES[rng.integers(len(W.CLUTTER_RECIPES))]]
    share = rng.uniform(0.01, 0.04)
    areas = np.append(areas * (1 - share), share)
  epsg = geo.utm_epsg(lon, lat)
  x, y = geo.lonlat_to_xy(lon, lat, epsg)
  green = float(np.clip(_phenology(lat, day) + rng.normal(0, 0.08), 0, 1))
  return Scene(
    key=f"{source.name}_{index:07d}",
    source=source.name,
    labels=labels,
    recipes=recipes,
    areas=np.asarray(areas, np.float64),
    place=place.name,
    lon=lon,
    lat=lat,
    epsg=epsg,
    x=float(np.floor(x / 10) * 10 + 5),
    y=float(np.floor(y / 10) * 10 + 5),
    timestamp=_timestamp(day, lon, source.sensor, rng),
    event=event,
    greenness=green,
    moisture=float(rng.beta(2, 2)),
    incidence=float(rng.uniform(30, 45)),
    nan_pixels=bool(rng.random() < NAN_RATE),
    elevation=elevation,
    day=day,
  )


# ---------------------------------------------------------------- spatial fields
def _bilinear(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Pixel-centre aligned bilinear taps: low index, high index, their float32 weights."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(np.intp)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = (pos - lo).astype(np.float32)
  return lo, hi, 1 - frac, frac


_TAPS = {}


def _stencil_axis(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
  """Bilinear x`factor` along `axis` (-1 or -2) with edge clamping, by shifted copies."""
  n = x.shape[axis]
  first, last = (x[..., :1], x[..., -1:]) if axis == -1 else (x[..., :1, :], x[..., -1:, :])
  body_lo, body_hi = (x[..., :-1], x[..., 1:]) if axis == -1 else (x[..., :-1, :], x[..., 1:, :])
  prev = np.concatenate([first, body_lo], axis)
  nxt = np.concatenate([body_hi, last], axis)
  if axis == -1:
    out = np.empty(x.shape[:-1] + (n, factor), np.float32)
    pick = lambda r: out[..., r]
  else:
    out = np.empty(x.shape[:-2] + (n, factor, x.shape[-1]), np.float32)
    pick = lambda r: out[..., r, :]
  for r in range(factor):
    d = (r + 0.5) / factor - 0.5  # offset from the input pixel centre, in (-0.5, 0.5)
    o = pick(r)
    if d == 0:
      o[...] = x
      continue
    np.multiply(prev if d < 0 else nxt, np.float32(abs(d)), out=o)
    o += np.float32(1 - abs(d)) * x
  shape = x.shape[:-1] + (n * factor,) if axis == -1 else x.shape[:-2] + (n * factor, x.shape[-1])
  return out.reshape(shape)


def upsample(x: np.ndarray, n_out: int) -> np.ndarray:
  """Bilinear upsampling of the last two (square) axes to n_out x n_out (float32).

  Pixel-centre aligned with edge clamping. Integer factors use shifted copies,
  others gathers; neither calls BLAS, so the cost does not depend on how many
  BLAS threads fight over a busy machine.
  """
  x = np.asarray(x, np.float32)
  n = x.shape[-1]
  if n_out % n == 0:
    f = n_out // n
    return _stencil_axis(_stencil_axis(x, f, -1), f, -2)
  key = (n_out, n)
  if key not in _TAPS:
    _TAPS[key] = _bilinear(*key)
  lo, hi, w_lo, w_hi = _TAPS[key]
  y = x[..., lo]
  y *= w_lo
  y += x[..., hi] * w_hi
  z = y[..., lo, :]
  z *= w_lo[:, None]
  z += y[..., hi, :] * w_hi[:, None]
  return z


def smooth_fields(rng, lead: tuple[int, ...], n: int, scales, weights) -> np.ndarray:
  """Sum of white-noise grids at several scales, upsampled to n x n; unit variance per field.

  `weights` broadcasts against `lead` + (1,) per scale.
  """
  out = np.zeros(lead + (n, n), np.float32)
  for s, w in zip(scales, weights):
    g = rng.standard_normal(lead + (s, s), dtype=np.float32)
    out += np.asarray(w, np.float32)[..., None, None] * (upsample(g, n) if s != n else g)
  out -= out.mean(axis=(-2, -1), keepdims=True)
  out /= out.std(axis=(-2, -1), keepdims=True) + 1e-6
  return out


def _parcels(rng, k: int) -> np.ndarray:
  """[k, LOW, LOW] axis-aligned field parcels (120-300 m) with random values in (-1, 1)."""
  cell = int(rng.choice((4, 5, 6, 8, 10)))
  n = LOW // cell + 2
  grid = rng.uniform(-1, 1, (k, n, n)).astype(np.float32)
  full = np.repeat(np.repeat(grid, cell, axis=1), cell, axis=2)
  oi, oj = rng.integers(0, cell, 2)
  return full[:, oi : oi + LOW, oj : oj + LOW]


def abundance_maps(rng, areas: np.ndarray, fields: np.ndarray) -> np.ndarray:
  """[B, 2K, LOW*LOW] float32 abundances (two variants per region) from shares [B, K].

  Zero shares (padding) get zero abundance; each pixel's abundances sum to 1.
  Regions flagged in `fields` [B, K] split into their two variants along field
  parcels (straight edges); the others along a smooth random field.
  Callers mix spectra at LOW x LOW and upsample the mixed bands (`mix_low`).
  """
  b, k = areas.shape
  w = np.stack([rng.uniform(0.5, 1, (b, k)), rng.uniform(0.2, 0.6, (b, k)), rng.uniform(0.05, 0.25, (b, k))], -1)
  z = smooth_fields(rng, (b, k), LOW, (4, 10, LOW), np.moveaxis(w, -1, 0))
  # Gaussian -> Gumbel marginal: u = Phi(z) ~ sigmoid(1.702 z), g = -log(-log u)
  # = -log(softplus(-1.702 z)) (numpy only; Phi's logistic approximation is within 0.01)
  gumbel = -np.log(np.logaddexp(np.float32(0), np.float32(-1.702) * z))
  tau = rng.uniform(0.2, 0.5, (b, 1, 1, 1)).astype(np.float32)
  with np.errstate(divide="ignore"):
    logits = (gumbel + np.log(areas.astype(np.float32))[:, :, None, None]) / tau
  logits -= logits.max(axis=1, keepdims=True)
  a = np.exp(logits)
  a /= a.sum(axis=1, keepdims=True)
  v = smooth_fields(rng, (b, k), LOW, (8, LOW), (np.float32(1), np.float32(0.3)))
  for i in np.flatnonzero(fields.any(axis=1)):
    v[i, fields[i]] = 2.5 * _parcels(rng, int(fields[i].sum()))
  v = 1.0 / (1.0 + np.exp(-3.0 * v))
  a = np.concatenate([a * v, a * (1 - v)], axis=1)
  return a.reshape(b, 2 * k, LOW * LOW)


def mix_low(values: np.ndarray, abund: np.ndarray) -> np.ndarray:
  """[B, C, 2K] region values x [B, 2K, LOW*LOW] abundances -> [B, C, LOW, LOW].

  Mixing commutes with the (linear) bilinear upsampling, so mixing at LOW and
  upsampling the C mixed channels equals upsampling the abundances first.
  """
  return np.einsum("bck,bkp->bcp", values, abund).reshape(values.shape[:2] + (LOW, LOW))


def _variant_weights(rng, recipes: list[dict[str, float]]) -> np.ndarray:
  """[2 * n_regions, M] material weights, each variant a Dirichlet draw around its recipe."""
  base = W.recipe_matrix(recipes)
  out = np.zeros((2,) + base.shape)
  for r, row in enumerate(base):
    nz = row > 0
    out[:, r, nz] = rng.dirichlet(40 * row[nz], size=2)
  return out.reshape(-1, base.shape[1])


def _greenness(rng, scene: Scene, n_var: int) -> np.ndarray:
  """[n_var, M] per-variant, per-material phenology (fields vary much more)."""
  sd = np.where(_MATS["field"], 0.3, 0.08)
  return np.clip(scene.greenness + rng.normal(0, 1, (n_var, sd.size)) * sd, 0, 1)


def _pad_regions(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray, int]:
  """Shares [B, K] (zero padded), field-region flags [B, K] and K."""
  k = max(len(s.areas) for s in scenes)
  areas = np.zeros((len(scenes), k))
  fields = np.zeros((len(scenes), k), bool)
  for i, s in enumerate(scenes):
    areas[i, : len(s.areas)] = s.areas
    fields[i, : len(s.areas)] = [any(m in r for m in W.FIELD_MATERIALS) for r in s.recipes]
  return areas, fields, k


def _add_nans(rng, images: np.ndarray, scenes: list[Scene]) -> None:
  for i, s in enumerate(scenes):
    if s.nan_pixels:
      r, c = rng.integers(0, SIZE - 4), rng.integers(0, SIZE - 40)
      images[i, :, r : r + rng.integers(1, 4), c : c + rng.integers(3, 40)] = np.nan


# ---------------------------------------------------------------- Sentinel-2
def render_s2(rng: np.random.Generator, scenes: list[Scene]) -> np.ndarray:
  """float32 [B, 12, SIZE, SIZE] L2A reflectance x 10000 (integer valued, NaN where missing),
  bands in the release's stored order W.S2_BANDS."""
  b = len(scenes)
  areas, fields, k = _pad_regions(scenes)
  spectra = np.zeros((b, 12, 2 * k), np.float32)
  m = len(W.MATERIAL_NAMES)
  for i, s in enumerate(scenes):
    n_reg = len(s.areas)
    wts = _variant_weights(rng, s.recipes)  # [2n, M]
    g = _greenness(rng, s, 2 * n_reg)[..., None]  # [2n, M, 1]
    spec = g * _MATS["s2_peak"] + (1 - g) * _MATS["s2_dormant"]  # [2n, M, 12]
    gain = rng.lognormal(0, 0.10, (m, 1)) * rng.normal(1, 0.03, (m, 12))
    wet = (
      np.where(_MATS["moisture"][:, None], 1 - 0.25 * s.moisture, 1.0)
      * np.r_[np.ones(10), np.full(2, 1 - 0.2 * s.moisture)]
    )  # wet soil is darker, most in the SWIR
    spec = spec * gain * wet * rng.lognormal(0, 0.05, (2 * n_reg, 1, 1))
    region = np.einsum("vm,vmc->cv", wts, spec)  # [12, 2n]
    spectra[i, :, :n_reg] = region[:, :n_reg]
    spectra[i, :, k : k + n_reg] = region[:, n_reg:]
  low = mix_low(spectra, abundance_maps(rng, areas, fields))  # [B, 12, LOW, LOW]
  relief = smooth_fields(rng, (b,), SIZE, (6, 20), (np.float32(1), np.float32(0.4)))
  shade = rng.normal(1, 0.05, (b, 1, 1)).astype(np.float32) * (1 + np.float32(0.05) * relief)
  hazy = rng.random(b) < 0.12
  veil = smooth_fields(rng, (b,), SIZE, (3,), (np.float32(1),))
  haze = (rng.uniform(0.01, 0.06, (b, 1, 1, 1)) * _HAZE[:, None, None]).astype(np.float32)
  bank = rng.standard_normal((12, 2 * SIZE, 2 * SIZE), dtype=np.float32)
  corners = rng.integers(0, SIZE + 1, (b, 2))
  images = np.empty((b, 12, SIZE, SIZE), np.float32)
  for i in range(b):  # full resolution, one sample at a time: stays in cache
    x = upsample(low[i], SIZE)
    x *= shade[i]
    if hazy[i]:
      x += haze[i] * np.clip(1 + 0.4 * veil[i], 0, None)
    oi, oj = corners[i]
    noise = x * np.float32(0.015)
    noise += np.float32(0.004)
    noise *= bank[:, oi : oi + SIZE, oj : oj + SIZE]
    x += noise
    np.maximum(x, 0, out=x)
    x *= 10000
    np.rint(x, out=images[i])
  _add_nans(rng, images, scenes)
  return images


# ---------------------------------------------------------------- Sentinel-1
def _material_sigma0(rng, s: Scene, n_var: int) -> np.ndarray:
  """[n_var, M, 2] per-variant material sigma0 (linear power), channels VV, VH.

  Season moves vegetation between its peak and dormant values; incidence angle,
  soil moisture, a per-scene draw per material (wind on water, crop structure,
  building orientation...) and calibration move everything.
  """
  m = len(W.MATERIAL_NAMES)
  g = _greenness(rng, s, n_var)[..., None]
  db = g * _MATS["sar_peak"] + (1 - g) * _MATS["sar_dormant"]  # [n_var, M, 2]
  db = db + (_MATS["slope"] * (s.incidence - 37.0))[:, None]
  common = rng.normal(0, 1, (m, 1)) * _MATS["spread"][:, None] * 0.8
  own = rng.normal(0, 1, (m, 2)) * _MATS["spread"][:, None] * 0.6
  db = db + common + own + np.where(_MATS["moisture"], 4.0 * (s.moisture - 0.5), 0)[:, None]
  db = db + rng.normal(0, 0.8, (n_var, m, 1)) + rng.normal(0, 0.3)
  # collapsed buildings: the same scene's buildings lose most of their double bounce
  db[:, _RUBBLE] = db[:, _BUILT] - np.stack([rng.uniform(2.5, 5.5, n_var), rng.uniform(0.0, 2.0, n_var)], -1)
  return 10.0 ** (db / 10.0)


def render_s1(rng: np.random.Generator, scenes: list[Scene], channels: tuple[str, ...]) -> np.ndarray:
  """float32 [B, C, SIZE, SIZE] sigma0 (linear power) in the given channel order.

  channels: ("VV","VH") (the release's layout), ("VH","VV") or ("VV_pre","VH_pre","VV","VH")
  (pre-release QuakeSet: the pre-event pair shows intact buildings where the post-event pair
  shows rubble).
  """
  b = len(scenes)
  areas, fields, k = _pad_regions(scenes)
  pre = channels[0].endswith("_pre")
  n_out = 4 if pre else 2
  sigma = np.zeros((b, n_out, 2 * k), np.float32)
  for i, s in enumerate(scenes):
    n_reg = len(s.areas)
    wts = _variant_weights(rng, s.recipes)
    lin = _material_sigma0(rng, s, len(wts))
    pairs = [np.einsum("vm,vmc->cv", wts, lin)]
    if pre:  # same scene before the event: rubble was standing buildings; small temporal change
      intact = wts.copy()
      intact[:, _BUILT] += intact[:, _RUBBLE]
      intact[:, _RUBBLE] = 0
      before = lin * 10.0 ** (rng.normal(0, 0.3, lin.shape) / 10.0)
      pairs.insert(0, np.einsum("vm,vmc->cv", intact, before))
    region = np.concatenate(pairs, 0)  # [n_out, 2n]
    sigma[i, :, :n_reg] = region[:, :n_reg]
    sigma[i, :, k : k + n_reg] = region[:, n_reg:]
  low = mix_low(sigma, abundance_maps(rng, areas, fields))  # [B, n_out, LOW, LOW]
  relief = smooth_fields(rng, (b,), SIZE, (6, 20), (np.float32(1), np.float32(0.4)))
  relief = np.power(np.float32(10), np.float32(0.08) * relief)  # +-0.8 dB topography
  floor = np.power(10.0, rng.uniform(-2.5, -2.2, b)).astype(np.float32)  # thermal noise
  bank = rng.standard_gamma(S1_LOOKS, (n_out, 2 * SIZE, 2 * SIZE), dtype=np.float32)
  bank /= np.float32(S1_LOOKS)  # unit-mean speckle
  corners = rng.integers(0, SIZE + 1, (b, 2))
  order = {"VV": 0, "VH": 1} if not pre else {"VV_pre": 0, "VH_pre": 1, "VV": 2, "VH": 3}
  order = [order[c] for c in channels]
  images = np.empty((b, n_out, SIZE, SIZE), np.float32)
  for i in range(b):
    x = upsample(low[i], SIZE)
    x *= relief[i]
    x += floor[i]
    oi, oj = corners[i]
    x *= bank[:, oi : oi + SIZE, oj : oj + SIZE]
    images[i] = x[order]
  _add_nans(rng, images, scenes)
  return images

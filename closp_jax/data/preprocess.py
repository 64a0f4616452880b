"""CrisisLandMark preprocessing, one stored sample at a time.

Pure functions and tables shared by the TFDS builder and the benchmark's reference loader:

- the source is named by the key's prefix (`benv2s2_...`, `quakeset_...`);
- S2: the 12 stored bands, in the release's order `S2_STORED_BANDS` (B1-B8, B8A, B9, B11, B12:
  a Sentinel-2 L2A product, which has no B10; evidence in docs/fidelity.md), get a zero band
  inserted where B10 belongs, giving the 13 bands `S2_BANDS` in ESA order that the SSL4EO-S12
  encoders read (checked when this module is imported);
- S1: a rule set (`S1_RULE_SETS`) says, per source, which stored channel is which; the output is
  (VV, VH). `release` (the default): every source stores (VV, VH), as the dataset card says and
  the release's loader reads it. `pre_release`: the authors' pre-release loader, which flipped
  `benv2s1` and `sen1flood` (stored VH, VV) and kept QuakeSet's channels [2:] (4 stored channels);
  for archives written by that pipeline. The builder verifies the rules on the data
  (`S1OrderCheck`: VV brighter than VH for most samples of each source);
- NaNs become 0 (S2) or 1e-6 (S1), after the band insertion;
- attributes: `crs` (float32 (1) as the card lists it, int, str, bytes or WKT) and `timestamp`
  (float32 (1) seconds since 1970 "if available", int, or an ISO 8601 string) are parsed
  here; the sample's location is its centre pixel (coords[:, 60, 60]) converted from the
  sample's CRS to lon/lat degrees.

Images come in as (C, 120, 120) and leave as (120, 120, C) float32.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

import numpy as np

from closp_jax.errors import UserError

IMAGE_SIZE = 120
S2_SOURCES = ("benv2s2", "cabuar", "sen2flood")
S1_SOURCES = ("benv2s1", "mmflood", "sen1flood", "quakeset")
SOURCES = S2_SOURCES + S1_SOURCES
SENSORS = ("s2", "s1")

# The 12 bands in the order the release stores them (docs/fidelity.md: "Data: S2 band order and
# S1 channels"): ESA order without B10, the band set of a Sentinel-2 L2A product.
S2_STORED_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
# The 13 bands the SSL4EO-S12 encoders expect (ESA order; TorchGeo's `_sentinel2_toa_bands`).
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
# B10 (cirrus) is not in L2A products: a zero band takes its place.
S2_ZERO_BAND = S2_BANDS.index("B10")
if S2_STORED_BANDS[:S2_ZERO_BAND] + ("B10",) + S2_STORED_BANDS[S2_ZERO_BAND:] != S2_BANDS:
  raise AssertionError(
    f"inserting a zero B10 at index {S2_ZERO_BAND} into {S2_STORED_BANDS} "
    f"does not give the encoders' band order {S2_BANDS}"
  )
S1_BANDS = ("VV", "VH")
NUM_CHANNELS = {"s2": len(S2_BANDS), "s1": len(S1_BANDS)}
NAN_FILL = {"s2": 0.0, "s1": 1e-6}
CENTER = IMAGE_SIZE // 2
# Stored image values beyond this magnitude (or infinite) are damaged data, not measurements.
MAX_ABS_VALUE = 1e6

# S1 rule sets: per source, the name of every stored channel, in stored order. The output is
# the channels named "VV" and "VH", in that order; the channel count must match.
S1_RULE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
  # The release: the dataset card's (VV, VH), C = 2, for every source; its loader neither
  # flips nor slices.
  "release": {source: ("VV", "VH") for source in S1_SOURCES},
  # The authors' pre-release loader (commit 1c02e1a), which keyed on shard file names.
  "pre_release": {
    "benv2s1": ("VH", "VV"),
    "mmflood": ("VV", "VH"),
    "sen1flood": ("VH", "VV"),
    "quakeset": ("VV_pre", "VH_pre", "VV", "VH"),  # before the event, then after it
  },
}
DEFAULT_S1_RULES = "release"
if any(set(rules) != set(S1_SOURCES) for rules in S1_RULE_SETS.values()):
  raise AssertionError(f"every S1 rule set must name the sources {S1_SOURCES}")

# The data check on the S1 rules (S1OrderCheck): VV backscatter exceeds VH by 5-8 dB in almost
# every natural scene, so after a correct rule nearly all samples of a source have a brighter
# VV mean; after a swap nearly none do. A source is refused when fewer than this fraction do ...
S1_VV_ABOVE_VH_MIN_FRACTION = 0.8
# ... checked once a source has this many samples (early, before hours of conversion), and
# again over all of a source's samples at the end of the build (also for smaller sources).
S1_CHECK_FIRST_AT = 64

# Acquisition times outside [2014-01-01, 2100-01-01) are not Sentinel-1/2 times (Sentinel-1A was
# launched in April 2014): such a number is not seconds since 1970 (e.g. a YYYYMMDD date).
_TIMESTAMP_RANGE = (
  dt.datetime(2014, 1, 1, tzinfo=dt.UTC).timestamp(),
  dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp(),
)
# What a record's `timestamp` holds when the sample has no acquisition time (missing, NaN, "").
TIMESTAMP_UNAVAILABLE = ""


class SampleFormatError(UserError, ValueError):
  """A stored sample does not have the layout the release promises."""


class ChannelOrderError(SampleFormatError):
  """An S1 rule set leaves VH brighter than VV for a source: the stored order is not the rule's."""


def source_of_key(key: str) -> str:
  """The source named by a sample key's prefix, e.g. 'benv2s1_0001234' -> 'benv2s1'."""
  prefix = key.split("_", 1)[0]
  if prefix in SOURCES:
    return prefix
  found = [s for s in SOURCES if key.startswith(s)]
  if len(found) != 1:
    found = [s for s in SOURCES if s in key]
  if len(found) != 1:
    raise SampleFormatError(
      f"sample key {key!r} does not name one known source: expected a key starting with one of {', '.join(SOURCES)}"
    )
  return found[0]


def sensor_of_source(source: str) -> str:
  """'s2' for the optical sources, 's1' for the SAR ones."""
  if source in S2_SOURCES:
    return "s2"
  if source in S1_SOURCES:
    return "s1"
  raise SampleFormatError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def check_s1_rules(rules: str) -> str:
  """The name of a known S1 rule set, or a ValueError naming the valid ones."""
  if rules not in S1_RULE_SETS:
    raise ValueError(f"unknown S1 rule set {rules!r}: expected one of {', '.join(S1_RULE_SETS)}")
  return rules


def _layout_text(channels: tuple[str, ...]) -> str:
  return "(" + ", ".join(channels) + ")"


def select_channels(image: np.ndarray, key: str, source: str, s1_rules: str = DEFAULT_S1_RULES) -> np.ndarray:
  """The stored (C, 120, 120) image with the source's channel rule applied (still CHW).

  S2 keeps its 12 stored bands; S1 ends as (VV, VH) under `s1_rules`. Raises SampleFormatError
  naming the key, source, shape and rule when the channel count or the image size is not the
  expected one.
  """
  sensor = sensor_of_source(source)
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise SampleFormatError(f"sample {key!r}: image has shape {image.shape}, expected (C, {IMAGE_SIZE}, {IMAGE_SIZE})")
  if sensor == "s2":
    if image.shape[0] != len(S2_STORED_BANDS):
      raise SampleFormatError(
        f"sample {key!r} ({source}): image has shape {image.shape}, expected "
        f"({len(S2_STORED_BANDS)}, {IMAGE_SIZE}, {IMAGE_SIZE}): the 12 stored S2 bands "
        f"{', '.join(S2_STORED_BANDS)}"
      )
    return image
  stored = S1_RULE_SETS[check_s1_rules(s1_rules)][source]
  if image.shape[0] != len(stored):
    others = [
      f"the S1 rule set {name!r} reads {source} as stored {_layout_text(rules[source])}: "
      f"build with it (CrisisLandmarkConfig.s1_rules={name!r}, e.g. "
      f"crisis_landmark/full_{name}) if the archive stores that layout"
      for name, rules in S1_RULE_SETS.items()
      if name != s1_rules and len(rules[source]) == image.shape[0]
    ]
    hint = "; " + "; ".join(others) if others else ""
    raise SampleFormatError(
      f"sample {key!r} ({source}): image has shape {image.shape}, expected "
      f"({len(stored)}, {IMAGE_SIZE}, {IMAGE_SIZE}): {_layout_text(stored)} under the S1 rule "
      f"set {s1_rules!r}{hint}"
    )
  vv, vh = stored.index("VV"), stored.index("VH")
  if (vv, vh) == (0, 1) and len(stored) == 2:
    return image
  return image[[vv, vh]]


def preprocess_image(
  image: np.ndarray, key: str, source: str, s1_rules: str = DEFAULT_S1_RULES
) -> tuple[np.ndarray, int]:
  """Stored (C, 120, 120) image -> (120, 120, C) float32: S2 13 bands, S1 (VV, VH).

  Returns the image and the number of NaN values replaced (S2 -> 0, S1 -> 1e-6).
  """
  sensor = sensor_of_source(source)
  chw = select_channels(image, key, source, s1_rules).astype(np.float32, copy=False)
  check_values(chw, key)
  if sensor == "s2":
    chw = np.insert(chw, S2_ZERO_BAND, 0.0, axis=0)
  hwc = np.ascontiguousarray(np.transpose(chw, (1, 2, 0)), dtype=np.float32)
  nans = np.isnan(hwc)
  num_nans = int(nans.sum())
  if num_nans:
    hwc[nans] = NAN_FILL[sensor]
  return hwc, num_nans


def vv_vh_means(
  image: np.ndarray, key: str, source: str, s1_rules: str = DEFAULT_S1_RULES
) -> tuple[float, float] | None:
  """Means over finite values of the VV and VH channels of a stored S1 image under `s1_rules`.

  None when either channel has no finite value. Works for dB and linear units alike.
  """
  chw = select_channels(image, key, source, s1_rules)
  means = []
  for channel in chw:
    finite = channel[np.isfinite(channel)]
    if finite.size == 0:
      return None
    means.append(float(finite.mean(dtype=np.float64)))
  return means[0], means[1]


class S1OrderCheck:
  """Verifies, per S1 source, that VV is brighter than VH for most samples after the rules.

  `add` one sample's VV and VH means at a time; a source is checked when it reaches
  S1_CHECK_FIRST_AT samples and, by `finish`, over all its samples. A source where fewer than
  S1_VV_ABOVE_VH_MIN_FRACTION of the samples have VV > VH raises ChannelOrderError naming the
  source, the fraction seen and the rule set to change.
  """

  def __init__(self, s1_rules: str = DEFAULT_S1_RULES):
    self.s1_rules = check_s1_rules(s1_rules)
    self.samples: dict[str, int] = {}
    self.vv_above: dict[str, int] = {}
    self.example: dict[str, tuple[str, float, float]] = {}

  def add(self, source: str, key: str, means: tuple[float, float] | None) -> None:
    if means is None:
      return
    vv, vh = means
    self.samples[source] = self.samples.get(source, 0) + 1
    if vv > vh:
      self.vv_above[source] = self.vv_above.get(source, 0) + 1
    elif source not in self.example:
      self.example[source] = (key, vv, vh)
    if self.samples[source] == S1_CHECK_FIRST_AT:
      self._verify(source)

  def finish(self) -> dict[str, dict]:
    """Checks every source seen; returns {source: {samples, vv_above_vh}} for the metadata."""
    for source in sorted(self.samples):
      self._verify(source)
    return {s: {"samples": n, "vv_above_vh": self.vv_above.get(s, 0) / n} for s, n in sorted(self.samples.items())}

  def _verify(self, source: str) -> None:
    n, above = self.samples[source], self.vv_above.get(source, 0)
    if above / n >= S1_VV_ABOVE_VH_MIN_FRACTION:
      return
    stored = S1_RULE_SETS[self.s1_rules][source]
    key, vv, vh = self.example[source]
    fits = [
      f"build with the S1 rule set {name!r}, which reads {source} as stored "
      f"{_layout_text(rules[source])} (CrisisLandmarkConfig.s1_rules={name!r}, e.g. "
      f"crisis_landmark/full_{name}), if the archive stores that order"
      for name, rules in S1_RULE_SETS.items()
      if name != self.s1_rules and len(rules[source]) == len(stored) and rules[source] != stored
    ]
    change = (
      "; ".join(fits)
      + ("; otherwise " if fits else "")
      + (f"add a rule set to preprocess.S1_RULE_SETS that names {source}'s stored order and build with it")
    )
    raise ChannelOrderError(
      f"S1 source {source!r}: VV is brighter than VH in only {above} of {n} samples "
      f"({above / n:.0%}, expected at least {S1_VV_ABOVE_VH_MIN_FRACTION:.0%}) after the S1 rule "
      f"set {self.s1_rules!r}, which reads {source} as stored {_layout_text(stored)}; e.g. "
      f"sample {key!r}: mean of the channel read as VV {vv:.4g}, as VH {vh:.4g}. VV backscatter exceeds VH by 5-8 "
      f"dB in almost every natural scene (dB and linear units alike), so {source}'s channels "
      f"are not stored in that order: {change}."
    )


def check_values(chw: np.ndarray, key: str) -> None:
  """Raises SampleFormatError for +-Inf or |value| > MAX_ABS_VALUE in a stored image.

  Reflectance x 10,000 and SAR backscatter (linear or dB) stay far inside +-1e6; larger values
  and infinities come from damaged bytes (HDF5 chunks carry no checksum, so a partly
  overwritten shard still decodes), not from the sensor. NaN is the release's no-data value
  and is replaced, not refused (see preprocess_image).
  """
  with np.errstate(invalid="ignore"):
    bad = np.abs(chw) > MAX_ABS_VALUE  # NaN compares False; +-Inf compares True
  if bad.any():
    bands = sorted({int(b) for b in np.nonzero(bad)[0]})
    infinite = int(np.isinf(chw).sum())
    raise SampleFormatError(
      f"sample {key!r}: image has {int(bad.sum())} value(s) beyond +-{MAX_ABS_VALUE:g} "
      f"({infinite} infinite) in stored band(s) {bands}, e.g. {chw[bad].flat[0]!r}; such values are "
      f"not measurements but damaged data: download the shard file again"
    )


def _scalar(value: Any, key: str, name: str) -> Any:
  """A one-element HDF5 attribute (numpy array, numpy scalar, bytes) as a Python scalar."""
  if isinstance(value, np.ndarray):
    if value.size != 1:
      raise SampleFormatError(f"sample {key!r}: attribute {name!r} has shape {value.shape}, expected a single value")
    value = value.reshape(()).item()
  elif isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  return value


def parse_crs(value: Any, key: str) -> str:
  """The `crs` attribute as a pyproj input ('EPSG:32634', or the WKT / PROJ text as stored).

  Accepts the dataset card's float32 (1) (e.g. 32634.0), an int, a string ('EPSG:32634',
  '32634', '32634.0', WKT), bytes of those; a non-integral or non-positive number is an error.
  """
  value = _scalar(value, key, "crs")
  expected = "expected an EPSG code (32634, 32634.0 as the dataset card's float32, 'EPSG:32634') or a WKT / PROJ string"
  if isinstance(value, bool):
    raise SampleFormatError(f"sample {key!r}: attribute 'crs' is {value!r}, {expected}")
  if isinstance(value, str):
    text = value.strip()
    try:
      value = float(text)
    except ValueError:
      if text:
        return text
      raise SampleFormatError(f"sample {key!r}: attribute 'crs' is empty, {expected}") from None
  if isinstance(value, float):
    if not (math.isfinite(value) and value == int(value)):
      raise SampleFormatError(f"sample {key!r}: attribute 'crs' is {value!r}, not an integral number; {expected}")
    value = int(value)
  if isinstance(value, int) and value > 0:
    return f"EPSG:{value}"
  raise SampleFormatError(f"sample {key!r}: attribute 'crs' is {value!r}, {expected}")


def parse_timestamp(value: Any, key: str) -> str:
  """The `timestamp` attribute as text: ISO 8601 UTC for numbers, strings as stored.

  Numbers (the card's float32 (1), ints) are seconds since 1970-01-01 UTC and become
  'YYYY-MM-DDTHH:MM:SSZ' (a float32 resolves about 2 minutes at today's values); strings (ISO
  dates) are kept as stored; NaN, an empty value or None give TIMESTAMP_UNAVAILABLE ('').
  A number outside 2014-2100 is an error (it is not seconds since 1970).
  """
  if value is None or (isinstance(value, np.ndarray) and value.size == 0):
    return TIMESTAMP_UNAVAILABLE
  value = _scalar(value, key, "timestamp")
  if isinstance(value, str):
    text = value.strip()
    if text.lower() in ("", "nan", "none", "nat"):
      return TIMESTAMP_UNAVAILABLE
    try:
      value = float(text)
    except ValueError:
      return text
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise SampleFormatError(
      f"sample {key!r}: attribute 'timestamp' is {value!r}, expected seconds "
      "since 1970-01-01 UTC (a number, NaN when unavailable) or an ISO 8601 "
      "string"
    )
  if isinstance(value, float) and math.isnan(value):
    return TIMESTAMP_UNAVAILABLE
  low, high = _TIMESTAMP_RANGE
  if not low <= value < high:
    raise SampleFormatError(
      f"sample {key!r}: attribute 'timestamp' is {value!r}, which as seconds since 1970-01-01 "
      f"UTC falls outside 2014-2100 (no Sentinel-1/2 acquisition): expected seconds since "
      f"1970 (the dataset card's float32), NaN when unavailable, or an ISO 8601 string"
    )
  moment = dt.datetime.fromtimestamp(round(value), tz=dt.UTC)
  return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_labels(value: Any, key: str) -> list[str]:
  """The `labels` attribute (list[str]: a string array, bytes or str items, or one string)."""
  if isinstance(value, (str, bytes)):
    value = [value]
  elif isinstance(value, np.ndarray):
    value = value.reshape(-1).tolist()
  elif isinstance(value, np.generic):
    value = [value.item()]
  try:
    items = list(value)
  except TypeError:
    raise SampleFormatError(
      f"sample {key!r}: attribute 'labels' is {value!r}, expected a list of label names"
    ) from None
  out = []
  for item in items:
    if isinstance(item, np.generic):
      item = item.item()
    if isinstance(item, bytes):
      item = item.decode("utf-8")
    if not isinstance(item, str):
      raise SampleFormatError(f"sample {key!r}: attribute 'labels' holds {item!r}, expected label names (strings)")
    out.append(item)
  return out


@functools.lru_cache(maxsize=256)
def _to_lonlat(crs: str):
  from pyproj import CRS, Transformer  # pylint: disable=import-outside-toplevel

  return Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)


def center_lonlat(coords: np.ndarray, crs: Any, key: str) -> np.ndarray:
  """(lon, lat) degrees float32 [2] of the centre pixel of a (2, 120, 120) coords grid."""
  coords = np.asarray(coords)
  if coords.ndim != 3 or coords.shape[0] != 2 or min(coords.shape[1:]) <= CENTER:
    raise SampleFormatError(
      f"sample {key!r}: coords has shape {coords.shape}, expected (2, {IMAGE_SIZE}, {IMAGE_SIZE})"
    )
  x, y = float(coords[0, CENTER, CENTER]), float(coords[1, CENTER, CENTER])
  crs_text = parse_crs(crs, key)
  try:
    transformer = _to_lonlat(crs_text)
  except Exception as err:  # pyproj.exceptions.CRSError and friends
    raise SampleFormatError(f"sample {key!r}: attribute 'crs' = {crs!r} is not a CRS pyproj knows ({err})") from err
  lon, lat = transformer.transform(x, y)
  out = np.array([lon, lat], np.float32)
  if not np.all(np.isfinite(out)) or abs(out[1]) > 90 or abs(out[0]) > 180:
    raise SampleFormatError(
      f"sample {key!r}: centre pixel ({x}, {y}) in {crs_text!r} gives lon/lat {out.tolist()}; "
      "check the coords dataset and the crs attribute"
    )
  return out

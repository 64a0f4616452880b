"""The official CrisisLandMark preprocessing, one stored sample at a time.

What the authors' loader does to a sample read from the release, kept here as pure
functions so that the TFDS builder and the benchmark's reference loader share them:

- the source is named by the key's prefix (`benv2s2_...`, `quakeset_...`);
- S1 channels: `benv2s1` and `sen1flood` are stored (VH, VV) and are flipped to (VV, VH);
  QuakeSet stores more channels and keeps channels [2:] (VV, VH);
- S2: the 12 stored bands (B1-B9, B8A, B11, B12) get a zero band inserted at index 10
  (B10, cirrus) so that 13-band encoders (SSL4EO) can read them;
- NaNs become 0 (S2) or 1e-6 (S1), after the band insertion;
- the sample's location is its centre pixel (coords[:, 60, 60]) converted from the
  sample's CRS to lon/lat degrees.

Images come in as (C, 120, 120) and leave as (120, 120, C) float32.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

IMAGE_SIZE = 120
S2_SOURCES = ("benv2s2", "cabuar", "sen2flood")
S1_SOURCES = ("benv2s1", "mmflood", "sen1flood", "quakeset")
SOURCES = S2_SOURCES + S1_SOURCES
SENSORS = ("s2", "s1")
# S1 sources stored as (VH, VV): flipped to (VV, VH).
S1_FLIPPED = ("benv2s1", "sen1flood")
# S1 sources whose stored channels [2:] are the (VV, VH) pair the loader keeps.
S1_KEEP_FROM_2 = ("quakeset",)
S2_STORED_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B8A", "B11", "B12")
S2_BANDS = S2_STORED_BANDS[:10] + ("B10",) + S2_STORED_BANDS[10:]
S2_ZERO_BAND = 10
S1_BANDS = ("VV", "VH")
NUM_CHANNELS = {"s2": len(S2_BANDS), "s1": len(S1_BANDS)}
NAN_FILL = {"s2": 0.0, "s1": 1e-6}
CENTER = IMAGE_SIZE // 2
# Stored image values beyond this magnitude (or infinite) are damaged data, not measurements.
MAX_ABS_VALUE = 1e6


class SampleFormatError(ValueError):
  """A stored sample does not have the layout the release promises."""


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
        f"sample key {key!r} does not name one known source: expected a key starting with "
        f"one of {', '.join(SOURCES)}")
  return found[0]


def sensor_of_source(source: str) -> str:
  """'s2' for the optical sources, 's1' for the SAR ones."""
  if source in S2_SOURCES:
    return "s2"
  if source in S1_SOURCES:
    return "s1"
  raise SampleFormatError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def select_channels(image: np.ndarray, key: str, source: str) -> np.ndarray:
  """The stored (C, 120, 120) image with the source's channel quirks applied (still CHW).

  S2 keeps its 12 stored bands; S1 ends as (VV, VH). Raises SampleFormatError naming the
  key and the shape when the channel count or the image size is not the expected one.
  """
  sensor = sensor_of_source(source)
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise SampleFormatError(
        f"sample {key!r}: image has shape {image.shape}, expected (C, {IMAGE_SIZE}, {IMAGE_SIZE})")
  if sensor == "s2":
    expected, meaning = len(S2_STORED_BANDS), "the 12 stored S2 bands"
  elif source in S1_KEEP_FROM_2:
    expected, meaning = 4, "of which channels [2:] are VV, VH"
  else:
    expected, meaning = 2, "VH, VV" if source in S1_FLIPPED else "VV, VH"
  if image.shape[0] != expected:
    raise SampleFormatError(
        f"sample {key!r} ({source}): image has shape {image.shape}, expected "
        f"({expected}, {IMAGE_SIZE}, {IMAGE_SIZE}): {meaning}")
  if source in S1_KEEP_FROM_2:
    return image[2:]
  if source in S1_FLIPPED:
    return image[::-1]
  return image


def preprocess_image(image: np.ndarray, key: str, source: str) -> tuple[np.ndarray, int]:
  """Stored (C, 120, 120) image -> (120, 120, C) float32 as the official loader makes it.

  Returns the image and the number of NaN values replaced (S2 -> 0, S1 -> 1e-6).
  """
  sensor = sensor_of_source(source)
  chw = select_channels(image, key, source).astype(np.float32, copy=False)
  check_values(chw, key)
  if sensor == "s2":
    chw = np.insert(chw, S2_ZERO_BAND, 0.0, axis=0)
  hwc = np.ascontiguousarray(np.transpose(chw, (1, 2, 0)), dtype=np.float32)
  nans = np.isnan(hwc)
  num_nans = int(nans.sum())
  if num_nans:
    hwc[nans] = NAN_FILL[sensor]
  return hwc, num_nans


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
        f"not measurements but damaged data: download the shard file again")


def parse_crs(value: Any, key: str) -> str:
  """The `crs` attribute (EPSG int, 'EPSG:32633', '32633', WKT, bytes) as a pyproj input."""
  if isinstance(value, np.ndarray) and value.size == 1:
    value = value.reshape(()).item()
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, (int, np.integer)):
    return f"EPSG:{int(value)}"
  if isinstance(value, str):
    text = value.strip()
    if text.isdigit():
      return f"EPSG:{text}"
    if text:
      return text
  raise SampleFormatError(
      f"sample {key!r}: attribute 'crs' is {value!r}, expected an EPSG code (e.g. 32633 or "
      "'EPSG:32633')")


@functools.lru_cache(maxsize=256)
def _to_lonlat(crs: str):
  from pyproj import CRS, Transformer  # pylint: disable=import-outside-toplevel
  return Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)


def center_lonlat(coords: np.ndarray, crs: Any, key: str) -> np.ndarray:
  """(lon, lat) degrees float32 [2] of the centre pixel of a (2, 120, 120) coords grid."""
  coords = np.asarray(coords)
  if coords.ndim != 3 or coords.shape[0] != 2 or min(coords.shape[1:]) <= CENTER:
    raise SampleFormatError(
        f"sample {key!r}: coords has shape {coords.shape}, expected (2, {IMAGE_SIZE}, {IMAGE_SIZE})")
  x, y = float(coords[0, CENTER, CENTER]), float(coords[1, CENTER, CENTER])
  try:
    transformer = _to_lonlat(parse_crs(crs, key))
  except SampleFormatError:
    raise
  except Exception as err:  # pyproj.exceptions.CRSError and friends
    raise SampleFormatError(f"sample {key!r}: attribute 'crs' = {crs!r} is not a CRS pyproj "
                            f"knows ({err})") from err
  lon, lat = transformer.transform(x, y)
  out = np.array([lon, lat], np.float32)
  if not np.all(np.isfinite(out)) or abs(out[1]) > 90 or abs(out[0]) > 180:
    raise SampleFormatError(
        f"sample {key!r}: centre pixel ({x}, {y}) in {crs!r} gives lon/lat {out.tolist()}; "
        "check the coords dataset and the crs attribute")
  return out


def attr_text(value: Any) -> str:
  """An HDF5 string attribute (str, bytes, numpy scalar) as str."""
  if isinstance(value, np.ndarray) and value.size == 1:
    value = value.reshape(()).item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)

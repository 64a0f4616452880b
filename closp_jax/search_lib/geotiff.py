"""GeoTIFF / Cloud-Optimised GeoTIFF through rasterio: band names, locations, patches.

rasterio (an optional dependency, `pip install 'closp-jax[scenes]'`) is imported only here, on
first use. Bands are matched by name, never by count: a file's band descriptions (GDAL's
`DESCRIPTION`, what `rasterio`'s `descriptions` returns and QGIS shows), or names the caller gives
(`--bands B2,B3,B4,...`). Names are read as Sentinel-2 band ids in any spelling (`B8A`, `B08`,
`b8`) or as the STAC common names Earth Search uses (`red`, `nir08`, `swir16`, ...), and `VV` /
`VH` for Sentinel-1. A patch or scene is returned in the model's band order
(`closp_jax.data.preprocess.S2_STORED_BANDS` or `S1_BANDS`); a missing band is an error naming it.

Locations: the pixel (row H // 2, column W // 2) of a patch, at its middle, through the dataset's
affine transform (GDAL folds PixelIsPoint rasters' half-pixel shift into it) and CRS, converted to
lon/lat degrees with rasterio's own transformation (PROJ).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from closp_jax.data.preprocess import S1_BANDS, S2_BANDS, S2_STORED_BANDS
from closp_jax.errors import UserError

# STAC `eo:bands` common names and Earth Search asset keys of Sentinel-2 L2A -> band ids.
S2_COMMON_NAMES = {
  "coastal": "B1",
  "blue": "B2",
  "green": "B3",
  "red": "B4",
  "rededge1": "B5",
  "rededge2": "B6",
  "rededge3": "B7",
  "nir": "B8",
  "nir08": "B8A",
  "nir09": "B9",
  "cirrus": "B10",
  "swir16": "B11",
  "swir22": "B12",
}
SENSOR_BANDS = {"s2": S2_STORED_BANDS, "s1": S1_BANDS}


class GeoTiffError(UserError, ValueError):
  """A GeoTIFF that cannot be read as asked; the message names the file and the problem."""


def rasterio_module():
  try:
    import rasterio  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise GeoTiffError(
      "reading GeoTIFF files needs rasterio: pip install 'closp-jax[scenes]'; or save patches "
      "as .npy with a sidecar .json"
    ) from e
  return rasterio


def band_id(name: str | None) -> str | None:
  """A band name in any usual spelling -> 'B1'..'B12', 'B8A', 'VV', 'VH'; None when it names no band."""
  if not name:
    return None
  text = str(name).strip()
  low = text.lower()
  if low in S2_COMMON_NAMES:
    return S2_COMMON_NAMES[low]
  if low in ("vv", "vh"):
    return low.upper()
  m = re.fullmatch(r"(?:sentinel-?2[_ ]?)?b(?:and)?[_ ]?0*(\d{1,2})(a?)", low)
  if m and f"B{int(m.group(1))}{m.group(2).upper()}" in S2_BANDS:
    return f"B{int(m.group(1))}{m.group(2).upper()}"
  return None


def parse_bands(text: str | Sequence[str] | None) -> list[str] | None:
  """'B2,B3,B4' (or a list) -> band ids; an unknown name is an error."""
  if text is None:
    return None
  names = [t for t in (text.split(",") if isinstance(text, str) else text)]
  ids = [band_id(n) for n in names]
  bad = [n for n, i in zip(names, ids) if i is None]
  if bad:
    raise GeoTiffError(
      f"--bands: {bad} name no Sentinel-2 or Sentinel-1 band (expected e.g. "
      f"{','.join(S2_STORED_BANDS)} or {','.join(S1_BANDS)})"
    )
  return ids  # type: ignore[return-value]


def sensor_of(bands: Sequence[str], where: str) -> str:
  """'s2' or 's1' from band ids; an error when they mix sensors or name neither."""
  s1 = [b for b in bands if b in S1_BANDS]
  s2 = [b for b in bands if b not in S1_BANDS]
  if s1 and not s2:
    return "s1"
  if s2 and not s1:
    return "s2"
  raise GeoTiffError(f"{where}: bands {list(bands)} mix Sentinel-1 and Sentinel-2 names (or name none)")


def band_order(names: Sequence[str], sensor: str, where: str) -> list[int]:
  """Positions in `names` of the model's bands for `sensor`, in the model's order."""
  want = SENSOR_BANDS[sensor]
  missing = [b for b in want if b not in names]
  if missing:
    raise GeoTiffError(f"{where}: missing band(s) {missing}; the {sensor.upper()} encoder reads {list(want)}")
  return [list(names).index(b) for b in want]


def file_band_names(src, path: str, bands: Sequence[str] | None) -> list[str]:
  """Band ids of an open dataset: `bands` when given (one per band), else its band descriptions."""
  if bands is not None:
    if len(bands) != src.count:
      raise GeoTiffError(f"{path}: {src.count} bands but --bands names {len(bands)} ({','.join(bands)})")
    return list(bands)
  ids = [band_id(d) for d in src.descriptions]
  if any(i is None for i in ids):
    raise GeoTiffError(
      f"{path}: band descriptions {list(src.descriptions)} do not name every band; give the "
      f"band order with --bands (e.g. {','.join(S2_STORED_BANDS)}) or write band descriptions"
    )
  return ids  # type: ignore[return-value]


def pixel_lonlat(src, row: float, col: float, path: str = "") -> tuple[float, float] | None:
  """(lon, lat) degrees of the raster position (row, col) (pixel edges at integers); None without a CRS."""
  if src.transform.is_identity:
    return None
  if src.crs is None or not (src.crs.is_geographic or src.crs.is_projected):
    raise GeoTiffError(
      f"{path}: georeferenced in a coordinate system with no EPSG / PROJ definition ({src.crs}); "
      "write the raster with a CRS, or give lon and lat in a sidecar .json"
    )
  from rasterio.warp import transform as warp  # pylint: disable=import-outside-toplevel

  x, y = src.transform @ (col, row)
  (lon,), (lat,) = warp(src.crs, "EPSG:4326", [x], [y])
  if not (np.isfinite(lon) and np.isfinite(lat)) or abs(lat) > 90:
    raise GeoTiffError(f"{path}: its georeferencing maps the centre to ({lon}, {lat}), not a place on Earth")
  return float(lon), float(lat)


def read_geotiff(
  path: str | os.PathLike, bands: Sequence[str] | None = None, sensor: str | None = None
) -> tuple[np.ndarray, tuple[float, float] | None, str]:
  """One patch: (image [H, W, C] float32 in the model's band order, centre (lon, lat) or None, sensor)."""
  rasterio = rasterio_module()
  path = os.fspath(path)
  try:
    src = rasterio.open(path)
  except rasterio.errors.RasterioIOError as e:
    raise GeoTiffError(f"{path}: not a readable GeoTIFF ({e})") from e
  with src:
    names = file_band_names(src, path, bands)
    sensor = sensor or sensor_of(names, path)
    order = band_order(names, sensor, path)
    data = src.read([i + 1 for i in order]).astype(np.float32)
    lonlat = pixel_lonlat(src, src.height // 2 + 0.5, src.width // 2 + 0.5, path)
  return np.transpose(data, (1, 2, 0)), lonlat, sensor

"""UTM helpers: zone/EPSG choice, lon/lat <-> x/y, and per-pixel coordinate grids.

CrisisLandMark stores, per sample, the x/y of every pixel in the sample's native
CRS (a WGS 84 / UTM zone, EPSG 326xx north or 327xx south) and the EPSG code.
The sample's location is the centre pixel's x/y converted to lon/lat.
"""

from __future__ import annotations

import functools

import numpy as np
import pyproj

PIXEL_SIZE_M = 10.0


def utm_epsg(lon: float, lat: float) -> int:
  """EPSG code of the WGS 84 / UTM zone holding (lon, lat), plain 6-degree zones.

  The Norway/Svalbard zone exceptions are not applied (any zone is a valid
  projection of nearby points; this only has to be a real, consistent CRS).
  """
  if not (-180.0 <= lon <= 180.0 and -80.0 <= lat <= 84.0):
    raise ValueError(f"lon/lat ({lon}, {lat}) is outside the UTM domain (lon in [-180, 180], lat in [-80, 84])")
  zone = min(int((lon + 180.0) // 6.0) + 1, 60)
  return (32600 if lat >= 0 else 32700) + zone


def is_utm_epsg(code: int) -> bool:
  """True for WGS 84 / UTM EPSG codes (32601-32660 north, 32701-32760 south)."""
  code = int(code)
  return 32601 <= code <= 32660 or 32701 <= code <= 32760


def utm_zone_central_lon(code: int) -> float:
  """Central meridian (degrees) of a WGS 84 / UTM EPSG code."""
  if not is_utm_epsg(code):
    raise ValueError(f"EPSG {code} is not a WGS 84 / UTM code")
  zone = int(code) % 100
  return -183.0 + 6.0 * zone


@functools.lru_cache(maxsize=256)
def _transformer(epsg: int, inverse: bool) -> pyproj.Transformer:
  src, dst = ("EPSG:4326", f"EPSG:{epsg}") if not inverse else (f"EPSG:{epsg}", "EPSG:4326")
  return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def lonlat_to_xy(lon, lat, epsg: int):
  """Project lon/lat degrees (scalars or arrays) to x/y metres in `epsg`."""
  return _transformer(int(epsg), False).transform(lon, lat)


def xy_to_lonlat(x, y, epsg: int):
  """Inverse of lonlat_to_xy: x/y metres in `epsg` -> lon/lat degrees."""
  return _transformer(int(epsg), True).transform(x, y)


def pixel_grid(x_center: float, y_center: float, size: int = 120, pixel_size: float = PIXEL_SIZE_M) -> np.ndarray:
  """float32 (2, size, size) per-pixel x/y (pixel centres), north up.

  Pixel [size // 2, size // 2] sits at (x_center, y_center); x grows with the
  column index, y falls with the row index.
  """
  offsets = (np.arange(size, dtype=np.float64) - size // 2) * pixel_size
  grid = np.empty((2, size, size), np.float32)
  grid[0] = (x_center + offsets)[None, :]
  grid[1] = (y_center - offsets)[:, None]
  return grid


def center_lonlat(coords: np.ndarray, epsg: int) -> tuple[float, float]:
  """lon/lat of the centre pixel of a (2, H, W) coordinate grid in `epsg`."""
  h, w = coords.shape[1:]
  lon, lat = xy_to_lonlat(float(coords[0, h // 2, w // 2]), float(coords[1, h // 2, w // 2]), epsg)
  return float(lon), float(lat)

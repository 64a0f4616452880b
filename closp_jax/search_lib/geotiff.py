"""GeoTIFF patches: their pixels and the lon/lat of their centre pixel.

Pixels are read with `tifffile` (an optional dependency, imported only here). The location comes
from the GeoTIFF tags: ModelTiepointTag + ModelPixelScaleTag, or ModelTransformationTag, map the
centre pixel (row H // 2, column W // 2, at its middle for PixelIsArea rasters) into the raster's
CRS, which the GeoKeyDirectoryTag names (ProjectedCSTypeGeoKey or GeographicTypeGeoKey, EPSG
codes); pyproj converts that to (lon, lat) degrees. Patches without geo tags get no location.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

TAG_PIXEL_SCALE = 33550
TAG_TIEPOINT = 33922
TAG_TRANSFORMATION = 34264
TAG_GEOKEYS = 34735
KEY_MODEL_TYPE = 1024      # 1 projected, 2 geographic
KEY_RASTER_TYPE = 1025     # 1 PixelIsArea, 2 PixelIsPoint
KEY_GEOGRAPHIC = 2048
KEY_PROJECTED = 3072


class GeoTiffError(ValueError):
  """A GeoTIFF that cannot be read as a patch; the message names the file and the problem."""


def _tifffile():
  try:
    import tifffile  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise GeoTiffError("reading GeoTIFF patches needs the `tifffile` package (pip install tifffile); "
                       "or save the patches as .npy with a sidecar .json holding lon and lat") from e
  return tifffile


def geokeys(values: Any) -> dict[int, int]:
  """GeoKeyDirectoryTag values -> {key id: value} for the keys stored inline (SHORT values)."""
  v = [int(x) for x in np.asarray(values).ravel()]
  if len(v) < 4:
    return {}
  count = v[3]
  out = {}
  for i in range(count):
    entry = v[4 + 4 * i: 8 + 4 * i]
    if len(entry) == 4 and entry[1] == 0:
      out[entry[0]] = entry[3]
  return out


def _hwc(arr: np.ndarray, axes: str, path: str) -> np.ndarray:
  if arr.ndim == 2:
    return arr[..., None]
  if arr.ndim != 3:
    raise GeoTiffError(f"{path}: image has shape {arr.shape} (axes {axes!r}), expected one patch of H x W x bands")
  if axes.endswith("S"):
    return arr
  return np.transpose(arr, (1, 2, 0))


def pixel_to_model(tags: dict[int, Any], row: float, col: float) -> tuple[float, float] | None:
  """Raster (row, col) -> model (x, y) from the tie point + pixel scale or the transformation matrix."""
  if TAG_TRANSFORMATION in tags:
    m = np.asarray(tags[TAG_TRANSFORMATION], np.float64).reshape(4, 4)
    return float(m[0, 0] * col + m[0, 1] * row + m[0, 3]), float(m[1, 0] * col + m[1, 1] * row + m[1, 3])
  if TAG_TIEPOINT in tags and TAG_PIXEL_SCALE in tags:
    tie = np.asarray(tags[TAG_TIEPOINT], np.float64).ravel()
    scale = np.asarray(tags[TAG_PIXEL_SCALE], np.float64).ravel()
    i, j, x, y = tie[0], tie[1], tie[3], tie[4]
    return float(x + (col - i) * scale[0]), float(y - (row - j) * scale[1])
  return None


@functools.lru_cache(maxsize=64)
def _transformer(epsg: int):
  from pyproj import CRS, Transformer  # pylint: disable=import-outside-toplevel
  return Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True)


def centre_lonlat(tags: dict[int, Any], height: int, width: int, path: str = "") -> tuple[float, float] | None:
  """(lon, lat) of the centre pixel, or None without geo tags."""
  keys = geokeys(tags.get(TAG_GEOKEYS, ()))
  offset = 0.0 if keys.get(KEY_RASTER_TYPE) == 2 else 0.5
  xy = pixel_to_model(tags, height // 2 + offset, width // 2 + offset)
  if xy is None:
    return None
  epsg = keys.get(KEY_PROJECTED) if keys.get(KEY_MODEL_TYPE, 1) != 2 else None
  epsg = epsg or keys.get(KEY_GEOGRAPHIC)
  if epsg is None or epsg == 32767:
    raise GeoTiffError(f"{path}: geo tags place the raster but name no EPSG code (ProjectedCSTypeGeoKey or "
                       "GeographicTypeGeoKey); add one, or give lon/lat in a sidecar .json")
  lon, lat = _transformer(int(epsg)).transform(*xy)
  if not (np.isfinite(lon) and np.isfinite(lat)) or abs(lat) > 90:
    raise GeoTiffError(f"{path}: centre pixel {xy} in EPSG:{epsg} gives lon/lat ({lon}, {lat})")
  return float(lon), float(lat)


def read_geotiff(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
  """(image [H, W, bands] float32, (lon, lat) of the centre pixel or None)."""
  tifffile = _tifffile()
  path = os.fspath(path)
  try:
    with tifffile.TiffFile(path) as tif:
      series = tif.series[0]
      arr = np.asarray(series.asarray())
      axes = str(series.axes)
      tags = {t.code: t.value for t in tif.pages[0].tags.values()
              if t.code in (TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION, TAG_GEOKEYS)}
  except (OSError, ValueError) as e:
    raise GeoTiffError(f"{path}: not a readable TIFF ({e})") from e
  image = _hwc(arr, axes, path).astype(np.float32)
  return image, centre_lonlat(tags, image.shape[0], image.shape[1], path)

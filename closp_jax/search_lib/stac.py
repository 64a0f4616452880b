"""Local STAC catalogues in: Sentinel-2 L2A and Sentinel-1 GRD items as scenes (scenes.py).

pystac (optional, `pip install 'closp-jax[scenes]'`, imported here only) reads a catalog.json,
collection.json or a single item .json from disk and walks every item below it. For each item:

* sensor: `platform` / `constellation` (sentinel-2a, sentinel-1b, ...), else the collection id
  (one containing `sentinel-2` / `s2` or `sentinel-1` / `s1`); items of neither are skipped with a
  line on stderr.
* bands: one per GeoTIFF asset (media type image/tiff..., or an href ending .tif/.tiff), named by
  its `eo:bands` / `bands` entry (`name`, else `common_name` / `eo:common_name`), else by the asset
  key (`B04`, `red`, `nir08`, `vv`, ...); see geotiff.band_id. Assets that name no band (previews,
  masks) are ignored. Band 1 of each asset file is read.
* values: the asset's raster extension `scale` / `offset` (`raster:bands` or `bands`), applied as
  in scenes.py (Earth Search's L2A: scale 0.0001, offset -0.1 -> reflectance x 10,000).
* timestamp: the item's `datetime` (or `start_datetime`), ISO 8601; source: the collection id.

The index keeps every scene's band hrefs (absolute) in index.json, so results are read again
without pystac.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from closp_jax.search_lib import geotiff
from closp_jax.search_lib.scenes import Band, Scene, SceneSource
from closp_jax.search_lib.sources import SourceError

TIFF_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


def _pystac():
  try:
    import pystac  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SourceError("reading STAC catalogues needs pystac: pip install 'closp-jax[scenes]'") from e
  return pystac


def item_sensor(item) -> str | None:
  props = item.properties
  for field in ("platform", "constellation"):
    v = str(props.get(field, "")).lower()
    if v.startswith("sentinel-2"):
      return "s2"
    if v.startswith("sentinel-1"):
      return "s1"
  coll = str(item.collection_id or "").lower()
  if "sentinel-2" in coll or coll.startswith("s2"):
    return "s2"
  if "sentinel-1" in coll or coll.startswith("s1"):
    return "s1"
  return None


def _first(entries) -> dict:
  return entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}


def asset_band(key: str, asset) -> tuple[str | None, float, float]:
  """(band id or None, scale, offset) of one asset."""
  extra = asset.extra_fields
  eo = _first(extra.get("eo:bands")) or _first(extra.get("bands"))
  name = None
  for candidate in (eo.get("name"), eo.get("common_name"), eo.get("eo:common_name"), key):
    name = geotiff.band_id(candidate)
    if name:
      break
  raster = _first(extra.get("raster:bands")) or _first(extra.get("bands"))
  scale = float(raster.get("scale", raster.get("raster:scale", 1.0)) or 1.0)
  offset = float(raster.get("offset", raster.get("raster:offset", 0.0)) or 0.0)
  return name, scale, offset


def _is_tiff(asset) -> bool:
  media = str(asset.media_type or "").lower()
  return any(media.startswith(t) for t in TIFF_TYPES) or asset.href.lower().split("?")[0].endswith((".tif", ".tiff"))


def item_scene(item) -> Scene | None:
  """The scene of one STAC item; None when it is not a Sentinel-1 / Sentinel-2 item."""
  sensor = item_sensor(item)
  if sensor is None:
    return None
  bands: dict[str, Band] = {}
  for key, asset in item.assets.items():
    if not _is_tiff(asset):
      continue
    name, scale, offset = asset_band(key, asset)
    if name is None or name in bands:
      continue
    bands[name] = Band(href=asset.get_absolute_href() or asset.href, index=1, scale=scale, offset=offset)
  stamp = item.datetime or item.common_metadata.start_datetime
  return Scene(
    id=item.id,
    sensor=sensor,
    bands=bands,
    timestamp=stamp.replace(tzinfo=None).isoformat() if stamp else "",
    source=item.collection_id or "stac",
  )


def read_catalog(path: str | os.PathLike, *, stream=None) -> list[Scene]:
  """Scenes of every Sentinel item in a local catalogue, collection or item file (sorted by id)."""
  pystac = _pystac()
  path = Path(path).absolute()
  if path.is_dir():
    for name in ("catalog.json", "collection.json"):
      if (path / name).is_file():
        path = path / name
        break
  if not path.is_file():
    raise SourceError(f"{path}: no STAC catalog.json / collection.json / item file there")
  try:
    obj = pystac.read_file(str(path))
  except (pystac.STACError, ValueError, KeyError) as e:
    raise SourceError(f"{path}: not a STAC catalogue, collection or item ({e})") from e
  items = [obj] if isinstance(obj, pystac.Item) else list(obj.get_items(recursive=True))
  scenes = []
  for item in sorted(items, key=lambda it: it.id):
    scene = item_scene(item)
    if scene is None:
      print(
        f"{path}: item {item.id} is neither Sentinel-2 nor Sentinel-1 (platform / collection); skipped",
        file=stream or sys.stderr,
        flush=True,
      )
      continue
    want = geotiff.SENSOR_BANDS[scene.sensor]
    missing = [b for b in want if b not in scene.bands]
    if missing:
      raise SourceError(f"{path}: item {item.id} has no asset for band(s) {missing} (found {sorted(scene.bands)})")
    scenes.append(scene)
  if not scenes:
    raise SourceError(f"{path}: no Sentinel-2 or Sentinel-1 items")
  return scenes


def catalog_source(path: str | os.PathLike, *, max_nodata: float = 0.0, stream=None) -> SceneSource:
  scenes = read_catalog(path, stream=stream)
  return SceneSource(
    scenes,
    max_nodata=max_nodata,
    stream=stream,
    description={"kind": "stac", "catalog": str(Path(path).absolute()), "scenes": [s.describe() for s in scenes]},
  )

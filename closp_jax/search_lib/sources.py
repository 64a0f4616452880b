"""What an index is built from: a prepared crisis_landmark split, or a folder of patches.

Both give items in a fixed order, each with its metadata and its raw image (NHWC float32, the
values the exported model's encode_image expects), and describe themselves as a small dict that
index.json keeps, so the images can be read again later (the contact sheet).

Folder patches: `*.npy` (allow_pickle off) and `*.tif` / `*.tiff` (GeoTIFF, read with rasterio,
bands by name: search_lib/geotiff.py), found recursively, in sorted order. A sidecar
`<name>.json` beside a patch may give
  {"lon": 13.4, "lat": 52.5, "sensor": "s2"|"s1", "key": "...", "source": "...",
   "timestamp": "...", "labels": ["Water", ...], "layout": "HWC"|"CHW"}
(all optional; `"lonlat": [lon, lat]` works too). Without a sidecar: the key is the path relative
to the folder; a GeoTIFF's sensor, band order and location come from its band names and
georeferencing; a .npy patch has no location, its bands are in the model's order
(S2_STORED_BANDS or S2_BANDS, S1_BANDS), its sensor follows from the band count (2: S1; 12 or 13:
S2) unless given, its layout is HWC when the last axis has 2, 12 or 13 entries and CHW when the
first one has. Scenes cut into chips and STAC catalogues are in scenes.py and stac.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax.errors import UserError

PATCH_SUFFIXES = (".npy", ".tif", ".tiff")
BAND_COUNTS = {2: "s1", 12: "s2", 13: "s2"}
SENSORS = ("s2", "s1")


class SourceError(UserError, ValueError):
  """A patch or dataset that cannot be indexed; the message names the file or record."""


@dataclasses.dataclass
class Item:
  key: str
  sensor: str
  source: str
  lon: float
  lat: float
  timestamp: str
  labels: list[str]
  record: int = -1  # record index in the dataset split (dataset sources)
  path: str = ""  # path relative to the folder (folder sources)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ArchiveSource:
  """Every record of `sensors` in a split of a prepared crisis_landmark dataset (S2 first, then S1)."""

  kind = "dataset"

  def __init__(
    self,
    name: str = "crisis_landmark/sample",
    split: str = "test",
    data_dir: str | None = None,
    sensors: tuple[str, ...] = SENSORS,
    prepare: bool = True,
  ):
    from closp_jax.data import labels as labels_lib  # pylint: disable=import-outside-toplevel
    from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    bad = [s for s in sensors if s not in SENSORS]
    if bad:
      raise SourceError(f"unknown sensor(s) {bad}: expected some of {SENSORS}")
    self.name, self.split, self.sensors = name, split, tuple(sensors)
    self.data_dir = os.fspath(data_dir or pipeline.default_data_dir())
    builder = pipeline.get_builder(name, data_dir=self.data_dir, prepare=prepare)
    try:
      self.records = np.concatenate([np.arange(*pipeline.sensor_range(builder, split, s)) for s in self.sensors])
    except KeyError as e:
      raise SourceError(str(e)) from e
    self._source = builder.as_data_source(split=split)
    self._classes = labels_lib.CLASSES

  def __len__(self) -> int:
    return len(self.records)

  def describe(self) -> dict:
    return {
      "kind": self.kind,
      "name": self.name,
      "split": self.split,
      "data_dir": self.data_dir,
      "sensors": list(self.sensors),
    }

  def read(self, i: int) -> tuple[Item, np.ndarray]:
    index = int(self.records[i])
    r = self._source[index]
    lon, lat = (float(v) for v in np.asarray(r["lonlat"], np.float64))
    labels = [c for c, on in zip(self._classes, np.asarray(r["labels"]) > 0) if on]
    item = Item(
      key=_text(r["key"]),
      sensor=_text(r["sensor"]),
      source=_text(r["source"]),
      lon=lon,
      lat=lat,
      timestamp=_text(r["timestamp"]),
      labels=labels,
      record=index,
    )
    return item, np.asarray(r["image"], np.float32)

  def image(self, item: dict) -> np.ndarray:
    """The raw image of an indexed row (dict with 'record')."""
    return np.asarray(self._source[int(item["record"])]["image"], np.float32)


def _sidecar(path: Path) -> dict:
  side = path.with_suffix(".json")
  if not side.is_file():
    return {}
  try:
    data = json.loads(side.read_text())
  except json.JSONDecodeError as e:
    raise SourceError(f"{side}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise SourceError(f"{side}: expected a JSON object with lon, lat, sensor, ...; got {type(data).__name__}")
  return data


def _to_hwc(arr: np.ndarray, layout: str | None, path: Path) -> np.ndarray:
  if arr.ndim != 3:
    raise SourceError(f"{path}: array has shape {arr.shape}, expected one patch [H, W, bands] or [bands, H, W]")
  if layout is None:
    if arr.shape[-1] in BAND_COUNTS:
      layout = "HWC"
    elif arr.shape[0] in BAND_COUNTS:
      layout = "CHW"
    else:
      raise SourceError(
        f'{path}: shape {arr.shape} has no axis of 2 (S1) or 12/13 (S2) bands; set "layout" in its sidecar .json'
      )
  if layout not in ("HWC", "CHW"):
    raise SourceError(f"{path}: layout {layout!r}, expected 'HWC' or 'CHW'")
  return arr if layout == "HWC" else np.transpose(arr, (1, 2, 0))


class FolderSource:
  """Patches in a folder (see the module docstring). `sensor` forces the sensor of every patch."""

  kind = "folder"

  def __init__(self, folder: str | os.PathLike, sensor: str | None = None, bands: list[str] | None = None):
    self.folder = Path(folder).absolute()
    self.bands = list(bands) if bands else None
    if not self.folder.is_dir():
      raise SourceError(f"{self.folder} is not a folder")
    if sensor is not None and sensor not in SENSORS:
      raise SourceError(f"sensor must be one of {SENSORS}, got {sensor!r}")
    self.sensor = sensor
    self.files = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in PATCH_SUFFIXES)
    if not self.files:
      raise SourceError(f"{self.folder} holds no patches ({', '.join('*' + s for s in PATCH_SUFFIXES)})")

  def __len__(self) -> int:
    return len(self.files)

  def describe(self) -> dict:
    out = {"kind": self.kind, "path": str(self.folder), "sensor": self.sensor}
    if self.bands:
      out["bands"] = self.bands
    return out

  def _load(self, path: Path, side: dict) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    if path.suffix.lower() == ".npy":
      try:
        arr = np.load(path, allow_pickle=False)
      except ValueError as e:
        raise SourceError(f"{path}: not a plain numeric .npy array ({e})") from e
      return _to_hwc(np.asarray(arr, np.float32), side.get("layout"), path), None, None
    from closp_jax.search_lib.geotiff import read_geotiff  # pylint: disable=import-outside-toplevel

    return read_geotiff(path, self.bands, self.sensor or side.get("sensor"))  # the model's band order

  def read(self, i: int) -> tuple[Item, np.ndarray]:
    path = self.files[i]
    side = _sidecar(path)
    image, lonlat, named = self._load(path, side)
    sensor = self.sensor or side.get("sensor") or named or BAND_COUNTS.get(image.shape[-1])
    if sensor not in SENSORS:
      raise SourceError(
        f"{path}: {image.shape[-1]} bands name no sensor (2: s1, 12 or 13: s2); give "
        '"sensor" in its sidecar .json or --sensor'
      )
    if "lonlat" in side:
      lonlat = tuple(side["lonlat"])
    elif "lon" in side or "lat" in side:
      if "lon" not in side or "lat" not in side:
        raise SourceError(f"{path.with_suffix('.json')}: give both lon and lat")
      lonlat = (side["lon"], side["lat"])
    lon, lat = (float(v) for v in lonlat) if lonlat is not None else (math.nan, math.nan)
    if not math.isnan(lat) and (abs(lat) > 90 or abs(lon) > 360):
      raise SourceError(f"{path}: lon/lat ({lon}, {lat}) out of range (degrees expected)")
    rel = path.relative_to(self.folder).as_posix()
    labels = side.get("labels", [])
    if not isinstance(labels, list):
      raise SourceError(f"{path.with_suffix('.json')}: labels must be a list of names")
    item = Item(
      key=str(side.get("key", rel)),
      sensor=sensor,
      source=str(side.get("source", "folder")),
      lon=lon,
      lat=lat,
      timestamp=str(side.get("timestamp", "")),
      labels=[str(x) for x in labels],
      path=rel,
    )
    return item, image

  def image(self, item: dict) -> np.ndarray:
    path = self.folder / item["path"]
    return self._load(path, _sidecar(path))[0]


def open_source(description: dict):
  """The source an index.json 'source' entry describes (to read images of results again)."""
  kind = description.get("kind")
  if kind == "dataset":
    return ArchiveSource(
      description["name"],
      description["split"],
      description["data_dir"],
      tuple(description.get("sensors", SENSORS)),
      prepare=False,
    )
  if kind == "folder":
    return FolderSource(description["path"], description.get("sensor"), description.get("bands"))
  if kind in ("scenes", "stac"):
    from closp_jax.search_lib import scenes  # pylint: disable=import-outside-toplevel

    return scenes.open_scene_source(description)
  raise SourceError(f"unknown source kind {kind!r} in the index (expected dataset, folder, scenes or stac)")

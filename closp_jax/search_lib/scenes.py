"""Whole scenes in: GeoTIFF / COG files or STAC items cut into 120-px chips for the index.

A scene is a set of named bands, each a (file, band number) pair: one multi-band GeoTIFF whose
band descriptions (or `--bands`) name its bands, or a STAC item whose assets are single-band COGs
(stac.py). Reading a scene:

* Grid: the finest band's grid (Sentinel-2: a 10 m band). Every other band is read through a
  rasterio WarpedVRT onto that grid, resampled bilinearly (20 m and 60 m bands to 10 m; the same
  resampling whatever the source resolution). Bands already on the grid are read as they are.
* Values: a band's stored scale and offset (GDAL metadata, or the STAC raster extension) are
  applied when they are not the identity; S2 physical reflectance is then multiplied by 10,000 (the
  model's units, docs/export.md). S1 bands must hold calibrated linear backscatter (sigma0 or
  gamma0, e.g. an RTC product): raw GRD digital numbers are not calibrated here.
* Chips: 120 x 120 pixels on a grid from the top-left corner, stride 120; the right and bottom
  remainders that do not fill a chip are left out. A chip is skipped when more than `max_nodata`
  (default 0: any) of its pixels are nodata in the grid band (its nodata value, NaN, or GDAL's
  mask). Each chip's location is its pixel (60, 60) at its middle, as for patches; its timestamp
  the scene's (STAC `datetime`, else the GeoTIFF's TIFFTAG_DATETIME, else `--timestamp`).

Chips are indexed with key `<scene>_r<row>_c<col>` (chip row and column), path = the scene id and
record = the chip's number within the scene (row * columns + col), so the image of a result is
read again from the scene without scanning it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from closp_jax.search_lib import geotiff
from closp_jax.search_lib.geotiff import SENSOR_BANDS, GeoTiffError
from closp_jax.search_lib.sources import Item, SourceError

CHIP = 120
S2_REFLECTANCE_UNITS = 10000.0


@dataclasses.dataclass
class Band:
  href: str  # file path or URL GDAL opens
  index: int = 1  # 1-based band number in that file
  scale: float = 1.0  # physical = stored * scale + offset
  offset: float = 0.0


@dataclasses.dataclass
class Scene:
  id: str  # relative path (GeoTIFF) or STAC item id
  sensor: str
  bands: dict[str, Band]  # band id -> where it is
  timestamp: str = ""
  source: str = ""

  def describe(self) -> dict:
    return {
      "id": self.id,
      "sensor": self.sensor,
      "timestamp": self.timestamp,
      "source": self.source,
      "bands": {k: dataclasses.asdict(v) for k, v in self.bands.items()},
    }


def _tiff_datetime(src) -> str:
  raw = src.tags().get("TIFFTAG_DATETIME", "")
  # TIFF's "YYYY:MM:DD HH:MM:SS" -> ISO 8601
  if len(raw) >= 19 and raw[4] == ":" and raw[7] == ":":
    return f"{raw[:4]}-{raw[5:7]}-{raw[8:10]}T{raw[11:19]}"
  return raw


def geotiff_scene(
  path: str | os.PathLike,
  root: str | os.PathLike | None = None,
  *,
  bands: Sequence[str] | None = None,
  sensor: str | None = None,
  timestamp: str | None = None,
) -> Scene:
  """A multi-band GeoTIFF as a Scene: bands by description or `bands`, scales and offsets from the file."""
  rasterio = geotiff.rasterio_module()
  path = Path(path).absolute()
  try:
    src = rasterio.open(path)
  except rasterio.errors.RasterioIOError as e:
    raise GeoTiffError(f"{path}: not a readable GeoTIFF ({e})") from e
  with src:
    names = geotiff.file_band_names(src, str(path), bands)
    sensor = sensor or geotiff.sensor_of(names, str(path))
    geotiff.band_order(names, sensor, str(path))  # every band the encoder reads is there
    found = {n: Band(str(path), i + 1, float(src.scales[i]), float(src.offsets[i])) for i, n in enumerate(names)}
    stamp = timestamp or _tiff_datetime(src)
  sid = path.relative_to(Path(root).absolute()).as_posix() if root is not None else path.name
  return Scene(id=sid, sensor=sensor, bands=found, timestamp=stamp or "", source=path.stem)


class SceneReader:
  """An open scene: its grid, chips, and chip pixels in the model's band order."""

  def __init__(self, scene: Scene):
    rasterio = geotiff.rasterio_module()
    self.scene = scene
    self.order = list(SENSOR_BANDS[scene.sensor])
    missing = [b for b in self.order if b not in scene.bands]
    if missing:
      raise GeoTiffError(
        f"scene {scene.id}: missing band(s) {missing}; the {scene.sensor.upper()} encoder reads {self.order}"
      )
    self._files: dict[str, object] = {}
    try:
      for band in self.order:
        href = scene.bands[band].href
        if href not in self._files:
          self._files[href] = rasterio.open(href)
    except rasterio.errors.RasterioIOError as e:
      self.close()
      raise GeoTiffError(f"scene {scene.id}: cannot open {href} ({e})") from e

    # The grid: the band with the smallest pixels.
    def pixel(band):
      src = self._files[scene.bands[band].href]
      return abs(src.transform.a * src.transform.e)

    self.grid_band = min(self.order, key=pixel)
    ref = self._files[scene.bands[self.grid_band].href]
    self.crs, self.transform, self.height, self.width = ref.crs, ref.transform, ref.height, ref.width
    self.rows, self.cols = self.height // CHIP, self.width // CHIP
    self._views = {b: self._view(b) for b in self.order}

  def _view(self, band: str):
    from rasterio.enums import Resampling  # pylint: disable=import-outside-toplevel
    from rasterio.vrt import WarpedVRT  # pylint: disable=import-outside-toplevel

    src = self._files[self.scene.bands[band].href]
    if (src.crs, src.transform, src.height, src.width) == (self.crs, self.transform, self.height, self.width):
      return src
    return WarpedVRT(
      src, crs=self.crs, transform=self.transform, height=self.height, width=self.width, resampling=Resampling.bilinear
    )

  def close(self) -> None:
    for v in getattr(self, "_views", {}).values():
      if v not in self._files.values():
        v.close()
    for f in self._files.values():
      f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _window(self, row: int, col: int):
    from rasterio.windows import Window  # pylint: disable=import-outside-toplevel

    return Window(col * CHIP, row * CHIP, CHIP, CHIP)

  def nodata_fraction(self, row: int, col: int) -> float:
    band = self.scene.bands[self.grid_band]
    view = self._views[self.grid_band]
    window = self._window(row, col)
    data = view.read(band.index, window=window).astype(np.float64)
    bad = ~np.isfinite(data)
    if view.nodata is not None and not np.isnan(view.nodata):
      bad |= data == view.nodata
    bad |= view.read_masks(band.index, window=window) == 0
    return float(bad.mean())

  def chips(self, max_nodata: float = 0.0) -> Iterator[tuple[int, int]]:
    """(row, col) of every chip with at most max_nodata of its pixels nodata, row-major."""
    for r in range(self.rows):
      for c in range(self.cols):
        if self.nodata_fraction(r, c) <= max_nodata:
          yield r, c

  def read(self, row: int, col: int) -> np.ndarray:
    """Chip (row, col): [120, 120, C] float32 in the model's band order and units."""
    window = self._window(row, col)
    planes = []
    for name in self.order:
      band = self.scene.bands[name]
      x = self._views[name].read(band.index, window=window)
      if (band.scale, band.offset) != (1.0, 0.0):
        x = x.astype(np.float64) * band.scale + band.offset
        if self.scene.sensor == "s2":
          x *= S2_REFLECTANCE_UNITS
      planes.append(x.astype(np.float32))
    return np.stack(planes, axis=-1)

  def lonlat(self, row: int, col: int) -> tuple[float, float]:
    from rasterio.warp import transform as warp  # pylint: disable=import-outside-toplevel

    x, y = self.transform @ (col * CHIP + CHIP // 2 + 0.5, row * CHIP + CHIP // 2 + 0.5)
    (lon,), (lat,) = warp(self.crs, "EPSG:4326", [x], [y])
    return float(lon), float(lat)


class SceneSource:
  """Every valid chip of a list of scenes, scene by scene, row-major (see the module docstring)."""

  kind = "scenes"

  def __init__(
    self,
    scenes: Sequence[Scene],
    *,
    max_nodata: float = 0.0,
    description: dict | None = None,
    stream=None,
    scan: bool = True,
  ):
    if not scenes:
      raise SourceError("no scenes to index")
    if not 0.0 <= max_nodata <= 1.0:
      raise SourceError(f"--max_nodata must be in [0, 1], got {max_nodata}")
    self.scenes = {s.id: s for s in scenes}
    if len(self.scenes) != len(scenes):
      raise SourceError("two scenes share one id; give them distinct file names or item ids")
    self.max_nodata = max_nodata
    self._description = description or {"kind": self.kind, "scenes": [s.describe() for s in scenes]}
    self.chips: list[tuple[str, int, int, int]] = []  # scene id, row, col, columns
    self._lonlat: list[tuple[float, float]] = []
    self._reader: tuple[str, SceneReader] | None = None
    for s in scenes if scan else ():
      with SceneReader(s) as reader:
        before = len(self.chips)
        for r, c in reader.chips(max_nodata):
          self.chips.append((s.id, r, c, reader.cols))
          self._lonlat.append(reader.lonlat(r, c))
        if stream is not None:
          print(
            f"scene {s.id}: {len(self.chips) - before} of {reader.rows * reader.cols} chips kept",
            file=stream,
            flush=True,
          )

  def __len__(self) -> int:
    return len(self.chips)

  def describe(self) -> dict:
    return {**self._description, "max_nodata": self.max_nodata}

  def _open(self, scene_id: str) -> SceneReader:
    if self._reader is None or self._reader[0] != scene_id:
      if self._reader is not None:
        self._reader[1].close()
      self._reader = (scene_id, SceneReader(self.scenes[scene_id]))
    return self._reader[1]

  def read(self, i: int) -> tuple[Item, np.ndarray]:
    sid, r, c, cols = self.chips[i]
    scene = self.scenes[sid]
    image = self._open(sid).read(r, c)
    lon, lat = self._lonlat[i]
    stem = sid[: -len(Path(sid).suffix)] if Path(sid).suffix.lower() in (".tif", ".tiff") else sid
    item = Item(
      key=f"{stem}_r{r}_c{c}",
      sensor=scene.sensor,
      source=scene.source or "scene",
      lon=lon,
      lat=lat,
      timestamp=scene.timestamp,
      labels=[],
      record=r * cols + c,
      path=sid,
    )
    return item, image

  def image(self, row: dict) -> np.ndarray:
    reader = self._open(row["path"])
    r, c = divmod(int(row["record"]), reader.cols)
    return reader.read(r, c)


def scenes_from_paths(
  paths: Sequence[str | os.PathLike],
  *,
  bands: Sequence[str] | None = None,
  sensor: str | None = None,
  timestamp: str | None = None,
) -> tuple[list[Scene], Path]:
  """GeoTIFF scenes from files and folders (*.tif / *.tiff found recursively, sorted); ids relative
  to the common folder."""
  files: list[Path] = []
  for p in map(Path, paths):
    if p.is_dir():
      files += sorted(f for f in p.rglob("*") if f.suffix.lower() in (".tif", ".tiff"))
    elif p.is_file():
      files.append(p)
    else:
      raise SourceError(f"{p}: no such file or folder")
  if not files:
    raise SourceError(f"{', '.join(map(str, paths))}: no GeoTIFF scenes (*.tif, *.tiff)")
  files = [f.absolute() for f in files]
  root = Path(os.path.commonpath([f.parent for f in files]))
  return [geotiff_scene(f, root, bands=bands, sensor=sensor, timestamp=timestamp) for f in files], root


def open_scene_source(description: dict) -> SceneSource:
  """The SceneSource an index.json 'source' entry describes (no nodata scan: chips are read by number)."""
  scenes = [
    Scene(
      id=s["id"],
      sensor=s["sensor"],
      timestamp=s.get("timestamp", ""),
      source=s.get("source", ""),
      bands={k: Band(**v) for k, v in s["bands"].items()},
    )
    for s in description["scenes"]
  ]
  return SceneSource(
    scenes,
    max_nodata=description.get("max_nodata", 0.0),
    scan=False,
    description={k: v for k, v in description.items() if k != "max_nodata"},
  )

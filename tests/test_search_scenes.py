"""Real scenes in: GeoTIFF scenes with 10, 20 and 60 m bands (written here with rasterio) are cut
into 120-px chips on the 10 m grid, bands by name, nodata chips skipped, each chip with its
location and time; a local STAC catalogue of a Sentinel-2 L2A and a Sentinel-1 GRD item (written
here with pystac) does the same; both index and search end to end through the binary, and the
results open as GeoJSON."""

import json
from pathlib import Path

import numpy as np
import pytest
from search_helpers import export_fresh_model

from closp_jax.data.preprocess import S1_BANDS, S2_STORED_BANDS
from closp_jax.errors import UserError

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

EPSG = 32633
X0, Y0 = 399960.0, 5800020.0  # top-left corner of the 10 m grid (UTM 33N, near Berlin)
RES = {
  "B2": 10,
  "B3": 10,
  "B4": 10,
  "B8": 10,
  "B5": 20,
  "B6": 20,
  "B7": 20,
  "B8A": 20,
  "B11": 20,
  "B12": 20,
  "B1": 60,
  "B9": 60,
}
H, W = 240, 360  # 10 m pixels: 2 x 3 chips


def band_value(band: str) -> float:
  """A constant per band (resampling keeps constants): tells the bands apart after reordering."""
  return 100.0 * (S2_STORED_BANDS.index(band) + 1)


def write_band(path: Path, band: str, *, nodata_chip=None, scale=None, offset=None, dtype="uint16"):
  res = RES[band]
  h, w = H * 10 // res, W * 10 // res
  data = np.full((h, w), band_value(band), dtype)
  if nodata_chip is not None:  # (row, col) of a chip: one nodata pixel in it
    r, c = nodata_chip
    data[(r * 120 + 5) * 10 // res, (c * 120 + 7) * 10 // res] = 0
  with rasterio.open(
    path,
    "w",
    driver="GTiff",
    height=h,
    width=w,
    count=1,
    dtype=dtype,
    crs=f"EPSG:{EPSG}",
    transform=from_origin(X0, Y0, res, res),
    nodata=0,
    tiled=True,
    blockxsize=64,
    blockysize=64,
  ) as dst:
    dst.write(data, 1)
    dst.set_band_description(1, band)
    if scale is not None:
      dst.scales, dst.offsets = (scale,), (offset,)


def test_band_names_in_any_spelling():
  from closp_jax.search_lib.geotiff import band_id, parse_bands  # pylint: disable=import-outside-toplevel

  assert [band_id(n) for n in ("B02", "b8a", "B8A", "Sentinel-2 B09", "nir08", "swir16", "vh", "B13", "")] == [
    "B2",
    "B8A",
    "B8A",
    "B9",
    "B8A",
    "B11",
    "VH",
    None,
    None,
  ]
  assert parse_bands("VV, VH".replace(" ", "")) == ["VV", "VH"]


def test_scene_chips_bands_by_name_resampled_and_nodata_skipped(tmp_path):
  from closp_jax.search_lib import scenes  # pylint: disable=import-outside-toplevel

  pyproj = pytest.importorskip("pyproj")
  # One multi-band file per resolution, bands in a shuffled order named by their descriptions.
  d = tmp_path / "scene"
  d.mkdir()
  per_res = {}
  for band, res in RES.items():
    per_res.setdefault(res, []).append(band)
  scene_bands = {}
  for bands in per_res.values():
    bands = bands[::-1]
    for b in bands:
      write_band(d / f"{b}.tif", b, nodata_chip=(1, 2) if b == "B2" else None)
      scene_bands[b] = scenes.Band(str(d / f"{b}.tif"))
  scene = scenes.Scene(
    id="T33UUU_20240601", sensor="s2", bands=scene_bands, timestamp="2024-06-01T10:20:30", source="test"
  )
  source = scenes.SceneSource([scene])
  # 2 x 3 chips on the 10 m grid; chip (1, 2) has a nodata pixel in the grid band (B2) and is skipped.
  assert len(source) == 5 and [c[1:3] for c in source.chips] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
  item, image = source.read(4)
  assert image.shape == (120, 120, len(S2_STORED_BANDS))
  # Every band, 10, 20 or 60 m, resampled onto the 10 m grid and in the model's order.
  np.testing.assert_array_equal(image[60, 60], [band_value(b) for b in S2_STORED_BANDS])
  np.testing.assert_allclose(image.reshape(-1, 12).std(0), 0.0, atol=1e-3)
  assert item.key == "T33UUU_20240601_r1_c1" and item.timestamp == "2024-06-01T10:20:30" and item.record == 4
  # Location: the chip's pixel (60, 60) at its middle.
  want = pyproj.Transformer.from_crs(EPSG, 4326, always_xy=True).transform(
    X0 + (120 + 60.5) * 10, Y0 - (120 + 60.5) * 10
  )
  np.testing.assert_allclose((item.lon, item.lat), want, atol=1e-9)
  # Read again by number from the index's description, without a scan.
  again = scenes.open_scene_source(source.describe())
  np.testing.assert_array_equal(again.image({"path": item.path, "record": item.record}), image)
  # With max_nodata above the chip's fraction (1 / 14,400) it is kept.
  assert len(scenes.SceneSource([scene], max_nodata=0.001)) == 6


def test_scene_scale_offset_and_missing_band(tmp_path):
  from closp_jax.search_lib import scenes  # pylint: disable=import-outside-toplevel

  # One 10 m S1 file: linear backscatter as float32 (no scale), descriptions VV, VH.
  path = tmp_path / "s1.tif"
  vv, vh = np.full((H, W), 0.2, np.float32), np.full((H, W), 0.05, np.float32)
  with rasterio.open(
    path,
    "w",
    driver="GTiff",
    height=H,
    width=W,
    count=2,
    dtype="float32",
    crs=f"EPSG:{EPSG}",
    transform=from_origin(X0, Y0, 10, 10),
  ) as dst:
    dst.write(np.stack([vh, vv]))
    dst.descriptions = ("VH", "VV")
    dst.update_tags(TIFFTAG_DATETIME="2024:06:02 05:06:07")
  found, _ = scenes.scenes_from_paths([path])
  assert found[0].sensor == "s1" and found[0].timestamp == "2024-06-02T05:06:07"
  item, image = scenes.SceneSource(found).read(0)
  np.testing.assert_allclose(image[0, 0], [0.2, 0.05])  # VV, VH: the model's order
  # S2 digital numbers with a stored scale and offset: reflectance x 10,000.
  d = tmp_path / "s2"
  d.mkdir()
  for b in S2_STORED_BANDS:
    write_band(d / f"{b}.tif", b, scale=1e-4, offset=-0.1)
  s2 = scenes.Scene(
    id="x", sensor="s2", bands={b: scenes.Band(str(d / f"{b}.tif"), 1, 1e-4, -0.1) for b in S2_STORED_BANDS}
  )
  _, image = scenes.SceneSource([s2]).read(0)
  np.testing.assert_allclose(image[0, 0], [band_value(b) - 1000.0 for b in S2_STORED_BANDS], atol=1e-3)
  del s2.bands["B8A"]
  with pytest.raises(UserError, match=r"missing band\(s\) \['B8A'\]"):
    scenes.SceneSource([s2])


def write_stac(root: Path) -> Path:
  """catalog.json with a Sentinel-2 L2A item (Earth Search asset keys, raster scale/offset), a
  Sentinel-1 GRD item (vv, vh) and a Landsat item that is skipped."""
  pystac = pytest.importorskip("pystac")
  import datetime as dt  # pylint: disable=import-outside-toplevel

  cat = pystac.Catalog(id="test", description="scenes written by the test")
  keys = {
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
    "swir16": "B11",
    "swir22": "B12",
  }
  data = root / "data"
  data.mkdir(parents=True)
  bbox = [13.0, 52.0, 14.0, 53.0]
  geom = {"type": "Polygon", "coordinates": [[[13, 52], [14, 52], [14, 53], [13, 53], [13, 52]]]}
  s2 = pystac.Item(
    id="S2B_33UUU_20240601_0_L2A",
    geometry=geom,
    bbox=bbox,
    datetime=dt.datetime(2024, 6, 1, 10, 20, 30),
    properties={"platform": "sentinel-2b", "constellation": "sentinel-2"},
    collection=None,
  )
  for key, band in keys.items():
    write_band(data / f"s2_{band}.tif", band, scale=1e-4, offset=-0.1)
    s2.add_asset(
      key,
      pystac.Asset(
        href=str(data / f"s2_{band}.tif"),
        media_type=pystac.MediaType.COG,
        extra_fields={
          "eo:bands": [{"name": band, "common_name": key}],
          "raster:bands": [{"scale": 1e-4, "offset": -0.1}],
        },
      ),
    )
  s2.add_asset("thumbnail", pystac.Asset(href="thumb.jpg", media_type=pystac.MediaType.JPEG))
  s1 = pystac.Item(
    id="S1A_IW_GRDH_20240602",
    geometry=geom,
    bbox=bbox,
    datetime=dt.datetime(2024, 6, 2, 5, 6, 7),
    properties={"platform": "sentinel-1a"},
  )
  for pol, value in (("vv", 0.2), ("vh", 0.05)):
    with rasterio.open(
      data / f"s1_{pol}.tif",
      "w",
      driver="GTiff",
      height=H,
      width=W,
      count=1,
      dtype="float32",
      crs=f"EPSG:{EPSG}",
      transform=from_origin(X0, Y0, 10, 10),
    ) as dst:
      dst.write(np.full((1, H, W), value, np.float32))
    s1.add_asset(pol, pystac.Asset(href=str(data / f"s1_{pol}.tif"), media_type=pystac.MediaType.GEOTIFF))
  landsat = pystac.Item(
    id="LC09_x", geometry=geom, bbox=bbox, datetime=dt.datetime(2024, 6, 3), properties={"platform": "landsat-9"}
  )
  for item in (s2, s1, landsat):
    cat.add_item(item)
  cat.normalize_hrefs(str(root / "stac"))
  cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
  return root / "stac" / "catalog.json"


def test_stac_catalogue_items_as_scenes(tmp_path, capsys):
  from closp_jax.search_lib import stac  # pylint: disable=import-outside-toplevel

  catalog = write_stac(tmp_path)
  found = stac.read_catalog(catalog)
  assert "LC09_x is neither Sentinel-2 nor Sentinel-1" in capsys.readouterr().err
  assert [(s.id, s.sensor) for s in found] == [("S1A_IW_GRDH_20240602", "s1"), ("S2B_33UUU_20240601_0_L2A", "s2")]
  s2 = found[1]
  assert sorted(s2.bands) == sorted(S2_STORED_BANDS) and s2.timestamp == "2024-06-01T10:20:30"
  assert (s2.bands["B8A"].scale, s2.bands["B8A"].offset) == (1e-4, -0.1)
  source = stac.catalog_source(catalog)
  assert len(source) == 12  # 6 chips per item
  item, image = source.read(6)
  assert item.sensor == "s2" and item.key == "S2B_33UUU_20240601_0_L2A_r0_c0"
  np.testing.assert_allclose(image[0, 0], [band_value(b) - 1000.0 for b in S2_STORED_BANDS], atol=1e-3)
  item, image = source.read(0)
  assert item.sensor == "s1" and list(S1_BANDS) == ["VV", "VH"]
  np.testing.assert_allclose(image[0, 0], [0.2, 0.05])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return export_fresh_model(tmp_path_factory.mktemp("scene_model"))


def test_geotiff_scene_and_stac_index_and_search_end_to_end(model, tmp_path, capsys):
  from closp_jax import search as search_bin  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib.index import open_index  # pylint: disable=import-outside-toplevel

  model_dir, m = model
  # A GeoTIFF scene: one file, 12 bands with descriptions in the model's order.
  scene = tmp_path / "scenes" / "berlin.tif"
  scene.parent.mkdir()
  rng = np.random.default_rng(0)
  pixels = rng.uniform(100, 3000, (12, H, W)).astype(np.float32)
  pixels[:, :120, 240:] = 0  # chip (0, 2): nodata
  with rasterio.open(
    scene,
    "w",
    driver="GTiff",
    height=H,
    width=W,
    count=12,
    dtype="float32",
    crs=f"EPSG:{EPSG}",
    transform=from_origin(X0, Y0, 10, 10),
    nodata=0,
  ) as dst:
    dst.write(pixels)
    dst.descriptions = tuple(S2_STORED_BANDS)
  out = tmp_path / "scene_index"
  assert (
    search_bin.main(
      [
        "closp-search",
        "index",
        "--model",
        str(model_dir),
        "--scenes",
        str(scene.parent),
        "--out",
        str(out),
        "--timestamp",
        "2024-06-01",
      ]
    )
    == 0
  )
  idx = open_index(out)
  assert len(idx) == 5 and list(idx.meta["key"])[:2] == ["berlin_r0_c0", "berlin_r0_c1"]
  want = m.encode_image(np.transpose(pixels[:, 120:240, :120], (1, 2, 0)), "s2")[0]
  np.testing.assert_allclose(idx.embeddings[2].astype(np.float32), want, atol=2e-3)  # chip (1, 0)
  capsys.readouterr()
  gj = tmp_path / "scene.geojson"
  assert (
    search_bin.main(
      [
        "closp-search",
        "query",
        "--index",
        str(out),
        "fields",
        "--k",
        "3",
        "--geojson",
        str(gj),
        "--bbox",
        "12,51,15,54",
        "--start",
        "2024-06-01",
      ]
    )
    == 0
  )
  fc = json.loads(gj.read_text())
  assert len(fc["features"]) == 3 and all(f["geometry"]["type"] == "Point" for f in fc["features"])
  lon, lat = fc["features"][0]["geometry"]["coordinates"]
  assert 12.0 < lon < 15.0 and 51.0 < lat < 54.0
  png = tmp_path / "scene.png"
  assert search_bin.main(["closp-search", "query", "--index", str(out), "fields", "--k", "2", "--png", str(png)]) == 0
  assert png.is_file()
  # A STAC catalogue: both items, 12 chips.
  catalog = write_stac(tmp_path / "cat")
  out2 = tmp_path / "stac_index"
  assert (
    search_bin.main(["closp-search", "index", "--model", str(model_dir), "--stac", str(catalog), "--out", str(out2)])
    == 0
  )
  idx2 = open_index(out2)
  assert len(idx2) == 12 and sorted(set(idx2.meta["sensor"])) == ["s1", "s2"]
  capsys.readouterr()
  assert (
    search_bin.main(["closp-search", "query", "--index", str(out2), "water", "--sensor", "s1", "--k", "4", "--json"])
    == 0
  )
  res = json.loads(capsys.readouterr().out)
  assert len(res) == 4 and {r["sensor"] for r in res} == {"s1"} and res[0]["timestamp"] == "2024-06-02T05:06:07"

"""Search: folder and archive indexes (resumable, float16, metadata), queries with sensor and
distance filters, GeoTIFF locations, contact sheets with one tile per result, and (slow) a short
training run on the synthetic archive whose class queries rank the class far above its frequency."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from search_helpers import PLACES, export_fresh_model, patch, write_patch_folder

from closp_jax.errors import UserError
from closp_jax.search_lib import contact_sheet, geotiff
from closp_jax.search_lib.index import SearchIndexError, build_index, embed_fixed_batch, open_index
from closp_jax.search_lib.query import (
  QueryError,
  filter_mask,
  format_results,
  haversine_km,
  parse_bbox,
  parse_date,
  parse_lonlat,
  search,
  similar,
)
from closp_jax.search_lib.sources import FolderSource, SourceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory):
  """An exported model (random weights) and its loaded form."""
  return export_fresh_model(tmp_path_factory.mktemp("search_model"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_patch_folder(tmp_path_factory.mktemp("patches"))


@pytest.fixture(scope="module")
def folder_index(fresh_model, folder, tmp_path_factory):
  model_dir, model = fresh_model
  out = tmp_path_factory.mktemp("idx") / "index"
  build_index(model_dir, out, FolderSource(folder), chunk=4, progress=False, model=model)
  return open_index(out)


def test_folder_index_rows_metadata_and_embeddings(fresh_model, folder, folder_index):
  _, model = fresh_model
  idx = folder_index
  assert len(idx) == 6 and idx.embeddings.dtype == np.float16 and idx.embeddings.shape == (6, model.embed_dim)
  assert sorted(os.listdir(idx.folder)) == ["embeddings.npy", "index.json", "metadata.parquet"]
  by_key = {idx.meta["key"][i]: i for i in range(len(idx))}
  assert set(by_key) == {"patch0", "patch1", "patch2", "patch3", "patch4", "sub/p5.npy"}
  for i, ((lon, lat), sensor, labels) in enumerate(PLACES):
    row = idx.row(by_key[f"patch{i}" if i != 5 else "sub/p5.npy"])
    assert row["sensor"] == sensor
    if i == 5:
      assert math.isnan(row["lon"]) and row["labels"] == [] and row["source"] == "folder"
      continue
    assert (row["lon"], row["lat"], row["labels"], row["source"]) == (
      pytest.approx(lon),
      pytest.approx(lat),
      labels,
      "test",
    )
    want = model.encode_image(patch(sensor, i), sensor)[0]
    # float16 storage: half-precision rounding of unit vectors.
    np.testing.assert_allclose(idx.embeddings[by_key[f"patch{i}"]].astype(np.float32), want, atol=2e-3, rtol=0)
  assert np.allclose(np.linalg.norm(idx.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_index_resumes_after_a_stop_and_refuses_another_source(fresh_model, folder, folder_index, tmp_path, capsys):
  model_dir, model = fresh_model
  out = tmp_path / "resumed"
  build_index(model_dir, out, FolderSource(folder), chunk=2, progress=False, model=model, stop_after_chunks=1)
  assert json.loads((out / "progress.json").read_text()) == {"done": 2}
  with pytest.raises(SearchIndexError, match=r"incomplete \(2/6 rows\); run the same"):
    open_index(out)
  build_index(model_dir, out, FolderSource(folder), chunk=2, progress=True, model=model, stop_after_chunks=1)
  assert "resuming" in capsys.readouterr().err
  assert json.loads((out / "progress.json").read_text()) == {"done": 4}
  build_index(model_dir, out, FolderSource(folder), chunk=4, progress=False, model=model)  # another chunk size
  resumed = open_index(out)
  # Bit for bit: images are embedded in calls of exactly batch_size patches whatever the chunk
  # (test_embeddings_do_not_depend_on_the_chunk).
  np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(folder_index.embeddings))
  for c, v in folder_index.meta.items():
    assert list(map(str, resumed.meta[c])) == list(map(str, v)), c
  assert not (out / "parts").exists() and not (out / "progress.json").exists()
  build_index(model_dir, out, FolderSource(folder), progress=True, model=model)
  assert "nothing to do" in capsys.readouterr().err
  with pytest.raises(SearchIndexError, match="another model or source"):
    build_index(model_dir, out, FolderSource(folder, sensor="s2"), progress=False, model=model)


def test_query_ranks_exactly_and_filters(fresh_model, folder_index):
  _, model = fresh_model
  idx = folder_index
  q = model.encode_text(["water"])[0]
  scores = idx.embeddings.astype(np.float32) @ q
  res = search(idx, model, "water", k=10)
  assert [r["row"] for r in res] == list(np.argsort(-scores, kind="stable"))
  np.testing.assert_allclose([r["score"] for r in res], np.sort(scores)[::-1], atol=1e-6)
  s1 = search(idx, model, "water", sensor="s1", k=2)
  assert len(s1) == 2 and all(r["sensor"] == "s1" for r in s1)
  assert [r["rank"] for r in s1] == [1, 2]
  # Within 30 km of Berlin: patch0 (0 km) and patch3 (13.4 km); patch5 (no location) never matches.
  near = search(idx, model, "water", near=(13.40, 52.52), radius_km=30.0, k=10)
  assert sorted(r["key"] for r in near) == ["patch0", "patch3"]
  assert all(r["distance_km"] <= 30.0 for r in near)
  assert search(idx, model, "water", sensor="s2", near=(12.5, 41.9), radius_km=5.0) == []
  table = format_results(res)
  assert table.splitlines()[0].split()[:6] == ["rank", "score", "key", "sensor", "source", "lon,lat"]
  assert "Built, Water" in table and "sub/p5.npy" in table
  with pytest.raises(QueryError, match="go together"):
    filter_mask(idx, near=(0.0, 0.0))
  with pytest.raises(QueryError, match="expected LON,LAT"):
    parse_lonlat("13.4;52.5")
  with pytest.raises(QueryError, match="the query text is empty"):
    search(idx, model, "  ", k=3)


def test_embeddings_do_not_depend_on_the_chunk(fresh_model):
  """XLA's CPU kernels round differently for a batch of 1 than for larger batches (last-bit
  differences that float16 storage occasionally keeps); embed_fixed_batch always calls the model
  with batch_size patches, so a patch's embedding is the same wherever it sits in any chunk."""
  _, model = fresh_model
  x = np.stack([patch("s2", i) for i in range(5)])
  alone = embed_fixed_batch(model, x[2:3], "s2", 8)
  in_chunk = embed_fixed_batch(model, x, "s2", 8)
  shifted = embed_fixed_batch(model, x[1:4], "s2", 8)
  np.testing.assert_array_equal(in_chunk[2], alone[0])
  np.testing.assert_array_equal(shifted[1], alone[0])
  np.testing.assert_allclose(in_chunk, model.encode_image(x, "s2"), atol=1e-6)


def test_bbox_date_filters_and_more_like_this(fresh_model, folder_index):
  _, model = fresh_model
  idx = folder_index
  keys = lambda res: sorted(r["key"] for r in res)  # noqa: E731
  # Around Berlin: patch0 (13.40, 52.52), patch3 (13.38, 52.40), not patch5 (14.00, 52.00: outside in lat).
  assert keys(search(idx, model, "water", bbox=parse_bbox("13,52.3,14.5,52.6"), k=10)) == ["patch0", "patch3"]
  # Crossing the antimeridian: minlon > maxlon keeps lon >= 170 or <= 3 (Paris 2.35, Madrid -3.70; not Rome 12.5).
  assert keys(search(idx, model, "water", bbox=(170.0, 0.0, 3.0, 60.0), k=10)) == ["patch1", "patch2"]
  # Dates: timestamps 2024-0{i+1}-01; the end date includes its whole day.
  got = search(idx, model, "water", start=parse_date("2024-02-01"), end=parse_date("2024-03-01", end=True), k=10)
  assert keys(got) == ["patch1", "patch2"]
  assert search(idx, model, "water", start=parse_date("2025-01-01"), k=10) == []
  for bad, match in (
    ("1,2,3", "expected MINLON,MINLAT,MAXLON,MAXLAT"),
    ("0,50,1,40", "MINLAT <= MAXLAT"),
    ("0,0,200,1", r"longitudes must be in \[-180, 180\]"),
    ("a,b,c,d", "expected MINLON"),
  ):
    with pytest.raises(QueryError, match=match):
      parse_bbox(bad)
  with pytest.raises(QueryError, match="expected YYYY-MM-DD"):
    parse_date("yesterday")
  # More like this: the stored embedding as the query, itself left out, exact order.
  row = idx.row_of("patch0")
  emb = idx.embeddings.astype(np.float32)
  want = [int(r) for r in np.argsort(-(emb @ emb[row]), kind="stable") if r != row]
  res = similar(idx, "patch0", k=10)
  assert [r["row"] for r in res] == want and "patch0" not in keys(res)
  assert keys(similar(idx, "patch0", k=10, sensor="s1")) == ["patch3", "patch4", "sub/p5.npy"]
  with pytest.raises(SearchIndexError, match="unknown key 'nope'"):
    similar(idx, "nope")


def test_haversine_against_the_wgs84_geodesic():
  pyproj = pytest.importorskip("pyproj")
  geod = pyproj.Geod(ellps="WGS84")
  rng = np.random.default_rng(0)
  lon, lat = rng.uniform(-180, 180, 200), rng.uniform(-80, 80, 200)
  lon0, lat0 = 13.4, 52.5
  _, _, metres = geod.inv(np.full(200, lon0), np.full(200, lat0), lon, lat)
  got = haversine_km(lon, lat, lon0, lat0)
  # A sphere vs the ellipsoid: within 0.6 %.
  np.testing.assert_allclose(got, metres / 1000.0, rtol=6e-3)
  assert haversine_km(np.array([lon0]), np.array([lat0]), lon0, lat0)[0] == 0.0


def test_tile_colours():
  s2 = np.zeros((4, 4, 13), np.float32)
  s2[..., 3], s2[..., 2], s2[..., 1] = 3000.0, 1500.0, -5.0  # B4, B3, B2
  np.testing.assert_array_equal(contact_sheet.s2_true_colour(s2)[0, 0], [255, 128, 0])
  np.testing.assert_array_equal(contact_sheet.s2_true_colour(np.delete(s2, 10, -1))[0, 0], [255, 128, 0])
  s1 = np.zeros((4, 4, 2), np.float32)
  s1[..., 0], s1[..., 1] = 1.0, 10**-1.75  # VV 0 dB, VH -17.5 dB; VV - VH 17.5 dB
  np.testing.assert_array_equal(contact_sheet.s1_false_colour(s1)[0, 0], [255, 128, 255])
  s1[..., 0] = 10**-2.5  # VV -25 dB: bottom of its range; VV - VH -7.5 dB
  np.testing.assert_array_equal(contact_sheet.s1_false_colour(s1)[0, 0], [0, 128, 0])
  with pytest.raises(ValueError, match="expected \\[H, W, 2\\]"):
    contact_sheet.s1_false_colour(s2)


def _tiles_present(png: Path, boxes, background=contact_sheet.BACKGROUND):
  from PIL import Image  # pylint: disable=import-outside-toplevel

  img = np.asarray(Image.open(png).convert("RGB")).astype(int)
  return img, [float(img[t:b, l:r].std()) > 1.0 and (img[t:b, l:r] != background).any() for l, t, r, b in boxes]


def test_contact_sheet_one_tile_per_result(fresh_model, folder_index, tmp_path):
  _, model = fresh_model
  idx = folder_index
  res = search(idx, model, "built", k=5)
  src = idx.source()
  sheet, boxes = contact_sheet.contact_sheet(res, [src.image(r) for r in res], columns=2)
  contact_sheet.save_png(sheet, tmp_path / "r.png")
  img, present = _tiles_present(tmp_path / "r.png", boxes)
  assert len(boxes) == len(res) == 5 and all(present)
  assert img.shape[:2] == (3 * (180 + 34 + 6) + 6, 2 * (180 + 6) + 6)  # 3 rows of 2 columns
  l, t, r, b = boxes[-1][0] + 186, boxes[-1][1], boxes[-1][2] + 186, boxes[-1][3]
  assert (img[t:b, l:r] == 255).all()  # the sixth cell stays empty
  # Rank order: row-major.
  assert [bx[:2] for bx in boxes] == [(6, 6), (192, 6), (6, 226), (192, 226), (6, 446)]


def test_cli_query_json_png_geojson_and_csv(fresh_model, folder_index, tmp_path, capsys):
  from closp_jax import search as search_bin  # pylint: disable=import-outside-toplevel

  png, gj, csv_path = tmp_path / "q.png", tmp_path / "q.geojson", tmp_path / "q.csv"
  rc = search_bin.main(
    [
      "closp-search",
      "query",
      "--index",
      str(folder_index.folder),
      "flooded area",
      "--k",
      "4",
      "--json",
      "--png",
      str(png),
      "--columns",
      "4",
      "--geojson",
      str(gj),
      "--csv",
      str(csv_path),
    ]
  )
  assert rc == 0
  res = json.loads(capsys.readouterr().out)
  assert [r["rank"] for r in res] == [1, 2, 3, 4] and {
    "score",
    "key",
    "sensor",
    "source",
    "lon",
    "lat",
    "labels",
  } <= set(res[0])
  from PIL import Image  # pylint: disable=import-outside-toplevel

  assert Image.open(png).size == (4 * 186 + 6, 220 + 6)
  fc = json.loads(gj.read_text())
  assert fc["type"] == "FeatureCollection" and [f["properties"]["key"] for f in fc["features"]] == [
    r["key"] for r in res
  ]
  for f, r in zip(fc["features"], res):
    if r["lon"] is None:
      assert f["geometry"] is None
    else:
      assert f["geometry"] == {"type": "Point", "coordinates": [r["lon"], r["lat"]]}
  lines = csv_path.read_text().splitlines()
  assert lines[0].startswith("rank,score,key,sensor,source,lon,lat,timestamp,labels") and len(lines) == 5
  rc = search_bin.main(
    ["closp-search", "query", "--index", str(folder_index.folder), "water", "--near=-3.7,40.4", "--radius-km", "50"]
  )
  out = capsys.readouterr().out
  assert rc == 0 and "patch2" in out and "patch0" not in out
  rc = search_bin.main(
    [
      "closp-search",
      "query",
      "--index",
      str(folder_index.folder),
      "water",
      "--bbox=-5,40,-3,41",
      "--start",
      "2024-03-01",
      "--end",
      "2024-03-01",
    ]
  )
  out = capsys.readouterr().out
  assert rc == 0 and "patch2" in out and "patch0" not in out
  with pytest.raises(UserError, match="index.json not found"):
    search_bin.main(["closp-search", "query", "--index", str(tmp_path), "water"])
  with pytest.raises(UserError, match="the first argument is the subcommand"):
    search_bin.main(["closp-search", "--index", str(tmp_path)])


def test_cli_user_errors_are_one_line_exit_1(folder_index, tmp_path):
  """Through the console-script entry in a fresh process: one line on stderr, exit status 1."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  for args, match in (
    (["query", "--index", str(tmp_path), "water"], "index.json not found"),
    (["query", "--index", str(folder_index.folder), "water", "--bbox=1,2,3"], "expected MINLON"),
    (["query", "--index", str(folder_index.folder), "water", "--k", "many"], "flag --k=many"),
    (["serve"], "serve needs --index"),
    (["index", "--model", "m", "--out", str(tmp_path / "o")], "exactly one of --data"),
  ):
    proc = subprocess.run(
      [sys.executable, "-c", "from closp_jax.search import run; run()", *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      cwd=REPO,
      check=False,
    )
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 1 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], proc.stderr


def test_folder_errors(tmp_path):
  with pytest.raises(SourceError, match="holds no patches"):
    FolderSource(tmp_path)
  np.save(tmp_path / "odd.npy", np.zeros((120, 120, 5), np.float32))
  with pytest.raises(SourceError, match=r"odd.npy: shape \(120, 120, 5\) has no axis of 2 \(S1\) or 12/13"):
    FolderSource(tmp_path).read(0)
  (tmp_path / "odd.npy").unlink()
  np.save(tmp_path / "a.npy", np.zeros((2, 120, 120), np.float32))
  (tmp_path / "a.json").write_text(json.dumps({"lon": 1.0}))
  with pytest.raises(SourceError, match="give both lon and lat"):
    FolderSource(tmp_path).read(0)
  (tmp_path / "a.json").write_text("{oops")
  with pytest.raises(SourceError, match="a.json: not valid JSON"):
    FolderSource(tmp_path).read(0)


# ---- GeoTIFF -------------------------------------------------------------------------------------


def _write_geotiff(path, image, tiepoint_xy, epsg, pixel=10.0, raster_type=1, model_type=1):
  tifffile = pytest.importorskip("tifffile")
  key = 3072 if model_type == 1 else 2048
  geokeys = (1, 1, 0, 3, 1024, 0, 1, model_type, 1025, 0, 1, raster_type, key, 0, 1, epsg)
  tags = [
    (33550, "d", 3, (pixel, pixel, 0.0), False),
    (33922, "d", 6, (0.0, 0.0, 0.0, tiepoint_xy[0], tiepoint_xy[1], 0.0), False),
    (34735, "H", len(geokeys), geokeys, False),
  ]
  tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig", extratags=tags)


def _write_named_geotiff(path, image, names, transform, crs, **tags):
  rasterio = pytest.importorskip("rasterio")
  with rasterio.open(
    path,
    "w",
    driver="GTiff",
    height=image.shape[0],
    width=image.shape[1],
    count=image.shape[2],
    dtype=image.dtype,
    crs=crs,
    transform=transform,
  ) as dst:
    dst.write(np.transpose(image, (2, 0, 1)))
    dst.descriptions = tuple(names)
    if tags:
      dst.update_tags(**tags)


def test_geotiff_centre_location_and_bands(tmp_path):
  pyproj = pytest.importorskip("pyproj")
  rasterio = pytest.importorskip("rasterio")
  from closp_jax.data.preprocess import S2_STORED_BANDS  # pylint: disable=import-outside-toplevel

  lon, lat = 13.4050, 52.5200
  x, y = pyproj.Transformer.from_crs(4326, 32633, always_xy=True).transform(lon, lat)
  image = patch("s2", 7)[..., [i for i in range(13) if i != 10]]  # the 12 stored bands, model order
  # Stored with B9 before B8A and B2/B4 swapped: read by name, they come back in the model's order.
  file_order = ["B1", "B4", "B3", "B2", "B5", "B6", "B7", "B8", "B9", "B8A", "B11", "B12"]
  stored = image[..., [S2_STORED_BANDS.index(b) for b in file_order]]
  # The middle of pixel (60, 60) is 60.5 pixels right of and below the top-left corner.
  transform = rasterio.transform.from_origin(x - 60.5 * 10, y + 60.5 * 10, 10.0, 10.0)
  _write_named_geotiff(
    tmp_path / "a.tif",
    stored,
    [f"Sentinel-2 {b.replace('B', 'B0') if len(b) == 2 else b}" for b in file_order],
    transform,
    "EPSG:32633",
  )
  got, lonlat, sensor = geotiff.read_geotiff(tmp_path / "a.tif")
  np.testing.assert_array_equal(got, image)
  assert sensor == "s2"
  np.testing.assert_allclose(lonlat, (lon, lat), atol=1e-7)
  # Written by hand (tifffile, GeoKeys, no band descriptions): PixelIsPoint, the tie point at a pixel's middle.
  _write_geotiff(tmp_path / "b.tif", image, (x - 60 * 10, y + 60 * 10), 32633, raster_type=2)
  with pytest.raises(
    geotiff.GeoTiffError, match="b.tif: band descriptions .* do not name every band; give the band order with --bands"
  ):
    geotiff.read_geotiff(tmp_path / "b.tif")
  got, lonlat, _ = geotiff.read_geotiff(tmp_path / "b.tif", bands=list(S2_STORED_BANDS))
  np.testing.assert_array_equal(got, image)
  np.testing.assert_allclose(lonlat, (lon, lat), atol=1e-7)
  # Geographic raster (EPSG:4326), 0.001 degree pixels.
  _write_geotiff(tmp_path / "c.tif", image, (lon - 60.5e-3, lat + 60.5e-3), 4326, pixel=1e-3, model_type=2)
  np.testing.assert_allclose(geotiff.read_geotiff(tmp_path / "c.tif", bands=S2_STORED_BANDS)[1], (lon, lat), atol=1e-9)
  # A folder of GeoTIFFs: sensor and band order from the names, location from the georeferencing.
  (tmp_path / "b.tif").unlink()
  (tmp_path / "c.tif").unlink()
  item, img = FolderSource(tmp_path).read(0)
  assert item.sensor == "s2" and item.key == "a.tif" and img.shape == (120, 120, 12)
  np.testing.assert_array_equal(img, image)
  np.testing.assert_allclose((item.lon, item.lat), (lon, lat), atol=1e-7)
  # A band the encoder reads is missing: named.
  _write_named_geotiff(tmp_path / "a.tif", stored[..., :11], file_order[:11], transform, "EPSG:32633")
  with pytest.raises(geotiff.GeoTiffError, match=r"a.tif: missing band\(s\) \['B12'\]"):
    FolderSource(tmp_path).read(0)
  with pytest.raises(geotiff.GeoTiffError, match=r"--bands: \['B13'\] name no"):
    geotiff.parse_bands("B1,B13")


def test_geotiff_without_a_usable_crs_is_named(tmp_path):
  _write_geotiff(tmp_path / "x.tif", np.zeros((120, 120, 2), np.float32), (500000.0, 5800000.0), 32767)
  with pytest.raises(geotiff.GeoTiffError, match="x.tif: georeferenced in a coordinate system with no EPSG"):
    geotiff.read_geotiff(tmp_path / "x.tif", bands=["VV", "VH"])


# ---- a short training run on the synthetic archive (slow) -----------------------------------------


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """Train 60 steps on crisis_landmark/tiny (built into a temporary data dir), export with the CLI
  (band statistics read from the dataset), index the test split with the CLI."""
  pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")
  from closp_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from closp_jax import search as search_bin  # pylint: disable=import-outside-toplevel

  tmp = tmp_path_factory.mktemp("trained")
  data_dir, workdir = tmp / "data", tmp / "workdir"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  cmd = [
    sys.executable,
    "-m",
    "closp_jax.main",
    "--config",
    str(REPO / "configs" / "geoclosp.py"),
    "--workdir",
    str(workdir),
    "--config.data.name=crisis_landmark/tiny",
    f"--config.data.data_dir={data_dir}",
    "--config.data.batch_size=32",
    "--config.train.steps=60",
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=60",
    "--config.eval.final=False",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert json.loads((workdir / "config.json").read_text())["data"]["name"] == "crisis_landmark/tiny"
  model_dir = tmp / "model"
  export_lib.export_model(workdir, model_dir)
  index_dir = tmp / "index"
  assert (
    search_bin.main(
      [
        "closp-search",
        "index",
        "--model",
        str(model_dir),
        "--data",
        "crisis_landmark/tiny",
        "--split",
        "test",
        "--data_dir",
        str(data_dir),
        "--out",
        str(index_dir),
      ]
    )
    == 0
  )
  return {"data_dir": data_dir, "workdir": workdir, "model": model_dir, "index": index_dir}


@pytest.mark.slow
def test_trained_export_equals_the_trainer_on_the_archive(trained):
  """Exported functions on raw records == the model code on the trainer's eval batches (1e-5)."""
  import jax  # pylint: disable=import-outside-toplevel

  from closp_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.checkpoint import load_run_config  # pylint: disable=import-outside-toplevel
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel
  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel

  cfg = load_run_config(trained["workdir"])
  _, variables = export_lib.restore_variables(trained["workdir"], cfg)
  model = CLOSP(export_lib.model_config_of(cfg))
  m = load_exported(trained["model"])
  builder = pipeline.get_builder("crisis_landmark/tiny", data_dir=str(trained["data_dir"]), prepare=False)
  source = builder.as_data_source("test")
  for sensor in ("s2", "s1"):
    batch = next(pipeline.eval_iterator(builder, "test", sensor, batch_size=16, **pipeline.input_kwargs(cfg)))
    start = pipeline.sensor_range(builder, "test", sensor)[0]
    raw = np.stack([source[start + i]["image"] for i in range(16)])
    method = model.encode_s2 if sensor == "s2" else model.encode_s1
    want = np.asarray(jax.jit(lambda v, x, f=method: model.apply(v, x, method=f))(variables, batch["image"]))
    got = m.encode_image(raw, sensor)
    assert np.abs(got - want).max() <= 1e-5, sensor


@pytest.mark.slow
def test_class_queries_rank_far_above_the_class_frequency(trained):
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  idx = open_index(trained["index"])
  assert idx.manifest["source"]["split"] == "test" and len(idx) == 480
  m = load_exported(trained["model"])
  for cls in ("Water", "Built"):
    freq = float(np.mean([cls in labels for labels in idx.meta["labels"]]))
    res = search(idx, m, cls.lower(), k=10)
    p10 = float(np.mean([cls in r["labels"] for r in res]))
    assert p10 >= 0.5 and p10 >= 2.5 * freq, f"{cls}: precision@10 {p10} vs frequency {freq:.3f}"


@pytest.mark.slow
def test_trained_cli_query_png_has_one_tile_per_result(trained, tmp_path, capsys):
  from closp_jax import search as search_bin  # pylint: disable=import-outside-toplevel

  png = tmp_path / "flood.png"
  assert (
    search_bin.main(
      [
        "closp-search",
        "query",
        "--index",
        str(trained["index"]),
        "flooded area",
        "--k",
        "7",
        "--png",
        str(png),
        "--columns",
        "4",
      ]
    )
    == 0
  )
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 8 and lines[0].split()[0] == "rank"
  from PIL import Image  # pylint: disable=import-outside-toplevel

  img = np.asarray(Image.open(png).convert("RGB")).astype(int)
  cell_w, cell_h = 180 + 6, 180 + 34 + 6
  assert img.shape[:2] == (2 * cell_h + 6, 4 * cell_w + 6)
  tiles = [(6 + (i % 4) * cell_w, 6 + (i // 4) * cell_h) for i in range(8)]
  filled = [float(img[t : t + 180, l : l + 180].std()) > 1.0 for l, t in tiles]
  assert filled == [True] * 7 + [False]

"""Tests for the synthetic CrisisLandMark writer (closp_jax.data.synthetic and helpers)."""

import collections
import datetime as dt
import json
import subprocess
import sys

import h5py
import hdf5plugin  # also registers the Blosc filter for reading
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest

from closp_jax.data import geo
from closp_jax.data import labels as L
from closp_jax.data import synthetic as S
from closp_jax.data import synthetic_render as R
from closp_jax.data import synthetic_world as W

SHARDS = {
  "benv2s2_part1.h5",
  "benv2s2_part2.h5",
  "benv2s2_part3.h5",
  "benv2s2_part4.h5",
  "benv2s1_part1.h5",
  "benv2s1_part2.h5",
  "benv2s1_part3.h5",
  "benv2s1_part4.h5",
  "cabuar.h5",
  "sen12flood.h5",
  "mmflood.h5",
  "quakeset.h5",
}
# The release's layout: 12 S2 bands, every S1 source (VV, VH).
CHANNELS = {"benv2s2": 12, "cabuar": 12, "sen2flood": 12, "benv2s1": 2, "mmflood": 2, "sen1flood": 2, "quakeset": 2}


def _epsg(attrs):
  """The `crs` attribute as the dataset card types it: float32 of shape (1,)."""
  assert attrs["crs"].dtype == np.float32 and attrs["crs"].shape == (1,), attrs["crs"]
  return int(attrs["crs"][0])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
  return S.write_archive(tmp_path_factory.mktemp("syn") / "release", 40, 40, seed=3)


@pytest.fixture(scope="module")
def samples(archive):
  """key -> (image, coords, attrs) read through the master file's external links."""
  out = {}
  with h5py.File(archive / S.MASTER_FILE, "r") as f:
    for key in f:
      g = f[key]
      out[key] = (g["image"][()], g["coords"][()], dict(g.attrs))
  return out


def _metadata(folder):
  return pq.read_table(folder / S.METADATA_FILE).to_pydict()


def test_layout_and_external_links(archive):
  names = {p.name for p in archive.iterdir()}
  assert SHARDS | {S.MASTER_FILE, S.METADATA_FILE, S.QUERIES_FILE, "qrels"} <= names
  assert (archive / S.QRELS_FILE).is_file()
  assert not list(archive.parent.glob("release.tmp-*")), "temporary folder left behind"
  with h5py.File(archive / S.MASTER_FILE, "r") as f:
    assert len(f) == 80
    for key in f:
      link = f.get(key, getlink=True)
      assert isinstance(link, h5py.ExternalLink)
      assert link.filename in SHARDS and "/" not in link.filename  # relative, same folder
      assert link.path == "/" + key
      source = key.rsplit("_", 1)[0]
      assert link.filename.startswith(source if not source.startswith("sen") else "sen12flood")
  with h5py.File(archive / "benv2s2_part1.h5", "r") as f:
    plist = f[next(iter(f))]["image"].id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    assert hdf5plugin.BLOSC_ID in filters


def test_sample_dtypes_shapes_attrs(samples):
  counts = collections.Counter(k.rsplit("_", 1)[0] for k in samples)
  assert set(counts) == set(CHANNELS)
  assert sum(v for k, v in counts.items() if CHANNELS[k] == 12) == 40
  for key, (image, coords, attrs) in samples.items():
    source = key.rsplit("_", 1)[0]
    assert image.dtype == np.float32 and image.shape == (CHANNELS[source], 120, 120), key
    assert coords.dtype == np.float32 and coords.shape == (2, 120, 120), key
    assert geo.is_utm_epsg(_epsg(attrs)), (key, attrs["crs"])
    # timestamp: float32 (1) seconds since 1970 (the card's type), at the scene's date
    assert attrs["timestamp"].dtype == np.float32 and attrs["timestamp"].shape == (1,)
    moment = dt.datetime.fromtimestamp(float(attrs["timestamp"][0]), tz=dt.UTC)
    assert dt.datetime(2015, 1, 1, tzinfo=dt.UTC) < moment < dt.datetime(2025, 1, 1, tzinfo=dt.UTC), (key, moment)
    labels = [str(x) for x in attrs["labels"]]
    assert labels
    table = L.CORINE_TO_CLASS if source.startswith("benv2") else {c: c for c in L.CLASSES}
    assert all(x in table for x in labels), (key, labels)
    finite = image[np.isfinite(image)]
    assert finite.min() >= 0, key
    if CHANNELS[source] == 12:
      np.testing.assert_array_equal(finite, np.rint(finite))  # L2A digital numbers
      assert 50 < np.median(finite) < 9000, key
    else:
      assert 1e-4 < np.median(finite) < 3.0, key  # linear sigma0
      vv, vh = (np.nanmean(image[c]) for c in range(2))
      assert vv > vh, (key, vv, vh)  # stored (VV, VH): co-pol brighter
    # 10 m pixels, north up
    np.testing.assert_allclose(np.diff(coords[0, 0, :2].astype(np.float64)), [10.0], atol=0.6)
    np.testing.assert_allclose(np.diff(coords[1, :2, 0].astype(np.float64)), [-10.0], atol=0.6)


def _inside(lon, lat, places, margin=0.05):
  return any(
    p.lon[0] - margin <= lon <= p.lon[1] + margin and p.lat[0] - margin <= lat <= p.lat[1] + margin for p in places
  )


def test_crs_projects_centre_into_intended_region(samples):
  for key, (_, coords, attrs) in samples.items():
    source = W.SOURCE_BY_NAME[key.rsplit("_", 1)[0]]
    crs = _epsg(attrs)
    lon, lat = pyproj.Proj(crs)(float(coords[0, 60, 60]), float(coords[1, 60, 60]), inverse=True)
    assert _inside(lon, lat, source.places), (key, lon, lat)
    # the zone is the one that holds the point
    assert abs(lon - geo.utm_zone_central_lon(crs)) <= 3.0 + 1e-6, (key, lon, crs)
    assert (crs < 32700) == (lat >= 0)
    if source.name.startswith("benv2"):
      assert -11 < lon < 31 and 36 < lat < 70  # Europe


def test_crisis_labels_follow_their_source(samples):
  event = {
    "cabuar": "Burned Area",
    "sen2flood": "Flooded Area",
    "sen1flood": "Flooded Area",
    "mmflood": "Flooded Area",
    "quakeset": "Earthquake Damage",
  }
  for key, (_, _, attrs) in samples.items():
    source = key.rsplit("_", 1)[0]
    classes = L.map_labels([str(x) for x in attrs["labels"]], key)
    for crisis in ("Flooded Area", "Earthquake Damage", "Burned Area"):
      if crisis in classes:
        assert event.get(source) == crisis, (key, classes)
    if "Earthquake Damage" in classes:
      assert "Built" in classes


def test_metadata_parquet(archive, samples):
  table = pq.read_table(archive / S.METADATA_FILE)
  assert table.schema.names == ["key", "split", "labels"]
  labels_type = table.schema.field("labels").type
  assert pa.types.is_list(labels_type) and pa.types.is_string(labels_type.value_type)
  md = table.to_pydict()
  assert sorted(md["key"]) == sorted(samples)
  assert set(md["split"]) == {"train", "test"}
  assert 0.7 <= md["split"].count("test") / len(md["split"]) <= 0.9
  for key, labels in zip(md["key"], md["labels"]):
    assert labels == [str(x) for x in samples[key][2]["labels"]]


def test_queries_and_qrels(archive):
  md = _metadata(archive)
  test_keys = {k for k, s in zip(md["key"], md["split"]) if s == "test"}
  classes = {k: set(L.map_labels(v, k)) for k, v in zip(md["key"], md["labels"])}
  queries = [json.loads(line) for line in (archive / S.QUERIES_FILE).read_text().splitlines()]
  assert queries and all(set(q) == {"query_id", "text", "type"} for q in queries)
  assert {q["type"] for q in queries} <= {"land_cover", "crisis", "location"}
  assert "crisis" in {q["type"] for q in queries}
  qrels = collections.defaultdict(dict)
  for line in (archive / S.QRELS_FILE).read_text().splitlines():
    qid, zero, doc, rel = line.split()
    assert zero == "0" and doc in test_keys and rel in ("1", "2")
    qrels[qid][doc] = int(rel)
  for q in queries:
    want = {c for c in L.CLASSES if L.text_to_multihot(q["text"])[L.CLASSES.index(c)]}
    expected = {}
    for k in test_keys:
      hit = len(want & classes[k])
      if hit:
        expected[k] = 2 if hit == len(want) else 1
    assert qrels[q["query_id"]] == expected, q
    assert expected, q  # every query has relevant documents


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  a = S.write_archive(tmp_path / "a", 6, 6, seed=11)
  b = S.write_archive(tmp_path / "b", 6, 6, seed=11)
  c = S.write_archive(tmp_path / "c", 6, 6, seed=12)
  with h5py.File(a / S.MASTER_FILE) as fa, h5py.File(b / S.MASTER_FILE) as fb, h5py.File(c / S.MASTER_FILE) as fc:
    assert sorted(fa) == sorted(fb) == sorted(fc)
    for key in fa:
      assert fa[key]["image"][()].tobytes() == fb[key]["image"][()].tobytes(), key
      assert fa[key]["coords"][()].tobytes() == fb[key]["coords"][()].tobytes(), key
      assert not np.array_equal(fa[key]["image"][()], fc[key]["image"][()]), key
  assert _metadata(a) == _metadata(b)
  assert (a / S.QRELS_FILE).read_text() == (b / S.QRELS_FILE).read_text()


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="not empty"):
    S.write_archive(out, 2, 2, seed=0)
  assert (out / "keep.txt").exists()
  S.write_archive(out, 2, 2, seed=0, overwrite=True)
  assert not (out / "keep.txt").exists() and (out / S.MASTER_FILE).exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left
  with pytest.raises(ValueError, match="num_s2"):
    S.write_archive(tmp_path / "bad", -1, 2, seed=0)


def test_source_counts():
  for n2, n1 in ((40, 40), (4000, 4000), (3, 4), (0, 9)):
    counts = S.source_counts(n2, n1)
    assert sum(v for k, v in counts.items() if CHANNELS[k] == 12) == n2
    assert sum(v for k, v in counts.items() if CHANNELS[k] != 12) == n1
    if n2 >= 3:
      assert all(counts[s] >= 1 for s in ("benv2s2", "cabuar", "sen2flood"))
  assert S.source_counts(4000, 4000)["benv2s2"] == 3200


def test_cli_prints_summary(tmp_path):
  cmd = [sys.executable, "-m", "closp_jax.data.synthetic", "--out", str(tmp_path / "cli"), "--num_s2", "5"]
  proc = subprocess.run([*cmd, "--num_s1", "5", "--seed", "1"], capture_output=True, text=True, check=True)
  out = proc.stdout
  assert "benv2s2" in out and "train" in out and "test" in out
  assert out.strip().splitlines()[-1].split()[-1] == "10"
  missing = subprocess.run(cmd, capture_output=True, text=True)
  assert missing.returncode == 1 and "--num_s1 required" in missing.stderr


def test_nan_rate_about_one_percent():
  rng = np.random.default_rng(0)
  flags = [R.draw_scene(rng, W.SOURCES[0], i).nan_pixels for i in range(3000)]
  assert 0.004 < np.mean(flags) < 0.02
  scenes = [R.draw_scene(rng, W.SOURCES[0], i) for i in range(4)]
  scenes[1].nan_pixels = True
  for s in (0, 2, 3):
    scenes[s].nan_pixels = False
  image = R.render_s2(rng, scenes)
  assert np.isnan(image[1]).any() and 0 < np.isnan(image[1]).mean() < 0.02
  assert not np.isnan(image[[0, 2, 3]]).any()


def test_upsample_matches_interpolation_matrix():
  rng = np.random.default_rng(0)
  for n_in, n_out in ((40, 120), (4, 40), (7, 20)):
    x = rng.random((3, n_in, n_in)).astype(np.float32)
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    m = np.zeros((n_out, n_in))
    lo = np.floor(pos).astype(int)
    np.add.at(m, (np.arange(n_out), lo), 1 - (pos - lo))
    np.add.at(m, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), pos - lo)
    np.testing.assert_allclose(R.upsample(x, n_out), m @ x @ m.T, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ physics and signal
def _pure_scene(label, source="benv2s2", lat=47.0, month=7):
  """One-region scene of `label` (CORINE or class name) in mid-season."""
  day = dt.date(2017, month, 15)
  return R.Scene(
    key=f"{source}_0",
    source=source,
    labels=[label],
    recipes=[W.RECIPES[label]],
    areas=np.ones(1),
    place="test",
    lon=8.0,
    lat=lat,
    epsg=32632,
    x=4e5,
    y=5.2e6,
    timestamp=day.isoformat(),
    event=False,
    greenness=0.9,
    moisture=0.5,
    incidence=37.0,
    nan_pixels=False,
  )


def _band_medians(rng, labels):
  img = R.render_s2(rng, [_pure_scene(x) for x in labels])
  return {x: np.median(img[i].reshape(12, -1), axis=1) / 1e4 for i, x in enumerate(labels)}


def _db_medians(rng, labels, repeats=9):
  """Median over `repeats` scenes of each scene's median VV, VH in dB."""
  scenes = [_pure_scene(x, "benv2s1") for x in labels for _ in range(repeats)]
  img = R.render_s1(rng, scenes, ("VV", "VH")).reshape(len(labels), repeats, 2, -1)
  db = 10 * np.log10(np.median(img, axis=-1))
  return {x: np.median(db[i], axis=0) for i, x in enumerate(labels)}


def test_optical_physics():
  rng = np.random.default_rng(5)
  names = [
    "Water bodies",
    "Broad-leaved forest",
    "Continuous urban fabric",
    "Burnt areas",
    "Glaciers and perpetual snow",
    "Non-irrigated arable land",
  ]
  med = _band_medians(rng, names)
  b3, b4, b8, b11, b12 = 2, 3, 7, 10, 11
  nd = lambda a, b: (a - b) / (a + b)
  for n in names:
    assert np.all(med[n] >= 0)
  assert nd(med["Broad-leaved forest"][b8], med["Broad-leaved forest"][b4]) > 0.6  # NDVI
  assert med["Water bodies"][b8] < 0.03 and med["Water bodies"][b11] < 0.02
  assert nd(med["Water bodies"][b3], med["Water bodies"][b8]) > 0.3  # NDWI
  assert med["Continuous urban fabric"][b11] > med["Continuous urban fabric"][b8]
  assert nd(med["Burnt areas"][b8], med["Burnt areas"][b12]) < 0  # NBR
  assert nd(med["Glaciers and perpetual snow"][b3], med["Glaciers and perpetual snow"][b11]) > 0.6
  assert med["Broad-leaved forest"][b8] > 3 * med["Water bodies"][b8]
  # Stored in the release's order B1-B8, B8A, B9, B11, B12: the NIR plateau (B8A, index 8) stays
  # above the water-vapour band B9 (index 9) over vegetation.
  b8a, b9 = 8, 9
  for n in ("Broad-leaved forest", "Non-irrigated arable land"):
    assert med[n][b8a] > med[n][b9] * 1.1, (n, med[n])


def test_radar_physics_and_speckle():
  rng = np.random.default_rng(6)
  names = ["Water bodies", "Coniferous forest", "Continuous urban fabric", "Inland marshes"]
  med = _db_medians(rng, names)
  assert med["Water bodies"][0] < -14 and med["Water bodies"][0] < med["Coniferous forest"][0] - 5
  assert med["Continuous urban fabric"][0] > med["Coniferous forest"][0]
  for n in names:
    assert med[n][1] < med[n][0]  # cross-pol below co-pol
  assert med["Inland marshes"][0] - med["Inland marshes"][1] > 6  # double bounce: large VV-VH
  img = R.render_s1(rng, [_pure_scene("Water bodies", "benv2s1")], ("VV", "VH"))[0, 0]
  patch = img[40:80, 40:80]
  enl = patch.mean() ** 2 / patch.var()
  assert 2.5 < enl < 6.0, enl  # few-look gamma speckle
  swapped = R.render_s1(np.random.default_rng(1), [_pure_scene("Coniferous forest", "benv2s1")], ("VH", "VV"))[0]
  assert np.median(swapped[0]) < np.median(swapped[1])  # stored (VH, VV): VH first


def test_quakeset_pre_event_shows_intact_buildings():
  rng = np.random.default_rng(2)
  scenes = [_pure_scene("Earthquake Damage", "quakeset") for _ in range(8)]
  img = R.render_s1(rng, scenes, ("VV_pre", "VH_pre", "VV", "VH"))
  db = 10 * np.log10(np.median(img.reshape(8, 4, -1), axis=-1))
  assert np.all(db[:, 0] > db[:, 2] + 1.0), db  # rubble scatters less VV than standing buildings
  scenes = [_pure_scene("Trees", "quakeset") for _ in range(8)]
  db = 10 * np.log10(np.median(R.render_s1(rng, scenes, ("VV_pre", "VH_pre", "VV", "VH")).reshape(8, 4, -1), -1))
  assert np.all(np.abs(db[:, 0] - db[:, 2]) < 1.5), db  # no damage: little change


def _features(images, sensor):
  b = images.shape[0]
  x = np.nan_to_num(images, nan=0.0 if sensor == "s2" else 1e-6).reshape(b, images.shape[1], -1)
  x = np.log(x + 1.0) if sensor == "s2" else 10 * np.log10(np.maximum(x, 1e-6))
  return np.concatenate([x.mean(-1), np.percentile(x, 10, -1), np.percentile(x, 90, -1)], 1)


def _render(source, n, seed):
  rng = np.random.default_rng(seed)
  src = W.SOURCE_BY_NAME[source]
  scenes = [R.draw_scene(rng, src, i) for i in range(n)]
  if src.sensor == "s2":
    images = R.render_s2(rng, scenes)
  else:
    images = R.render_s1(rng, scenes, ("VV", "VH"))
  y = np.stack([L.labels_to_multihot(s.labels, s.key) for s in scenes])
  return _features(images, src.sensor), y


def _nearest_centroid_accuracy(x, positive, seed=0):
  """Held-out accuracy of a two-centroid classifier (balanced classes by construction)."""
  rng = np.random.default_rng(seed)
  pos, neg = rng.permutation(np.flatnonzero(positive)), rng.permutation(np.flatnonzero(~positive))
  n = min(len(pos), len(neg))
  pos, neg = pos[:n], neg[:n]
  h = n // 2
  mu, sd = x.mean(0), x.std(0) + 1e-9
  z = (x - mu) / sd
  c1, c0 = z[pos[:h]].mean(0), z[neg[:h]].mean(0)
  test = np.r_[pos[h:], neg[h:]]
  truth = np.r_[np.ones(n - h, bool), np.zeros(n - h, bool)]
  pred = ((z[test] - c1) ** 2).sum(1) < ((z[test] - c0) ** 2).sum(1)
  return (pred == truth).mean(), n


def _probe_auc(x, y):
  """Mean held-out AUC over classes of a ridge-regression probe (train on half)."""
  n = len(x)
  z = np.c_[(x - x.mean(0)) / (x.std(0) + 1e-9), np.ones(n)]
  tr, te = np.arange(n) < n // 2, np.arange(n) >= n // 2
  w = np.linalg.solve(z[tr].T @ z[tr] + 10 * np.eye(z.shape[1]), z[tr].T @ (2 * y[tr] - 1))
  score, aucs = z[te] @ w, []
  for c in range(y.shape[1]):
    t = y[te, c] > 0
    if t.sum() >= 5 and (~t).sum() >= 5:
      r = np.argsort(np.argsort(score[:, c]))
      aucs.append((r[t].mean() - (t.sum() - 1) / 2) / (~t).sum())
  return float(np.mean(aucs))


@pytest.fixture(scope="module")
def probe_data():
  # 960 patches: about 75 water-xor-trees pairs, so the accuracy's sampling error (about 0.045)
  # stays well inside the margin above the floors
  return {"s2": _render("benv2s2", 960, 21), "s1": _render("benv2s1", 960, 22)}


def test_water_vs_trees_is_learnable(probe_data):
  # chance is 0.5; water often covers only a few percent of a "water" patch
  for sensor, floor in (("s2", 0.75), ("s1", 0.65)):
    x, y = probe_data[sensor]
    water, trees = y[:, 3] > 0, y[:, 0] > 0
    keep = water ^ trees
    acc, n = _nearest_centroid_accuracy(x[keep], water[keep])
    assert n >= 25, n
    assert acc > floor, (sensor, acc, n)


def test_sar_is_harder_than_optical_but_not_chance(probe_data):
  auc_s2 = _probe_auc(*probe_data["s2"])
  auc_s1 = _probe_auc(*probe_data["s1"])
  assert auc_s2 > auc_s1 + 0.05, (auc_s2, auc_s1)
  assert auc_s1 > 0.6, auc_s1
  assert auc_s2 < 0.97, auc_s2  # not trivially separable


# --------------------------------------------------------------------------- the world's geography


def test_snowline_falls_with_latitude_and_drops_in_the_local_winter():
  assert 5000 < W.snowline_m(0.0) < 5700
  assert 2800 < W.snowline_m(46.3) < 3200  # the Alps
  assert 900 < W.snowline_m(68.0) < 1300  # Lapland
  lats = np.arange(0, 80, 5.0)
  assert np.all(np.diff([W.snowline_m(x) for x in lats]) < 0)
  assert W.snowline_m(-30.0) == W.snowline_m(30.0)
  jan, jul = dt.date(2018, 1, 15), dt.date(2018, 7, 15)
  for day in (jan, jul):  # no seasonal snow in the tropics
    assert W.seasonal_snowline_m(10.0, day) == W.snowline_m(10.0)
  assert W.seasonal_snowline_m(62.0, jan) < 0 < W.seasonal_snowline_m(62.0, jul) == W.snowline_m(62.0)
  assert W.seasonal_snowline_m(-50.0, jul) < 0 < W.seasonal_snowline_m(-50.0, jan)


def _draw(source_name, n, seed=0):
  rng = np.random.default_rng(seed)
  source = W.SOURCE_BY_NAME[source_name]
  return source, [R.draw_scene(rng, source, i) for i in range(n)]


def test_bigearthnet_scenes_follow_their_zone_and_the_snowline():
  source, scenes = _draw("benv2s2", 1500)
  places = {p.name: p for p in source.places}
  glaciers = 0
  for s in scenes:
    place = places[s.place]
    assert place.lon[0] <= s.lon <= place.lon[1] and place.lat[0] <= s.lat <= place.lat[1]
    assert place.elevation[0] <= s.elevation <= place.elevation[1]
    prior = W.local_prior(place, s.lat, s.elevation)
    assert all(prior[label] > 0 for label in s.labels), (s.place, s.labels)
    if W.GLACIER in s.labels:
      glaciers += 1
      assert s.elevation >= W.snowline_m(s.lat)
    # never under seasonal snow (BigEarthNet left such patches out)
    assert not W.seasonal_snowline_m(s.lat, s.day) <= s.elevation < W.snowline_m(s.lat)
  assert glaciers > 5


def test_rare_land_cover_lives_in_a_few_zones():
  for label in W.RARE_CORINE:
    zones = [p.name for p in W.BENV2_PLACES if p.prior.get(label, 0) > 0]
    assert 1 <= len(zones) <= 4, (label, zones)
  homes = {
    W.GLACIER: "Alps",
    "Rice fields": "Tagus",
    "Moors and heathland": ("Lapland", "Ireland"),
    "Burnt areas": "Portugal",
    "Coastal lagoons": "Curonian",
    "Salines": "Tagus",
  }
  for label, home in homes.items():
    home = (home,) if isinstance(home, str) else home
    assert all(any(h in p.name for h in home) for p in W.BENV2_PLACES if p.prior.get(label, 0) > 0), label
  for label in W.CORINE_BASE_PRIOR:  # the widespread ones are in every zone's reach
    assert sum(p.prior.get(label, 0) > 0 for p in W.BENV2_PLACES) >= len(W.BENV2_PLACES) // 2, label


@pytest.mark.parametrize("name", ["cabuar", "sen2flood", "mmflood", "quakeset"])
def test_crises_strike_after_the_event_within_reach_of_the_footprint(name):
  source, scenes = _draw(name, 600, seed=5)
  places = {p.name: p for p in source.places}
  shown = 0
  for s in scenes:
    place = places[s.place]
    classes = L.map_labels(s.labels, s.key)
    near = W.distance_km(s.lon, s.lat, place.footprint.line) <= place.footprint.reach_km
    after = s.day > place.date
    assert (source.event_label in classes) == (after and near), (s.key, s.day, place.date)
    shown += source.event_label in classes
    if source.event_label == "Earthquake Damage" and near and after:
      assert "Built" in classes
    assert ("Snow and Ice" in classes) == (s.elevation >= W.seasonal_snowline_m(s.lat, s.day))
  assert 0.55 < shown / len(scenes) < 0.9


def test_event_settings():
  kinds = {"cabuar": "fire", "sen2flood": "river", "mmflood": "river", "sen1flood": "river", "quakeset": "fault"}
  for name, kind in kinds.items():
    for place in W.SOURCE_BY_NAME[name].places:
      fp = place.footprint
      assert fp.kind == kind and fp.reach_km > 0, place.name
      for lon, lat in fp.line:
        assert place.lon[0] <= lon <= place.lon[1] and place.lat[0] <= lat <= place.lat[1], place.name
      if kind == "fire":
        assert place.date.month in W.FIRE_SEASON_MONTHS, place.name
      if kind == "river":
        assert place.elevation[1] - place.elevation[0] <= 300, place.name  # plains and deltas
  assert W.distance_km(10.0, 45.0, ((10.0, 45.0),)) == 0.0
  assert W.distance_km(10.0, 45.1, ((9.0, 45.0), (11.0, 45.0))) == pytest.approx(11.06, abs=0.05)

"""crisis_landmark builder: the `full` config built from a tiny release written with h5py."""

import json
import os
import re
import subprocess
import sys

import h5_archive
import numpy as np
import pytest
import tensorflow_datasets as tfds
from pyproj import CRS, Proj

from closp_jax.data import crisis_landmark, preprocess, queries

# The 13 bands the SSL4EO-S12 encoders read: ESA order (TorchGeo's `_sentinel2_toa_bands`).
ESA_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
# Facts about the CORINE -> class table from the reference loader, and the class order.
CLASSES = (
  "Trees",
  "Crops",
  "Shrub and Scrub",
  "Water",
  "Grass",
  "Built",
  "Flooded Vegetation",
  "Bare",
  "Snow and Ice",
  "Flooded Area",
  "Earthquake Damage",
  "Burned Area",
)
EXPECTED_TEXT = {
  "benv2s2_0000": "water. flooded vegetation",  # Rice fields, Sea and ocean
  "benv2s2_0001": "trees",  # Agro-forestry areas
  "benv2s2_0002": "bare. burned area",  # Mineral extraction sites, Burnt areas
  "benv2s1_0002": "water. burned area",  # Sea and ocean, Burnt areas
  "cabuar_0000": "trees. burned area",
  "quakeset_0000": "built. earthquake damage",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  builder, expected, release = h5_archive.build_full(tmp_path_factory.mktemp("full"))
  source = builder.as_data_source()
  records = {split: [source[split][i] for i in range(len(source[split]))] for split in ("train", "validation", "test")}
  return builder, expected, release, records


def _s(v):
  return v.decode() if isinstance(v, bytes) else v


def _by_key(records):
  return {_s(r["key"]): r for split in records.values() for r in split}


def test_splits_follow_metadata_and_validation_stays_in_test(built):
  builder, expected, _, records = built
  for split in ("train", "test"):
    keys = [_s(r["key"]) for r in records[split]]
    assert sorted(keys) == sorted(k for k, e in expected.items() if e["split"] == split)
  val = [_s(r["key"]) for r in records["validation"]]
  test = {_s(r["key"]) for r in records["test"]}
  assert val and set(val) <= test
  # validation_min_per_sensor (128) exceeds this tiny corpus: all of it is drawn.
  assert set(val) == test
  assert builder.info.metadata["validation"]["also_in_test"] is True
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
    s: len(records[s]) for s in records
  }


def test_records_sorted_s2_then_s1_with_ranges(built):
  builder, _, _, records = built
  for split, recs in records.items():
    sensors = [_s(r["sensor"]) for r in recs]
    n2 = sensors.count("s2")
    assert sensors == ["s2"] * n2 + ["s1"] * (len(sensors) - n2)
    keys = [_s(r["key"]) for r in recs]
    assert keys[:n2] == sorted(keys[:n2]) and keys[n2:] == sorted(keys[n2:])
    assert builder.info.metadata["sensor_ranges"][split] == {"s2": [0, n2], "s1": [n2, len(recs)]}


def test_features_dtypes_and_shapes(built):
  _, expected, _, records = built
  for key, r in _by_key(records).items():
    exp = expected[key]
    assert _s(r["source"]) == exp["source"] and _s(r["sensor"]) == exp["sensor"]
    channels = 13 if exp["sensor"] == "s2" else 2
    assert r["image"].shape == (120, 120, channels) and r["image"].dtype == np.float32
    assert r["labels"].shape == (12,) and r["labels"].dtype == np.float32
    assert r["lonlat"].shape == (2,) and r["lonlat"].dtype == np.float32
    assert _s(r["timestamp"]) == exp["timestamp"]
    assert not np.isnan(r["image"]).any()


def test_corine_mapping_text_and_multihot(built):
  _, _, _, records = built
  recs = _by_key(records)
  for key, text in EXPECTED_TEXT.items():
    assert _s(recs[key]["text"]) == text
    hot = [CLASSES[i] for i in np.flatnonzero(recs[key]["labels"])]
    assert [c.lower() for c in hot] == text.split(". ")


def test_s2_zero_b10_inserted_at_index_10(built):
  _, expected, _, records = built
  recs = _by_key(records)
  for key in ("benv2s2_0000", "cabuar_0001", "sen2flood_0000"):
    stored, out = expected[key]["stored"], recs[key]["image"]
    for band in range(13):
      if band < 10:
        np.testing.assert_array_equal(out[:, :, band], stored[band])
      elif band == 10:
        assert not out[:, :, 10].any()
      else:
        np.testing.assert_array_equal(out[:, :, band], stored[band - 1])


def test_s2_bands_land_in_esa_order_with_zero_b10(built):
  """A sample stored with one constant per band (its wavelength): each output band holds its own
  band's constant, in the encoders' ESA order, and B10 is zero."""
  _, _, _, records = built
  out = _by_key(records)[h5_archive.BAND_PROBE_KEY]["image"]
  got = {band: np.unique(out[:, :, j]).tolist() for j, band in enumerate(ESA_BANDS)}
  want = {band: [0.0 if band == "B10" else float(h5_archive.WAVELENGTH_NM[band])] for band in ESA_BANDS}
  assert got == want
  assert preprocess.S2_BANDS == ESA_BANDS and preprocess.S2_ZERO_BAND == 10
  assert preprocess.S2_STORED_BANDS == h5_archive.STORED_S2


def test_s1_release_rules_keep_stored_vv_vh(built):
  builder, expected, _, records = built
  recs = _by_key(records)
  s1 = [k for k, e in expected.items() if e["sensor"] == "s1"]
  assert {expected[k]["source"] for k in s1} == {"benv2s1", "mmflood", "sen1flood", "quakeset"}
  for key in s1:
    out, stored = recs[key]["image"], expected[key]["stored"]
    np.testing.assert_array_equal(out[:, :, 1], stored[1])  # VH as stored, no flip
    valid = np.isfinite(stored[0])
    np.testing.assert_array_equal(out[:, :, 0][valid], stored[0][valid])
    assert out[:, :, 0].mean() > out[:, :, 1].mean()
  md = builder.info.metadata
  assert md["s1_rules"] == "release"
  assert md["s1_vv_above_vh"] == {
    "benv2s1": {"samples": 3, "vv_above_vh": 1.0},
    "mmflood": {"samples": 2, "vv_above_vh": 1.0},
    "quakeset": {"samples": 2, "vv_above_vh": 1.0},
    "sen1flood": {"samples": 2, "vv_above_vh": 1.0},
  }


def test_card_attribute_types_read(built):
  """The fixture's archive carries the dataset card's types: crs float32 (1), timestamp float32
  (1) (NaN or absent where unavailable), labels list[str]."""
  import h5py

  _, expected, release, records = built
  recs = _by_key(records)
  with h5py.File(release / "crisislandmark.h5", "r") as master:
    attrs = master["benv2s2_0000"].attrs
    assert attrs["crs"].dtype == np.float32 and attrs["crs"].shape == (1,)
    assert attrs["timestamp"].dtype == np.float32 and attrs["timestamp"].shape == (1,)
    assert [str(x) for x in attrs["labels"]] == ["Rice fields", "Sea and ocean"]
    assert np.isnan(master[h5_archive.NAN_TIMESTAMP_KEY].attrs["timestamp"][0])
    assert "timestamp" not in master[h5_archive.NO_TIMESTAMP_KEY].attrs
  assert _s(recs["benv2s2_0000"]["timestamp"]) == "2021-04-01T00:00:00Z"
  assert _s(recs["benv2s1_0001"]["timestamp"]) == "2021-04-02T16:23:28Z"  # T0 + 128 (977 + 159) s
  for key in (h5_archive.NAN_TIMESTAMP_KEY, h5_archive.NO_TIMESTAMP_KEY):
    assert _s(recs[key]["timestamp"]) == ""
  assert all(v["differ"] == 0 and v["checked"] > 0 for v in built[0].info.metadata["labels_attribute"].values())


@pytest.mark.parametrize("attr_types", ["int", "string"])
def test_int_and_string_attribute_types_build(tmp_path, attr_types):
  builder, expected, _ = h5_archive.build_full(tmp_path, attr_types=attr_types)
  source = builder.as_data_source()
  recs = {}
  for split in ("train", "test"):
    keys = [_s(source[split][i]["key"]) for i in range(len(source[split]))]
    assert sorted(keys) == sorted(k for k, e in expected.items() if e["split"] == split)
    recs.update({_s(source[split][i]["key"]): source[split][i] for i in range(len(source[split]))})
  for key, exp in expected.items():
    np.testing.assert_allclose(recs[key]["lonlat"], exp["lonlat"], atol=1e-4)
    assert _s(recs[key]["timestamp"]) == exp["timestamp"], key
  assert _s(recs["benv2s2_0000"]["timestamp"]) == (
    "2021-04-01T00:00:00Z" if attr_types == "int" else "2021-04-01T00:00:00"
  )


def _prepared_files(data_dir):
  return sorted(
    str(p.relative_to(data_dir))
    for p in data_dir.rglob("*")
    if p.name == "dataset_info.json" or "incomplete" in p.name or p.suffix == ".tmp"
  )


@pytest.mark.parametrize(
  "swapped,samples,hint",
  [
    ("mmflood", 2, "add a rule set to preprocess.S1_RULE_SETS that names mmflood's stored order"),
    ("benv2s1", 3, "build with the S1 rule set 'pre_release', which reads benv2s1 as stored (VH, VV)"),
  ],
)
def test_swapped_s1_source_is_refused_and_a_fixed_archive_builds(tmp_path, swapped, samples, hint):
  with pytest.raises(preprocess.ChannelOrderError) as err:
    h5_archive.build_full(tmp_path, swap_s1=swapped)
  message = str(err.value)
  print("refused swap:", message)
  assert f"S1 source '{swapped}'" in message and f"only 0 of {samples} samples (0%" in message
  assert f"S1 rule set 'release', which reads {swapped} as stored (VV, VH)" in message
  assert hint in message
  # Nothing that looks like a dataset is left behind, and the builder does not see one.
  data = tmp_path / "data"
  assert _prepared_files(data) == []
  assert list((data / "crisis_landmark" / "full").iterdir()) == []  # no version folder
  assert not tfds.builder("crisis_landmark/full", data_dir=str(data)).is_prepared()
  # The archive fixed (written again in the release's order): the same data_dir builds.
  h5_archive.write_archive(tmp_path / "release")
  builder = tfds.builder("crisis_landmark/full", data_dir=str(data))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "release")))
  assert builder.is_prepared() and builder.info.splits["test"].num_examples == 8
  assert builder.info.metadata["s1_vv_above_vh"][swapped]["vv_above_vh"] == 1.0


def test_pre_release_rules_build_a_pre_release_archive(tmp_path):
  builder, expected, _ = h5_archive.build_full(tmp_path, config="full_pre_release", layout="pre_release")
  source = builder.as_data_source()
  recs = {_s(r["key"]): r for split in ("train", "test") for r in (source[split][i] for i in range(len(source[split])))}
  for key, exp in expected.items():
    if exp["sensor"] != "s1":
      continue
    out = recs[key]["image"]
    assert out.shape == (120, 120, 2)
    np.testing.assert_array_equal(out[:, :, 1], exp["vh"])
    valid = np.isfinite(exp["vv"])
    np.testing.assert_array_equal(out[:, :, 0][valid], exp["vv"][valid])
    assert out[:, :, 0].mean() > out[:, :, 1].mean(), key
  # benv2s1 stored (VH, VV) is flipped; QuakeSet keeps its post-event pair [2:].
  np.testing.assert_array_equal(recs["benv2s1_0000"]["image"][:, :, 0], expected["benv2s1_0000"]["stored"][1])
  np.testing.assert_array_equal(
    np.moveaxis(recs["quakeset_0001"]["image"], -1, 0), expected["quakeset_0001"]["stored"][2:]
  )
  assert builder.info.metadata["s1_rules"] == "pre_release"


def test_pre_release_archive_under_release_rules_names_key_and_shape(tmp_path):
  with pytest.raises(preprocess.SampleFormatError) as err:
    h5_archive.build_full(tmp_path, layout="pre_release")
  message = str(err.value)
  print("refused channel count:", message)
  assert "quakeset.h5:/quakeset_0000" in message and "(4, 120, 120)" in message
  assert "expected (2, 120, 120): (VV, VH) under the S1 rule set 'release'" in message
  assert "s1_rules='pre_release'" in message and "crisis_landmark/full_pre_release" in message
  assert _prepared_files(tmp_path / "data") == []


@pytest.mark.parametrize("units", ["dB", "linear"])
def test_vv_above_vh_check_per_source(units):
  vv, vh = (-9.0, -16.0) if units == "dB" else (0.12, 0.025)
  check = preprocess.S1OrderCheck("release")
  for i in range(preprocess.S1_CHECK_FIRST_AT * 2):
    check.add("benv2s1", f"benv2s1_{i}", (vv, vh) if i % 10 else (vh, vv))  # 90% VV > VH
  assert check.finish() == {"benv2s1": {"samples": 128, "vv_above_vh": 115 / 128}}
  with pytest.raises(preprocess.ChannelOrderError) as err:
    for i in range(preprocess.S1_CHECK_FIRST_AT):
      check.add("sen1flood", f"sen1flood_{i}", (vh, vv))
  # Refused as soon as the source has S1_CHECK_FIRST_AT samples, before the end of the build.
  assert i == preprocess.S1_CHECK_FIRST_AT - 1
  assert re.search(
    r"S1 source 'sen1flood': VV is brighter than VH in only 0 of 64 samples \(0%, "
    r"expected at least 80%\) after the S1 rule set 'release'",
    str(err.value),
  )
  assert "build with the S1 rule set 'pre_release', which reads sen1flood as stored (VH, VV)" in (str(err.value))
  check.add("mmflood", "mmflood_0", None)  # no finite value: not counted
  assert "mmflood" not in check.samples


def test_unknown_s1_rule_set_names_the_known_ones():
  config = crisis_landmark.CrisisLandmarkConfig(name="full_typo", s1_rules="prerelease")
  with pytest.raises(ValueError, match="unknown S1 rule set 'prerelease': expected one of release, pre_release"):
    tfds.builder("crisis_landmark", config=config)


@pytest.mark.parametrize(
  "value",
  [
    np.array([32634.0], np.float32),
    32634.0,
    np.float64(32634.0),
    32634,
    np.int32(32634),
    "EPSG:32634",
    "32634",
    " 32634.0 ",
    b"EPSG:32634",
    np.array([b"32634"]),
    pytest.param(CRS.from_epsg(32634).to_wkt(), id="wkt"),
  ],
)
def test_crs_attribute_types(value):
  assert CRS.from_user_input(preprocess.parse_crs(value, "k")) == CRS.from_epsg(32634)


@pytest.mark.parametrize(
  "value,why",
  [
    (np.array([32634.5], np.float32), "not an integral number"),
    (float("nan"), "not an integral"),
    (True, "expected an EPSG code"),
    (-5, "expected an EPSG code"),
    ("", "is empty"),
    (np.array([32634.0, 32633.0]), "has shape (2,)"),
  ],
)
def test_bad_crs_attribute_names_key_and_value(value, why):
  with pytest.raises(preprocess.SampleFormatError) as err:
    preprocess.parse_crs(value, "cabuar_0007")
  assert "sample 'cabuar_0007': attribute 'crs'" in str(err.value) and why in str(err.value)


@pytest.mark.parametrize(
  "value,text",
  [
    (np.array([1617235200.0], np.float32), "2021-04-01T00:00:00Z"),
    (np.array([np.nan], np.float32), ""),
    (None, ""),
    (np.array([], np.float32), ""),
    (np.int64(1617235200), "2021-04-01T00:00:00Z"),
    (1617235200.4, "2021-04-01T00:00:00Z"),
    ("2021-04-01T10:30:00", "2021-04-01T10:30:00"),
    (b"2021-04-01", "2021-04-01"),
    (" NaN ", ""),
    ("1617235200", "2021-04-01T00:00:00Z"),
  ],
)
def test_timestamp_attribute_types(value, text):
  assert preprocess.parse_timestamp(value, "k") == text


def test_timestamp_outside_sentinel_era_is_an_error():
  with pytest.raises(
    preprocess.SampleFormatError,
    match=r"sample 'quakeset_0003': attribute "
    r"'timestamp' is 20210401.0, .* outside 2014-2100",
  ):
    preprocess.parse_timestamp(np.array([20210401.0]), "quakeset_0003")


@pytest.mark.parametrize(
  "value",
  [
    np.array(["Water", "Crops"], dtype=object),
    np.array([b"Water", b"Crops"]),
    ["Water", "Crops"],
    [b"Water", "Crops"],
    np.array(["Water", "Crops"]),
  ],
)
def test_labels_attribute_types(value):
  assert preprocess.parse_labels(value, "k") == ["Water", "Crops"]
  assert preprocess.parse_labels(b"Water", "k") == preprocess.parse_labels("Water", "k") == ["Water"]


def test_nans_replaced_and_counted(built):
  builder, expected, _, records = built
  recs = _by_key(records)
  s2 = recs["benv2s2_0001"]["image"]  # NaNs at band 0, rows :3, cols :5
  assert (s2[:3, :5, 0] == 0).all() and expected["benv2s2_0001"]["split"] == "test"
  s1 = recs["mmflood_0000"]["image"]
  np.testing.assert_array_equal(s1[:3, :5, 0], np.float32(1e-6))
  nan = builder.info.metadata["nan_replaced"]
  assert nan["test"]["values"] == {"s2": 15, "s1": 0}
  assert nan["train"]["values"] == {"s2": 0, "s1": 15}
  assert nan["train"]["samples"] == {"s2": 0, "s1": 1}


def test_lonlat_is_centre_pixel_in_degrees(built):
  _, expected, release, records = built
  import h5py

  with h5py.File(release / "crisislandmark.h5", "r") as master:
    for key, r in _by_key(records).items():
      lon, lat = expected[key]["lonlat"]
      np.testing.assert_allclose(r["lonlat"], [lon, lat], atol=1e-4)
      # As the reference loader computes it: pyproj.Proj(crs) inverse of coords[:, 60, 60].
      group = master[key]
      x, y = group["coords"][:, 60, 60]
      crs = np.asarray(group.attrs["crs"]).reshape(()).item()  # the card's float32 (1)
      ref = Proj(int(crs))(x, y, inverse=True)
      np.testing.assert_allclose(r["lonlat"], ref, atol=1e-4)


def test_metadata_texts_counts_and_band_stats(built):
  builder, expected, _, records = built
  md = builder.info.metadata
  assert md["texts"] == sorted({_s(r["text"]) for split in records.values() for r in split})
  assert md["counts"]["train"]["sources"] == {
    src: sum(1 for e in expected.values() if e["source"] == src and e["split"] == "train")
    for src in sorted({e["source"] for e in expected.values()})
  }
  for sensor in ("s2", "s1"):
    images = np.stack([r["image"] for r in records["train"] if _s(r["sensor"]) == sensor])
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(md["band_stats"][sensor]["mean"], flat.mean(0), rtol=1e-9)
    np.testing.assert_allclose(md["band_stats"][sensor]["std"], flat.std(0), rtol=1e-6, atol=1e-9)
  assert md["band_stats"]["s2"]["std"][10] == 0.0


def test_queries_and_qrels_stored_with_dataset(built):
  builder, _, _, _ = built
  assert [q["query_id"] for q in queries.load_queries(builder)] == ["q1", "q2"]
  assert queries.load_queries(builder)[0] == {"query_id": "q1", "text": "flooded area", "type": "crisis"}
  qrels = queries.load_qrels(builder)
  assert qrels == {"q1": {"sen1flood_0001": 2, "mmflood_0001": 2, "sen2flood_0001": 1}, "q2": {"benv2s2_0003": 1}}


def test_reopened_builder_restores_metadata(built):
  builder, _, _, _ = built
  again = tfds.builder("crisis_landmark/full", data_dir=builder.data_dir_root)
  assert again.is_prepared()
  assert again.info.metadata["texts"] == builder.info.metadata["texts"]
  assert again.info.metadata["band_stats"] == builder.info.metadata["band_stats"]


def test_small_shards_keep_record_order(built, tmp_path):
  builder, _, release, records = built
  config = crisis_landmark.CrisisLandmarkConfig(name="full_small_shards", shard_bytes=200_000)
  sharded = tfds.builder("crisis_landmark", config=config, data_dir=str(tmp_path))
  sharded.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(release)))
  assert sharded.info.splits["test"].num_shards > 1
  source = sharded.as_data_source()
  for split, recs in records.items():
    again = [source[split][i] for i in range(len(source[split]))]
    assert [r["key"] for r in again] == [r["key"] for r in recs]
    np.testing.assert_array_equal(again[-1]["image"], recs[-1]["image"])


def test_max_examples_per_split(built, tmp_path):
  _, _, release, _ = built
  limited = tfds.builder("crisis_landmark/full", data_dir=str(tmp_path))
  limited.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(release), max_examples_per_split=3)
  )
  assert {s: limited.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
    "train": 3,
    "validation": 3,
    "test": 3,
  }
  md = limited.info.metadata
  assert md["sensor_ranges"]["train"] == {"s2": [0, 1], "s1": [1, 3]}
  assert md["counts"]["test"]["sensors"] == {"s2": 1, "s1": 2}


def test_only_array_record():
  with pytest.raises(ValueError, match="ArrayRecord only"):
    tfds.builder("crisis_landmark/full", file_format="tfrecord")


def test_missing_release_file_lists_expected_files(tmp_path):
  h5_archive.write_archive(tmp_path / "release")
  os.remove(tmp_path / "release" / "metadata.parquet")
  builder = tfds.builder("crisis_landmark/full", data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError) as err:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "release")))
  message = str(err.value)
  assert "lacks metadata.parquet" in message
  for name in crisis_landmark.RELEASE_FILES:
    assert name in message


def test_missing_shard_names_it(tmp_path):
  h5_archive.write_archive(tmp_path / "release")
  os.remove(tmp_path / "release" / "quakeset.h5")
  builder = tfds.builder("crisis_landmark/full", data_dir=str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match="quakeset.h5"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "release")))


@pytest.mark.parametrize("bad", ["cabuar_0000", "benv2s1_0001"])
def test_wrong_channel_count_names_key_and_shape(tmp_path, bad):
  with pytest.raises(preprocess.SampleFormatError) as err:
    h5_archive.build_full(tmp_path, bad_shape_key=bad)
  channels = 13 if bad.startswith("cabuar") else 3
  assert bad in str(err.value) and f"({channels}, 120, 120)" in str(err.value)
  assert ("the 12 stored S2 bands" if channels == 13 else "under the S1 rule set 'release'") in (str(err.value))


def test_preprocess_rejects_wrong_image_size():
  with pytest.raises(preprocess.SampleFormatError, match=r"'mmflood_1'.*\(2, 64, 64\)"):
    preprocess.preprocess_image(np.zeros((2, 64, 64), np.float32), "mmflood_1", "mmflood")


def test_unknown_source_is_an_error():
  with pytest.raises(preprocess.SampleFormatError, match="landsat_0001"):
    preprocess.source_of_key("landsat_0001")


def _tensorflow_installed() -> bool:
  import importlib.util

  return importlib.util.find_spec("tensorflow") is not None


@pytest.mark.parametrize("entry", ["closp_jax", "tfds"])
def test_build_from_command_line(tmp_path, entry):
  if entry == "tfds" and not _tensorflow_installed():
    pytest.skip("the `tfds` command imports TensorFlow at start-up; not installed here")
  h5_archive.write_archive(tmp_path / "release")
  if entry == "tfds":
    cmd = [
      sys.executable,
      "-m",
      "tensorflow_datasets.scripts.cli.main",
      "build",
      "--imports",
      "closp_jax.data.crisis_landmark",
    ]
  else:
    cmd = [sys.executable, "-m", "closp_jax.data.pipeline"]
  cmd += ["crisis_landmark/full", "--manual_dir", str(tmp_path / "release"), "--data_dir", str(tmp_path / "data")]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "data" / "crisis_landmark" / "full" / str(crisis_landmark.CrisisLandmark.VERSION)
  assert (out / "queries.jsonl").is_file() and (out / "qrels" / "test.qrels").is_file()
  info = json.loads((out / "dataset_info.json").read_text())
  assert {s["name"] for s in info["splits"]} == {"train", "validation", "test"}
  # Counts per split, sensor and source are printed.
  assert "crisis_landmark/full train: 9 samples | s2 4 (benv2s2 2, cabuar 1, sen2flood 1)" in (
    proc.stdout + proc.stderr
  ).replace("\r", "\n")


def test_qrels_beir_tsv_and_bad_lines(tmp_path):
  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tk1\t2\nq1\tk2\t0\n")
  assert queries.load_qrels(tmp_path) == {"q1": {"k1": 2, "k2": 0}}
  (tmp_path / "qrels" / "more.qrels").write_text("q1 0 k1 1\n")
  with pytest.raises(ValueError, match=r"test.tsv:2: \(q1, k1\) judged 2 here and 1 before"):
    queries.load_qrels(tmp_path)
  assert queries.load_qrels(tmp_path, name="test") == {"q1": {"k1": 2, "k2": 0}}


def test_queries_errors_name_file_and_line(tmp_path):
  (tmp_path / "queries.jsonl").write_text('{"_id": "a", "text": "water"}\n{"text": "x"}\n')
  with pytest.raises(ValueError, match=r"queries.jsonl:2: expected fields query_id"):
    queries.load_queries(tmp_path)
  with pytest.raises(FileNotFoundError, match="queries.jsonl"):
    queries.load_queries(tmp_path / "nowhere")

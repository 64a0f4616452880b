"""A tiny CrisisLandMark release written directly with h5py, for the builder and pipeline tests.

It follows the official layout (master `crisislandmark.h5` of external links into shard
files, `metadata.parquet`, `queries.jsonl`, `qrels/`), independently of the project's
synthetic writer and of closp_jax's tables, and returns what a correct conversion must produce
for each key: the stored channels, the intended centre lon/lat, the split, the labels and the
timestamp.

Layouts (`layout`):
  release      S2 12 bands in the release's order STORED_S2; every S1 source (VV, VH).
  pre_release  what the authors' pre-release pipeline wrote: benv2s1 and sen1flood (VH, VV),
               mmflood (VV, VH), QuakeSet 4 channels (VV, VH before the event, then after it).
S1 values are linear power with VV brighter than VH, each named channel in its own range, so
the order a conversion picks can be read off the values.

Attribute types (`attr_types`):
  card    the dataset card's: `crs` float32 (1), `timestamp` float32 (1) seconds since 1970
          (NaN for NAN_TIMESTAMP_KEY, absent for NO_TIMESTAMP_KEY), `labels` list[str]
          (variable-length strings);
  int     `crs` int64, `timestamp` int64 seconds, `labels` fixed-length bytes;
  string  `crs` 'EPSG:326xx' / '326xx' / WKT in turn, `timestamp` ISO 8601, `labels` a list of str.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyproj import CRS, Transformer

SIZE = 120
PIXEL_M = 10.0
# The release's stored S2 order (docs/fidelity.md), written out here on purpose.
STORED_S2 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
# Per-band constants (central wavelength, nm) of the S2 sample BAND_PROBE_KEY.
WAVELENGTH_NM = {
  "B1": 443,
  "B2": 490,
  "B3": 560,
  "B4": 665,
  "B5": 705,
  "B6": 740,
  "B7": 783,
  "B8": 842,
  "B8A": 865,
  "B9": 945,
  "B10": 1375,
  "B11": 1610,
  "B12": 2190,
}
BAND_PROBE_KEY = "sen2flood_0000"
NAN_TIMESTAMP_KEY = "mmflood_0001"
NO_TIMESTAMP_KEY = "cabuar_0001"
S1_LAYOUTS = {
  "release": {"benv2s1": ("VV", "VH"), "mmflood": ("VV", "VH"), "sen1flood": ("VV", "VH"), "quakeset": ("VV", "VH")},
  "pre_release": {
    "benv2s1": ("VH", "VV"),
    "mmflood": ("VV", "VH"),
    "sen1flood": ("VH", "VV"),
    "quakeset": ("VV_pre", "VH_pre", "VV", "VH"),
  },
}
# Linear power ranges per named channel: VV above VH (about 7 dB), pre-event pair apart.
S1_RANGES = {"VV": (0.10, 0.15), "VH": (0.018, 0.027), "VV_pre": (0.20, 0.25), "VH_pre": (0.03, 0.04)}

# source -> (shard file, number of samples, (lon, lat, epsg) per sample, labels per sample)
_LAYOUT = {
  "benv2s2": (
    "benv2s2_part1.h5",
    4,
    [(11.5, 46.2, 32632), (13.4, 52.5, 32633), (-3.7, 40.4, 32630), (24.9, 60.2, 32635)],
    [
      ["Rice fields", "Sea and ocean"],
      ["Agro-forestry areas"],
      ["Mineral extraction sites", "Burnt areas"],
      ["Coniferous forest", "Sea and ocean"],
    ],
  ),
  "cabuar": (
    "cabuar.h5",
    2,
    [(-121.6, 39.8, 32610), (-120.5, 38.1, 32610)],
    [["Burned Area", "Trees"], ["Burned Area"]],
  ),
  "sen2flood": (
    "sen12flood.h5",
    2,
    [(35.0, -17.9, 32736), (30.1, -1.9, 32736)],
    [["Flooded Area", "Water"], ["Flooded Area", "Crops"]],
  ),
  "benv2s1": (
    "benv2s1_part1.h5",
    3,
    [(11.5, 46.2, 32632), (16.4, 48.2, 32633), (8.5, 47.4, 32632)],
    [["Broad-leaved forest"], ["Rice fields"], ["Sea and ocean", "Burnt areas"]],
  ),
  "sen1flood": (
    "sen12flood.h5",
    2,
    [(35.0, -17.9, 32736), (33.5, -15.1, 32736)],
    [["Flooded Area"], ["Flooded Area", "Water"]],
  ),
  "mmflood": (
    "mmflood.h5",
    2,
    [(12.3, 45.4, 32633), (78.0, 26.5, 32644)],
    [["Flooded Area", "Crops"], ["Flooded Area"]],
  ),
  "quakeset": (
    "quakeset.h5",
    2,
    [(37.0, 37.2, 32637), (-72.3, 18.5, 32618)],
    [["Earthquake Damage", "Built"], ["Earthquake Damage"]],
  ),
}
S2_SOURCES = ("benv2s2", "cabuar", "sen2flood")
# 2021-04-01T00:00:00Z; multiples of 128 s above it are exact in float32.
_T0 = 1617235200


def _coords_grid(lon: float, lat: float, epsg: int) -> np.ndarray:
  """Per-pixel x/y (2, 120, 120) of a 10 m UTM grid whose pixel [60, 60] sits at lon/lat."""
  x0, y0 = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
  cols = (np.arange(SIZE) - SIZE // 2) * PIXEL_M
  xs = np.broadcast_to(x0 + cols[None, :], (SIZE, SIZE))
  ys = np.broadcast_to(y0 - cols[:, None], (SIZE, SIZE))
  return np.stack([xs, ys]).astype(np.float32)


def _iso_utc(seconds: int) -> str:
  return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _attributes(key: str, index: int, epsg: int, seconds: int, labels: list[str], attr_types: str) -> tuple[dict, str]:
  """(attributes to write, the timestamp a conversion must give)."""
  if attr_types == "card":
    stamp = np.nan if key == NAN_TIMESTAMP_KEY else seconds
    attrs = {
      "crs": np.array([epsg], np.float32),
      "timestamp": np.array([stamp], np.float32),
      "labels": np.array(labels, dtype=h5py.string_dtype()),
    }
    expected = "" if key in (NAN_TIMESTAMP_KEY, NO_TIMESTAMP_KEY) else _iso_utc(seconds)
  elif attr_types == "int":
    attrs = {"crs": np.int64(epsg), "timestamp": np.int64(seconds), "labels": np.array([x.encode() for x in labels])}
    expected = "" if key == NO_TIMESTAMP_KEY else _iso_utc(seconds)
  elif attr_types == "string":
    crs = (f"EPSG:{epsg}", str(epsg), CRS.from_epsg(epsg).to_wkt())[index % 3]
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(tzinfo=None).isoformat()
    attrs = {"crs": crs, "timestamp": stamp, "labels": list(labels)}
    expected = "" if key == NO_TIMESTAMP_KEY else stamp
  else:
    raise ValueError(f"attr_types={attr_types!r}: expected 'card', 'int' or 'string'")
  if key == NO_TIMESTAMP_KEY:
    del attrs["timestamp"]
  return attrs, expected


def write_archive(
  out_dir,
  *,
  layout: str = "release",
  attr_types: str = "card",
  swap_s1: str | None = None,
  bad_shape_key: str | None = None,
  nan_keys=("benv2s2_0001", "mmflood_0000"),
) -> dict[str, dict]:
  """Writes the release into `out_dir` (replacing its files); returns {key: expectations}.

  Expectations per key: source, sensor, split, labels (as stored in metadata.parquet),
  lonlat (the intended centre, degrees), stored (the stored CHW image, NaNs included),
  channels (the stored channel names), vv / vh (the stored VV and VH images, S1),
  nan_count, timestamp (what a conversion must give).
  `swap_s1` names an S1 source stored with VH before VV, against the layout.
  `bad_shape_key` gets an image with one channel too many, to test the error.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(1234)
  shards: dict[str, h5py.File] = {}
  expected: dict[str, dict] = {}
  rows = {"key": [], "split": [], "labels": []}
  try:
    for s, (source, (shard, count, places, label_sets)) in enumerate(_LAYOUT.items()):
      f = shards.get(shard)
      if f is None:
        f = shards[shard] = h5py.File(out / shard, "w")
      for i in range(count):
        key = f"{source}_{i:04d}"
        lon, lat, epsg = places[i]
        vv = vh = None
        if source in S2_SOURCES:
          channels = STORED_S2
          if key == BAND_PROBE_KEY:
            image = np.stack([np.full((SIZE, SIZE), WAVELENGTH_NM[b], np.float32) for b in channels])
          else:
            image = rng.uniform(0, 10000, (len(channels), SIZE, SIZE)).astype(np.float32)
        else:
          channels = S1_LAYOUTS[layout][source]
          if source == swap_s1:
            channels = tuple(reversed(channels))
          image = np.stack([rng.uniform(*S1_RANGES[c], (SIZE, SIZE)) for c in channels])
          image = image.astype(np.float32)
          vv, vh = image[channels.index("VV")], image[channels.index("VH")]
        nan_count = 0
        if key in nan_keys:
          image[0, :3, :5] = np.nan
          nan_count = 15
        if key == bad_shape_key:
          image = np.concatenate([image, image[:1]], axis=0)
        group = f.create_group(key)
        group.create_dataset("image", data=image, chunks=(1, SIZE, SIZE), **hdf5plugin.Zstd(clevel=3))
        group.create_dataset("coords", data=_coords_grid(lon, lat, epsg), **hdf5plugin.Zstd(clevel=3))
        seconds = _T0 + 128 * (977 * i + 53 * s)
        attrs, timestamp = _attributes(key, i, epsg, seconds, label_sets[i], attr_types)
        for name, value in attrs.items():
          group.attrs[name] = value
        split = "train" if i % 2 == 0 else "test"
        rows["key"].append(key)
        rows["split"].append(split)
        rows["labels"].append(list(label_sets[i]))
        expected[key] = dict(
          source=source,
          sensor="s2" if source in S2_SOURCES else "s1",
          split=split,
          labels=list(label_sets[i]),
          lonlat=(lon, lat),
          stored=image,
          channels=channels,
          vv=vv,
          vh=vh,
          nan_count=nan_count,
          timestamp=timestamp,
          shard=shard,
        )
  finally:
    for f in shards.values():
      f.close()
  with h5py.File(out / "crisislandmark.h5", "w") as master:
    for key, exp in expected.items():
      master[key] = h5py.ExternalLink(exp["shard"], "/" + key)
  table = pa.table(
    {
      "key": pa.array(rows["key"], pa.string()),
      "split": pa.array(rows["split"], pa.string()),
      "labels": pa.array(rows["labels"], pa.list_(pa.string())),
    }
  )
  pq.write_table(table, out / "metadata.parquet")
  queries = [
    {"query_id": "q1", "text": "flooded area", "type": "crisis"},
    {"query_id": "q2", "text": "trees. water", "type": "land_cover"},
  ]
  with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
    for q in queries:
      f.write(json.dumps(q) + "\n")
  (out / "qrels").mkdir(exist_ok=True)
  with open(out / "qrels" / "test.qrels", "w", encoding="utf-8") as f:
    f.write("q1 0 sen1flood_0001 2\nq1 0 mmflood_0001 2\nq1 0 sen2flood_0001 1\n")
    f.write("q2 0 benv2s2_0003 1\n")
  return expected


def build_full(root, config: str = "full", **archive_kwargs):
  """Writes the archive under root/release and prepares crisis_landmark/<config> in root/data.

  Returns (builder, expected, release folder).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from closp_jax.data import crisis_landmark  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  root = Path(root)
  expected = write_archive(root / "release", **archive_kwargs)
  builder = tfds.builder(f"crisis_landmark/{config}", data_dir=str(root / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root / "release")))
  return builder, expected, root / "release"

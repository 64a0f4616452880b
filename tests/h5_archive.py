"""A tiny CrisisLandMark release written directly with h5py, for the builder and pipeline tests.

It follows the official layout (master `crisislandmark.h5` of external links into shard
files, `metadata.parquet`, `queries.jsonl`, `qrels/`), independently of the project's
synthetic writer, and returns what a correct conversion must produce for each key: the
stored channels, the intended centre lon/lat, the split and the labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyproj import Transformer

SIZE = 120
PIXEL_M = 10.0

# source -> (shard file, number of samples, stored channels, (lon, lat, epsg) per sample, labels per sample)
_LAYOUT = {
    "benv2s2": ("benv2s2_part1.h5", 4, 12, [(11.5, 46.2, 32632), (13.4, 52.5, 32633),
                                            (-3.7, 40.4, 32630), (24.9, 60.2, 32635)],
                [["Rice fields", "Sea and ocean"], ["Agro-forestry areas"],
                 ["Mineral extraction sites", "Burnt areas"], ["Coniferous forest", "Sea and ocean"]]),
    "cabuar": ("cabuar.h5", 2, 12, [(-121.6, 39.8, 32610), (-120.5, 38.1, 32610)],
               [["Burned Area", "Trees"], ["Burned Area"]]),
    "sen2flood": ("sen12flood.h5", 2, 12, [(35.0, -17.9, 32736), (30.1, -1.9, 32736)],
                  [["Flooded Area", "Water"], ["Flooded Area", "Crops"]]),
    "benv2s1": ("benv2s1_part1.h5", 3, 2, [(11.5, 46.2, 32632), (16.4, 48.2, 32633),
                                           (8.5, 47.4, 32632)],
                [["Broad-leaved forest"], ["Rice fields"], ["Sea and ocean", "Burnt areas"]]),
    "sen1flood": ("sen12flood.h5", 2, 2, [(35.0, -17.9, 32736), (33.5, -15.1, 32736)],
                  [["Flooded Area"], ["Flooded Area", "Water"]]),
    "mmflood": ("mmflood.h5", 2, 2, [(12.3, 45.4, 32633), (78.0, 26.5, 32644)],
                [["Flooded Area", "Crops"], ["Flooded Area"]]),
    "quakeset": ("quakeset.h5", 2, 4, [(37.0, 37.2, 32637), (-72.3, 18.5, 32618)],
                 [["Earthquake Damage", "Built"], ["Earthquake Damage"]]),
}
S2_SOURCES = ("benv2s2", "cabuar", "sen2flood")


def _coords_grid(lon: float, lat: float, epsg: int) -> np.ndarray:
  """Per-pixel x/y (2, 120, 120) of a 10 m UTM grid whose pixel [60, 60] sits at lon/lat."""
  x0, y0 = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
  cols = (np.arange(SIZE) - SIZE // 2) * PIXEL_M
  xs = np.broadcast_to(x0 + cols[None, :], (SIZE, SIZE))
  ys = np.broadcast_to(y0 - cols[:, None], (SIZE, SIZE))
  return np.stack([xs, ys]).astype(np.float32)


def write_archive(out_dir, *, bad_shape_key: str | None = None, nan_keys=("benv2s2_0001", "mmflood_0000"),
                  crs_as_string: str = "cabuar_0001") -> dict[str, dict]:
  """Writes the release into `out_dir`; returns {key: expectations}.

  Expectations per key: source, sensor, split, labels (as stored in metadata.parquet),
  lonlat (the intended centre, degrees), stored (the stored CHW image, NaNs included),
  nan_count, timestamp.
  `bad_shape_key` gets an image with one channel too many, to test the error.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(1234)
  shards: dict[str, h5py.File] = {}
  expected: dict[str, dict] = {}
  rows = {"key": [], "split": [], "labels": []}
  try:
    for source, (shard, count, channels, places, label_sets) in _LAYOUT.items():
      f = shards.get(shard)
      if f is None:
        f = shards[shard] = h5py.File(out / shard, "w")
      for i in range(count):
        key = f"{source}_{i:04d}"
        lon, lat, epsg = places[i]
        if source in S2_SOURCES:
          image = rng.uniform(0, 10000, (channels, SIZE, SIZE)).astype(np.float32)
        else:
          # Distinct ranges per stored channel so the order can be checked.
          image = np.stack([rng.uniform(c + 1.0, c + 1.5, (SIZE, SIZE)) for c in range(channels)])
          image = image.astype(np.float32)
        nan_count = 0
        if key in nan_keys:
          image[0, :3, :5] = np.nan
          nan_count = 15
        if key == bad_shape_key:
          image = np.concatenate([image, image[:1]], axis=0)
        group = f.create_group(key)
        group.create_dataset("image", data=image, chunks=(1, SIZE, SIZE), **hdf5plugin.Zstd(clevel=3))
        group.create_dataset("coords", data=_coords_grid(lon, lat, epsg), **hdf5plugin.Zstd(clevel=3))
        group.attrs["crs"] = f"EPSG:{epsg}" if key == crs_as_string else np.int64(epsg)
        timestamp = f"2021-0{1 + i % 9}-1{i % 10}T10:30:00"
        group.attrs["timestamp"] = timestamp
        group.attrs["labels"] = label_sets[i]
        split = "train" if i % 2 == 0 else "test"
        rows["key"].append(key)
        rows["split"].append(split)
        rows["labels"].append(list(label_sets[i]))
        expected[key] = dict(source=source, sensor="s2" if source in S2_SOURCES else "s1",
                             split=split, labels=list(label_sets[i]), lonlat=(lon, lat),
                             stored=image, nan_count=nan_count, timestamp=timestamp, shard=shard)
  finally:
    for f in shards.values():
      f.close()
  with h5py.File(out / "crisislandmark.h5", "w") as master:
    for key, exp in expected.items():
      master[key] = h5py.ExternalLink(exp["shard"], "/" + key)
  table = pa.table({"key": pa.array(rows["key"], pa.string()),
                    "split": pa.array(rows["split"], pa.string()),
                    "labels": pa.array(rows["labels"], pa.list_(pa.string()))})
  pq.write_table(table, out / "metadata.parquet")
  queries = [{"query_id": "q1", "text": "flooded area", "type": "crisis"},
             {"query_id": "q2", "text": "trees. water", "type": "land_cover"}]
  with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
    for q in queries:
      f.write(json.dumps(q) + "\n")
  (out / "qrels").mkdir(exist_ok=True)
  with open(out / "qrels" / "test.qrels", "w", encoding="utf-8") as f:
    f.write("q1 0 sen1flood_0001 2\nq1 0 mmflood_0001 2\nq1 0 sen2flood_0001 1\n")
    f.write("q2 0 benv2s2_0003 1\n")
  return expected


def build_full(root, **archive_kwargs):
  """Writes the archive under root/release and prepares crisis_landmark/full in root/data.

  Returns (builder, expected, release folder).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from closp_jax.data import crisis_landmark  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  root = Path(root)
  expected = write_archive(root / "release", **archive_kwargs)
  builder = tfds.builder("crisis_landmark/full", data_dir=str(root / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root / "release")))
  return builder, expected, root / "release"

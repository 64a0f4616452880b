"""Write a synthetic CrisisLandMark archive in the official release layout.

    python -m closp_jax.data.synthetic --out DIR --num_s2 N --num_s1 M --seed S

The folder gets per-source HDF5 shards (hdf5plugin Blosc/LZ4 with bit-shuffle),
`crisislandmark.h5` (one external link per sample key into the shards),
`metadata.parquet` (key, split, labels), `queries.jsonl`, `qrels/test.qrels`
and `synthetic.json` (how it was made). Everything is written into a temporary
sibling folder that is renamed to DIR at the end. Content: synthetic_render.py;
tables: synthetic_world.py; rules: docs/data.md.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from closp_jax import atomic
from closp_jax.data import geo
from closp_jax.data import synthetic_render as R
from closp_jax.data import synthetic_world as W
from closp_jax.data.labels import CLASSES, map_labels
from closp_jax.retrieval import queries_rule

MASTER_FILE = "crisislandmark.h5"
METADATA_FILE = "metadata.parquet"
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels/test.qrels"
INFO_FILE = "synthetic.json"
CHUNK = 32  # samples rendered together (fixed: part of the seed -> bytes contract)
QUERIES_PER_TYPE = 30  # queries of each type (land cover, crisis, location), when there are as many
MIN_SUPPORT = 5  # test samples that must carry all of a query's classes


_COMPRESSION = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
_DCPL: dict[tuple[int, ...], h5py.h5p.PropDCID] = {}


def _dataset_plist(shape: tuple[int, ...]) -> h5py.h5p.PropDCID:
  """One chunk per dataset, Blosc/LZ4 with bit-shuffle (cached: h5py's per-call setup is slow)."""
  if shape not in _DCPL:
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk(shape)
    plist.set_filter(_COMPRESSION.filter_id, h5py.h5z.FLAG_OPTIONAL, _COMPRESSION.filter_options)
    _DCPL[shape] = plist
  return _DCPL[shape]


def _write_float32(group: h5py.Group, name: str, data: np.ndarray) -> None:
  data = np.ascontiguousarray(data, np.float32)
  space = h5py.h5s.create_simple(data.shape)
  dset = h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=_dataset_plist(data.shape))
  dset.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


@dataclasses.dataclass
class Record:
  """What the archive-level files need to know about one written sample."""

  key: str
  source: str
  labels: list[str]
  classes: tuple[str, ...]
  place: str
  lonlat: tuple[float, float] = (float("nan"), float("nan"))  # the centre pixel's, as the builder reads it
  split: str = ""


def source_counts(num_s2: int, num_s1: int) -> dict[str, int]:
  """Samples per source: each sensor's total split by the sources' shares (largest remainder)."""
  counts = {}
  for sensor, total in (("s2", num_s2), ("s1", num_s1)):
    srcs = [s for s in W.SOURCES if s.sensor == sensor]
    raw = np.array([s.share for s in srcs]) * total
    n = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - n), kind="stable")[: total - n.sum()]:
      n[i] += 1
    if total >= len(srcs):  # every source present when there is room for it
      for i in np.flatnonzero(n == 0):
        n[i] += 1
        n[np.argmax(n)] -= 1
    counts.update({s.name: int(c) for s, c in zip(srcs, n)})
  return counts


def _shard_name(source: W.Source, index: int, count: int) -> str:
  if "{part}" not in source.file:
    return source.file
  parts = max(1, min(W.BENV2_PARTS, count))
  return source.file.format(part=index * parts // count + 1)


def _write_sample(f: h5py.File, scene: R.Scene, image: np.ndarray) -> None:
  """One sample group with the dataset card's attribute types: `crs` float32 (1) (the EPSG
  code), `timestamp` float32 (1) (seconds since 1970-01-01 UTC), `labels` list[str]."""
  g = f.create_group(scene.key)
  _write_float32(g, "image", image)
  _write_float32(g, "coords", geo.pixel_grid(scene.x, scene.y, R.SIZE))
  g.attrs["crs"] = np.array([scene.epsg], np.float32)
  g.attrs["timestamp"] = np.array([posix_seconds(scene.timestamp)], np.float32)
  g.attrs["labels"] = np.array(scene.labels, dtype=h5py.string_dtype())


def posix_seconds(timestamp: str) -> float:
  """Seconds since 1970-01-01 UTC of a scene's ISO 8601 UTC time (naive means UTC)."""
  moment = dt.datetime.fromisoformat(timestamp)
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=dt.UTC)
  return moment.timestamp()


def _source_chunks(source: W.Source, count: int, seed: int):
  """(rng, scenes) per chunk of a source: the chunk's generator, after drawing its scenes."""
  src_id = [s.name for s in W.SOURCES].index(source.name)
  for c0 in range(0, count, CHUNK):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(src_id, c0 // CHUNK)))
    yield rng, [R.draw_scene(rng, source, i) for i in range(c0, min(c0 + CHUNK, count))]


def _record(scene: R.Scene) -> Record:
  lon, lat = geo.xy_to_lonlat(scene.x, scene.y, scene.epsg)  # what the builder reads from `coords`
  return Record(
    scene.key,
    scene.source,
    scene.labels,
    tuple(map_labels(scene.labels, scene.key)),
    scene.place,
    (float(lon), float(lat)),
  )


def write_source(
  folder: Path, source: W.Source, count: int, seed: int, progress: Callable[[int], None] | None = None
) -> list[Record]:
  """Render and write all samples of one source; returns their records."""
  records, files = [], {}
  try:
    for c0, (rng, scenes) in zip(range(0, count, CHUNK), _source_chunks(source, count, seed)):
      if source.sensor == "s2":
        images = R.render_s2(rng, scenes)
      else:
        images = R.render_s1(rng, scenes, source.channels)
      for j, scene in enumerate(scenes):
        name = _shard_name(source, c0 + j, count)
        if name not in files:
          files[name] = h5py.File(folder / name, "a")
        _write_sample(files[name], scene, images[j])
        records.append(_record(scene))
      if progress:
        progress(len(scenes))
  finally:
    for f in files.values():
      f.close()
  return records


def plan_records(num_s2: int, num_s1: int, seed: int, test_fraction: float = 0.8) -> list[Record]:
  """The records (labels, places, locations, splits) that write_archive with these arguments
  writes, drawn without rendering any pixel."""
  counts = source_counts(num_s2, num_s1)
  records = [
    _record(scene)
    for source in W.SOURCES
    if counts[source.name]
    for _, scenes in _source_chunks(source, counts[source.name], seed)
    for scene in scenes
  ]
  assign_splits(records, seed, test_fraction)
  return records


def assign_splits(records: list[Record], seed: int, test_fraction: float) -> None:
  """Stratified split: within each (source, class set) group a seeded shuffle, test share kept
  globally exact by carrying the rounding remainder from group to group."""
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1000,)))
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r.source, r.classes)].append(r)
  owed = 0.0
  for key in sorted(groups):
    members = groups[key]
    owed += test_fraction * len(members)
    n_test = min(len(members), int(round(owed)))
    owed -= n_test
    for i, idx in enumerate(rng.permutation(len(members))):
      members[idx].split = "test" if i < n_test else "train"


def build_queries(records: list[Record]) -> tuple[list[dict], list[tuple[str, str, int]]]:
  """Queries over the test split and graded judgments (2 = every query class present, 1 = some):
  the label rule of closp_jax.retrieval.queries_rule, balanced: up to QUERIES_PER_TYPE of each
  type among the classes present and the combinations of 2 or 3 classes carried in full by
  >= MIN_SUPPORT test samples, typed by its grid-cell rule over the samples' locations."""
  test = [r for r in records if r.split == "test"]
  if not test:
    return [], []
  hot = np.zeros((len(test), len(CLASSES)), np.float32)
  index = {c: i for i, c in enumerate(CLASSES)}
  for row, r in enumerate(test):
    hot[row, [index[c] for c in r.classes]] = 1.0
  queries, judged = queries_rule.queries_from_labels(
    hot,
    [r.key for r in test],
    np.array([r.lonlat for r in test]),
    per_type=QUERIES_PER_TYPE,
    min_support=MIN_SUPPORT,
    prefix="q",
  )
  qrels = [(q["query_id"], key, grade) for q in queries for key, grade in judged[q["query_id"]].items()]
  return queries, qrels


def _write_archive_files(
  folder: Path, records: list[Record], counts: dict[str, int], seed: int, test_fraction: float
) -> None:
  with h5py.File(folder / (MASTER_FILE + ".tmp"), "w") as f:
    for r in records:
      source = W.SOURCE_BY_NAME[r.source]
      index = int(r.key.rsplit("_", 1)[1])
      f[r.key] = h5py.ExternalLink(_shard_name(source, index, counts[r.source]), "/" + r.key)
  os.replace(folder / (MASTER_FILE + ".tmp"), folder / MASTER_FILE)
  table = pa.table(
    {
      "key": pa.array([r.key for r in records], pa.string()),
      "split": pa.array([r.split for r in records], pa.string()),
      "labels": pa.array([r.labels for r in records], pa.list_(pa.string())),
    }
  )
  pq.write_table(table, folder / (METADATA_FILE + ".tmp"))
  os.replace(folder / (METADATA_FILE + ".tmp"), folder / METADATA_FILE)
  queries, qrels = build_queries(records)
  atomic.write_text(folder / QUERIES_FILE, "".join(json.dumps(q) + "\n" for q in queries))
  (folder / "qrels").mkdir(exist_ok=True)
  atomic.write_text(folder / QRELS_FILE, "".join(f"{q} 0 {d} {rel}\n" for q, d, rel in qrels))
  info = {
    "generator": "closp_jax.data.synthetic",
    "seed": seed,
    "test_fraction": test_fraction,
    "counts": counts,
    "num_queries": len(queries),
  }
  atomic.write_text(folder / INFO_FILE, json.dumps(info, indent=1) + "\n")


def _check_target(out: Path, overwrite: bool) -> None:
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out} exists and is not a folder")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")


def write_archive(
  out_dir,
  num_s2: int,
  num_s1: int,
  seed: int,
  test_fraction: float = 0.8,
  overwrite: bool = False,
  log: Callable[[str], None] | None = None,
) -> Path:
  """Write a synthetic archive with num_s2 Sentinel-2 and num_s1 Sentinel-1 samples; returns its path.

  Same arguments -> same image bytes. Refuses a non-empty out_dir unless overwrite.
  """
  out = Path(out_dir).absolute()
  if num_s2 < 0 or num_s1 < 0 or num_s2 + num_s1 == 0:
    raise ValueError(f"num_s2={num_s2}, num_s1={num_s1}: need non-negative counts, not both zero")
  if not 0.0 <= test_fraction <= 1.0:
    raise ValueError(f"test_fraction={test_fraction} must lie in [0, 1]")
  _check_target(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
  os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the archive is meant to be shared
  try:
    counts = source_counts(num_s2, num_s1)
    total, done, next_report, t0 = sum(counts.values()), 0, 2000, time.time()
    records = []

    def progress(n):
      nonlocal done, next_report
      done += n
      if log and (done >= next_report or done == total):
        log(f"  {done}/{total} samples written ({time.time() - t0:.1f} s)")
        next_report += 2000

    for source in W.SOURCES:
      if counts[source.name]:
        records += write_source(tmp, source, counts[source.name], seed, progress)
    assign_splits(records, seed, test_fraction)
    _write_archive_files(tmp, records, counts, seed, test_fraction)
    _check_target(out, overwrite)
    atomic.replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def summary(folder) -> str:
  """Counts per source and split of a written archive (read back from metadata.parquet)."""
  table = pq.read_table(Path(folder) / METADATA_FILE, columns=["key", "split"]).to_pydict()
  counts = collections.Counter((k.rsplit("_", 1)[0], s) for k, s in zip(table["key"], table["split"]))
  lines = [f"{'source':<10} {'train':>7} {'test':>7} {'total':>7}"]
  for src in sorted({s for s, _ in counts}):
    tr, te = counts[(src, "train")], counts[(src, "test")]
    lines.append(f"{src:<10} {tr:>7} {te:>7} {tr + te:>7}")
  tr, te = (
    sum(v for (s, sp), v in counts.items() if sp == "train"),
    sum(v for (s, sp), v in counts.items() if sp == "test"),
  )
  lines.append(f"{'all':<10} {tr:>7} {te:>7} {tr + te:>7}")
  return "\n".join(lines)


def _flags() -> dict:
  from absl import flags  # pylint: disable=import-outside-toplevel

  return {
    "out": flags.DEFINE_string("out", None, "The archive folder to create."),
    "num_s2": flags.DEFINE_integer("num_s2", None, "Sentinel-2 samples."),
    "num_s1": flags.DEFINE_integer("num_s1", None, "Sentinel-1 samples."),
    "seed": flags.DEFINE_integer("seed", 0, "The world's seed."),
    "test_fraction": flags.DEFINE_float("test_fraction", 0.8, "Share of samples in the test split."),
    "overwrite": flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out."),
  }


def main(argv, f) -> int:
  from absl import app  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  missing = [name for name in ("out", "num_s2", "num_s1") if f[name].value is None]
  if missing:
    raise app.UsageError(
      "--" + ", --".join(missing) + " required: python -m closp_jax.data.synthetic --out DIR "
      "--num_s2 N --num_s1 M [--seed S]"
    )
  t0 = time.time()
  out = write_archive(
    f["out"].value,
    f["num_s2"].value,
    f["num_s1"].value,
    f["seed"].value,
    f["test_fraction"].value,
    f["overwrite"].value,
    log=lambda s: print(s, file=sys.stderr, flush=True),
  )
  print(f"wrote {out} in {time.time() - t0:.1f} s")
  print(summary(out))
  return 0


if __name__ == "__main__":
  from closp_jax import errors  # pylint: disable=import-outside-toplevel

  flag_values = _flags()
  errors.run_main(lambda argv: main(argv, flag_values))

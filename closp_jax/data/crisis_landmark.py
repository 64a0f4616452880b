"""TFDS builder `crisis_landmark`: the CrisisLandMark release converted to ArrayRecord.

Configs:
  full              the official release folder, given as `manual_dir`; S1 channels read with
                    the release's rules (every S1 source stored as (VV, VH)).
  full_pre_release  the same for an archive written by the authors' pre-release pipeline
                    (`benv2s1` / `sen1flood` stored (VH, VV), QuakeSet 4 channels).
  sample            writes the synthetic archive (closp_jax.data.synthetic) into a temporary
                    folder, then runs the very same conversion (4,000 S2 + 4,000 S1 by default).

Whatever the S1 rule set (`CrisisLandmarkConfig.s1_rules`, preprocess.S1_RULE_SETS), the build
verifies it on the data: per S1 source, VV must be brighter than VH for most samples
(preprocess.S1OrderCheck); otherwise it stops naming the source, and tfds removes the
incomplete dataset folder.

Splits: `train` and `test` (the retrieval corpus) as in metadata.parquet, and `validation`,
a fixed-seed draw from the corpus per sensor (those samples also stay in `test`, as in the
original, where the validation set was sampled from the corpus).

Inside every split the records are ordered S2 first, then S1, each sorted by key, so a
sensor is a contiguous range of record indices (`metadata['sensor_ranges']`). The build
also stores, in `info.metadata`: the sorted distinct texts, per-band statistics of the
train split, counts per split/sensor/source, and the NaN replacements; `queries.jsonl`
and `qrels/` are copied next to the ArrayRecord files. No TensorFlow is needed: the
shards are written directly (see _OrderedShardWriter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 compression filters of the release)
import numpy as np
import pyarrow.parquet as pq
import tensorflow_datasets as tfds
from etils import epath

from closp_jax.data import labels as labels_lib
from closp_jax.data import preprocess
from closp_jax.errors import UserError

log = logging.getLogger(__name__)

MASTER_FILE = "crisislandmark.h5"
METADATA_FILE = "metadata.parquet"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
RELEASE_FILES = (MASTER_FILE, METADATA_FILE, QUERIES_FILE, QRELS_DIR + "/")
SPLITS = ("train", "validation", "test")
_PROGRESS_EVERY = 2000

_MANUAL_INSTRUCTIONS = f"""\
Download the CrisisLandMark release (https://huggingface.co/datasets/DarthReca/crisislandmark,
CC-BY-NC-4.0) and pass its folder as manual_dir. The folder must hold:
  {MASTER_FILE}      master HDF5 file (external links into the shard files below)
  benv2s2_part*.h5, benv2s1_part*.h5, cabuar.h5, sen12flood.h5, mmflood.h5, quakeset.h5
  {METADATA_FILE}    columns key, split ("train"/"test"), labels (list of names)
  {QUERIES_FILE}       evaluation queries, one JSON object per line
  {QRELS_DIR}/                relevance judgments (TREC or BEIR tsv)
"""


@dataclasses.dataclass(eq=False)
class CrisisLandmarkConfig(tfds.core.BuilderConfig):
  """Builder config. `num_s2`/`num_s1`/`seed` size the synthetic archive (sample configs).

  `s1_rules` names the S1 channel rule set (preprocess.S1_RULE_SETS): "release" (every S1
  source stored (VV, VH)) or "pre_release" (the authors' pre-release loader's flips and
  QuakeSet slice).
  """

  synthetic: bool = False
  s1_rules: str = preprocess.DEFAULT_S1_RULES
  num_s2: int = 0
  num_s1: int = 0
  seed: int = 0
  validation_fraction: float = 0.002
  validation_min_per_sensor: int = 128
  validation_seed: int = 42
  # ArrayRecord writer options: one record per group (random access), zstd level 1: about
  # twice the write speed of ArrayRecord's default compression for ~10% more bytes.
  array_record_options: str = "group_size:1,zstd:1"
  shard_bytes: int = 1 << 30  # a new shard after about 1 GiB of serialized records


TINY = CrisisLandmarkConfig(
  name="tiny",
  synthetic=True,
  num_s2=300,
  num_s1=300,
  seed=0,
  validation_min_per_sensor=32,
  description="A small synthetic archive (300 S2 + 300 S1) for tests and quick trials.",
)
FULL = CrisisLandmarkConfig(
  name="full",
  description="The official release folder, given as manual_dir; S1 sources stored (VV, VH) as the dataset card says.",
)
FULL_PRE_RELEASE = CrisisLandmarkConfig(
  name="full_pre_release",
  s1_rules="pre_release",
  description="An archive written by the authors' pre-release pipeline, given as manual_dir: "
  "benv2s1 and sen1flood stored (VH, VV), QuakeSet 4 channels (pre, post).",
)
SAMPLE = CrisisLandmarkConfig(
  name="sample",
  synthetic=True,
  num_s2=4000,
  num_s1=4000,
  seed=0,
  description="A synthetic archive in the release layout (4,000 S2 + 4,000 S1), converted exactly as the full release.",
)


def _features() -> tfds.features.FeaturesDict:
  f = tfds.features
  return f.FeaturesDict(
    {
      "key": f.Text(doc="Sample key; its prefix names the source."),
      "source": f.Text(doc="benv2s2, cabuar, sen2flood, benv2s1, mmflood, sen1flood or quakeset."),
      "sensor": f.Text(doc="'s2' (13 bands) or 's1' (VV, VH)."),
      "image": f.Tensor(
        shape=(preprocess.IMAGE_SIZE, preprocess.IMAGE_SIZE, None),
        dtype=np.float32,
        encoding=f.Encoding.BYTES,
        doc="(120, 120, C) after the preprocessing: S2 C=13 in ESA order B1-B8, B8A, B9, "
        "B10 (zero), B11, B12 (reflectance x 10,000), S1 C=2 (VV, VH as stored).",
      ),
      "text": f.Text(doc="Mapped classes, lower-cased, joined by '. '."),
      "labels": f.Tensor(
        shape=(labels_lib.NUM_CLASSES,),
        dtype=np.float32,
        doc="Multi-hot over the 12 classes (closp_jax.data.labels.CLASSES).",
      ),
      "lonlat": f.Tensor(
        shape=(2,), dtype=np.float32, doc="Centre pixel (lon, lat) in degrees, from the sample's CRS."
      ),
      "timestamp": f.Text(
        doc="Acquisition time: ISO 8601 UTC for numeric attributes, strings as stored, '' when unavailable."
      ),
    }
  )


# --------------------------------------------------------------------------- release folder


def check_release_folder(folder: Path) -> None:
  """Raises FileNotFoundError listing the expected files when one is missing."""
  folder = Path(folder)
  missing = [name for name in RELEASE_FILES if not (folder / name.rstrip("/")).exists()]
  qrels = folder / QRELS_DIR
  if qrels.is_dir() and not any(p.is_file() for p in qrels.iterdir()):
    missing.append(QRELS_DIR + "/ (empty)")
  if missing:
    raise ReleaseFolderError(
      f"CrisisLandMark release folder {folder} lacks {', '.join(missing)}.\n" + _MANUAL_INSTRUCTIONS
    )


def read_metadata(path: Path) -> list[tuple[str, str, list[str]]]:
  """(key, split, labels) rows of metadata.parquet, checked."""
  schema = pq.read_schema(path)
  missing = [c for c in ("key", "split", "labels") if c not in schema.names]
  if missing:
    raise ReleaseMetadataError(
      f"{path}: missing column(s) {', '.join(missing)}; expected key, split, labels (found {', '.join(schema.names)})"
    )
  table = pq.read_table(path, columns=["key", "split", "labels"]).to_pydict()
  rows, seen = [], set()
  for key, split, labels in zip(table["key"], table["split"], table["labels"]):
    if split not in ("train", "test"):
      raise ReleaseMetadataError(f"{path}: key {key!r} has split {split!r}, expected 'train' or 'test'")
    if key in seen:
      raise ReleaseMetadataError(f"{path}: key {key!r} appears twice")
    if labels is None or isinstance(labels, str):
      raise ReleaseMetadataError(f"{path}: key {key!r} has labels {labels!r}, expected a list of names")
    seen.add(key)
    rows.append((key, split, list(labels)))
  if not rows:
    raise ReleaseMetadataError(f"{path}: no rows")
  return rows


class ReleaseReader:
  """Reads samples through the master file's links, keeping each shard file open once."""

  def __init__(self, folder: Path):
    self.folder = Path(folder)
    self.master = _open_h5(self.folder / MASTER_FILE, None)
    self._shards: dict[str, h5py.File] = {}

  def close(self) -> None:
    for f in self._shards.values():
      f.close()
    self._shards.clear()
    self.master.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _locate(self, key: str) -> tuple[str | None, str]:
    link = self.master.get(key, getlink=True)
    if link is None:
      raise KeyError(f"sample {key!r} (listed in {METADATA_FILE}) is not in {self.folder / MASTER_FILE}")
    if isinstance(link, h5py.ExternalLink):
      return link.filename, link.path
    return None, key

  def check(self, keys) -> None:
    """Every key is in the master file and every shard it links to exists."""
    absent, shard_files = [], set()
    for key in keys:
      try:
        filename, _ = self._locate(key)
      except KeyError:
        absent.append(key)
        continue
      if filename is not None:
        shard_files.add(filename)
    if absent:
      raise KeyError(
        f"{len(absent)} sample(s) listed in {METADATA_FILE} are not in {self.folder / MASTER_FILE}, e.g. {absent[:5]}"
      )
    lost = sorted(f for f in shard_files if not (self.folder / f).is_file())
    if lost:
      raise FileNotFoundError(
        f"{self.folder / MASTER_FILE} links to shard file(s) missing from {self.folder}: "
        f"{', '.join(lost)}. Expected all of: {', '.join(sorted(shard_files))}"
      )

  def where(self, key: str) -> str:
    """'shard.h5:/path' of a sample, for error messages."""
    try:
      filename, path = self._locate(key)
    except KeyError:
      return f"{MASTER_FILE}:/{key}"
    return f"{filename or MASTER_FILE}:/{path.lstrip('/')}"

  def read(self, key: str) -> StoredSample:
    """The sample's image (CHW) and coords as stored, its attributes parsed.

    `crs` is required; `timestamp` may be missing (''), `labels` too (None). A shard that is
    missing, not HDF5, truncated or unreadable is an error naming the file and the sample key
    (h5py's own messages name neither).
    """
    filename, path = self._locate(key)
    if filename is None:
      container = self.master
    else:
      container = self._shards.get(filename)
      if container is None:
        container = self._shards[filename] = _open_h5(self.folder / filename, key)
    where = f"{self.folder / (filename or MASTER_FILE)}"
    if path not in container:
      raise KeyError(f"sample {key!r}: {where} has no group {path!r} (the master file links to it)")
    group = container[path]
    for name in ("image", "coords"):
      if name not in group:
        raise KeyError(f"sample {key!r} in {filename or MASTER_FILE} has no dataset {name!r}")
    if "crs" not in group.attrs:
      raise KeyError(
        f"sample {key!r} in {filename or MASTER_FILE} has no attribute 'crs' (the EPSG code of its coords)"
      )
    try:
      image, coords = group["image"][()], group["coords"][()]
    except OSError as err:
      raise ReleaseFileError(
        f"sample {key!r}: reading {path}/image or coords from {where} failed ({err}); the file is "
        f"damaged: download it again"
      ) from err
    attrs = group.attrs
    labels = attrs.get("labels")
    return StoredSample(
      image=image,
      coords=coords,
      crs=attrs["crs"],
      timestamp=preprocess.parse_timestamp(attrs.get("timestamp"), key),
      labels=None if labels is None else preprocess.parse_labels(labels, key),
    )


class StoredSample(NamedTuple):
  """One sample as the release stores it: image (C, 120, 120), coords (2, 120, 120), the raw
  `crs` attribute, the parsed `timestamp` (preprocess.parse_timestamp) and `labels` (None when
  the group has no such attribute)."""

  image: np.ndarray
  coords: np.ndarray
  crs: object
  timestamp: str
  labels: list[str] | None


class ReleaseFileError(UserError, OSError):
  """A release HDF5 file is missing, not HDF5, truncated or unreadable; names the file and sample."""


class ReleaseFolderError(UserError, FileNotFoundError):
  """The release folder lacks files the build needs; names them."""


class ReleaseMetadataError(UserError, ValueError):
  """metadata.parquet does not have the columns or values the release promises; names the key."""


def _open_h5(path: Path, key: str | None) -> h5py.File:
  needed = f" (needed for sample {key!r})" if key else ""
  if not path.is_file():
    raise FileNotFoundError(f"release file {path}{needed} does not exist.\n" + _MANUAL_INSTRUCTIONS)
  try:
    return h5py.File(path, "r")
  except OSError as err:
    raise ReleaseFileError(
      f"release file {path}{needed} cannot be opened as HDF5 ({err}): it is truncated or damaged "
      f"(an interrupted download?); download it again"
    ) from err


# --------------------------------------------------------------------------- build plan


@dataclasses.dataclass
class BuildPlan:
  """What each split holds, decided before any image is read."""

  split_keys: dict[str, list[str]]
  labels: dict[str, list[str]]
  texts: list[str]
  sensor_ranges: dict[str, dict[str, list[int]]]


def _sensor_order(keys) -> tuple[list[str], list[str]]:
  s2, s1 = [], []
  for key in sorted(keys):
    sensor = preprocess.sensor_of_source(preprocess.source_of_key(key))
    (s2 if sensor == "s2" else s1).append(key)
  return s2, s1


def validation_keys(corpus_keys: list[str], fraction: float, min_per_sensor: int, seed: int) -> list[str]:
  """Fixed-seed draw of round(fraction * n) keys (at least min_per_sensor) per sensor."""
  rng = np.random.default_rng(seed)
  chosen = []
  for group in _sensor_order(corpus_keys):
    n = len(group)
    size = min(n, max(int(round(fraction * n)), min_per_sensor))
    picked = rng.choice(n, size=size, replace=False) if size else []
    chosen.extend(group[i] for i in sorted(picked))
  return chosen


def make_plan(rows, config: CrisisLandmarkConfig, max_per_split: int | None = None) -> BuildPlan:
  """Splits, label texts and sensor ranges from the metadata rows.

  `max_per_split` (tfds' max_examples_per_split, for quick trials) keeps the first
  max//2 S2 and the remaining S1 samples of each split.
  """
  by_split = {"train": [], "test": []}
  labels = {}
  for key, split, names in rows:
    by_split[split].append(key)
    labels[key] = names
  by_split["validation"] = validation_keys(
    by_split["test"], config.validation_fraction, config.validation_min_per_sensor, config.validation_seed
  )
  split_keys, ranges = {}, {}
  for split in SPLITS:
    s2, s1 = _sensor_order(by_split[split])
    if max_per_split is not None:
      s2 = s2[: max_per_split // 2]
      s1 = s1[: max_per_split - len(s2)]
    split_keys[split] = s2 + s1
    ranges[split] = {"s2": [0, len(s2)], "s1": [len(s2), len(s2) + len(s1)]}
  texts = sorted({labels_lib.labels_to_text(labels[k], k) for k in labels})
  return BuildPlan(split_keys=split_keys, labels=labels, texts=texts, sensor_ranges=ranges)


class _SplitTally:
  """Counts per sensor and source, NaN replacements, (train) running band sums, and how often
  a sample's `labels` attribute differs from metadata.parquet (which the build uses)."""

  def __init__(self, with_stats: bool):
    self.sensors = {s: 0 for s in preprocess.SENSORS}
    self.sources: dict[str, int] = {}
    self.nan_samples = {s: 0 for s in preprocess.SENSORS}
    self.nan_values = {s: 0 for s in preprocess.SENSORS}
    self.with_stats = with_stats
    self.sums = {s: np.zeros(preprocess.NUM_CHANNELS[s], np.float64) for s in preprocess.SENSORS}
    self.sq_sums = {s: np.zeros(preprocess.NUM_CHANNELS[s], np.float64) for s in preprocess.SENSORS}
    self.pixels = {s: 0 for s in preprocess.SENSORS}
    self.labels_checked, self.labels_differ, self.labels_example = 0, 0, None

  def add(self, sensor: str, source: str, image: np.ndarray, nans: int) -> None:
    self.sensors[sensor] += 1
    self.sources[source] = self.sources.get(source, 0) + 1
    if nans:
      self.nan_samples[sensor] += 1
      self.nan_values[sensor] += nans
    if self.with_stats:
      flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
      self.sums[sensor] += flat.sum(0)
      self.sq_sums[sensor] += np.square(flat).sum(0)
      self.pixels[sensor] += flat.shape[0]

  def compare_labels(self, key: str, attribute: list[str] | None, names: list[str]) -> None:
    if attribute is None:
      return
    self.labels_checked += 1
    if sorted(set(attribute)) != sorted(set(names)):
      self.labels_differ += 1
      if self.labels_example is None:
        self.labels_example = {"key": key, "attribute": attribute, "metadata": list(names)}

  def labels_attribute(self) -> dict:
    """{checked, differ, example}: samples with a `labels` attribute, those whose label set
    differs from metadata.parquet's, the first such sample."""
    return {"checked": self.labels_checked, "differ": self.labels_differ, "example": self.labels_example}

  def band_stats(self) -> dict:
    stats = {}
    for s in preprocess.SENSORS:
      if self.pixels[s] == 0:
        stats[s] = None
        continue
      mean = self.sums[s] / self.pixels[s]
      var = np.maximum(self.sq_sums[s] / self.pixels[s] - mean**2, 0.0)
      stats[s] = {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "pixels": self.pixels[s],
        "bands": list(preprocess.S2_BANDS if s == "s2" else preprocess.S1_BANDS),
      }
    return stats

  def summary(self, name: str) -> str:
    parts = []
    for s in preprocess.SENSORS:
      srcs = [f"{k} {v}" for k, v in sorted(self.sources.items()) if preprocess.sensor_of_source(k) == s]
      parts.append(f"{s} {self.sensors[s]} ({', '.join(srcs) or 'none'})")
    nan = ", ".join(f"{s} {self.nan_samples[s]} samples / {self.nan_values[s]} values" for s in preprocess.SENSORS)
    differ = (
      f" | labels attribute differs from {METADATA_FILE} (which is used) for "
      f"{self.labels_differ} of {self.labels_checked}"
      if self.labels_differ
      else ""
    )
    return f"{name}: {sum(self.sensors.values())} samples | " + " | ".join(parts) + f" | NaN replaced: {nan}" + differ


class _OrderedShardWriter:
  """Writes serialized records, in order, to ArrayRecord shards of about `shard_bytes`.

  tfds' own writer passes every record through its Shuffler, which (a) reorders records
  unless keys are chosen to sort, and (b) spills splits over 1 GB to temporary files through
  TensorFlow's gfile, i.e. needs TensorFlow. Writing the shards directly keeps the record
  order (S2 then S1, by key), needs no TensorFlow and writes every byte once.
  """

  def __init__(self, template, options: str, shard_bytes: int):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    self._module = array_record_module
    self.template, self.options, self.shard_bytes = template, options, shard_bytes
    self.lengths: list[int] = []
    self.total_bytes = 0
    self._tmp_paths: list[Path] = []
    self._writer = None
    self._bytes_in_shard = 0

  def _open_shard(self) -> None:
    path = Path(os.fspath(self.template.data_dir)) / (
      f"{self.template.dataset_name}-{self.template.split}.shard{len(self._tmp_paths):05d}.tmp"
    )
    self._tmp_paths.append(path)
    self._writer = self._module.ArrayRecordWriter(os.fspath(path), self.options)
    self.lengths.append(0)
    self._bytes_in_shard = 0

  def write(self, record: bytes) -> None:
    if self._writer is None or self._bytes_in_shard >= self.shard_bytes:
      self._close_shard()
      self._open_shard()
    self._writer.write(record)
    self.lengths[-1] += 1
    self._bytes_in_shard += len(record)
    self.total_bytes += len(record)

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finalize(self) -> tuple[list[int], int]:
    """Closes the last shard and gives the shards their final tfds names."""
    self._close_shard()
    if not self.lengths:
      raise ValueError(f"split {self.template.split!r} has no samples")
    for index, path in enumerate(self._tmp_paths):
      final = self.template.sharded_filepath(shard_index=index, num_shards=len(self._tmp_paths))
      os.replace(path, os.fspath(final))
    return self.lengths, self.total_bytes


# --------------------------------------------------------------------------- builder


class CrisisLandmark(tfds.core.GeneratorBasedBuilder):
  """CrisisLandMark: Sentinel-2 / Sentinel-1 patches with land-cover and crisis labels."""

  VERSION = tfds.core.Version("2.1.0")
  RELEASE_NOTES = {
    "1.0.0": "First conversion: ArrayRecord, S2 13 bands, S1 VV/VH, lon/lat.",
    "2.0.0": "S1 channel rules chosen by the config (s1_rules; `full` reads every S1 source "
    "as stored (VV, VH), as the release's loader and card do; `full_pre_release` keeps "
    "the pre-release flips and QuakeSet slice) and verified per source (VV brighter "
    "than VH); S2 stored order named B1-B8, B8A, B9, B11, B12 (encoders get ESA "
    "order with a zero B10); numeric timestamps as ISO 8601 UTC, '' when missing or "
    "NaN; crs read as the card's float32 as well as int / string / WKT.",
    "2.1.0": "Synthetic configs (sample, tiny): a world with geography (zones with regional land "
    "cover, snow by latitude, altitude and season, crises on faults, river plains and "
    "fire runs within reach of their footprint) and a balanced query set (up to 30 "
    "land-cover, crisis and location-dependent queries, typed by the grid-cell rule). "
    "The conversion of `full` is unchanged.",
  }
  BUILDER_CONFIGS = [FULL, FULL_PRE_RELEASE, SAMPLE, TINY]
  DEFAULT_BUILDER_CONFIG_NAME = "sample"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds resolves a packaged builder's path through `importlib_resources`, which tfds
    # 4.9.10 does not declare on Python >= 3.9 (tensorflow/datasets#11212); this file is it.
    return epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord: what tfds.data_source / grain read without TensorFlow, and what we write.
    file_format = file_format or "array_record"
    if str(getattr(file_format, "value", file_format)) != "array_record":
      raise ValueError(f"crisis_landmark is written as ArrayRecord only, got file_format={file_format!r}")
    super().__init__(file_format=file_format, **kwargs)
    preprocess.check_s1_rules(self.builder_config.s1_rules)
    self._plan: BuildPlan | None = None
    self._release: Path | None = None
    self._s1_check: preprocess.S1OrderCheck | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Text-to-image retrieval over Sentinel-2 MSI and Sentinel-1 SAR patches "
      "(CrisisLandMark, Rege Cambrin et al. 2025).",
      features=_features(),
      homepage="https://huggingface.co/datasets/DarthReca/crisislandmark",
      citation="@misc{cambrin2025closp, title={Text-to-Remote-Sensing-Image Retrieval beyond "
      "RGB Sources}, author={Rege Cambrin, Daniele and Vaiani, Lorenzo and Gallipoli, "
      "Giuseppe and Cagliero, Luca and Garza, Paolo}, year={2025}, eprint={2507.10403}}",
      license="CC-BY-NC-4.0",
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  @contextlib.contextmanager
  def _release_folder(self, dl_manager) -> Iterator[Path]:
    config: CrisisLandmarkConfig = self.builder_config
    if not config.synthetic:
      folder = Path(dl_manager.manual_dir)
      check_release_folder(folder)
      yield folder
      return
    from closp_jax.data import synthetic  # pylint: disable=import-outside-toplevel

    # Beside the dataset (data_dir/downloads), where there is room for it, not in /tmp.
    parent = Path(os.fspath(dl_manager.download_dir))
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="crisis_landmark_sample_", dir=parent)
    try:
      print(
        f"crisis_landmark/{config.name}: writing the synthetic archive "
        f"({config.num_s2} S2 + {config.num_s1} S1, seed {config.seed}) to {tmp}",
        flush=True,
      )
      folder = Path(synthetic.write_archive(Path(tmp) / "release", config.num_s2, config.num_s1, config.seed))
      check_release_folder(folder)
      yield folder
    finally:
      shutil.rmtree(tmp, ignore_errors=True)

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    with self._release_folder(dl_manager) as folder:
      rows = read_metadata(folder / METADATA_FILE)
      limit = getattr(download_config, "max_examples_per_split", None)
      try:
        plan = make_plan(rows, self.builder_config, limit)
      except labels_lib.UnknownLabelError as err:  # empty or unknown labels of a metadata row
        raise labels_lib.UnknownLabelError(f"{folder / METADATA_FILE}: {err}") from None
      with ReleaseReader(folder) as reader:
        reader.check(plan.labels)
      self._copy_queries(folder, Path(self.data_dir))
      md = self.info.metadata
      md["texts"] = plan.texts
      md["sensor_ranges"] = plan.sensor_ranges
      md["validation"] = {
        "fraction": self.builder_config.validation_fraction,
        "min_per_sensor": self.builder_config.validation_min_per_sensor,
        "seed": self.builder_config.validation_seed,
        "also_in_test": True,
      }
      md["counts"], md["nan_replaced"], md["labels_attribute"] = {}, {}, {}
      md["queries_file"], md["qrels_dir"] = QUERIES_FILE, QRELS_DIR
      md["s1_rules"] = self.builder_config.s1_rules
      self._plan, self._release = plan, folder
      self._s1_check = preprocess.S1OrderCheck(self.builder_config.s1_rules)
      try:
        self._write_splits()
      finally:
        self._plan, self._release, self._s1_check = None, None, None

  def _write_splits(self) -> None:
    """Generates every split in order and writes its ArrayRecord shards."""
    config: CrisisLandmarkConfig = self.builder_config
    features = self.info.features
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    infos = []
    for split in SPLITS:
      template = self._get_filename_template(split)
      writer = _OrderedShardWriter(template, config.array_record_options, config.shard_bytes)
      for _, example in self._generate_examples(split):
        writer.write(serializer.serialize_example(features.encode_example(example)))
      lengths, size = writer.finalize()
      infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=size, filename_template=template))
    # Every S1 source over all its train + test samples (sources smaller than the early check's
    # S1_CHECK_FIRST_AT included); an error here leaves no dataset (tfds removes the folder).
    self.info.metadata["s1_vv_above_vh"] = self._s1_check.finish()
    self.info.set_splits(tfds.core.SplitDict(infos))

  @staticmethod
  def _copy_queries(folder: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / QUERIES_FILE, data_dir / QUERIES_FILE)
    shutil.copytree(folder / QRELS_DIR, data_dir / QRELS_DIR, dirs_exist_ok=True)

  def _split_generators(self, dl_manager):
    # Splits are written by _write_splits; tfds' generic path is not used (see
    # _OrderedShardWriter), but the method keeps the builder's standard shape.
    if self._plan is None:
      raise RuntimeError("crisis_landmark: _split_generators runs inside download_and_prepare")
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    plan, folder = self._plan, self._release
    keys = plan.split_keys[split]
    tally = _SplitTally(with_stats=split == "train")
    rules = self.builder_config.s1_rules
    check = self._s1_check if split != "validation" else None  # validation repeats test samples
    name = f"crisis_landmark/{self.builder_config.name} {split}"
    started = time.perf_counter()
    with ReleaseReader(folder) as reader:
      for index, key in enumerate(keys):
        if index and index % _PROGRESS_EVERY == 0:
          rate = index / (time.perf_counter() - started)
          print(f"{name}: {index}/{len(keys)} samples ({rate:.0f}/s)", flush=True)
        source = preprocess.source_of_key(key)
        sensor = preprocess.sensor_of_source(source)
        try:
          sample = reader.read(key)
          image, nans = preprocess.preprocess_image(sample.image, key, source, rules)
          lonlat = preprocess.center_lonlat(sample.coords, sample.crs, key)
        except preprocess.SampleFormatError as err:
          raise preprocess.SampleFormatError(f"{reader.where(key)}: {err}") from None
        if check is not None and sensor == "s1":
          check.add(source, key, preprocess.vv_vh_means(sample.image, key, source, rules))
        names = plan.labels[key]
        tally.add(sensor, source, image, nans)
        tally.compare_labels(key, sample.labels, names)
        yield (
          index,
          {
            "key": key,
            "source": source,
            "sensor": sensor,
            "image": image,
            "text": labels_lib.labels_to_text(names, key),
            "labels": labels_lib.labels_to_multihot(names, key),
            "lonlat": lonlat,
            "timestamp": sample.timestamp,
          },
        )
    md = self.info.metadata
    md["counts"][split] = {
      "total": len(keys),
      "sensors": dict(tally.sensors),
      "sources": dict(sorted(tally.sources.items())),
    }
    md["nan_replaced"][split] = {"samples": dict(tally.nan_samples), "values": dict(tally.nan_values)}
    md["labels_attribute"][split] = tally.labels_attribute()
    if tally.with_stats:
      md["band_stats"] = tally.band_stats()
    line = tally.summary(name) + f" | {time.perf_counter() - started:.1f} s"
    log.info(line)
    print(line, flush=True)

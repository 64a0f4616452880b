"""grain input pipelines over the prepared `crisis_landmark` dataset.

Train: each step yields one S2 batch and one S1 batch (unpaired, as CLOSP trains), for
this JAX process only: every process reads its own contiguous share of each sensor's
records (grain's ShardByJaxProcess with drop_remainder, so all processes run the same
number of steps). Per sensor: shuffle (reshuffled every epoch) -> decode -> normalise ->
random flips / 90-degree rotations -> batch (drop_remainder) -> repeat. The shorter
sensor cycles while the longer one makes an epoch (CLOSP's "max_size_cycle"). Texts are
tokenised once (they are few and known at build time) and looked up by `text_id`.

Eval: every record of one split and sensor exactly once, in order; each process reads a
contiguous share; the last batch is padded and `mask` says which rows are real.

Both iterators are grain DatasetIterators: `get_state()` / `set_state()` and
`grain.checkpoint.CheckpointHandler` (orbax) work on them, and a given seed always gives
the same batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds

from closp_jax.data import (
  crisis_landmark,  # noqa: F401  (registers the builder)
  normalize,
  preprocess,
)
from closp_jax.data.labels import NUM_CLASSES
from closp_jax.data.tokenize import bucket_length, load_tokenizer, tokenize
from closp_jax.errors import UserError

# The sample variant's inputs: S2 / 10,000, S1 standardised with the train split's statistics.
DEFAULT_NORMALIZATION = {"s2": "scale", "s1": "standardize"}
S2_RGB = (3, 2, 1)  # B4, B3, B2 in the 13-band order
BATCH_KEYS = ("image", "input_ids", "attention_mask", "lonlat", "labels", "text_id")


# --------------------------------------------------------------------------- builder access


def default_data_dir() -> str:
  """$CLOSP_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("CLOSP_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def get_builder(
  name: str = "crisis_landmark/sample",
  data_dir: str | None = None,
  manual_dir=None,
  prepare: bool = True,
  config: crisis_landmark.CrisisLandmarkConfig | None = None,
) -> tfds.core.DatasetBuilder:
  """The `crisis_landmark` builder, prepared into `data_dir` first if it is not yet there.

  `manual_dir` is the official release folder (config `full`). `config` replaces the named
  config, e.g. a smaller synthetic sample:
  `CrisisLandmarkConfig(name="sample_small", synthetic=True, num_s2=400, num_s1=400)`.
  Prints progress and, after a build, the counts per split, sensor and source.
  """
  data_dir = os.fspath(data_dir or default_data_dir())
  if config is not None:
    builder = tfds.builder(name.split("/")[0], config=config, data_dir=data_dir, file_format="array_record")
  else:
    known = [f"crisis_landmark/{c.name}" for c in crisis_landmark.CrisisLandmark.BUILDER_CONFIGS]
    if name.split(":")[0] not in known + ["crisis_landmark"]:
      raise DatasetNameError(f"unknown dataset {name!r} (config.data.name): expected one of {', '.join(known)}")
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  if not prepare:
    raise DatasetNotPreparedError(
      f"{builder.info.full_name} is not prepared in {data_dir}; call get_builder(..., "
      f"prepare=True) or run `python -m closp_jax.data.pipeline {name} --data_dir {data_dir}`"
    )
  config = builder.builder_config
  if not getattr(config, "synthetic", False) and manual_dir is None:
    raise DatasetNotPreparedError(
      f"{name} converts the official release: pass manual_dir=<release folder> "
      f"(the trainer's --config.data.manual_dir), or use the synthetic crisis_landmark/sample.\n"
      + crisis_landmark.CrisisLandmark.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
  if not getattr(config, "synthetic", False):  # before tfds, whose own check is an AssertionError
    crisis_landmark.check_release_folder(Path(manual_dir))
  print(f"Preparing {builder.info.full_name} in {data_dir} ...", flush=True)
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
  builder.download_and_prepare(download_config=download_config, file_format="array_record")
  print(summary(builder), flush=True)
  return builder


class DatasetNameError(UserError, ValueError):
  """config.data.name names no crisis_landmark config."""


class DatasetNotPreparedError(UserError, FileNotFoundError):
  """The dataset is not prepared and cannot be prepared from what was given (no release folder)."""


def _metadata(builder, field: str):
  md = builder.info.metadata or {}
  if field not in md:
    raise KeyError(
      f"{builder.info.full_name} in {builder.data_dir} has no metadata {field!r}: "
      "it was not prepared by closp_jax.data.crisis_landmark; rebuild it"
    )
  return md[field]


def dataset_texts(builder) -> list[str]:
  """Sorted distinct texts over all splits; `text_id` indexes this list."""
  return list(_metadata(builder, "texts"))


def band_stats(builder) -> dict:
  """{"s2": {"mean": [13], "std": [13]}, "s1": {"mean": [2], "std": [2]}} of the train split."""
  return _metadata(builder, "band_stats")


def sensor_range(builder, split: str, sensor: str) -> tuple[int, int]:
  """[start, stop) record indices of `sensor` inside `split` (S2 first, then S1)."""
  ranges = _metadata(builder, "sensor_ranges")
  if split not in ranges:
    raise KeyError(f"split {split!r} not in {builder.info.full_name}: expected one of {', '.join(ranges)}")
  if sensor not in preprocess.SENSORS:
    raise ValueError(f"sensor must be one of {preprocess.SENSORS}, got {sensor!r}")
  start, stop = ranges[split][sensor]
  return int(start), int(stop)


def split_size(builder, split: str, sensor: str) -> int:
  """Number of `sensor` records in `split` (all processes together)."""
  start, stop = sensor_range(builder, split, sensor)
  return stop - start


def summary(builder) -> str:
  """Counts per split, sensor and source, and NaN replacements, as a small table."""
  counts = _metadata(builder, "counts")
  nans = builder.info.metadata.get("nan_replaced", {})
  lines = [f"{builder.info.full_name} ({builder.data_dir})"]
  for split, c in counts.items():
    lines.append(f"  {split:<10} {c['total']:>8} samples: " + ", ".join(f"{s} {n}" for s, n in c["sensors"].items()))
    lines.append("             " + ", ".join(f"{src} {n}" for src, n in c["sources"].items()))
    if split in nans:
      v = nans[split]["values"]
      lines.append("             NaN values replaced: " + ", ".join(f"{s} {n}" for s, n in v.items()))
  return "\n".join(lines)


# --------------------------------------------------------------------------- per-record transforms


def _process_share(count: int, shard_by_process: bool, drop_remainder: bool) -> tuple[int, int, int]:
  """(offset, size, per_process) of this JAX process's contiguous share of `count` items."""
  if shard_by_process:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
    index, num = shard.shard_index, shard.shard_count
  else:
    index, num = 0, 1
  if drop_remainder:
    per = count // num
    return index * per, per, per
  per = math.ceil(count / num) if count else 0
  start = min(index * per, count)
  return start, min(count, start + per) - start, per


class _Normalize:
  """Per-sensor image normalisation (closp_jax.data.normalize); picklable for grain workers."""

  def __init__(self, sensor: str, mode: str, stats: dict | None, divisor: float | None = None):
    self.shift, self.scale = normalize.affine(
      sensor, mode, preprocess.NUM_CHANNELS[sensor], divisor=divisor, stats=(stats or {}).get(sensor)
    )

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return ((image - self.shift) * self.scale).astype(np.float32, copy=False)


class _Decode:
  """tfds record -> {image, lonlat, labels, text_id, key} with the image normalised."""

  def __init__(self, texts: Sequence[str], normalize: _Normalize, sensor: str, rgb: bool = False):
    self.text_ids = {t: i for i, t in enumerate(texts)}
    self.normalize = normalize
    self.sensor = sensor
    self.rgb = rgb

  def __call__(self, record: dict) -> dict:
    key = _as_str(record["key"])
    sensor = _as_str(record["sensor"])
    if sensor != self.sensor:
      raise ValueError(
        f"record {key!r} is {sensor}, expected {self.sensor}: the dataset's "
        "sensor_ranges metadata does not match its records; rebuild it"
      )
    text = _as_str(record["text"])
    if text not in self.text_ids:
      raise KeyError(f"record {key!r}: text {text!r} is not in the dataset's text list")
    image = self.normalize(np.asarray(record["image"], np.float32))
    if self.rgb:
      image = to_rgb(image, self.sensor)
    return {
      "image": image,
      "lonlat": np.asarray(record["lonlat"], np.float32),
      "labels": np.asarray(record["labels"], np.float32),
      "text_id": np.int32(self.text_ids[text]),
      "key": key,
    }


def to_rgb(image: np.ndarray, sensor: str) -> np.ndarray:
  """RGB-only baseline input: S2 bands B4, B3, B2; S1 (VV, VH, VV - VH). HWC, after normalisation."""
  if sensor == "s2":
    return np.ascontiguousarray(image[..., list(S2_RGB)])
  return np.concatenate([image, image[..., :1] - image[..., 1:2]], axis=-1)


def image_channels(sensor: str, rgb: bool = False) -> int:
  """Channels of the batches' images: 13 (S2) or 2 (S1), 3 for the RGB baseline."""
  return 3 if rgb else preprocess.NUM_CHANNELS[sensor]


def _as_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


AUGMENTATIONS = ("none", "flips", "flips_rot90")


def augmentation_mode(augment) -> str:
  """'none', 'flips' (the authors': horizontal and vertical, each with p=0.5) or 'flips_rot90'
  (also a random multiple of 90 degrees); True means 'flips_rot90', False 'none'."""
  if augment is True or augment is False:
    return "flips_rot90" if augment else "none"
  if augment not in AUGMENTATIONS:
    raise ValueError(f"augmentation {augment!r}: expected one of {', '.join(AUGMENTATIONS)}")
  return str(augment)


class _Augment:
  """Random horizontal / vertical flips (each p=0.5) and, with rot90, 90-degree rotations (HWC images)."""

  def __init__(self, rot90: bool = True):
    self.rot90 = rot90

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    image = example["image"]
    k = rng.integers(4) if self.rot90 else 0
    hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
    if k:
      image = np.rot90(image, k, axes=(0, 1))
    if hflip:
      image = image[:, ::-1]
    if vflip:
      image = image[::-1]
    return {**example, "image": np.ascontiguousarray(image)}


class _Collate:
  """Stacks examples into a batch and looks their tokens up in the pre-tokenised table."""

  def __init__(self, input_ids: np.ndarray, attention_mask: np.ndarray, bucket: bool, with_keys: bool):
    self.input_ids, self.attention_mask = input_ids, attention_mask
    self.lengths = attention_mask.sum(1)
    self.bucket, self.with_keys = bucket, with_keys

  def __call__(self, examples: Sequence[dict]) -> dict:
    text_id = np.array([e["text_id"] for e in examples], np.int32)
    length = self.input_ids.shape[1]
    if self.bucket:
      length = bucket_length(int(self.lengths[text_id].max(initial=1)), length)
    batch = {
      "image": np.stack([e["image"] for e in examples]).astype(np.float32, copy=False),
      "input_ids": self.input_ids[text_id, :length],
      "attention_mask": self.attention_mask[text_id, :length],
      "lonlat": np.stack([e["lonlat"] for e in examples]),
      "labels": np.stack([e["labels"] for e in examples]),
      "text_id": text_id,
    }
    if self.with_keys:
      batch["mask"] = np.array([e["mask"] for e in examples], bool)
      batch["key"] = np.array([e["key"] for e in examples], dtype=str)
    return batch


class _ReadOrPad:
  """Index -> decoded example (mask True), or -1 -> an all-zero padding example."""

  def __init__(self, source, decode: _Decode, channels: int):
    self.source, self.decode = source, decode
    self.pad = {
      "image": np.zeros((preprocess.IMAGE_SIZE, preprocess.IMAGE_SIZE, channels), np.float32),
      "lonlat": np.zeros((2,), np.float32),
      "labels": np.zeros((NUM_CLASSES,), np.float32),
      "text_id": np.int32(0),
      "key": "",
      "mask": False,
    }

  def __call__(self, index: int) -> dict:
    if index < 0:
      return dict(self.pad)
    return {**self.decode(self.source[int(index)]), "mask": True}


def _token_table(builder, tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Tokens of every dataset text, padded to the bucket (16/32/64, at most max_len) of the longest.

  Columns past the longest text are padding in every row: the attention mask hides them and the
  pooling skips them, so cutting them changes no embedding, and label texts of a few tokens no
  longer run the text tower over 64 positions (docs/benchmarks.md, row text_bucket).
  """
  if tokenizer is None:
    tokenizer = load_tokenizer()
  return tokenize(tokenizer, dataset_texts(builder), max_len=max_len, bucket=True)


def _normalizer(builder, sensor: str, normalization, scale_divisor=None) -> _Normalize:
  modes = _modes(normalization)
  stats = band_stats(builder) if modes[sensor] == "standardize" else None
  return _Normalize(sensor, modes[sensor], stats, (scale_divisor or {}).get(sensor))


def input_kwargs(cfg) -> dict:
  """The iterators' input arguments from a run config: normalisation per sensor, the `scale`
  divisors and the RGB-only switch (config.data.normalization / scale_divisor / rgb)."""
  return {
    "normalization": normalize.modes_from_config(cfg),
    "scale_divisor": normalize.divisors_from_config(cfg),
    "rgb": bool(cfg.data.rgb),
  }


def _modes(normalization) -> dict[str, str]:
  """{'s2': mode, 's1': mode}: DEFAULT_NORMALIZATION updated with `normalization` (a mapping)."""
  modes = dict(DEFAULT_NORMALIZATION)
  for sensor, mode in dict(normalization or {}).items():
    if sensor not in modes:
      raise ValueError(f"normalization names sensor {sensor!r}; expected s2 and/or s1")
    if mode not in normalize.MODES:
      raise ValueError(f"{sensor} normalization {mode!r}: expected one of {', '.join(normalize.MODES)}")
    modes[sensor] = str(mode)
  return modes


def _data_source(builder, split: str):
  """The split's records, checked: every ArrayRecord shard is opened and its first record read now,
  so a missing, truncated or corrupt file is an error naming it before training starts."""
  try:
    source = builder.as_data_source(split=split)
  except Exception as err:  # tfds raises several types for a missing split / format
    raise ValueError(
      f"cannot read split {split!r} of {builder.info.full_name} in {builder.data_dir} as ArrayRecord: {err}"
    ) from err
  checked = CheckedSource(source, builder, split)
  for start in checked.shard_starts:
    if start < len(checked):
      checked[start]
  return checked


class DataFileError(UserError, OSError):
  """A prepared dataset file cannot be read (missing, truncated, corrupt); names the file."""


class CheckedSource:
  """A tfds ArrayRecord data source whose read errors name the shard file, the record and the fix.

  Picklable (grain workers receive it) and otherwise a plain random-access source.
  """

  def __init__(self, source, builder, split: str):
    self.source = source
    self.name = f"{builder.info.full_name} {split}"
    info = builder.info.splits[split]
    self.files = [os.fspath(p) for p in info.filepaths]
    self.shard_starts = list(np.cumsum([0] + list(info.shard_lengths))[:-1].astype(int))
    self.data_dir = os.fspath(builder.data_dir)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    try:
      return self.source[index]
    except Exception as err:  # array_record raises RuntimeError/OSError/ValueError
      shard = max(int(np.searchsorted(self.shard_starts, int(index), side="right")) - 1, 0)
      path = self.files[shard] if shard < len(self.files) else "?"
      state = (
        "is missing"
        if path != "?" and not os.path.exists(path)
        else f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:300]})"
      )
      raise DataFileError(
        f"{self.name}: record {index} lives in {path}, which {state}. The prepared dataset is "
        f"damaged (an interrupted copy, a full disk): delete {self.data_dir} and run again to "
        f"rebuild it"
      ) from err


# --------------------------------------------------------------------------- iterators


def _sensor_train_dataset(
  builder,
  source,
  sensor: str,
  *,
  batch_size: int,
  seed: int,
  texts,
  collate: _Collate,
  normalization,
  scale_divisor,
  augment,
  shard_by_process: bool,
  rgb: bool,
) -> grain.MapDataset:
  start, stop = sensor_range(builder, "train", sensor)
  offset, size, _ = _process_share(stop - start, shard_by_process, drop_remainder=True)
  if size < batch_size:
    raise ValueError(
      f"{builder.info.full_name} train has {stop - start} {sensor} samples, {size} for this "
      f"process: fewer than batch_size={batch_size} (batch_size is per sensor and per process)"
    )
  sensor_seed = int(np.random.SeedSequence([seed, preprocess.SENSORS.index(sensor)]).generate_state(1)[0])
  ds = grain.MapDataset.source(source)[start + offset : start + offset + size]
  ds = ds.shuffle(seed=sensor_seed)
  ds = ds.map(_Decode(texts, _normalizer(builder, sensor, normalization, scale_divisor), sensor, rgb))
  mode = augmentation_mode(augment)
  if mode != "none":
    ds = ds.random_map(_Augment(rot90=mode == "flips_rot90"), seed=sensor_seed + 1)
  return ds.batch(batch_size, drop_remainder=True, batch_fn=collate)


def train_iterator(
  builder,
  *,
  batch_size: int,
  seed: int,
  tokenizer=None,
  max_len: int = 64,
  bucket: bool = False,
  normalization=None,
  scale_divisor=None,
  augment="flips_rot90",
  num_epochs: int | None = None,
  worker_count: int = 0,
  shard_by_process: bool = True,
  rgb: bool = False,
  read_threads: int = 2,
  prefetch: int = 4,
) -> grain.DatasetIterator:
  """Iterator of {"s2": batch, "s1": batch}; batch_size is per sensor and per process.

  batch = {"image" float32 [B,120,120,C], "input_ids"/"attention_mask" int32 [B,T],
  "lonlat" float32 [B,2], "labels" float32 [B,12], "text_id" int32 [B]}. T is the smallest of
  16/32/64 (at most max_len) that holds the dataset's longest text, the same every batch; with
  `bucket` the smallest that holds the batch's longest text.
  normalization: {"s2": mode, "s1": mode} with modes of closp_jax.data.normalize ("none", "scale",
  "standardize"); sensors left out keep DEFAULT_NORMALIZATION. scale_divisor: {"s2": 10000.0, ...}
  for "scale" (the defaults of closp_jax.data.normalize when left out).
  `rgb` gives the RGB-only baseline input (S2 B4,B3,B2; S1 VV, VH, VV-VH after normalising).
  An epoch is one pass over the sensor with more batches; `num_epochs=None` repeats forever.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  texts = dataset_texts(builder)
  input_ids, attention_mask = _token_table(builder, tokenizer, max_len)
  collate = _Collate(input_ids, attention_mask, bucket, with_keys=False)
  source = _data_source(builder, "train")
  per_sensor = {
    sensor: _sensor_train_dataset(
      builder,
      source,
      sensor,
      batch_size=batch_size,
      seed=seed,
      texts=texts,
      collate=collate,
      normalization=normalization,
      scale_divisor=scale_divisor,
      augment=augment,
      shard_by_process=shard_by_process,
      rgb=rgb,
    )
    for sensor in preprocess.SENSORS
  }
  steps_per_epoch = max(len(ds) for ds in per_sensor.values())
  repeated = [per_sensor[s].repeat(None) for s in preprocess.SENSORS]
  if num_epochs is not None:
    repeated = [ds[: num_epochs * steps_per_epoch] for ds in repeated]
  zipped = grain.experimental.ZipMapDataset(repeated).map(_AsSensorDict())
  ds = zipped.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    _parse_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2))
  return iter(ds)


class _AsSensorDict:
  def __call__(self, pair):
    return dict(zip(preprocess.SENSORS, pair))


def steps_per_epoch(builder, batch_size: int, shard_by_process: bool = True) -> int:
  """Train steps in one epoch (the sensor with more batches), per process."""
  steps = []
  for sensor in preprocess.SENSORS:
    start, stop = sensor_range(builder, "train", sensor)
    steps.append(_process_share(stop - start, shard_by_process, True)[1] // batch_size)
  return max(steps)


def eval_iterator(
  builder,
  split: str,
  sensor: str,
  *,
  batch_size: int,
  tokenizer=None,
  max_len: int = 64,
  normalization=None,
  scale_divisor=None,
  shard_by_process: bool = True,
  rgb: bool = False,
  read_threads: int = 2,
  prefetch: int = 4,
) -> grain.DatasetIterator:
  """Every `sensor` record of `split` exactly once, in order, in batches of `batch_size`.

  Batches carry the train keys plus "mask" bool [B] (False on padding) and "key" (str
  array, "" on padding). With several JAX processes each reads a contiguous share and all
  yield the same number of batches (eval_steps).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  start, stop = sensor_range(builder, split, sensor)
  offset, size, per = _process_share(stop - start, shard_by_process, drop_remainder=False)
  steps = math.ceil(per / batch_size)
  indices = list(range(start + offset, start + offset + size))
  indices += [-1] * (steps * batch_size - len(indices))
  texts = dataset_texts(builder)
  input_ids, attention_mask = _token_table(builder, tokenizer, max_len)
  decode = _Decode(texts, _normalizer(builder, sensor, normalization, scale_divisor), sensor, rgb)
  ds = grain.MapDataset.source(indices).map(
    _ReadOrPad(_data_source(builder, split), decode, image_channels(sensor, rgb))
  )
  ds = ds.batch(
    batch_size, drop_remainder=False, batch_fn=_Collate(input_ids, attention_mask, bucket=False, with_keys=True)
  )
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)))


def eval_steps(builder, split: str, sensor: str, batch_size: int, shard_by_process: bool = True) -> int:
  """Number of batches eval_iterator yields (the same on every process)."""
  start, stop = sensor_range(builder, split, sensor)
  per = _process_share(stop - start, shard_by_process, drop_remainder=False)[2]
  return math.ceil(per / batch_size)


def _parse_absl_flags() -> None:
  """grain's worker processes read absl flags; mark them parsed in library use."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def tfds_build_main() -> None:
  """`tfds build` for crisis_landmark without TensorFlow.

  The `tfds` command imports TensorFlow at start-up (its convert_format module does), so
  where TensorFlow is absent this entry point runs tfds' own `build` command with the
  same flags: `python -m closp_jax.data.pipeline crisis_landmark/full --manual_dir M
  --data_dir D`. It prints the counts per split, sensor and source at the end.
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.scripts.cli import build as tfds_build  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.scripts.cli import cli_utils  # pylint: disable=import-outside-toplevel

  def run(args) -> None:
    args.execute()
    data_dir = args.paths.data_dir or default_data_dir()
    for name in args.positional_datasets + args.datasets or ["crisis_landmark"]:
      if args.generation.config:
        name = f"{name.split('/')[0]}/{args.generation.config}"
      builder = tfds.builder(name, data_dir=os.fspath(data_dir))
      if builder.is_prepared():
        print(summary(builder), flush=True)

  parser = cli_utils.make_flags_parser(
    tfds_build.Args, description="tfds build for crisis_landmark (no TensorFlow needed)"
  )
  app.run(run, flags_parser=parser)


if __name__ == "__main__":
  tfds_build_main()

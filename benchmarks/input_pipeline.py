"""Input pipeline throughput: grain train iterator vs. the original per-sample HDF5 loader.

  python benchmarks/input_pipeline.py                       # crisis_landmark/sample
  python benchmarks/input_pipeline.py --num_s2 1000 --num_s1 1000 --steps 10
  python benchmarks/input_pipeline.py --name crisis_landmark/full --release /data/crisislandmark

Prints samples/s of
  (a) closp_jax.data.pipeline.train_iterator (ArrayRecord via grain: decode, normalise,
      flips/rotations, token lookup, batching; one S2 and one S1 batch per step), and
  (b) reading the same archive as the authors' loader does: open crisislandmark.h5 for
      every sample, read image and centre coords, apply the channel quirks, NaN fill and
      the lon/lat conversion (no augmentation, no batching: less work than (a)).
For a synthetic config the archive for (b) is written again with the config's size and
seed (the same bytes the builder converted) into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (HDF5 filters of the release)
import numpy as np
import pyarrow.parquet as pq

from closp_jax.data import crisis_landmark, pipeline, preprocess
from closp_jax.data.tokenize import load_tokenizer


def make_grain_iterator(builder, batch_size: int, threads: int = 2, workers: int = 0, seed: int = 0):
  """The trainer's train iterator (closp_jax.data.pipeline.train_iterator) with its prefetch settings."""
  return pipeline.train_iterator(
    builder,
    batch_size=batch_size,
    seed=seed,
    tokenizer=load_tokenizer(),
    read_threads=threads,
    prefetch=grain_prefetch(threads),
    worker_count=workers,
  )


def grain_prefetch(threads: int) -> int:
  return max(2, 2 * threads)


def take_batches(it, steps: int, batch_size: int) -> None:
  """Pulls `steps` batches (each one S2 and one S1 batch of `batch_size`) from the iterator."""
  for _ in range(steps):
    batch = next(it)
    assert batch["s2"]["image"].shape[0] == batch_size


def grain_samples_per_s(builder, batch_size: int, steps: int, threads: int, workers: int, warmup: int = 2) -> float:
  it = make_grain_iterator(builder, batch_size, threads, workers)
  take_batches(it, warmup, batch_size)
  start = time.perf_counter()
  take_batches(it, steps, batch_size)
  return 2 * batch_size * steps / (time.perf_counter() - start)


def original_keys(
  release: Path, num_samples: int, split: str = "train", seed: int = 0, alternate: bool = True
) -> list[str]:
  """Keys of `split` as the original loader would visit them: random train keys alternating
  S2 / S1 (alternate=True), or the split's keys in file order (alternate=False, evaluation)."""
  table = pq.read_table(release / crisis_landmark.METADATA_FILE, columns=["key", "split"]).to_pydict()
  by_sensor = {"s2": [], "s1": []}
  ordered = []
  for key, key_split in zip(table["key"], table["split"]):
    if key_split == split:
      by_sensor[preprocess.sensor_of_source(preprocess.source_of_key(key))].append(key)
      ordered.append(key)
  if not alternate:
    return ordered[:num_samples]
  rng = np.random.default_rng(seed)
  keys = []
  for i in range(num_samples):
    group = by_sensor["s2" if i % 2 == 0 else "s1"]
    keys.append(group[rng.integers(len(group))])
  return keys


def read_original(master: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
  """One sample the way the authors' loader reads it: open the master file, read image and
  coords, apply the channel quirks and NaN fill, convert the centre to lon/lat.
  Returns (image HWC float32, lonlat float32 [2])."""
  with h5py.File(master, "r") as f:
    image = f[key]["image"][:]
    coords = f[key]["coords"][:]
    crs = f[key].attrs["crs"]
  source = preprocess.source_of_key(key)
  image, _ = preprocess.preprocess_image(image, key, source)
  return image, preprocess.center_lonlat(coords, crs, key)


def read_original_keys(release: Path, keys: list[str]) -> None:
  master = release / crisis_landmark.MASTER_FILE
  for key in keys:
    read_original(master, key)


def original_loader_samples_per_s(release: Path, num_samples: int, seed: int = 0) -> float:
  """Reads `num_samples` train samples (alternating S2 / S1) opening the master file each time."""
  keys = original_keys(release, num_samples, seed=seed)
  start = time.perf_counter()
  read_original_keys(release, keys)
  return num_samples / (time.perf_counter() - start)


def synthetic_release(builder, folder: Path) -> Path:
  """The release folder a synthetic config was converted from, written again (same bytes) under `folder`."""
  cfg = builder.builder_config
  if not getattr(cfg, "synthetic", False):
    raise ValueError(f"{builder.info.full_name} is not synthetic: pass its release folder instead")
  from closp_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  return Path(synthetic.write_archive(Path(folder) / "release", cfg.num_s2, cfg.num_s1, cfg.seed))


def bench_config(num_s2: int, num_s1: int):
  """A synthetic builder config of the given size (records as large as the release's)."""
  return crisis_landmark.CrisisLandmarkConfig(
    name=f"sample_{num_s2}_{num_s1}", synthetic=True, num_s2=num_s2, num_s1=num_s1, seed=0
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--name", default="crisis_landmark/sample")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--release", default=None, help="release folder (full config, and for (b))")
  parser.add_argument("--num_s2", type=int, default=None, help="smaller synthetic sample")
  parser.add_argument("--num_s1", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=64, help="per sensor")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--threads", type=int, default=2, help="grain read threads")
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  args = parser.parse_args()

  config = None
  if args.num_s2 or args.num_s1:
    config = bench_config(args.num_s2 or 0, args.num_s1 or 0)
  builder = pipeline.get_builder(args.name, data_dir=args.data_dir, manual_dir=args.release, config=config)
  cfg = builder.builder_config
  print(f"dataset: {builder.info.full_name} in {builder.data_dir}")
  print(f"machine: {os.cpu_count()} CPU(s)")

  rate = grain_samples_per_s(builder, args.batch_size, args.steps, args.threads, args.workers)
  print(
    f"(a) grain train iterator: {rate:8.1f} samples/s  (batch {args.batch_size} per sensor, "
    f"{args.threads} read threads, {args.workers} workers, {args.steps} steps)"
  )

  num = 2 * args.batch_size * args.steps
  with tempfile.TemporaryDirectory(prefix="closp_bench_") as tmp:
    release = Path(args.release) if args.release else None
    if release is None:
      if not getattr(cfg, "synthetic", False):
        raise SystemExit("--release is needed for a non-synthetic config")
      release = synthetic_release(builder, Path(tmp))
    orig = original_loader_samples_per_s(release, num)
  print(f"(b) per-sample HDF5 open:  {orig:8.1f} samples/s  ({num} samples, one process)")
  print(f"ratio (a)/(b): {rate / orig:.2f}")


if __name__ == "__main__":
  main()

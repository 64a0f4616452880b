"""A memory-mappable embedding index of an archive, built with an exported model.

INDEX/
  index.json          format, model (folder, name, step, fingerprint), source, count, complete
  embeddings.npy      float16 [count, embed_dim], unit rows; np.load(..., mmap_mode="r")
  metadata.parquet    one row per embedding: key, sensor, source, lon, lat, timestamp,
                      labels (list of str), record (dataset record index or -1), path (folder
                      patches, relative to the folder, or "")
While building: progress.json ({"done": rows}) and parts/meta-<start>.parquet per chunk; a
multi-process build (`build_index_shard`) also has shards/<i>-of-<n>/, one such index per process.

Building is resumable: rows are written chunk by chunk into the pre-allocated embeddings.npy,
then the chunk's metadata part, then progress.json (each file renamed into place), so a run
stopped at any moment resumes at the last recorded chunk. When all rows are in, the parts become
metadata.parquet and index.json says complete.

Images are embedded in calls of exactly `batch_size` patches (the last call padded with zeros), so
a row's embedding does not depend on the chunk size, on which rows share its chunk, or on how many
processes built the index: XLA's CPU convolutions round differently for different batch sizes
(tests/test_search.py, test_embeddings_do_not_depend_on_the_chunk).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax import atomic
from closp_jax.errors import UserError

FORMAT = "closp-jax-index"
VERSION = 1
COLUMNS = ("key", "sensor", "source", "lon", "lat", "timestamp", "labels", "record", "path")


class SearchIndexError(UserError, ValueError):
  """The index folder cannot be built or read as asked; the message says why and what to do."""


def _write_json(path: Path, obj: Any) -> None:
  atomic.write_json(path, obj, indent=2, sort_keys=True)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
  """sha256 (first 16 hex digits) of the export's config.json: names the model and its checkpoint."""
  return hashlib.sha256((Path(model_dir) / "config.json").read_bytes()).hexdigest()[:16]


def _table(items) -> Any:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel

  rows = [dataclasses.asdict(it) for it in items]
  return pa.table(
    {
      "key": pa.array([r["key"] for r in rows], pa.string()),
      "sensor": pa.array([r["sensor"] for r in rows], pa.string()),
      "source": pa.array([r["source"] for r in rows], pa.string()),
      "lon": pa.array([r["lon"] for r in rows], pa.float64()),
      "lat": pa.array([r["lat"] for r in rows], pa.float64()),
      "timestamp": pa.array([r["timestamp"] for r in rows], pa.string()),
      "labels": pa.array([r["labels"] for r in rows], pa.list_(pa.string())),
      "record": pa.array([r["record"] for r in rows], pa.int64()),
      "path": pa.array([r["path"] for r in rows], pa.string()),
    }
  )


def _write_parquet(table, path: Path) -> None:
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  atomic.write_with(path, lambda tmp: pq.write_table(table, tmp))


class _Progress:
  def __init__(self, total: int, start: int, enabled: bool, stream):
    self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
    self.t0 = time.perf_counter()

  def update(self, done: int) -> None:
    if not self.enabled:
      return
    rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else 0.0
    print(
      f"indexed {done}/{self.total} ({100.0 * done / max(self.total, 1):.0f}%, {rate:.0f}/s, "
      f"ETA {int(eta) // 60:02d}:{int(eta) % 60:02d})",
      file=self.stream,
      flush=True,
    )


def build_index(
  model_dir: str | os.PathLike,
  out: str | os.PathLike,
  source,
  *,
  chunk: int = 512,
  batch_size: int = 64,
  progress: bool = True,
  stream=None,
  stop_after_chunks: int | None = None,
  model=None,
) -> Path:
  """Embeds every item of `source` (sources.ArchiveSource / FolderSource) into the index `out`.

  Resumes an unfinished index of the same model and source; an existing index of another model or
  source is an error. `stop_after_chunks` stops early (as an interrupted run would), leaving an
  index that a later call completes. Returns the index folder.
  """
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  stream = stream or sys.stderr
  out = Path(out).absolute()
  model_dir = Path(model_dir).absolute()
  model = model or load_exported(model_dir)
  n, dim = len(source), int(model.embed_dim)
  manifest = {
    "format": FORMAT,
    "version": VERSION,
    "count": n,
    "embed_dim": dim,
    "dtype": "float16",
    "model": {
      "path": str(model_dir),
      "name": model.config.get("name"),
      "step": model.config.get("checkpoint", {}).get("step"),
      "fingerprint": model_fingerprint(model_dir),
    },
    "source": source.describe(),
    "complete": False,
  }
  emb_path, progress_path, parts = out / "embeddings.npy", out / "progress.json", out / "parts"
  done = 0
  if (out / "index.json").is_file():
    old = json.loads((out / "index.json").read_text())
    same = {k: old.get(k) for k in ("count", "embed_dim", "source")} == {
      k: manifest[k] for k in ("count", "embed_dim", "source")
    } and old.get("model", {}).get("fingerprint") == manifest["model"]["fingerprint"]
    if not same:
      raise SearchIndexError(
        f"{out} holds an index of another model or source ({old.get('model', {}).get('path')}, "
        f"{old.get('source')}); choose another --out or remove it"
      )
    if old.get("complete"):
      if progress:
        print(f"{out} is complete ({n} rows); nothing to do", file=stream, flush=True)
      return out
    done = int(json.loads(progress_path.read_text())["done"]) if progress_path.is_file() else 0
    emb = np.load(emb_path, mmap_mode="r+")
    if progress:
      print(f"resuming {out} at {done}/{n}", file=stream, flush=True)
  else:
    if out.exists() and any(out.iterdir()):
      raise SearchIndexError(f"{out} exists and is not an index folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float16, shape=(n, dim))
    _write_json(out / "index.json", manifest)
    _write_json(progress_path, {"done": 0})
  parts.mkdir(exist_ok=True)
  for stale in parts.glob("meta-*.parquet"):  # parts past the recorded progress are redone
    if int(stale.stem.split("-")[1]) >= done:
      stale.unlink()
  bar = _Progress(n, done, progress, stream)
  chunks = 0
  for start in range(done, n, chunk):
    if stop_after_chunks is not None and chunks >= stop_after_chunks:
      return out
    stop = min(start + chunk, n)
    items, images = zip(*(source.read(i) for i in range(start, stop)))
    rows = np.zeros((stop - start, dim), np.float32)
    for sensor in ("s2", "s1"):
      sel = [j for j, it in enumerate(items) if it.sensor == sensor]
      if sel:
        rows[sel] = embed_fixed_batch(model, np.stack([images[j] for j in sel]), sensor, batch_size)
    emb[start:stop] = rows.astype(np.float16)
    emb.flush()
    _write_parquet(_table(items), parts / f"meta-{start:012d}.parquet")
    _write_json(progress_path, {"done": stop})
    bar.update(stop)
    chunks += 1
  _finish(out, manifest, n)
  return out


def embed_fixed_batch(model, images: np.ndarray, sensor: str, batch_size: int) -> np.ndarray:
  """model.encode_image in calls of exactly batch_size patches (zero padding dropped afterwards)."""
  n = len(images)
  padded = -(-n // batch_size) * batch_size
  if padded != n:
    images = np.concatenate([images, np.zeros((padded - n,) + images.shape[1:], images.dtype)])
  return model.encode_image(images, sensor, batch_size=batch_size)[:n]


def _finish(out: Path, manifest: dict, n: int) -> None:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  files = sorted((out / "parts").glob("meta-*.parquet"))
  table = pa.concat_tables([pq.read_table(f) for f in files]) if files else _table([])
  if table.num_rows != n:
    raise SearchIndexError(
      f"{out}/parts holds {table.num_rows} metadata rows for {n} embeddings; remove {out} and index again"
    )
  _write_parquet(table, out / "metadata.parquet")
  _write_json(out / "index.json", {**manifest, "complete": True})
  shutil.rmtree(out / "parts", ignore_errors=True)
  (out / "progress.json").unlink(missing_ok=True)


class RowRange:
  """Rows [start, stop) of a source: what one process of a multi-process build embeds."""

  def __init__(self, source, start: int, stop: int):
    self.inner, self.start, self.stop = source, start, stop

  def __len__(self) -> int:
    return self.stop - self.start

  def describe(self) -> dict:
    return {**self.inner.describe(), "rows": [self.start, self.stop]}

  def read(self, i: int):
    return self.inner.read(self.start + i)


def shard_rows(n: int, process_id: int, num_processes: int) -> tuple[int, int]:
  """Process i's contiguous rows of n: the first n % p processes take one more."""
  base, extra = divmod(n, num_processes)
  start = process_id * base + min(process_id, extra)
  return start, start + base + (process_id < extra)


def shard_dir(out: str | os.PathLike, process_id: int, num_processes: int) -> Path:
  return Path(out).absolute() / "shards" / f"{process_id:05d}-of-{num_processes:05d}"


def build_index_shard(model_dir, out, source, process_id: int, num_processes: int, **kwargs) -> Path:
  """One process's part of a multi-process build: its rows of `source` into out/shards/<i>-of-<n>/
  (a resumable index of its own). When every shard is complete, `merge_shards` makes `out`."""
  start, stop = shard_rows(len(source), process_id, num_processes)
  return build_index(model_dir, shard_dir(out, process_id, num_processes), RowRange(source, start, stop), **kwargs)


def merge_shards(model_dir, out, source, num_processes: int, *, stream=None) -> Path:
  """Concatenates the complete shards of out/shards/ into the index `out`, then removes them.

  The embeddings are copied shard by shard into a temporary embeddings file that is renamed into
  place, then metadata.parquet, then index.json (complete) last: a merge stopped at any moment is
  redone by calling it again while the shards are there.
  """
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  out, model_dir = Path(out).absolute(), Path(model_dir).absolute()
  n = len(source)
  shards = [open_index(shard_dir(out, i, num_processes)) for i in range(num_processes)]
  dim = int(shards[0].manifest["embed_dim"])
  manifest = {**shards[0].manifest, "count": n, "source": source.describe(), "complete": False}
  manifest["model"] = {**manifest["model"], "path": str(model_dir)}
  if sum(len(s) for s in shards) != n:
    raise SearchIndexError(
      f"{out}/shards hold {sum(len(s) for s in shards)} rows, the source {n}; remove {out}/shards and index again"
    )
  tmp = out / f".embeddings.npy.tmp{os.getpid()}"
  emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
  at = 0
  for s in shards:
    for lo in range(0, len(s), 1 << 18):
      hi = min(lo + (1 << 18), len(s))
      emb[at + lo : at + hi] = s.embeddings[lo:hi]
    at += len(s)
  emb.flush()
  del emb
  os.replace(tmp, out / "embeddings.npy")
  table = pa.concat_tables([pq.read_table(s.folder / "metadata.parquet") for s in shards])
  _write_parquet(table, out / "metadata.parquet")
  _write_json(out / "index.json", {**manifest, "complete": True})
  shutil.rmtree(out / "shards", ignore_errors=True)
  if stream is not None:
    print(f"merged {num_processes} shards into {out} ({n} rows)", file=stream, flush=True)
  return out


@dataclasses.dataclass
class SearchIndex:
  """An opened, complete index: memory-mapped embeddings and the metadata columns."""

  folder: Path
  manifest: dict
  embeddings: np.ndarray  # float16 [N, D], memory-mapped
  meta: dict[str, np.ndarray]  # COLUMNS -> arrays (labels: object array of lists)

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  def row(self, i: int) -> dict:
    return {c: _py(self.meta[c][i]) for c in COLUMNS}

  def row_of(self, key: str) -> int:
    """The row holding `key` (the first, if a key repeats); SearchIndexError when there is none."""
    cache = self.__dict__.setdefault("_cache", {})
    if "rows" not in cache:
      rows: dict[str, int] = {}
      for i, k in enumerate(self.meta["key"]):
        rows.setdefault(str(k), i)
      cache["rows"] = rows
    try:
      return cache["rows"][str(key)]
    except KeyError:
      raise SearchIndexError(f"unknown key {key!r}: {self.folder} has no such patch") from None

  def source(self):
    from closp_jax.search_lib.sources import open_source  # pylint: disable=import-outside-toplevel

    return open_source(self.manifest["source"])


def _py(v):
  if isinstance(v, np.generic):
    return v.item()
  return list(v) if isinstance(v, (list, np.ndarray)) else v


def open_index(folder: str | os.PathLike) -> SearchIndex:
  """Opens a complete index (embeddings memory-mapped); a clear error when it is not one."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  folder = Path(folder)
  path = folder / "index.json"
  if not path.is_file():
    raise SearchIndexError(
      f"{path} not found: build the index with `python -m closp_jax.search index ... --out {folder}`"
    )
  manifest = json.loads(path.read_text())
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise SearchIndexError(
      f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, expected "
      f"{FORMAT!r} version {VERSION}"
    )
  if not manifest.get("complete"):
    done = json.loads((folder / "progress.json").read_text())["done"] if (folder / "progress.json").is_file() else 0
    raise SearchIndexError(
      f"{folder} is incomplete ({done}/{manifest['count']} rows); run the same "
      "`python -m closp_jax.search index` command again to finish it"
    )
  emb = np.load(folder / "embeddings.npy", mmap_mode="r")
  table = pq.read_table(folder / "metadata.parquet")
  if emb.shape != (manifest["count"], manifest["embed_dim"]) or table.num_rows != manifest["count"]:
    raise SearchIndexError(
      f"{folder}: embeddings {emb.shape} / metadata {table.num_rows} rows do not match index.json "
      f"({manifest['count']} x {manifest['embed_dim']})"
    )
  missing = [c for c in COLUMNS if c not in table.column_names]
  if missing:
    raise SearchIndexError(f"{folder / 'metadata.parquet'} lacks columns {missing}")
  meta = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS if c != "labels"}
  labels = np.empty(table.num_rows, dtype=object)
  for i, names in enumerate(table.column("labels").to_pylist()):
    labels[i] = names
  meta["labels"] = labels
  return SearchIndex(folder=folder, manifest=manifest, embeddings=emb, meta=meta)

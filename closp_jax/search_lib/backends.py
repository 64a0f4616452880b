"""Top-k over an index's float16 embeddings: exact (the default) or approximate (faiss IVF-PQ, HNSW).

Every backend answers `search(queries [Q, D] float32, k, mask=None) -> (scores [Q, k], rows [Q, k])`,
best first, rows -1 / scores -inf past the last allowed row, equal scores listing the lower row
first within the returned k.

* `exact` scores every allowed row. On a CPU with faiss installed, batches of fewer than
  FAISS_MAX_QUERIES queries (the server, the CLI) go through a faiss flat index of the stored float16
  values (IndexScalarQuantizer QT_fp16: the same bytes as embeddings.npy, decoded exactly and scored
  in float32, no partitioning, no approximation); larger batches, and any accelerator, go through
  closp_jax.retrieval.topk.topk_search, which wins there (docs/benchmarks.md, "Search indexes").
* `ivfpq` (faiss IVF{nlist},PQ{m}x8) and `hnsw` (faiss HNSW{M},SQ8) find `refine` x k candidates
  that are then scored exactly against the float16 rows (read from the memory map), so the scores
  returned are always the exact ones; only which rows are found can differ from `exact`. They are
  built once into INDEX/ann-<type>.faiss (+ .json) by `build_ann` (`closp-search index --index_type`).
* Filters: rows outside `mask` are never returned. When at most SUBSET_EXACT rows pass a filter,
  every backend scores exactly those rows (gathered from the memory map), so narrow filters never
  lose results to an approximate index; wider ones use faiss's ID selector inside the index.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax import atomic
from closp_jax.errors import UserError

INDEX_TYPES = ("exact", "ivfpq", "hnsw")
FAISS_MAX_QUERIES = 32  # faiss fp16 flat for smaller batches; topk_search from here (benchmarks/index_scale.py)
SUBSET_EXACT = 65536  # filters passing at most this many rows are searched exactly by every backend
ADD_CHUNK = 262144  # rows converted to float32 at a time while building


class BackendError(UserError, ValueError):
  """An index type that is unknown, not built, or needs a package that is missing."""


def _faiss(why: str):
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise BackendError(f"{why} needs faiss: pip install 'closp-jax[search]' (faiss-cpu)") from e
  return faiss


def faiss_available() -> bool:
  return importlib.util.find_spec("faiss") is not None


def _finish(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads to k columns and orders each query's results by (-score, row): ties list the lower row first."""
  q = scores.shape[0]
  out_s = np.full((q, k), -np.inf, np.float32)
  out_r = np.full((q, k), -1, np.int64)
  for i in range(q):
    ok = rows[i] >= 0
    s, r = scores[i][ok], rows[i][ok]
    order = np.lexsort((r, -s))[:k]
    out_s[i, : len(order)], out_r[i, : len(order)] = s[order], r[order]
  return out_s, out_r


def exact_rows(queries: np.ndarray, embeddings: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k among the given rows (gathered from the memory map, scored in float32)."""
  rows = np.asarray(rows, np.int64)
  if rows.size == 0:
    return _finish(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
  order = np.argsort(rows)  # sorted reads from the memory map
  rows = rows[order]
  block = np.asarray(embeddings[rows], np.float32)
  scores = np.asarray(queries, np.float32) @ block.T
  take = min(k, rows.size)
  part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
  return _finish(np.take_along_axis(scores, part, 1), rows[part], k)


def _bitmap_selector(faiss, mask: np.ndarray):
  bits = np.packbits(mask.astype(np.uint8), bitorder="little")
  sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
  sel.bits_ref = bits  # keep the buffer alive as long as the selector
  return sel


def _fp16_flat(faiss, embeddings: np.ndarray):
  """A faiss flat index over the float16 rows, its codes copied byte for byte from embeddings.npy."""
  n, d = embeddings.shape
  index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
  codes = np.ascontiguousarray(embeddings, dtype="<f2").view(np.uint8).reshape(-1)
  faiss.copy_array_to_vector(codes, index.codes)
  index.ntotal = n
  return index


class _Backend:
  """The common part of search(): float32 queries, k capped at N, narrow filters scored exactly."""

  embeddings: np.ndarray

  def search(self, queries, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(k, self.embeddings.shape[0])
    if mask is not None and int(mask.sum()) <= SUBSET_EXACT:
      return exact_rows(queries, self.embeddings, np.flatnonzero(mask), k)
    return self._search(queries, k, mask)

  def _search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError


class ExactBackend(_Backend):
  """Scores every allowed row (see the module docstring for which engine runs)."""

  kind = "exact"

  def __init__(self, embeddings: np.ndarray, engine: str = "auto"):
    if engine not in ("auto", "faiss", "jax"):
      raise BackendError(f"exact engine must be auto, faiss or jax, got {engine!r}")
    self.embeddings = embeddings
    self.engine = engine
    self._flat = None

  def _use_faiss(self, num_queries: int) -> bool:
    if self.engine != "auto":
      return self.engine == "faiss"
    if not faiss_available():
      return False
    import jax  # pylint: disable=import-outside-toplevel

    return jax.default_backend() == "cpu" and num_queries < FAISS_MAX_QUERIES

  def flat(self):
    if self._flat is None:
      self._flat = _fp16_flat(_faiss("the exact faiss engine"), self.embeddings)
    return self._flat

  def _search(self, queries, k, mask):
    if self._use_faiss(len(queries)):
      faiss = _faiss("the exact faiss engine")
      params = faiss.SearchParameters(sel=_bitmap_selector(faiss, mask)) if mask is not None else None
      scores, rows = self.flat().search(queries, k, params=params)
      return _finish(scores, rows, k)
    from closp_jax.retrieval.topk import topk_search  # pylint: disable=import-outside-toplevel

    scores, rows = topk_search(queries, self.embeddings, k, corpus_mask=mask)
    return _finish(scores, rows, k)


# ---- approximate indexes ------------------------------------------------------------------------


@dataclasses.dataclass
class AnnParams:
  """Build and search parameters of an approximate index (defaults follow the row count)."""

  nlist: int = 0  # ivfpq: inverted lists (0: 4 sqrt(N), a power of two in [16, 8192])
  pq_m: int = 0  # ivfpq: sub-quantizers of 8 bits (0: D / 4, i.e. D / 4 bytes per row)
  nprobe: int = 0  # ivfpq: lists visited per query (0: nlist / 16, at least 32)
  hnsw_m: int = 32  # hnsw: graph degree
  ef_construction: int = 80
  ef_search: int = 256  # hnsw: candidate list while searching (at least refine x k)
  refine: int = 0  # candidates re-scored exactly: refine x k (0: 10 for ivfpq, 4 for hnsw)
  train_size: int = 0  # rows sampled to train (0: 64 x nlist for ivfpq, 65,536 for hnsw's SQ8)

  def resolved(self, kind: str, n: int, d: int) -> AnnParams:
    p = dataclasses.replace(self)
    if kind == "ivfpq":
      if not p.nlist:
        p.nlist = int(min(8192, max(16, 2 ** round(math.log2(max(4.0 * math.sqrt(n), 16))))))
      p.nlist = min(p.nlist, max(1, n // 39))
      if not p.nprobe:
        p.nprobe = max(32, p.nlist // 16)
      p.nprobe = min(p.nprobe, p.nlist)
      if not p.pq_m:
        p.pq_m = d // 4
      if d % p.pq_m:
        raise BackendError(f"--pq_m {p.pq_m} must divide the embedding dim {d}")
      if not p.train_size:
        p.train_size = 64 * p.nlist
      if n < 256:
        raise BackendError(
          f"an ivfpq index needs at least 256 rows to train its 8-bit codes, this index has {n}; use the exact index"
        )
    elif not p.train_size:
      p.train_size = 65536
    if not p.refine:
      p.refine = 10 if kind == "ivfpq" else 4
    p.train_size = min(p.train_size, n)
    return p


def ann_paths(folder: Path, kind: str) -> tuple[Path, Path]:
  return folder / f"ann-{kind}.faiss", folder / f"ann-{kind}.json"


def _factory(faiss, kind: str, d: int, p: AnnParams):
  if kind == "ivfpq":
    index = faiss.index_factory(d, f"IVF{p.nlist},PQ{p.pq_m}x8", faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False  # the factory's default; slow, and unused by IVF-PQ search
    return index
  if kind == "hnsw":
    index = faiss.index_factory(d, f"HNSW{p.hnsw_m},SQ8", faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = p.ef_construction
    return index
  raise BackendError(f"unknown index type {kind!r}: expected one of {INDEX_TYPES}")


def build_ann(
  folder: str | os.PathLike,
  embeddings: np.ndarray,
  kind: str,
  params: AnnParams | None = None,
  *,
  seed: int = 0,
  stream=None,
) -> Path:
  """Trains and fills an approximate index over `embeddings` (float16 [N, D]) into folder/ann-<kind>.faiss.

  Rows are converted to float32 ADD_CHUNK at a time; the training sample is `train_size` rows drawn
  without replacement (seeded). The .json beside it records the parameters, the row count and the
  build time; both files are written through a temporary file and a rename.
  """
  faiss = _faiss(f"--index_type {kind}")
  if kind == "exact":
    raise BackendError("the exact index needs no building")
  folder = Path(folder)
  n, d = embeddings.shape
  p = (params or AnnParams()).resolved(kind, n, d)
  index = _factory(faiss, kind, d, p)
  t0 = time.perf_counter()
  rng = np.random.default_rng(seed)
  sample = np.sort(rng.choice(n, size=p.train_size, replace=False))
  index.train(np.asarray(embeddings[sample], np.float32))
  t_train = time.perf_counter() - t0
  for start in range(0, n, ADD_CHUNK):
    index.add(np.asarray(embeddings[start : start + ADD_CHUNK], np.float32))
    if stream is not None:
      print(f"{kind}: added {min(start + ADD_CHUNK, n)}/{n}", file=stream, flush=True)
  seconds = time.perf_counter() - t0
  index_path, meta_path = ann_paths(folder, kind)
  atomic.write_with(index_path, lambda tmp: faiss.write_index(index, str(tmp)))
  atomic.write_json(
    meta_path,
    {
      "type": kind,
      "count": n,
      "embed_dim": d,
      "params": dataclasses.asdict(p),
      "build_seconds": round(seconds, 3),
      "train_seconds": round(t_train, 3),
      "faiss_version": faiss.__version__,
    },
    indent=2,
    sort_keys=True,
  )
  return index_path


class AnnBackend(_Backend):
  """An approximate faiss index whose candidates are re-scored exactly against the float16 rows."""

  def __init__(
    self,
    folder: str | os.PathLike,
    embeddings: np.ndarray,
    kind: str,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    refine: int | None = None,
  ):
    faiss = _faiss(f"--index_type {kind}")
    self.kind, self.embeddings = kind, embeddings
    index_path, meta_path = ann_paths(Path(folder), kind)
    if not index_path.is_file() or not meta_path.is_file():
      raise BackendError(
        f"{index_path} not found: build it with `closp-search index --index_type {kind} ...` "
        "(the same command that built the index, plus --index_type)"
      )
    meta = json.loads(meta_path.read_text())
    if meta.get("count") != embeddings.shape[0]:
      raise BackendError(
        f"{index_path} holds {meta.get('count')} rows, the index {embeddings.shape[0]}: "
        f"remove it and build it again with --index_type {kind}"
      )
    self.params = AnnParams(**meta["params"])
    if nprobe:
      self.params.nprobe = nprobe
    if ef_search:
      self.params.ef_search = ef_search
    if refine:
      self.params.refine = refine
    self.index = faiss.read_index(str(index_path))
    self._faiss = faiss

  def _search_params(self, mask, k: int):
    faiss = self._faiss
    sel = _bitmap_selector(faiss, mask) if mask is not None else None
    if self.kind == "ivfpq":
      return (
        faiss.SearchParametersIVF(sel=sel, nprobe=self.params.nprobe)
        if sel is not None
        else faiss.SearchParametersIVF(nprobe=self.params.nprobe)
      )
    ef = max(self.params.ef_search, k)
    return (
      faiss.SearchParametersHNSW(sel=sel, efSearch=ef) if sel is not None else faiss.SearchParametersHNSW(efSearch=ef)
    )

  def _search(self, queries, k, mask):
    cand = min(self.embeddings.shape[0], max(k, self.params.refine * k))
    _, rows = self.index.search(queries, cand, params=self._search_params(mask, cand))
    scores_out, rows_out = [], []
    for q, r in zip(queries, rows):
      r = np.unique(r[r >= 0])
      s, rr = exact_rows(q[None], self.embeddings, r, k)
      scores_out.append(s[0])
      rows_out.append(rr[0])
    return np.stack(scores_out), np.stack(rows_out)


def open_backend(folder: str | os.PathLike, embeddings: np.ndarray, kind: str = "exact", **search_params: Any):
  """The backend of `kind` for an index's embeddings (an approximate one must have been built)."""
  if kind == "exact":
    return ExactBackend(embeddings)
  if kind in INDEX_TYPES:
    return AnnBackend(folder, embeddings, kind, **search_params)
  raise BackendError(f"unknown --index_type {kind!r}: expected one of {', '.join(INDEX_TYPES)}")

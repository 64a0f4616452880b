"""Search indexes at archive scale: exact engines side by side, IVF-PQ and HNSW against exact.

    python benchmarks/index_scale.py --n 1000000 [--dim 384] [--queries 200] [--k 100] [--types exact,ivfpq,hnsw]
        [--workdir /tmp/index_scale] [--json benchmarks/results/index-scale-1M.json]

The vectors are synthetic unit vectors in float16, written to a memory-mapped embeddings.npy as
an index holds them: `--clusters` Gaussian centres (default 4,096, sizes drawn from a Zipf-like
law), each vector its centre plus isotropic noise of relative scale `--noise` (default 0.6, so a
vector's cosine to its centre is about 0.85), normalised. Queries come from the same law with
another seed. Real embedding sets are clustered like this (isotropic random vectors in 384
dimensions have no near neighbours at all, and no approximate index is useful on them); the
figures below hold for data with this structure, and `--noise` makes it harder.

Measured, all in one run (alternating nothing: each figure is a median over its repeats):
* exact engines (closp_jax.search_lib.backends.ExactBackend): closp-jax's topk_search and faiss's
  flat fp16 index (the bytes of embeddings.npy), for single queries (the server's load) and for a
  batch of all queries; faiss IndexFlatIP over a float32 copy too when it fits (--flat_f32_max rows);
* ground truth: the exact top-k of every query;
* ivfpq / hnsw: build time (train + add), index file size, process peak RSS after building,
  single-query queries/s, recall@k against exact (|found top-k & exact top-k| / k, averaged).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from closp_jax.search_lib import backends  # noqa: E402


def clustered_unit_vectors(
  path: Path | None,
  n: int,
  dim: int,
  *,
  clusters: int,
  noise: float,
  seed: int,
  centres_seed: int = 0,
  chunk: int = 262144,
) -> np.ndarray:
  """float16 [n, dim] unit rows (see the module docstring); written to `path` as .npy when given."""
  centres = np.random.default_rng(centres_seed).standard_normal((clusters, dim), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  weights = 1.0 / np.arange(1, clusters + 1) ** 0.5
  weights /= weights.sum()
  rng = np.random.default_rng(seed)
  out = (
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    if path is not None
    else np.empty((n, dim), np.float16)
  )
  for start in range(0, n, chunk):
    m = min(chunk, n - start)
    c = rng.choice(clusters, size=m, p=weights)
    x = centres[c] + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out[start : start + m] = x.astype(np.float16)
  if path is not None:
    out.flush()
  return out


def load() -> float:
  return os.getloadavg()[0]


def rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def single_qps(backend, queries: np.ndarray, k: int, count: int) -> float:
  backend.search(queries[:1], k)  # warm-up (compilation, index copy)
  times = []
  for q in queries[:count]:
    t = time.perf_counter()
    backend.search(q[None], k)
    times.append(time.perf_counter() - t)
  return 1.0 / float(np.median(times))


def batch_qps(fn, queries: np.ndarray, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return len(queries) / float(np.median(times))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
  k = truth.shape[1]
  return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--n", type=int, default=1_000_000)
  ap.add_argument("--dim", type=int, default=384)
  ap.add_argument("--queries", type=int, default=200)
  ap.add_argument("--k", type=int, default=100)
  ap.add_argument("--clusters", type=int, default=4096)
  ap.add_argument("--noise", type=float, default=0.6)
  ap.add_argument("--types", default="exact,ivfpq,hnsw")
  ap.add_argument("--single", type=int, default=50, help="queries timed one at a time")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--flat_f32_max", type=int, default=2_000_000, help="rows up to which IndexFlatIP(f32) runs too")
  ap.add_argument(
    "--auto_max",
    type=int,
    default=2_000_000,
    help="rows up to which the auto engine is timed too (above, it routes to the two rows above it)",
  )
  ap.add_argument("--nlist", type=int, default=0, help="ivfpq lists (0: the default, 4 sqrt(N) up to 8,192)")
  ap.add_argument("--nprobe", type=int, default=0)
  ap.add_argument("--ef_search", type=int, default=0)
  ap.add_argument("--refine", type=int, default=0)
  ap.add_argument("--workdir", default=None)
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  import faiss  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  work = Path(args.workdir or tempfile.mkdtemp(prefix="index_scale_"))
  work.mkdir(parents=True, exist_ok=True)
  report = {
    "n": args.n,
    "dim": args.dim,
    "queries": args.queries,
    "k": args.k,
    "clusters": args.clusters,
    "noise": args.noise,
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "jax": jax.__version__,
      "faiss": faiss.__version__,
    },
    "load_start": load(),
    "rows": [],
  }
  print(f"load average {load():.2f}; generating {args.n:,} x {args.dim} in {work}", flush=True)
  t0 = time.perf_counter()
  emb_path = work / f"embeddings-{args.n}-{args.dim}.npy"
  if emb_path.is_file():
    emb = np.load(emb_path, mmap_mode="r")
  else:
    clustered_unit_vectors(emb_path, args.n, args.dim, clusters=args.clusters, noise=args.noise, seed=1)
    emb = np.load(emb_path, mmap_mode="r")
  queries = clustered_unit_vectors(
    None, args.queries, args.dim, clusters=args.clusters, noise=args.noise, seed=2
  ).astype(np.float32)
  report["generate_s"] = time.perf_counter() - t0

  def row(**kw):
    kw["load"] = round(load(), 2)
    report["rows"].append(kw)
    print(json.dumps(kw), flush=True)

  ours = backends.ExactBackend(emb, engine="jax")
  fp16 = backends.ExactBackend(emb, engine="faiss")
  t = time.perf_counter()
  fp16.flat()
  row(index="exact", engine="faiss fp16 flat", what="load", seconds=round(time.perf_counter() - t, 2))
  t = time.perf_counter()
  truth_s, truth = ours.search(queries, args.k)
  row(index="exact", engine="closp-jax topk_search", what="ground truth", seconds=round(time.perf_counter() - t, 2))
  _, fp16_rows = fp16.search(queries, args.k)
  row(index="exact", engine="faiss fp16 flat", what="agreement with topk_search", recall=recall(fp16_rows, truth))
  types = args.types.split(",")
  if "exact" in types:
    for name, b in (("closp-jax topk_search", ours), ("faiss fp16 flat", fp16)):
      row(index="exact", engine=name, what="single", qps=round(single_qps(b, queries, args.k, args.single), 2))
      row(
        index="exact",
        engine=name,
        what=f"batch of {args.queries}",
        qps=round(batch_qps(lambda b=b: b.search(queries, args.k), queries, args.repeats), 2),
      )
    if args.n <= args.auto_max:
      auto = backends.ExactBackend(emb)
      auto._flat = fp16.flat()  # pylint: disable=protected-access  # one copy of the rows
      row(index="exact", engine="auto", what="single", qps=round(single_qps(auto, queries, args.k, args.single), 2))
      row(
        index="exact",
        engine="auto",
        what=f"batch of {args.queries}",
        qps=round(batch_qps(lambda: auto.search(queries, args.k), queries, args.repeats), 2),
      )
      del auto
    if args.n <= args.flat_f32_max:
      flat = faiss.IndexFlatIP(args.dim)
      for s in range(0, args.n, backends.ADD_CHUNK):
        flat.add(np.asarray(emb[s : s + backends.ADD_CHUNK], np.float32))
      flat.search(queries[:1], args.k)
      ts = []
      for q in queries[: args.single]:
        t = time.perf_counter()
        flat.search(q[None], args.k)
        ts.append(time.perf_counter() - t)
      row(index="exact", engine="faiss IndexFlatIP f32 copy", what="single", qps=round(1 / float(np.median(ts)), 2))
      row(
        index="exact",
        engine="faiss IndexFlatIP f32 copy",
        what=f"batch of {args.queries}",
        qps=round(batch_qps(lambda: flat.search(queries, args.k), queries, args.repeats), 2),
      )
      del flat
    row(index="exact", engine="-", what="memory", bytes=int(emb.nbytes))
  del fp16, ours  # the faiss copy of the rows: not needed while the approximate indexes build
  for kind in (t for t in types if t != "exact"):
    t = time.perf_counter()
    path = backends.build_ann(work, emb, kind, backends.AnnParams(nlist=args.nlist))
    build_s = time.perf_counter() - t
    meta = json.loads(backends.ann_paths(work, kind)[1].read_text())
    search_params = {
      k: v for k, v in (("nprobe", args.nprobe), ("ef_search", args.ef_search), ("refine", args.refine)) if v
    }
    b = backends.AnnBackend(work, emb, kind, **search_params)
    _, found = b.search(queries, args.k)
    row(
      index=kind,
      engine="faiss + exact re-scoring",
      what="build",
      seconds=round(build_s, 1),
      train_seconds=meta["train_seconds"],
      bytes=path.stat().st_size,
      peak_rss_gib=round(rss_gib(), 2),
      params={**meta["params"], **search_params},
    )
    row(
      index=kind,
      engine="faiss + exact re-scoring",
      what="single",
      qps=round(single_qps(b, queries, args.k, args.single), 2),
      recall=round(recall(found, truth), 4),
    )
    row(
      index=kind,
      engine="faiss + exact re-scoring",
      what=f"batch of {args.queries}",
      qps=round(batch_qps(lambda b=b: b.search(queries, args.k), queries, args.repeats), 2),
    )
    del b
  report["load_end"] = load()
  report["peak_rss_gib"] = rss_gib()
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  print(f"done; load average {load():.2f}; peak RSS {rss_gib():.2f} GiB", flush=True)


if __name__ == "__main__":
  main()

"""Fused text->all in the search library: each sensor's list mapped onto one scale, then merged."""

from pathlib import Path

import numpy as np
import pytest

from closp_jax.search_lib.index import SearchIndex
from closp_jax.search_lib.query import QueryError, search_text_vector


def _index(n_s2=40, n_s1=50, dim=16, seed=0) -> SearchIndex:
  """An in-memory index whose S1 embeddings all lean towards one direction, so that raw inner products
  put S1 above S2 for a query along it (the scale problem fusion addresses)."""
  rng = np.random.default_rng(seed)
  s2 = rng.normal(size=(n_s2, dim))
  s1 = rng.normal(size=(n_s1, dim)) + np.r_[3.0, np.zeros(dim - 1)]
  emb = np.concatenate([s2, s1])
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  n = n_s2 + n_s1
  meta = {
    "key": np.array([f"s2_{i}" for i in range(n_s2)] + [f"s1_{i}" for i in range(n_s1)]),
    "sensor": np.array(["s2"] * n_s2 + ["s1"] * n_s1),
    "source": np.array(["x"] * n),
    "lon": np.zeros(n),
    "lat": np.zeros(n),
    "timestamp": np.array([""] * n),
    "labels": np.empty(n, object),
    "record": np.arange(n),
    "path": np.array([""] * n),
  }
  meta["labels"][:] = [[] for _ in range(n)]
  return SearchIndex(folder=Path("."), manifest={}, embeddings=emb.astype(np.float16), meta=meta)


def _query(dim=16, seed=1):
  q = np.random.default_rng(seed).normal(size=dim) + np.r_[2.0, np.zeros(dim - 1)]
  return (q / np.linalg.norm(q)).astype(np.float32)


def test_raw_is_one_ranking_by_inner_product():
  index, q = _index(), _query()
  got = search_text_vector(index, q, k=10, fusion="raw")
  scores = np.asarray(index.embeddings, np.float32) @ q
  assert [r["row"] for r in got] == list(np.argsort(-scores, kind="stable")[:10])
  assert all(r["sensor"] == "s1" for r in got)  # the leaning sensor takes the whole top of the raw merge


def test_zscore_standardises_each_sensors_scores_over_its_whole_corpus():
  """Reference: for each sensor, (score - mean) / std of this query's scores over all of that
  sensor's rows (numpy, float64), then one merged ranking; both sensors now reach the top."""
  index, q = _index(), _query()
  got = search_text_vector(index, q, k=12, fusion="zscore")
  emb = np.asarray(index.embeddings, np.float64)
  fused = np.empty(len(emb))
  for sensor in ("s2", "s1"):
    rows = index.meta["sensor"] == sensor
    s = emb[rows] @ q.astype(np.float64)
    fused[rows] = (s - s.mean()) / s.std()
  want = np.argsort(-fused, kind="stable")[:12]
  assert [r["row"] for r in got] == list(want)
  np.testing.assert_allclose([r["score"] for r in got], fused[want], rtol=1e-5, atol=1e-5)
  assert {r["sensor"] for r in got} == {"s2", "s1"}


def test_rrf_interleaves_by_rank_and_reference_is_refused():
  index, q = _index(), _query()
  got = search_text_vector(index, q, k=6, fusion="rrf")
  assert [r["sensor"] for r in got] == ["s2", "s1"] * 3  # equal ranks: the sensor stored first leads
  with pytest.raises(QueryError, match="fusion 'reference' needs a reference set of texts"):
    search_text_vector(index, q, k=6, fusion="reference")
  with pytest.raises(Exception, match="fusion method 'best'"):
    search_text_vector(index, q, k=6, fusion="best")
  # one sensor asked for: nothing to fuse, the plain ranking
  only = search_text_vector(index, q, k=5, sensor="s2", fusion="zscore")
  assert all(r["sensor"] == "s2" for r in only)

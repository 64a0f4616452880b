"""Blocked exact top-k search against NumPy's full sort, ties included."""

import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax.retrieval.topk import topk_search


def numpy_topk(queries, corpus, k, mask=None):
  """Reference: full score matrix in float64, stable sort (lower index first on ties)."""
  scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
  if mask is not None:
    scores[:, ~mask] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def integer_data(seed, q, n, d):
  """Small integer vectors: exact dot products in float32 and many equal scores."""
  rng = np.random.default_rng(seed)
  return (rng.integers(-2, 3, (q, d)).astype(np.float32), rng.integers(-2, 3, (n, d)).astype(np.float32))


@pytest.mark.parametrize("n,k,block", [(103, 10, 16), (64, 20, 8), (50, 50, 7), (40, 5, 1000)])
def test_matches_numpy_with_ties(n, k, block):
  queries, corpus = integer_data(n, 9, n, 6)
  scores, index = topk_search(queries, corpus, k, block=block)
  want_scores, want_index = numpy_topk(queries, corpus, k)
  assert scores.dtype == np.float32 and index.dtype == np.int64
  assert scores.shape == index.shape == (9, k)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_array_equal(scores, want_scores.astype(np.float32))
  # The data really has ties inside the returned lists.
  assert np.any(scores[:, 1:] == scores[:, :-1])


def test_float_data_float16_corpus_and_jax_inputs():
  rng = np.random.default_rng(3)
  queries = rng.normal(size=(7, 16)).astype(np.float32)
  corpus = rng.normal(size=(300, 16)).astype(np.float16)
  scores, index = topk_search(jnp.asarray(queries), jnp.asarray(corpus), 25, block=64)
  want_scores, want_index = numpy_topk(queries, corpus.astype(np.float32), 25)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)


def test_mask_excludes_rows_and_pads_when_too_few_remain():
  queries, corpus = integer_data(4, 3, 30, 5)
  mask = np.zeros(30, bool)
  mask[[2, 5, 11, 17, 29]] = True
  scores, index = topk_search(queries, corpus, 8, block=8, corpus_mask=mask)
  want_scores, want_index = numpy_topk(queries, corpus, 5, mask)
  np.testing.assert_array_equal(index[:, :5], want_index)
  np.testing.assert_array_equal(scores[:, :5], want_scores.astype(np.float32))
  assert np.all(index[:, 5:] == -1) and np.all(np.isneginf(scores[:, 5:]))


def test_bad_arguments_are_named():
  queries, corpus = integer_data(5, 2, 10, 4)
  with pytest.raises(ValueError, match="1 <= k <= corpus size 10"):
    topk_search(queries, corpus, 11)
  with pytest.raises(ValueError, match="dim 3 but the corpus has dim 4"):
    topk_search(queries[:, :3], corpus, 2)
  with pytest.raises(ValueError, match=r"corpus_mask must be a bool array of shape \(10,\)"):
    topk_search(queries, corpus, 2, corpus_mask=np.ones(9, bool))
  with pytest.raises(ValueError, match="2-D"):
    topk_search(queries[0], corpus, 2)


@pytest.mark.parametrize(
  "n,k,block,segment,segment_k,max_bytes",
  [
    (203, 20, 64, 8, 2, 1 << 30),  # several blocks per call, many segments
    (203, 20, 64, 8, 2, 1),  # one block per call
    (97, 12, 40, 16, 3, 1 << 30),  # block not a multiple of the segment
    (300, 7, 300, 32, 6, 1 << 30),  # one block
  ],
)
def test_segmented_scan_matches_numpy_with_ties(n, k, block, segment, segment_k, max_bytes):
  queries, corpus = integer_data(n + k, 11, n, 6)
  scores, index = topk_search(
    queries, corpus, k, block=block, segment=segment, segment_k=segment_k, max_score_bytes=max_bytes
  )
  want_scores, want_index = numpy_topk(queries, corpus, k)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_segmented_scan_searches_again_when_one_segment_holds_the_top_k():
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(256, 8)).astype(np.float32)
  queries = rng.normal(size=(5, 8)).astype(np.float32)
  corpus[40:56] = queries[2] * 10  # query 2's best 16 documents share one segment of 32
  scores, index = topk_search(queries, corpus, 16, block=128, segment=32, segment_k=4)
  want_scores, want_index = numpy_topk(queries, corpus, 16)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert set(index[2]) == set(range(40, 56))


def test_segmented_scan_with_mask_pads_like_the_plain_scan():
  queries, corpus = integer_data(7, 4, 120, 5)
  mask = np.zeros(120, bool)
  mask[[3, 9, 40, 41, 42, 77, 119]] = True
  scores, index = topk_search(queries, corpus, 10, block=64, segment=8, segment_k=2, corpus_mask=mask)
  want_scores, want_index = numpy_topk(queries, corpus, 7, mask)
  np.testing.assert_array_equal(index[:, :7], want_index)
  np.testing.assert_array_equal(scores[:, :7], want_scores.astype(np.float32))
  assert np.all(index[:, 7:] == -1) and np.all(np.isneginf(scores[:, 7:]))

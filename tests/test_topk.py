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
  return (rng.integers(-2, 3, (q, d)).astype(np.float32),
          rng.integers(-2, 3, (n, d)).astype(np.float32))


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

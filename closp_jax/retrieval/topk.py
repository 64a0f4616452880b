"""Exact top-k inner-product search over a corpus too large for one score matrix.

The corpus is scanned in blocks of `block` rows: each block's scores
(queries @ block.T, float32) are reduced with `jax.lax.top_k` and merged into
a running [Q, k] top-k. Device memory is O(Q * (block + k) + block * D)
whatever the corpus size; the Q x N score matrix never exists.

Tie rule: equal scores keep the lower corpus index first (the order
`numpy.argsort(-scores, kind="stable")` gives). `jax.lax.top_k` prefers the
lower index among equal values, and every merge puts the earlier blocks'
candidates first, so the rule holds across blocks. Which of several tied
documents at the k-th place make the cut follows this rule; how the kept
documents are then ranked for the metrics and TREC files follows trec_eval
(see closp_jax/retrieval/metrics.py), which only reorders ties.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_MAX_INDEX = np.iinfo(np.int32).max


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(0, 1))
def _merge_block(best_scores, best_index, queries, block, valid, offset, *, k: int):
  """Folds one corpus block into the running top-k (scores float32, indices int32)."""
  scores = jnp.dot(queries, block.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)
  scores = jnp.where(valid[None, :], scores, -jnp.inf)
  block_scores, block_pos = jax.lax.top_k(scores, min(k, block.shape[0]))
  block_index = block_pos.astype(jnp.int32) + offset
  # Earlier blocks first: among equal scores top_k keeps the lower corpus index.
  all_scores = jnp.concatenate([best_scores, block_scores], axis=1)
  all_index = jnp.concatenate([best_index, block_index], axis=1)
  best_scores, pick = jax.lax.top_k(all_scores, k)
  best_index = jnp.take_along_axis(all_index, pick, axis=1)
  return best_scores, best_index


def _pad_rows(array, rows: int):
  missing = rows - array.shape[0]
  if missing == 0:
    return array
  return jnp.pad(array, [(0, missing)] + [(0, 0)] * (array.ndim - 1))


def topk_search(queries, corpus, k: int, block: int = 65536,
                corpus_mask=None) -> tuple[np.ndarray, np.ndarray]:
  """Top-k corpus rows by inner product for every query, exactly.

  Args:
    queries: [Q, D] numpy or jax array (any float dtype; scored in float32).
    corpus: [N, D] numpy or jax array (float16 is fine: blocks are cast on device).
    k: results per query, 1 <= k <= N.
    block: corpus rows scored at a time; bounds device memory.
    corpus_mask: optional [N] bool; False rows are never returned.

  Returns:
    (scores [Q, k] float32, indices [Q, k] int64), best first; equal scores
    list the lower corpus index first. When fewer than k rows are allowed by
    `corpus_mask`, the tail is padded with score -inf and index -1.
  """
  if getattr(queries, "ndim", None) != 2 or getattr(corpus, "ndim", None) != 2:
    raise ValueError(f"queries and corpus must be 2-D [rows, dim]; got shapes "
                     f"{getattr(queries, 'shape', None)} and {getattr(corpus, 'shape', None)}.")
  (num_queries, dim), (num_docs, corpus_dim) = queries.shape, corpus.shape
  if dim != corpus_dim:
    raise ValueError(f"queries have dim {dim} but the corpus has dim {corpus_dim}.")
  if not 1 <= k <= num_docs:
    raise ValueError(f"k={k}: expected 1 <= k <= corpus size {num_docs}.")
  if block < 1:
    raise ValueError(f"block={block}: expected a positive number of corpus rows.")
  if num_docs > _MAX_INDEX:
    raise ValueError(f"corpus of {num_docs} rows exceeds the int32 index range.")
  if corpus_mask is not None:
    corpus_mask = np.asarray(corpus_mask)
    if corpus_mask.shape != (num_docs,) or corpus_mask.dtype != np.bool_:
      raise ValueError(f"corpus_mask must be a bool array of shape ({num_docs},); got "
                       f"{corpus_mask.dtype} {corpus_mask.shape}.")

  block = min(block, num_docs)
  q = jnp.asarray(queries).astype(jnp.float32)
  best_scores = jnp.full((num_queries, k), -jnp.inf, jnp.float32)
  best_index = jnp.full((num_queries, k), -1, jnp.int32)
  positions = np.arange(block)
  for start in range(0, num_docs, block):
    stop = min(start + block, num_docs)
    rows = _pad_rows(jnp.asarray(corpus[start:stop]), block)
    valid = positions < stop - start
    if corpus_mask is not None:
      valid = valid & np.pad(corpus_mask[start:stop], (0, block - (stop - start)))
    best_scores, best_index = _merge_block(best_scores, best_index, q, rows,
                                           jnp.asarray(valid), jnp.int32(start), k=k)
  scores = np.asarray(best_scores)
  index = np.asarray(best_index).astype(np.int64)
  index[np.isneginf(scores)] = -1
  return scores, index

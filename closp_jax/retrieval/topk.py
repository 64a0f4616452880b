"""Exact top-k inner-product search over a corpus too large for one score matrix.

The corpus is scanned in blocks of at most `block` rows: each block's scores
(queries @ block.T, float32) are reduced to candidates and merged into a running
[Q, k] top-k. Several blocks go through one compiled call (as many as fit in
`max_score_bytes` of score matrices), so the selection of one block overlaps the
matrix product of the next. Device memory is O(group * Q * block + block * D)
whatever the corpus size; the Q x N score matrix never exists.

Candidates: `jax.lax.top_k(scores, k)` over a whole block costs far more than the
matrix product on CPUs (a partial sort per row, one thread) when k is large. So
each block is cut into segments of `segment` columns and only every segment's
best `segment_k` scores go on. That is exact unless a segment held more than
`segment_k` of a query's final top k. The scan tracks, per query, the largest
"segment floor" (a segment's segment_k-th score); a query whose floor reaches its
final k-th score may have lost a document, and is searched again without
segments. Results are therefore always exact; only the time depends on the data.

Tie rule: equal scores keep the lower corpus index first (the order
`numpy.argsort(-scores, kind="stable")` gives). `jax.lax.top_k` prefers the
lower index among equal values, and every merge lists earlier blocks and earlier
segments first, so the rule holds across blocks and segments (a floor equal to
the k-th score also triggers the search again). Which of several tied
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


SEGMENT = 4096  # columns per segment
SEGMENT_K = 32  # candidates kept per segment
MAX_SCORE_BYTES = 3 << 29  # score matrices held by one compiled call (1.5 GiB)


@functools.partial(jax.jit, static_argnames=("k", "segment", "segment_k"), donate_argnums=(0, 1))
def _merge_blocks(
  best_scores, best_index, queries, blocks, valids, offsets, limit, *, k: int, segment: int, segment_k: int
):
  """Folds equal-sized corpus blocks into the running top-k (scores float32, indices int32).

  With segment_k > 0 each block passes on the best segment_k scores of every segment of
  `segment` columns; also returns the largest segment floor per query (-inf without segments).
  `valids` (one bool row mask per block) masks the scores before selection; with valids=None
  (segmented scans without a corpus mask) only candidates at index >= `limit` (the zero rows
  padding the last block) are dropped, after selection: the segment floors still see them, so a
  segment they crowded is searched again like any other.
  """
  num_queries = queries.shape[0]
  all_scores, all_index = [best_scores], [best_index]
  floor = jnp.full((num_queries,), -jnp.inf, jnp.float32)
  for i, (block, offset) in enumerate(zip(blocks, offsets)):
    scores = jnp.dot(
      queries, block.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )
    if valids is not None:
      scores = jnp.where(valids[i][None, :], scores, -jnp.inf)
    if segment_k:
      parts = block.shape[0] // segment
      top, pos = jax.lax.top_k(scores.reshape(num_queries * parts, segment), segment_k)
      top = top.reshape(num_queries, parts, segment_k)
      floor = jnp.maximum(floor, jnp.max(top[:, :, -1], axis=1))
      pos = pos.reshape(num_queries, parts, segment_k) + (jnp.arange(parts) * segment)[None, :, None]
      top, pos = top.reshape(num_queries, -1), pos.reshape(num_queries, -1)
    else:
      top, pos = jax.lax.top_k(scores, min(k, block.shape[0]))
    index = pos.astype(jnp.int32) + offset
    if valids is None:
      top = jnp.where(index < limit, top, -jnp.inf)
    # Earlier blocks (and segments) first: among equal scores top_k keeps the lower corpus index.
    all_scores.append(top)
    all_index.append(index)
  best_scores, pick = jax.lax.top_k(jnp.concatenate(all_scores, axis=1), k)
  best_index = jnp.take_along_axis(jnp.concatenate(all_index, axis=1), pick, axis=1)
  return best_scores, best_index, floor


def _plan(
  num_docs: int, num_queries: int, block: int, segment: int, segmented: bool, max_score_bytes: int
) -> tuple[int, int, int]:
  """(rows per block, blocks per call, calls): equal blocks, equal calls, at most `block` rows per
  block (a multiple of `segment` when segmented) and about max_score_bytes of scores per call."""
  per_block = num_queries * block * 4
  max_group = max(1, max_score_bytes // max(per_block, 1))
  num_blocks = -(-num_docs // block)
  calls = -(-num_blocks // max_group)
  group = -(-num_blocks // calls)
  rows = -(-num_docs // (calls * group))
  if segmented:
    rows = -(-rows // segment) * segment
  return rows, group, calls


def _scan(q, corpus, corpus_mask, k: int, rows: int, group: int, calls: int, segment: int, segment_k: int):
  num_queries, num_docs = q.shape[0], corpus.shape[0]
  best_scores = jnp.full((num_queries, k), -jnp.inf, jnp.float32)
  best_index = jnp.full((num_queries, k), -1, jnp.int32)
  floor = jnp.full((num_queries,), -jnp.inf, jnp.float32)
  positions = np.arange(rows)
  for call in range(calls):
    blocks, valids, offsets = [], [], []
    for b in range(group):
      start = min((call * group + b) * rows, num_docs)
      stop = min(start + rows, num_docs)
      blocks.append(_pad_rows(jnp.asarray(corpus[start:stop]), rows))
      valid = positions < stop - start
      if corpus_mask is not None:
        valid = valid & np.pad(corpus_mask[start:stop], (0, rows - (stop - start)))
      valids.append(jnp.asarray(valid))
      offsets.append(jnp.int32(start))
    # Segmented scans without a corpus mask drop the padding after selection (no masking pass).
    masks = None if (segment_k and corpus_mask is None) else tuple(valids)
    best_scores, best_index, call_floor = _merge_blocks(
      best_scores,
      best_index,
      q,
      tuple(blocks),
      masks,
      tuple(offsets),
      jnp.int32(num_docs),
      k=k,
      segment=segment,
      segment_k=segment_k,
    )
    floor = jnp.maximum(floor, call_floor)
  return np.array(best_scores), np.array(best_index, dtype=np.int64), np.asarray(floor)


def _pad_rows(array, rows: int):
  missing = rows - array.shape[0]
  if missing == 0:
    return array
  return jnp.pad(array, [(0, missing)] + [(0, 0)] * (array.ndim - 1))


def topk_search(
  queries,
  corpus,
  k: int,
  block: int = 65536,
  corpus_mask=None,
  *,
  segment: int = SEGMENT,
  segment_k: int = SEGMENT_K,
  max_score_bytes: int = MAX_SCORE_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
  """Top-k corpus rows by inner product for every query, exactly.

  Args:
    queries: [Q, D] numpy or jax array (any float dtype; scored in float32).
    corpus: [N, D] numpy or jax array (float16 is fine: blocks are cast on device).
    k: results per query, 1 <= k <= N.
    block: at most this many corpus rows per score matrix; bounds device memory.
    corpus_mask: optional [N] bool; False rows are never returned.
    segment, segment_k: candidates per block are the best segment_k of every
      `segment` columns (used when segment_k < k and segment < block; 0 turns it off).
    max_score_bytes: score matrices one compiled call may hold (at least one block).

  Returns:
    (scores [Q, k] float32, indices [Q, k] int64), best first; equal scores
    list the lower corpus index first. When fewer than k rows are allowed by
    `corpus_mask`, the tail is padded with score -inf and index -1.
  """
  if getattr(queries, "ndim", None) != 2 or getattr(corpus, "ndim", None) != 2:
    raise ValueError(
      f"queries and corpus must be 2-D [rows, dim]; got shapes "
      f"{getattr(queries, 'shape', None)} and {getattr(corpus, 'shape', None)}."
    )
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
      raise ValueError(
        f"corpus_mask must be a bool array of shape ({num_docs},); got {corpus_mask.dtype} {corpus_mask.shape}."
      )

  block = min(block, num_docs)
  q = jnp.asarray(queries).astype(jnp.float32)
  segmented = 0 < segment_k < k and segment_k <= segment < block
  rows, group, calls = _plan(num_docs, num_queries, block, segment, segmented, max_score_bytes)
  scores, index, floor = _scan(q, corpus, corpus_mask, k, rows, group, calls, segment, segment_k if segmented else 0)
  if segmented:
    # A segment whose segment_k-th score reaches the k-th may have held more of the top k.
    again = np.flatnonzero(np.isfinite(floor) & (floor >= scores[:, -1]))
    if again.size:
      padded = np.pad(again, (0, _bucket(again.size) - again.size), mode="edge")
      plain = _plan(num_docs, padded.size, block, segment, False, max_score_bytes)
      s2, i2, _ = _scan(q[padded], corpus, corpus_mask, k, *plain, segment, 0)
      scores[again], index[again] = s2[: again.size], i2[: again.size]
  index[np.isneginf(scores)] = -1
  return scores, index


def _bucket(n: int) -> int:
  """n rounded up to a power of two (bounds the shapes the fallback compiles for)."""
  return 1 << max(0, int(n - 1).bit_length())

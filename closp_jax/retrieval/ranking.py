"""Text -> image retrieval figures for a set of queries over embedded corpora."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.retrieval.metrics import evaluate_run
from closp_jax.retrieval.topk import topk_search

TRAIN_TABLE_METRICS = ("nDCG@10", "nDCG@100", "nDCG@1000", "mAP@100", "R@10", "P@10")


def rank(query_emb: np.ndarray, corpus_emb: np.ndarray, corpus_keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q,k'], keys [Q,k']) with k' = min(k, N), exact, by blocked top-k."""
  k = min(int(k), len(corpus_keys))
  scores, idx = topk_search(query_emb, corpus_emb, k)
  return np.asarray(scores), np.asarray(corpus_keys)[np.asarray(idx)]


def run_dict(qids, scores, keys) -> dict[str, dict[str, float]]:
  return {str(q): {str(d): float(s) for d, s in zip(krow, srow)} for q, srow, krow in zip(qids, scores, keys)}


def retrieval_metrics(query_ids, query_emb, corpus_emb, corpus_keys, qrels, *, k: int = 1000,
                      metrics=TRAIN_TABLE_METRICS) -> dict[str, float]:
  """Mean metrics of the text->corpus ranking, judged by `qrels` restricted to this corpus."""
  keyset = set(map(str, corpus_keys))
  sub_qrels = {q: {d: g for d, g in rel.items() if d in keyset} for q, rel in qrels.items()}
  sub_qrels = {q: rel for q, rel in sub_qrels.items() if any(g > 0 for g in rel.values())}
  keep = [i for i, q in enumerate(query_ids) if str(q) in sub_qrels]
  if not keep:
    return {m: float("nan") for m in metrics}
  scores, keys = rank(np.asarray(query_emb)[keep], corpus_emb, corpus_keys, k)
  run = run_dict([query_ids[i] for i in keep], scores, keys)
  mean, _ = evaluate_run(run, sub_qrels, metrics=metrics)
  return mean


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """Average precision of one binary label over all samples, ties grouped (order-free).

  AP = sum over the distinct score thresholds t, highest first, of
  (R(t) - R(previous t)) * P(t), where P(t) and R(t) are the precision and recall of
  "score >= t". Tied samples enter together, so the value does not depend on their order
  (scikit-learn's `average_precision_score` follows the same definition). NaN when there
  is no positive sample.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(positive).ravel() > 0
  if scores.shape != positive.shape:
    raise ValueError(f"scores {scores.shape} and labels {positive.shape} differ in length")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite")
  total = int(positive.sum())
  if total == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  s, p = scores[order], positive[order]
  tp = np.cumsum(p)
  # The last position of each group of equal scores: the thresholds.
  last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
  tp_at = tp[last].astype(np.float64)
  precision = tp_at / (last + 1)
  recall_gain = np.diff(np.r_[0.0, tp_at]) / total
  return float(np.sum(recall_gain * precision))


def classification_map(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
  """(mean AP over the classes with a positive sample, AP per class [C], NaN if none).

  scores, labels: [N, C] (labels multi-hot). The zero-shot multi-label classification mAP
  (macro average over classes).
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 2 or scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, C]")
  ap = np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])
  present = ~np.isnan(ap)
  return (float(ap[present].mean()) if present.any() else float("nan")), ap


@jax.jit
def _block_scores(block, queries):
  return jnp.dot(block.astype(jnp.float32), queries.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def similarity(corpus: np.ndarray, queries: np.ndarray, block: int = 65536) -> np.ndarray:
  """[N, Q] float32 inner products of every corpus row with a few queries (e.g. the 12 class
  names), on the device one block of corpus rows at a time (the last block zero-padded, so
  one compiled shape serves the whole corpus)."""
  corpus, queries = np.asarray(corpus), np.asarray(queries, np.float32)
  if corpus.ndim != 2 or queries.ndim != 2 or corpus.shape[1] != queries.shape[1]:
    raise ValueError(f"corpus [N, D] and queries [Q, D] must share D; got {corpus.shape} and "
                     f"{queries.shape}")
  n = corpus.shape[0]
  block = max(1, min(int(block), n))
  out = np.empty((n, queries.shape[0]), np.float32)
  q = jnp.asarray(queries)
  for start in range(0, n, block):
    rows = corpus[start:start + block]
    m = rows.shape[0]
    if m < block:
      rows = np.concatenate([rows, np.zeros((block - m, rows.shape[1]), rows.dtype)])
    out[start:start + m] = np.asarray(_block_scores(jnp.asarray(rows), q))[:m]
  return out

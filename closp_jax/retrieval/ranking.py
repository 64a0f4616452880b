"""Text -> image retrieval figures for a set of queries over embedded corpora."""
from __future__ import annotations

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

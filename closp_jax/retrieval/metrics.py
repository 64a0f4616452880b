"""Ranking metrics with trec_eval's definitions: nDCG@k, mAP@k, R@k, P@k.

The numbers equal trec_eval's `ndcg_cut`, `map_cut`, `recall` and `P` measures
(checked against pytrec_eval and ir_measures in tests/test_metrics.py):

* Ranking: each query's documents are ordered by score descending, ties by
  document id descending (plain string comparison, which for UTF-8 is
  trec_eval's strcmp). The order a run lists its documents in, and any rank
  column, are ignored, exactly as trec_eval ignores them.
* Relevance: a judged grade >= 1 is relevant; grades <= 0 and unjudged
  documents are non-relevant and bring no gain.
* nDCG@k = DCG@k / IDCG@k with DCG@k = sum over ranks r = 1..k of
  grade_r / log2(r + 1) (linear gain, relevant documents only) and IDCG@k the
  same sum over the query's positive grades sorted descending; 0 when the
  query has no relevant document.
* mAP@k = (sum over relevant documents at ranks r <= k of P@r) / (number of
  relevant documents of the query), so unretrieved relevant documents count
  as zero precision. R@k = relevant in the top k / relevant in total.
  P@k = relevant in the top k / k (a run shorter than k is padded with
  non-relevant documents).
* Queries: a query is scored when it has at least one judgment in the qrels
  (any grade) and appears in the run; its metrics are 0 when none of its
  judgments is positive, and it counts in the mean (trec_eval does the same).
  Queries of the run without judgments are ignored. Queries with judgments
  but absent from the run are skipped (`missing_queries="skip"`, trec_eval's
  default) or scored 0 (`missing_queries="zero"`, trec_eval -c).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

# A run: query id -> {doc id: score} or query id -> [(doc id, score), ...].
Run = Mapping[str, Mapping[str, float] | Sequence[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("nDCG@10", "nDCG@100", "nDCG@1000", "mAP@100", "mAP@1000", "R@1", "R@10", "R@100", "P@10")
_FAMILIES = {"ndcg": "nDCG", "map": "mAP", "r": "R", "p": "P"}
_NAME = re.compile(r"^\s*(ndcg|map|r|p)@(\d+)\s*$", re.IGNORECASE)


def parse_metric(name: str) -> tuple[str, int]:
  """'nDCG@10' -> ('nDCG', 10). Families nDCG, mAP, R, P (any case); cutoff >= 1."""
  match = _NAME.match(name) if isinstance(name, str) else None
  if match is None or int(match.group(2)) < 1:
    raise ValueError(
      f"metric {name!r}: expected one of nDCG@k, mAP@k, R@k, P@k with an integer cutoff k >= 1 (e.g. 'nDCG@1000')."
    )
  return _FAMILIES[match.group(1).lower()], int(match.group(2))


def rank_documents(docs_scores, limit: int | None = None) -> list[tuple[str, float]]:
  """(doc, score) pairs in trec_eval order: score descending, then doc id descending.

  `docs_scores` is a {doc: score} mapping or a sequence of (doc, score) pairs.
  Raises ValueError on a duplicate document or a score that is not finite.
  """
  items = docs_scores.items() if isinstance(docs_scores, Mapping) else docs_scores
  pairs = []
  for doc, score in items:
    score = float(score)
    if not math.isfinite(score):
      raise ValueError(f"document {doc!r} has score {score}; scores must be finite.")
    pairs.append((score, str(doc)))
  if len({doc for _, doc in pairs}) != len(pairs):
    seen = set()
    for _, doc in pairs:
      if doc in seen:
        raise ValueError(f"document {doc!r} is ranked twice for the same query.")
      seen.add(doc)
  pairs.sort(reverse=True)
  if limit is not None:
    pairs = pairs[:limit]
  return [(doc, score) for score, doc in pairs]


def _check_grades(qid: str, judged: Mapping[str, int]) -> None:
  for doc, grade in judged.items():
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
      raise ValueError(f"qrels[{qid!r}][{doc!r}] = {grade!r}: grades must be integers.")


def _ranked_grades(run_q, judged: Mapping[str, int], depth: int, qid: str) -> list[int]:
  try:
    ranked = rank_documents(run_q)
  except ValueError as err:
    raise ValueError(f"run[{qid!r}]: {err}") from None
  return [judged.get(doc, 0) for doc, _ in ranked[:depth]]


def evaluate_run(
  run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS, *, missing_queries: str = "skip"
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Scores a run against graded judgments; returns (mean, per_query).

  mean: {metric: mean over the scored queries}; per_query: {qid: {metric: value}}.
  See the module docstring for the definitions, the tie rule and which queries
  are scored. Raises ValueError when no query can be scored.
  """
  if missing_queries not in ("skip", "zero"):
    raise ValueError(f"missing_queries={missing_queries!r}: expected 'skip' or 'zero'.")
  parsed = [parse_metric(m) for m in metrics]
  if not parsed:
    raise ValueError("metrics is empty: name at least one metric such as 'nDCG@10'.")
  depth = max(k for _, k in parsed)

  qids = [q for q in qrels if qrels[q] and (q in run or missing_queries == "zero")]
  if not qids:
    raise ValueError(
      f"no query to score: the run has {len(run)} queries, the qrels "
      f"{len(qrels)}, and none is in both with at least one judgment."
    )
  n = len(qids)
  gains = np.zeros((n, depth), np.float64)  # grade of the document at each rank
  ideal = np.zeros((n, depth), np.float64)  # positive grades sorted descending
  num_rel = np.zeros(n, np.float64)
  for row, qid in enumerate(qids):
    judged = qrels[qid]
    _check_grades(qid, judged)
    positive = sorted((g for g in judged.values() if g > 0), reverse=True)
    num_rel[row] = len(positive)
    ideal[row, : min(depth, len(positive))] = positive[:depth]
    if qid in run:
      grades = _ranked_grades(run[qid], judged, depth, qid)
      gains[row, : len(grades)] = grades

  relevant = gains >= 1
  gains = np.where(gains > 0, gains, 0.0)
  discount = 1.0 / np.log2(np.arange(depth) + 2.0)
  dcg = np.cumsum(gains * discount, axis=1)
  idcg = np.cumsum(ideal * discount, axis=1)
  hits = np.cumsum(relevant, axis=1)
  precision_sum = np.cumsum(relevant * hits / np.arange(1, depth + 1), axis=1)
  safe_rel = np.maximum(num_rel, 1.0)

  values = {}
  for name, (family, k) in zip(metrics, parsed):
    col = k - 1
    if family == "nDCG":
      v = np.divide(dcg[:, col], idcg[:, col], out=np.zeros(n), where=idcg[:, col] > 0)
    elif family == "mAP":
      v = precision_sum[:, col] / safe_rel
    elif family == "R":
      v = hits[:, col] / safe_rel
    else:
      v = hits[:, col] / k
    values[name] = v

  mean = {name: float(np.mean(v)) for name, v in values.items()}
  per_query = {qid: {name: float(v[row]) for name, v in values.items()} for row, qid in enumerate(qids)}
  return mean, per_query

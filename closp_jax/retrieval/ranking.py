"""Text -> image retrieval figures for a set of queries over embedded corpora, and the fusion of
the two sensors' scores into one ranking (`fuse_scores`, `merge_ranked`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.errors import UserError
from closp_jax.retrieval.metrics import evaluate_run
from closp_jax.retrieval.topk import topk_search

TRAIN_TABLE_METRICS = ("nDCG@10", "nDCG@100", "nDCG@1000", "mAP@100", "R@10", "P@10")


def rank(
  query_emb: np.ndarray, corpus_emb: np.ndarray, corpus_keys: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q,k'], keys [Q,k']) with k' = min(k, N), exact, by blocked top-k."""
  k = min(int(k), len(corpus_keys))
  scores, idx = topk_search(query_emb, corpus_emb, k)
  return np.asarray(scores), np.asarray(corpus_keys)[np.asarray(idx)]


def run_dict(qids, scores, keys) -> dict[str, dict[str, float]]:
  return {str(q): {str(d): float(s) for d, s in zip(krow, srow)} for q, srow, krow in zip(qids, scores, keys)}


def retrieval_metrics(
  query_ids, query_emb, corpus_emb, corpus_keys, qrels, *, k: int = 1000, metrics=TRAIN_TABLE_METRICS
) -> dict[str, float]:
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
  return jnp.dot(
    block.astype(jnp.float32), queries.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
  )


def similarity(corpus: np.ndarray, queries: np.ndarray, block: int = 65536) -> np.ndarray:
  """[N, Q] float32 inner products of every corpus row with a few queries (e.g. the 12 class
  names), on the device one block of corpus rows at a time (the last block zero-padded, so
  one compiled shape serves the whole corpus)."""
  corpus, queries = np.asarray(corpus), np.asarray(queries, np.float32)
  if corpus.ndim != 2 or queries.ndim != 2 or corpus.shape[1] != queries.shape[1]:
    raise ValueError(f"corpus [N, D] and queries [Q, D] must share D; got {corpus.shape} and {queries.shape}")
  n = corpus.shape[0]
  block = max(1, min(int(block), n))
  out = np.empty((n, queries.shape[0]), np.float32)
  q = jnp.asarray(queries)
  for start in range(0, n, block):
    rows = corpus[start : start + block]
    m = rows.shape[0]
    if m < block:
      rows = np.concatenate([rows, np.zeros((block - m, rows.shape[1]), rows.dtype)])
    out[start : start + m] = np.asarray(_block_scores(jnp.asarray(rows), q))[:m]
  return out


# --------------------------------------------------------------------------- fusion of sensors
# One text query scores S2 and S1 images in the shared space, but the two image towers need not
# put their scores on one scale: a merged ranking by raw inner product can then be one sensor
# first whatever the query (docs/evaluation.md, "Fusing the sensors"). Each method below maps a
# sensor's scores by a function that is increasing for every query, so the per-sensor rankings
# (text->s2, text->s1) never change; only how the two interleave does.

FUSION_METHODS = ("raw", "zscore", "reference", "rrf")
# Chosen by measurement on the README run (docs/evaluation.md, "Fusing the sensors"): once both
# towers are trained, the raw inner products are on one scale and no method beats them.
DEFAULT_FUSION = "raw"
RRF_K = 60


@dataclasses.dataclass(frozen=True)
class SensorScoreStats:
  """What fusion needs to know about one sensor's corpus, computed once (e.g. by an index).

  mean [D] and second [D, D]: the first and second moments of the corpus embeddings
  (E[x], E[x x^T]), from which any query's score mean and spread over the corpus follow
  ('zscore'); ref_mean, ref_std: the mean and standard deviation of the scores of a reference set
  of texts against the whole corpus ('reference'; NaN when no reference was given).
  """

  count: int
  mean: np.ndarray
  second: np.ndarray
  ref_mean: float = float("nan")
  ref_std: float = float("nan")

  @classmethod
  def from_embeddings(
    cls, emb: np.ndarray, reference: np.ndarray | None = None, block: int = 65536
  ) -> SensorScoreStats:
    """Moments of `emb` [N, D] (one pass in blocks, float64), and the reference texts'
    [R, D] score mean / standard deviation over all R x N pairs (from the same moments)."""
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] == 0:
      raise ValueError(f"a sensor's corpus embeddings must be a non-empty [N, D] array, got {emb.shape}")
    d = emb.shape[1]
    total, second = np.zeros(d), np.zeros((d, d))
    for start in range(0, emb.shape[0], block):
      rows = np.asarray(emb[start : start + block], np.float64)
      total += rows.sum(axis=0)
      second += rows.T @ rows
    n = emb.shape[0]
    out = cls(n, total / n, second / n)
    if reference is not None:
      ref = np.asarray(reference, np.float64)
      if ref.ndim != 2 or ref.shape[1] != d or ref.shape[0] == 0:
        raise ValueError(f"reference text embeddings must be [R, {d}], got {ref.shape}")
      # Over all pairs (t, x): E[t.x] = mean_t . mean_x, E[(t.x)^2] = tr(E[t t^T] E[x x^T]).
      mu = float(ref.mean(axis=0) @ out.mean)
      sq = float(np.einsum("ij,ji->", ref.T @ ref / ref.shape[0], out.second))
      out = dataclasses.replace(out, ref_mean=mu, ref_std=float(np.sqrt(max(sq - mu * mu, 0.0))))
    return out

  def query_moments(self, query_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [Q], std [Q]) of each query's scores over this corpus."""
    q = np.asarray(query_emb, np.float64)
    mu = q @ self.mean
    var = np.einsum("qd,de,qe->q", q, self.second, q) - mu * mu
    return mu, np.sqrt(np.maximum(var, 0.0))

  def to_dict(self) -> dict:
    return {
      "count": self.count,
      "mean": self.mean.tolist(),
      "second": self.second.tolist(),
      "ref_mean": self.ref_mean,
      "ref_std": self.ref_std,
    }

  @classmethod
  def from_dict(cls, d: dict) -> SensorScoreStats:
    return cls(
      int(d["count"]),
      np.asarray(d["mean"], np.float64),
      np.asarray(d["second"], np.float64),
      float(d.get("ref_mean", "nan")),
      float(d.get("ref_std", "nan")),
    )


def check_fusion(method: str) -> str:
  if method not in FUSION_METHODS:
    raise FusionError(f"fusion method {method!r}: expected one of {', '.join(FUSION_METHODS)}")
  return method


class FusionError(UserError, ValueError):
  """An unknown fusion method, or one without the statistics it needs."""


def fuse_scores(
  scores_by_sensor: Mapping[str, np.ndarray],
  method: str = DEFAULT_FUSION,
  *,
  query_emb: np.ndarray | None = None,
  stats: Mapping[str, SensorScoreStats] | None = None,
  rrf_k: int = RRF_K,
) -> dict[str, np.ndarray]:
  """Each sensor's scores [Q, k_s] (rows: queries, columns: that sensor's ranked documents, best
  first; -inf marks padding) mapped onto one scale, so that merging them by value is meaningful.

  raw:       unchanged (the paper's protocol: one ranking by inner product).
  zscore:    (s - mu_q) / sd_q with mu_q, sd_q the mean and standard deviation of query q's
             scores over the whole corpus of that sensor (from `stats[sensor]`'s moments and
             `query_emb` [Q, D]).
  reference: (s - mu) / sd with mu, sd the mean and standard deviation of the scores of a
             reference set of texts against the sensor's corpus (`stats[sensor].ref_mean/ref_std`):
             one affine map per sensor, the same for every query.
  rrf:       reciprocal rank fusion, 1 / (rrf_k + rank) with rank 1, 2, ... within the sensor's
             list (needs no statistics; ties across sensors at equal ranks).
  Returns {sensor: float64 [Q, k_s]}; padding stays -inf.
  """
  check_fusion(method)
  out = {}
  for sensor, scores in scores_by_sensor.items():
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
      raise ValueError(f"{sensor} scores must be [queries, k], got shape {s.shape}")
    pad = ~np.isfinite(s)
    if method == "raw":
      fused = s.copy()
    elif method == "rrf":
      fused = np.broadcast_to(1.0 / (rrf_k + np.arange(1, s.shape[1] + 1, dtype=np.float64)), s.shape).copy()
    else:
      st = (stats or {}).get(sensor)
      if st is None:
        raise FusionError(
          f"fusion {method!r} needs the score statistics of the {sensor} corpus (SensorScoreStats.from_embeddings)"
        )
      if method == "zscore":
        if query_emb is None:
          raise FusionError("fusion 'zscore' needs the query embeddings")
        mu, sd = st.query_moments(query_emb)
        fused = (s - mu[:, None]) / np.where(sd > 0, sd, 1.0)[:, None]
      else:
        if not np.isfinite(st.ref_std):
          raise FusionError(
            f"fusion 'reference' needs reference texts: the {sensor} statistics were computed without them"
          )
        fused = (s - st.ref_mean) / (st.ref_std if st.ref_std > 0 else 1.0)
    fused[pad] = -np.inf
    out[sensor] = fused
  return out


def merge_ranked(
  fused_by_sensor: Mapping[str, np.ndarray], index_by_sensor: Mapping[str, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Merges per-sensor ranked lists into one top-k per query by fused score.

  index_by_sensor: {sensor: int [Q, k_s]} any row ids (e.g. corpus rows; -1 padding). Equal
  fused scores keep the sensor given first, then the list order, as `topk_search` does over a
  corpus stored in that order. Returns (scores [Q, k'], index [Q, k'], sensor position [Q, k'])
  with k' = min(k, total listed), best first.
  """
  sensors = list(fused_by_sensor)
  scores = np.concatenate([np.asarray(fused_by_sensor[s], np.float64) for s in sensors], axis=1)
  index = np.concatenate([np.asarray(index_by_sensor[s]) for s in sensors], axis=1)
  which = np.concatenate([np.full(np.shape(fused_by_sensor[s]), i) for i, s in enumerate(sensors)], axis=1)
  k = min(int(k), scores.shape[1])
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
  return take(scores), take(index), take(which)

"""TREC run and qrels files: the formats trec_eval, pytrec_eval and ir_measures read.

Run file, one line per retrieved document: `qid Q0 docid rank score tag`.
Lines are written in trec_eval's own order (score descending, ties by doc id
descending) with ranks 1, 2, ... in that order, so the rank column agrees with
what every tool computes. Scores are written with the shortest decimal that
reads back as the same value of the array's float type: distinct scores stay
distinct and ordered, equal scores stay equal, so external tools rank exactly
as closp_jax.retrieval.metrics does.

Qrels file: `qid 0 docid grade` (TREC), written sorted; read back with the project's one qrels
reader, closp_jax.data.queries.read_qrels (TREC and BEIR, a file or a folder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from closp_jax import atomic
from closp_jax.retrieval.metrics import rank_documents


def _atomic_write_lines(path, lines: Iterable[str]) -> None:
  """Writes lines to a temporary file beside `path`, then renames it into place."""

  def write(tmp: Path) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      for line in lines:
        f.write(line + "\n")

  atomic.write_with(path, write)


def _check_token(value, what: str) -> str:
  text = str(value)
  if not text or any(c.isspace() for c in text):
    raise ValueError(
      f"{what} {text!r} must be non-empty and contain no whitespace (TREC files are whitespace-separated)."
    )
  return text


def _score_formatter(scores: np.ndarray):
  """Shortest text that reads back as the same value of the scores' float type."""
  if scores.dtype in (np.float16, np.float32):
    kind = scores.dtype.type
    return lambda v: str(kind(v))
  return lambda v: repr(float(v))


def make_run(qids: Sequence[str], doc_ids, scores) -> dict[str, dict[str, float]]:
  """{qid: {doc id: score}} from per-query rows of doc ids and scores.

  doc_ids[i][j] is the j-th document of query qids[i] and scores[i][j] its
  score (e.g. corpus ids gathered with topk_search's indices). Entries with
  score -inf (topk_search's padding) are dropped; NaN or +inf is an error.
  """
  scores = np.asarray(scores)
  if scores.ndim != 2 or len(qids) != scores.shape[0] or len(doc_ids) != scores.shape[0]:
    raise ValueError(
      f"expected {len(qids)} rows of doc_ids and scores, got {len(doc_ids)} "
      f"rows of doc ids and scores of shape {scores.shape}."
    )
  run = {}
  for qid, docs, row in zip(qids, doc_ids, scores):
    qid = _check_token(qid, "query id")
    if qid in run:
      raise ValueError(f"query id {qid!r} appears twice.")
    if len(docs) != len(row):
      raise ValueError(f"query {qid!r}: {len(docs)} doc ids but {len(row)} scores.")
    entries = {}
    for doc, score in zip(docs, row):
      if np.isneginf(score):
        continue
      if not np.isfinite(score):
        raise ValueError(f"query {qid!r}, document {doc!r}: score {score} is not finite.")
      doc = _check_token(doc, "document id")
      if doc in entries:
        raise ValueError(f"query {qid!r}: document {doc!r} appears twice.")
      entries[doc] = float(score)
    run[qid] = entries
  return run


def write_run(path, qids: Sequence[str], doc_ids, scores, tag: str) -> None:
  """Writes a six-column TREC run file atomically (see the module docstring)."""
  tag = _check_token(tag, "run tag")
  scores = np.asarray(scores)
  fmt = _score_formatter(scores)
  run = make_run(qids, doc_ids, scores)

  def lines():
    for qid, entries in run.items():
      for rank, (doc, score) in enumerate(rank_documents(entries), start=1):
        yield f"{qid} Q0 {doc} {rank} {fmt(score)} {tag}"

  _atomic_write_lines(path, lines())


def read_run(path) -> dict[str, dict[str, float]]:
  """{qid: {doc id: score}} from a six-column TREC run file (rank column ignored)."""
  run: dict[str, dict[str, float]] = {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 6:
        raise ValueError(
          f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}: {line.strip()!r}"
        )
      qid, _, doc, _, score_text, _ = fields
      try:
        score = float(score_text)
      except ValueError:
        raise ValueError(f"{path}:{lineno}: score {score_text!r} is not a number.") from None
      if not math.isfinite(score):
        raise ValueError(f"{path}:{lineno}: score {score_text!r} is not finite.")
      entries = run.setdefault(qid, {})
      if doc in entries:
        raise ValueError(f"{path}:{lineno}: document {doc!r} appears twice for query {qid!r}.")
      entries[doc] = score
  return run


def write_qrels(path, qrels: Mapping[str, Mapping[str, int]]) -> None:
  """Writes `qid 0 docid grade` lines, sorted by query then document, atomically."""
  rows = []
  for qid in sorted(qrels):
    _check_token(qid, "query id")
    for doc in sorted(qrels[qid]):
      grade = qrels[qid][doc]
      if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
        raise ValueError(f"qrels[{qid!r}][{doc!r}] = {grade!r}: grades must be integers.")
      rows.append(f"{qid} 0 {_check_token(doc, 'document id')} {int(grade)}")
  _atomic_write_lines(path, rows)

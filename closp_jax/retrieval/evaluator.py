"""Text -> image retrieval evaluation of a CLOSP model: rankings, breakdowns, zero-shot mAP, files.

Two layers:

* `evaluate_embeddings(corpus, queries, query_emb, qrels, class_emb)` works on embeddings
  only (no model, no files): the three rankings text->s2, text->s1 and text->all (one
  ranking over both sensors), each with the metrics overall, per source dataset and per
  query type, and zero-shot multi-label classification over the 12 classes.
* `evaluate_checkpoint(config, workdir, ...)` (closp_jax/evaluate.py's library function):
  restores a checkpoint onto this run's devices, embeds the corpus split sharded over all
  processes, loads or builds the queries, calls `evaluate_embeddings` and writes
  metrics.json, the TREC run and qrels files, report.md and the chart.
* `evaluate_exported(model_dir, data=...)` (evaluate --model): the same for an export folder
  (closp_jax.export, including the authors' checkpoints), embedding with its exported functions.

Protocol, query types, relevance grades and the tie rule: docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from closp_jax import atomic
from closp_jax.data import labels as labels_lib
from closp_jax.data import preprocess
from closp_jax.errors import UserError
from closp_jax.retrieval import queries_rule, trec
from closp_jax.retrieval import ranking as fusion_lib
from closp_jax.retrieval.metrics import DEFAULT_METRICS, evaluate_run
from closp_jax.retrieval.ranking import classification_map, similarity
from closp_jax.retrieval.topk import topk_search


class EvaluationInputError(UserError, ValueError):
  """Queries, judgments, evaluation folders or the evaluation batch are not what the evaluation needs."""


class EvaluationFileNotFound(UserError, FileNotFoundError):
  """A file or folder the evaluation was pointed at does not exist."""


RANKINGS: dict[str, tuple[str, ...]] = {"text->s2": ("s2",), "text->s1": ("s1",), "text->all": ("s2", "s1")}
RUN_FILES = {"text->s2": "run.s2.trec", "text->s1": "run.s1.trec", "text->all": "run.all.trec"}
QRELS_FILES = {"text->s2": "qrels.s2.trec", "text->s1": "qrels.s1.trec", "text->all": "qrels.trec"}
METRICS_FILE = "metrics.json"
QUERIES_FILE = "queries.jsonl"
DEPTH = 1000


# --------------------------------------------------------------------------- corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Embedded corpus samples: emb [N, D] (unit norm), keys [N], labels [N, 12] multi-hot,
  lonlat [N, 2], sensor [N] ('s2'/'s1'), source [N] (key prefix, e.g. 'benv2s2'), row [N]
  (position in the corpus it was selected from, kept through `select`)."""

  emb: np.ndarray
  keys: np.ndarray
  labels: np.ndarray
  lonlat: np.ndarray
  sensor: np.ndarray
  source: np.ndarray
  row: np.ndarray | None = None

  def __post_init__(self):
    if self.row is None:
      object.__setattr__(self, "row", np.arange(len(self.keys)))

  def __len__(self) -> int:
    return len(self.keys)

  def select(self, mask: np.ndarray) -> Corpus:
    """The rows where `mask` is True; a view (no copy) when they are one contiguous run, as a
    sensor's or a source's rows are (keys sorted, S2 first)."""
    rows = np.flatnonzero(mask)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
      index = slice(int(rows[0]), int(rows[-1]) + 1)
    else:
      index = rows
    return Corpus(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

  @classmethod
  def from_embedded(cls, embedded: Mapping[str, Mapping[str, np.ndarray]]) -> Corpus:
    """From {sensor: embed_split result} (S2 rows first, then S1)."""
    parts = [(s, embedded[s]) for s in RANKINGS["text->all"] if s in embedded]
    if not parts:
      raise ValueError(f"no embedded sensor: expected keys among {RANKINGS['text->all']}")
    keys = np.concatenate([np.asarray(p["key"]).astype(str) for _, p in parts])
    dup = _first_duplicate(keys)
    if dup is not None:
      raise ValueError(f"corpus key {dup!r} appears twice; sample keys must be unique")
    return cls(
      emb=np.concatenate([np.asarray(p["emb"], np.float32) for _, p in parts]),
      keys=keys,
      labels=np.concatenate([np.asarray(p["labels"], np.float32) for _, p in parts]),
      lonlat=np.concatenate([np.asarray(p["lonlat"], np.float32) for _, p in parts]),
      sensor=np.concatenate([np.full(len(p["key"]), s) for s, p in parts]),
      source=np.array([preprocess.source_of_key(k) for k in keys], dtype=str),
    )


def _first_duplicate(keys: np.ndarray):
  uniq, counts = np.unique(keys, return_counts=True)
  return uniq[counts > 1][0] if (counts > 1).any() else None


# --------------------------------------------------------------------------- ranking


@dataclasses.dataclass
class Ranking:
  """One ranking's top-k lists and how they were judged."""

  name: str
  qids: list[str]
  scores: np.ndarray  # [Q, k] float32, best first
  doc_keys: np.ndarray  # [Q, k] str
  qrels: dict[str, dict[str, int]]
  mean: dict[str, float]
  per_query: dict[str, dict[str, float]]
  num_docs: int


class Judgments:
  """Qrels indexed by corpus row, built once, so each ranking and source restricts them with
  array operations instead of another pass over every judgment (millions at full scale).

  Judgments of documents outside the corpus are dropped here.
  """

  def __init__(self, qrels: Mapping[str, Mapping[str, int]], corpus: Corpus):
    row_of = dict(zip(corpus.keys.tolist(), corpus.row.tolist()))
    self.keys = np.empty(int(corpus.row.max()) + 1 if len(corpus) else 0, dtype=corpus.keys.dtype)
    self.keys[corpus.row] = corpus.keys
    self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for qid, judged in qrels.items():
      rows, grades = [], []
      for doc, grade in judged.items():
        if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
          raise ValueError(f"qrels[{qid!r}][{doc!r}] = {grade!r}: grades must be integers")
        row = row_of.get(doc)
        if row is not None:
          rows.append(row)
          grades.append(grade)
      self.index[str(qid)] = (np.asarray(rows, np.int64), np.asarray(grades, np.int64))

  def restrict(self, corpus: Corpus) -> dict[str, dict[str, int]]:
    """{qid: {key: grade}} of the documents in `corpus` (a selection of the indexed one), for
    the queries left with a relevant (grade >= 1) document there."""
    member = np.zeros(len(self.keys), bool)
    member[corpus.row] = True
    out = {}
    for qid, (rows, grades) in self.index.items():
      keep = member[rows]
      if not np.any(grades[keep] > 0):
        continue
      out[qid] = dict(zip(self.keys[rows[keep]].tolist(), grades[keep].tolist()))
    return out


def rank_corpus(
  name: str,
  corpus: Corpus,
  qids: Sequence[str],
  query_emb: np.ndarray,
  judged: Mapping[str, Mapping[str, int]],
  *,
  k: int = DEPTH,
  metrics: Sequence[str] = DEFAULT_METRICS,
  block: int = 65536,
) -> Ranking | None:
  """Ranks `corpus` for the queries of `judged` and scores the run against `judged`.

  `judged` holds the judgments of this corpus's documents only, for the queries with a
  relevant one (`Judgments.restrict`). None when there is no such query. Top-k by exact
  blocked matrix products (`topk_search`): memory O(Q x (block + k)) whatever the corpus size.
  """
  keep = [i for i, q in enumerate(qids) if str(q) in judged]
  if not keep or len(corpus) == 0:
    return None
  depth = min(int(k), len(corpus))
  scores, index = topk_search(np.asarray(query_emb)[keep], corpus.emb, depth, block=block)
  doc_keys = corpus.keys[index]
  kept = [str(qids[i]) for i in keep]
  run = trec.make_run(kept, doc_keys, scores)
  sub = {q: judged[q] for q in kept}
  mean, per_query = evaluate_run(run, sub, metrics)
  return Ranking(name, kept, scores, doc_keys, sub, mean, per_query, len(corpus))


def rank_fused(
  name: str,
  corpus: Corpus,
  qids: Sequence[str],
  query_emb: np.ndarray,
  judged: Mapping[str, Mapping[str, int]],
  *,
  fusion: str,
  reference: np.ndarray | None = None,
  k: int = DEPTH,
  metrics: Sequence[str] = DEFAULT_METRICS,
  block: int = 65536,
) -> Ranking | None:
  """As `rank_corpus` over a corpus of several sensors, with each sensor's scores mapped by
  `fusion` (ranking.fuse_scores) before the merge: every sensor's own top k (exact, blocked),
  fused, merged (equal fused scores: the sensor stored first, then its list order). With
  fusion 'raw' this is the same ranking as `rank_corpus`. Scores in the Ranking (and the run
  files) are the fused ones."""
  keep = [i for i, q in enumerate(qids) if str(q) in judged]
  if not keep or len(corpus) == 0:
    return None
  q = np.asarray(query_emb)[keep]
  scores, index, stats, offset = {}, {}, {}, 0
  keys = []
  for sensor in dict.fromkeys(corpus.sensor.tolist()):  # storage order: S2 first
    part = corpus.select(corpus.sensor == sensor)
    s, i = topk_search(q, part.emb, min(int(k), len(part)), block=block)
    scores[sensor], index[sensor] = np.asarray(s), np.asarray(i) + offset
    keys.append(part.keys)
    offset += len(part)
    if fusion in ("zscore", "reference"):
      stats[sensor] = fusion_lib.SensorScoreStats.from_embeddings(
        part.emb, reference if fusion == "reference" else None
      )
  fused = fusion_lib.fuse_scores(scores, fusion, query_emb=q, stats=stats)
  merged, rows, _ = fusion_lib.merge_ranked(fused, index, k)
  doc_keys = np.concatenate(keys)[rows]
  kept = [str(qids[i]) for i in keep]
  run = trec.make_run(kept, doc_keys, merged)
  sub = {qid: judged[qid] for qid in kept}
  mean, per_query = evaluate_run(run, sub, metrics)
  return Ranking(name, kept, merged, doc_keys, sub, mean, per_query, len(corpus))


def _group_means(
  per_query: Mapping[str, Mapping[str, float]], groups: Mapping[str, str], metrics: Sequence[str]
) -> dict[str, dict]:
  out = {}
  for group in sorted(set(groups[q] for q in per_query)):
    members = [q for q in per_query if groups[q] == group]
    out[group] = {
      "num_queries": len(members),
      "metrics": {m: float(np.mean([per_query[q][m] for q in members])) for m in metrics},
    }
  return out


# --------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class Evaluation:
  """metrics: the JSON-ready results (metrics.json); rankings: the runs behind them."""

  metrics: dict
  rankings: dict[str, Ranking]


def evaluate_embeddings(
  corpus: Corpus,
  queries: Sequence[Mapping],
  query_emb: np.ndarray,
  qrels: Mapping[str, Mapping[str, int]],
  class_emb: np.ndarray | None = None,
  *,
  k: int = DEPTH,
  metrics: Sequence[str] = DEFAULT_METRICS,
  block: int = 65536,
  fusion: str = fusion_lib.DEFAULT_FUSION,
  fusion_reference: np.ndarray | None = None,
) -> Evaluation:
  """All figures of the protocol from embeddings (see the module docstring).

  queries: [{query_id, text, type}] with `type` one of queries_rule.QUERY_TYPES; query_emb:
  [Q, D] in the same order; class_emb: [12, D] embeddings of the class names (None: no
  zero-shot figures). fusion: how text->all merges the two sensors' scores
  (ranking.FUSION_METHODS; 'raw' is the paper's single ranking by inner product);
  fusion_reference: [R, D] reference text embeddings for fusion 'reference' (default: the
  queries themselves).
  """
  fusion_lib.check_fusion(fusion)
  if len(queries) != len(query_emb):
    raise ValueError(f"{len(queries)} queries but {len(query_emb)} query embeddings")
  qids = [str(q["query_id"]) for q in queries]
  types = {str(q["query_id"]): q.get("type") or "land_cover" for q in queries}
  out: dict = {"metric_names": list(metrics), "depth": int(k), "rankings": {}, "zero_shot": {}}
  rankings: dict[str, Ranking] = {}
  by_source: dict[str, dict] = {}
  judgments = Judgments(qrels, corpus)
  for source in preprocess.SOURCES:
    mask = corpus.source == source
    if not mask.any():
      continue
    sub_corpus = corpus.select(mask)
    r = rank_corpus(
      source, sub_corpus, qids, query_emb, judgments.restrict(sub_corpus), k=k, metrics=metrics, block=block
    )
    by_source[source] = {
      "num_docs": int(mask.sum()),
      "num_queries": len(r.qids) if r else 0,
      "metrics": r.mean if r else None,
    }
  for name, sensors in RANKINGS.items():
    sub_corpus = corpus.select(np.isin(corpus.sensor, sensors))
    present = [s for s in sensors if np.any(sub_corpus.sensor == s)]
    if len(present) > 1 and fusion != "raw":
      r = rank_fused(
        name,
        sub_corpus,
        qids,
        query_emb,
        judgments.restrict(sub_corpus),
        fusion=fusion,
        reference=query_emb if fusion_reference is None else fusion_reference,
        k=k,
        metrics=metrics,
        block=block,
      )
    else:
      r = rank_corpus(
        name, sub_corpus, qids, query_emb, judgments.restrict(sub_corpus), k=k, metrics=metrics, block=block
      )
    entry = {
      "num_docs": len(sub_corpus),
      "num_queries": len(r.qids) if r else 0,
      "metrics": r.mean if r else None,
      "by_source": {s: v for s, v in by_source.items() if preprocess.sensor_of_source(s) in sensors},
      "by_type": _group_means(r.per_query, types, metrics) if r else {},
      "files": {"run": RUN_FILES[name], "qrels": QRELS_FILES[name]} if r else None,
    }
    if len(sensors) > 1:
      entry["fusion"] = fusion
    out["rankings"][name] = entry
    if r is not None:
      rankings[name] = r
    if class_emb is not None and len(sub_corpus):
      out["zero_shot"][name] = zero_shot(sub_corpus, class_emb, k=k, block=block)
  return Evaluation(out, rankings)


def zero_shot(corpus: Corpus, class_emb: np.ndarray, *, k: int = DEPTH, block: int = 65536) -> dict:
  """Zero-shot multi-label classification (class names as texts) over a corpus.

  mAP: mean over the classes present of each class's average precision over every sample
  (ranking.average_precision, ties grouped). Per class also nDCG@k of the class name as a
  retrieval query, relevant (grade 1) = the samples carrying the class.
  """
  class_emb = np.asarray(class_emb, np.float32)
  if class_emb.shape[0] != labels_lib.NUM_CLASSES:
    raise ValueError(f"class_emb must hold the {labels_lib.NUM_CLASSES} class names, got {class_emb.shape[0]} rows")
  scores = similarity(corpus.emb, class_emb, block=block)
  mean_ap, ap = classification_map(scores, corpus.labels)
  cq = queries_rule.class_queries()
  qrels = {q["query_id"]: dict.fromkeys(corpus.keys[corpus.labels[:, i] > 0].tolist(), 1) for i, q in enumerate(cq)}
  qrels = {q: judged for q, judged in qrels.items() if judged}
  ndcg_name = f"nDCG@{k}"
  r = rank_corpus(
    "classes", corpus, [q["query_id"] for q in cq], class_emb, qrels, k=k, metrics=(ndcg_name,), block=block
  )
  ndcg = {}
  for q in cq:
    value = r.per_query.get(q["query_id"]) if r else None
    ndcg[q["class"]] = None if value is None else value[ndcg_name]
  return {
    "mAP": None if np.isnan(mean_ap) else mean_ap,
    "num_classes": int(np.sum(~np.isnan(ap))),
    "AP": {c: (None if np.isnan(v) else float(v)) for c, v in zip(labels_lib.CLASSES, ap)},
    ndcg_name: ndcg,
  }


# --------------------------------------------------------------------------- queries


def resolve_queries(
  builder_dir, corpus: Corpus, queries_path=None, qrels_path=None
) -> tuple[list[dict], dict[str, dict[str, int]], str]:
  """(queries typed, qrels, origin) where origin is 'user', 'official' or 'labels'.

  User files (`--queries` / `--qrels`, both or neither) first; else the dataset's
  queries.jsonl + qrels/ when present; else built from the corpus labels
  (queries_rule.queries_from_labels).
  """
  from closp_jax.data import queries as queries_lib  # pylint: disable=import-outside-toplevel

  if (queries_path is None) != (qrels_path is None):
    raise EvaluationInputError(
      "--queries and --qrels go together: pass both files, or neither to use the dataset's own (or label-built) queries"
    )
  if queries_path is not None:
    queries, qrels, origin = read_queries(queries_path), queries_lib.read_qrels(qrels_path), "user"
  else:
    try:
      queries = queries_lib.load_queries(builder_dir)
      qrels = queries_lib.load_qrels(builder_dir)
      origin = "official"
    except FileNotFoundError:
      queries, qrels = queries_rule.queries_from_labels(corpus.labels, corpus.keys, corpus.lonlat)
      origin = "labels"
  known = {q["query_id"] for q in queries}
  unknown = sorted(set(qrels) - known)
  if unknown and origin != "labels":
    print(
      f"note: {len(unknown)} judged query ids have no query text and are ignored (e.g. {unknown[:3]})", file=sys.stderr
    )
  queries = queries_rule.assign_types(queries, qrels, corpus.keys, corpus.lonlat)
  return queries, qrels, origin


def read_queries(path) -> list[dict]:
  """Queries from a JSON-lines file ({query_id|_id|id|qid, text, [type]}), a TSV file
  (`qid<TAB>text[<TAB>type]`), or a folder holding queries.jsonl."""
  from closp_jax.data import queries as queries_lib  # pylint: disable=import-outside-toplevel

  path = Path(path)
  if path.is_dir():
    return queries_lib.load_queries(path)
  if not path.is_file():
    raise EvaluationFileNotFound(f"queries file {path} not found")
  with open(path, encoding="utf-8") as f:
    first = next((line for line in f if line.strip()), "")
  if first.lstrip().startswith("{"):
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:  # load_queries reads <folder>/queries.jsonl
      os.symlink(path.absolute(), Path(tmp) / queries_lib.QUERIES_FILE)
      return queries_lib.load_queries(tmp)
  queries, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rstrip("\n").split("\t")
      if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
        raise EvaluationInputError(
          f"{path}:{line_no}: expected 'query_id<TAB>text[<TAB>type]' or a JSON object per line, got {line.strip()!r}"
        )
      qid = fields[0].strip()
      if qid in seen:
        raise EvaluationInputError(f"{path}:{line_no}: query_id {qid!r} appears twice")
      seen.add(qid)
      queries.append(
        {"query_id": qid, "text": fields[1].strip(), "type": fields[2].strip() if len(fields) == 3 else ""}
      )
  if not queries:
    raise EvaluationInputError(f"{path} holds no query")
  return queries


# --------------------------------------------------------------------------- files


def write_outputs(out_dir, evaluation: Evaluation, *, tag: str, report: bool = True) -> Path:
  """metrics.json, run.*.trec, qrels*.trec, report.md and the chart into `out_dir`."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tag = "".join(c if not c.isspace() else "_" for c in tag) or "closp-jax"
  for name, r in evaluation.rankings.items():
    trec.write_run(out_dir / RUN_FILES[name], r.qids, r.doc_keys, r.scores, tag)
    trec.write_qrels(out_dir / QRELS_FILES[name], r.qrels)
  for name in RANKINGS:
    for path in (out_dir / RUN_FILES[name], out_dir / QRELS_FILES[name]):
      if name not in evaluation.rankings:
        path.unlink(missing_ok=True)  # a stale file of an earlier evaluation into this folder
  if report:
    from closp_jax.retrieval import report as report_lib  # pylint: disable=import-outside-toplevel

    report_lib.write_report(out_dir, evaluation.metrics)
  write_json(out_dir / METRICS_FILE, evaluation.metrics)
  return out_dir


def write_json(path: Path, obj) -> None:
  atomic.write_json(path, obj, indent=1, allow_nan=False)


def load_metrics(out_dir) -> dict:
  path = Path(out_dir)
  path = path / METRICS_FILE if path.is_dir() else path
  if not path.is_file():
    raise EvaluationFileNotFound(
      f"{path} not found: expected an evaluation output folder holding "
      f"{METRICS_FILE} (python -m closp_jax.evaluate --output ...)"
    )
  return json.loads(path.read_text())


# --------------------------------------------------------------------------- model


def check_eval_batch(batch: int, mesh) -> None:
  """The global embedding batch must split evenly over the data axes and the processes."""
  import jax  # pylint: disable=import-outside-toplevel

  shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
  step = int(np.lcm(shards, jax.process_count()))
  if batch <= 0 or batch % step:
    raise EvaluationInputError(
      f"config.data.eval_batch_size={batch} must be a positive multiple of {step} (the mesh's "
      f"data x fsdp size {shards} and the process count {jax.process_count()}); e.g. "
      f"--config.data.eval_batch_size={step * max(1, round(batch / step))}"
    )


def evaluate_and_write(
  corpus: Corpus,
  builder,
  encode_texts,
  *,
  name: str,
  checkpoint: dict,
  max_corpus: int,
  out_dir: Path,
  tag: str,
  queries_path,
  qrels_path,
  k: int,
  metrics: Sequence[str],
  t0: float,
  t_embed: float,
  write: bool,
  say,
  fusion: str = fusion_lib.DEFAULT_FUSION,
) -> dict:
  """Queries, rankings, metrics and files of an embedded corpus: the part every evaluation shares.

  encode_texts(list of str) -> [N, D] unit vectors (the model's text tower). Writes (from `write`)
  out_dir/metrics.json, the run and qrels TREC files, report.md, the chart and queries.jsonl (each
  query's id, text and type, so trec_eval and the per-type figures can be recomputed)."""
  queries, qrels, origin = resolve_queries(builder.data_dir, corpus, queries_path, qrels_path)
  query_emb = encode_texts([q["text"] for q in queries])
  class_emb = encode_texts([q["text"] for q in queries_rule.class_queries()])
  result = evaluate_embeddings(corpus, queries, query_emb, qrels, class_emb, k=k, metrics=metrics, fusion=fusion)
  t_rank = time.perf_counter()
  result.metrics.update(
    {
      "config": name,
      "checkpoint": checkpoint,
      "dataset": {
        "name": builder.info.full_name,
        "split": "test",
        "max_corpus": int(max_corpus),
        "docs": {s: int(np.sum(corpus.sensor == s)) for s in ("s2", "s1")},
      },
      "queries": {
        "origin": origin,
        "count": len(queries),
        "by_type": {t: sum(q["type"] == t for q in queries) for t in queries_rule.QUERY_TYPES},
        "paths": {"queries": str(queries_path), "qrels": str(qrels_path)} if origin == "user" else None,
      },
      "seconds": {"embed": round(t_embed - t0, 2), "rank": round(t_rank - t_embed, 2)},
    }
  )
  if write:
    write_outputs(out_dir, result, tag=tag)
    atomic.write_text(
      Path(out_dir) / QUERIES_FILE,
      "".join(json.dumps({"query_id": q["query_id"], "text": q["text"], "type": q["type"]}) + "\n" for q in queries),
    )
    say(f"wrote {out_dir} ({time.perf_counter() - t0:.1f} s)")
    from closp_jax.retrieval import report as report_lib  # pylint: disable=import-outside-toplevel

    say(report_lib.summary_table(result.metrics))
  return result.metrics


def evaluate_checkpoint(
  config,
  workdir,
  *,
  checkpoint: str = "latest",
  output=None,
  queries_path=None,
  qrels_path=None,
  k: int = DEPTH,
  metrics: Sequence[str] = DEFAULT_METRICS,
  stream=None,
  fusion: str = fusion_lib.DEFAULT_FUSION,
) -> dict:
  """Restore, embed (sharded over all processes), rank, write. Returns the metrics dict.

  Writes into `output` (default WORKDIR/eval/<step>, or .../untrained) from process 0.
  All processes must call this together.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from closp_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from closp_jax.data.tokenize import load_tokenizer  # pylint: disable=import-outside-toplevel
  from closp_jax.models import embed as embed_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel

  stream = stream or sys.stdout
  main = jax.process_index() == 0
  say = (lambda s: print(s, file=stream, flush=True)) if main else (lambda s: None)
  t0 = time.perf_counter()
  workdir = Path(workdir).expanduser().absolute()
  mesh = mesh_lib.make_mesh(config.mesh)
  check_eval_batch(int(config.data.eval_batch_size), mesh)
  builder = pipeline.get_builder(
    config.data.name, data_dir=config.data.data_dir or None, manual_dir=config.data.manual_dir or None
  )
  model, variables, label = ckpt_lib.restore_variables(workdir, config, checkpoint, mesh=mesh)
  out_dir = Path(output) if output else workdir / "eval" / label
  say(
    f"evaluating {config.name} ({'untrained' if label == 'untrained' else 'step ' + label}) on "
    f"{builder.info.full_name} test, {jax.device_count()} device(s), "
    f"{jax.process_count()} process(es)"
  )
  embedded = embed_lib.embed_corpus(
    model,
    variables,
    builder,
    mesh,
    "test",
    eval_batch_size=int(config.data.eval_batch_size),
    inputs=pipeline.input_kwargs(config),
    max_items=int(config.eval.max_corpus),
    progress=True,
  )
  corpus = Corpus.from_embedded(embedded)
  t_embed = time.perf_counter()
  tokenizer = load_tokenizer()
  max_len = int(config.data.max_len)
  return evaluate_and_write(
    corpus,
    builder,
    lambda texts: embed_lib.embed_texts(model, variables, tokenizer, texts, max_len=max_len),
    name=config.name,
    checkpoint={"which": str(checkpoint), "step": label, "workdir": str(workdir)},
    max_corpus=int(config.eval.max_corpus),
    out_dir=out_dir,
    tag=f"{config.name.replace(':', '-')}-{label}",
    queries_path=queries_path,
    qrels_path=qrels_path,
    k=k,
    metrics=metrics,
    t0=t0,
    t_embed=t_embed,
    write=main,
    say=say,
    fusion=fusion,
  )


# --------------------------------------------------------------------------- exported model


def embed_corpus_exported(
  model, builder, split: str = "test", *, batch_size: int = 64, max_items: int = 0, progress: bool = True
) -> dict[str, dict]:
  """{sensor: {'emb', 'key', 'labels', 'lonlat'}} of a split, embedded by an exported model
  (closp_jax.exported.ExportedModel) from the raw archive values: the exported functions apply
  the NaN fill and normalisation the model expects. One process."""
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  raw = {s: "none" for s in RANKINGS["text->all"]}
  out = {}
  for sensor in model.sensors:
    parts: dict[str, list] = {k: [] for k in ("emb", "key", "labels", "lonlat")}
    count, t0 = 0, time.perf_counter()
    for batch in pipeline.eval_iterator(
      builder, split, sensor, batch_size=batch_size, normalization=raw, shard_by_process=False
    ):
      keep = np.asarray(batch["mask"], bool)
      if max_items:
        keep &= np.cumsum(keep) + count <= max_items
      if not keep.any():
        break
      parts["emb"].append(model.encode_image(np.asarray(batch["image"])[keep], sensor, batch_size=batch_size))
      parts["key"].append(np.asarray(batch["key"]).astype(str)[keep])
      parts["labels"].append(np.asarray(batch["labels"], np.float32)[keep])
      parts["lonlat"].append(np.asarray(batch["lonlat"], np.float32)[keep])
      count += int(keep.sum())
      if progress and len(parts["emb"]) % 10 == 0:
        print(
          f"  embedding {sensor}: {count} samples ({count / max(time.perf_counter() - t0, 1e-9):.0f}/s)",
          file=sys.stderr,
          flush=True,
        )
    if not parts["emb"]:
      raise ValueError(f"the {sensor} {split} split of {builder.info.full_name} has no sample to embed")
    out[sensor] = {k: np.concatenate(v) for k, v in parts.items()}
  return out


def evaluate_exported(
  model_dir,
  *,
  data: str = "crisis_landmark/sample",
  data_dir=None,
  manual_dir=None,
  output=None,
  queries_path=None,
  qrels_path=None,
  k: int = DEPTH,
  metrics: Sequence[str] = DEFAULT_METRICS,
  batch_size: int = 64,
  max_corpus: int = 0,
  stream=None,
  fusion: str = fusion_lib.DEFAULT_FUSION,
) -> dict:
  """Evaluates an export folder (python -m closp_jax.export, from a workdir or --from-official) on
  the retrieval protocol, without a workdir: the test split of dataset `data` embedded by the
  exported functions, then the same rankings, metrics and files as evaluate_checkpoint. Writes
  into `output` (default MODEL_DIR/eval/<data>). Returns the metrics dict."""
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  stream = stream or sys.stdout
  say = lambda s: print(s, file=stream, flush=True)  # noqa: E731
  t0 = time.perf_counter()
  model_dir = Path(model_dir).expanduser().absolute()
  model = load_exported(model_dir)
  builder = pipeline.get_builder(data, data_dir=data_dir or None, manual_dir=manual_dir or None)
  out_dir = Path(output) if output else model_dir / "eval" / data
  source = model.config.get("checkpoint") or {}
  name = str(model.config.get("name", model_dir.name))
  say(f"evaluating the export {model_dir} ({name}) on {builder.info.full_name} test")
  corpus = Corpus.from_embedded(
    embed_corpus_exported(model, builder, "test", batch_size=batch_size, max_items=max_corpus)
  )
  t_embed = time.perf_counter()
  step = source.get("step")
  # What the run files and `compare` call it: the training step, or "official" for the authors' weights.
  label = str(step) if step is not None else ("official" if source.get("kind") == "official" else "export")
  return evaluate_and_write(
    corpus,
    builder,
    lambda texts: model.encode_text(texts) if texts else np.zeros((0, model.embed_dim), np.float32),
    name=name,
    checkpoint={"which": "export", "step": label, "model": str(model_dir), "source": source},
    max_corpus=max_corpus,
    out_dir=out_dir,
    tag=f"{name}-{label}",
    queries_path=queries_path,
    qrels_path=qrels_path,
    k=k,
    metrics=metrics,
    t0=t0,
    t_embed=t_embed,
    write=True,
    say=say,
    fusion=fusion,
  )

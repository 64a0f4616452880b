"""The evaluation library and binary: rankings and breakdowns vs pytrec_eval on brute-force runs,
zero-shot AP vs a loop over thresholds, label-built queries, TREC files, report, compare, and
(slow) a short training run evaluated end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from closp_jax.data import labels as labels_lib
from closp_jax.data import queries as queries_lib
from closp_jax.retrieval import evaluator, queries_rule, report, trec
from closp_jax.retrieval.ranking import average_precision, classification_map, similarity

pytrec_eval = pytest.importorskip("pytrec_eval")

REPO = Path(__file__).resolve().parents[1]
METRICS = ("nDCG@5", "nDCG@20", "nDCG@1000", "mAP@20", "R@1", "R@10", "P@10")
TREC = {
  "nDCG@5": "ndcg_cut_5",
  "nDCG@20": "ndcg_cut_20",
  "nDCG@1000": "ndcg_cut_1000",
  "mAP@20": "map_cut_20",
  "R@1": "recall_1",
  "R@10": "recall_10",
  "P@10": "P_10",
}
TREC_MEASURES = {"ndcg_cut.5,20,1000", "map_cut.20", "recall.1,10", "P.10"}
SOURCES = {"s2": ("benv2s2", "cabuar", "sen2flood"), "s1": ("benv2s1", "mmflood", "sen1flood", "quakeset")}


# --------------------------------------------------------------------------- references


def reference_ap(scores, positive):
  """AP from the definition: over distinct thresholds t (high to low), (R(t) - R(t_prev)) * P(t)."""
  scores, positive = list(map(float, scores)), [bool(p) for p in positive]
  total = sum(positive)
  if total == 0:
    return float("nan")
  ap, prev_recall = 0.0, 0.0
  for t in sorted(set(scores), reverse=True):
    chosen = [p for s, p in zip(scores, positive) if s >= t]
    precision = sum(chosen) / len(chosen)
    recall = sum(chosen) / total
    ap += (recall - prev_recall) * precision
    prev_recall = recall
  return ap


def brute_force_run(query_emb, emb, keys, k):
  """Top-k by the full score matrix (ties: lower corpus index first), as {qid-row: {key: score}}."""
  scores = np.asarray(query_emb, np.float64) @ np.asarray(emb, np.float64).T
  runs = []
  for row in scores:
    order = np.lexsort((np.arange(len(row)), -row))[:k]
    runs.append({str(keys[i]): float(row[i]) for i in order})
  return runs


def pytrec_means(run, qrels, names=METRICS):
  per_query = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
  return ({m: float(np.mean([v[TREC[m]] for v in per_query.values()])) for m in names}, per_query)


def synthetic_case(seed=0, per_source=9, dim=4, num_queries=14):
  """A corpus with every source, integer embeddings (exact ties), graded qrels with extras."""
  rng = np.random.default_rng(seed)
  embedded = {}
  for sensor, sources in SOURCES.items():
    keys = [f"{src}_{i:07d}" for src in sources for i in range(per_source + sources.index(src))]
    n = len(keys)
    labels = (rng.random((n, labels_lib.NUM_CLASSES)) < 0.3).astype(np.float32)
    labels[np.arange(n), rng.integers(0, 9, n)] = 1.0
    embedded[sensor] = {
      "emb": rng.integers(-2, 3, (n, dim)).astype(np.float32),
      "key": np.array(keys),
      "labels": labels,
      "lonlat": rng.uniform(-20, 20, (n, 2)).astype(np.float32),
    }
  corpus = evaluator.Corpus.from_embedded(embedded)
  query_emb = rng.integers(-2, 3, (num_queries, dim)).astype(np.float32)
  types = queries_rule.QUERY_TYPES
  queries = [{"query_id": f"q{i}", "text": f"query {i}", "type": types[i % 3]} for i in range(num_queries)]
  qrels = {}
  for i in range(num_queries):
    if i == 0:  # relevant only in S1: skipped by text->s2
      pool = np.flatnonzero(corpus.sensor == "s1")
    elif i == 1:  # judged, but nothing relevant: skipped everywhere
      pool = np.arange(len(corpus))
    else:
      pool = np.arange(len(corpus))
    picked = rng.choice(pool, size=min(len(pool), int(rng.integers(3, 25))), replace=False)
    grades = rng.integers(-1, 4, len(picked)) if i != 1 else np.zeros(len(picked), int)
    qrels[f"q{i}"] = {str(corpus.keys[j]): int(g) for j, g in zip(picked, grades)}
    qrels[f"q{i}"]["benv2s2_9999999"] = 3  # judged but not in the corpus: ignored
  qrels["q_without_text"] = {str(corpus.keys[0]): 2}
  class_emb = rng.integers(-2, 3, (labels_lib.NUM_CLASSES, dim)).astype(np.float32)
  return corpus, queries, query_emb, qrels, class_emb


def restricted(qrels, keys):
  keyset = set(map(str, keys))
  out = {}
  for q, judged in qrels.items():
    sub = {d: g for d, g in judged.items() if d in keyset}
    if any(g > 0 for g in sub.values()):
      out[q] = sub
  return out


def reference_ranking(corpus, queries, query_emb, qrels, k):
  sub = restricted(qrels, corpus.keys)
  rows = [i for i, q in enumerate(queries) if q["query_id"] in sub]
  runs = brute_force_run(query_emb[rows], corpus.emb, corpus.keys, k)
  run = {queries[i]["query_id"]: r for i, r in zip(rows, runs)}
  return pytrec_means(run, {q: sub[q] for q in run})


# --------------------------------------------------------------------------- AP and scores


def test_average_precision_hand_example_with_a_tie():
  # thresholds 0.9 (P 1, R 1/2) and 0.8 (tied pair: P 2/3, R 1) -> 1/2 + 1/2 * 2/3
  assert average_precision([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3, abs=1e-12)
  assert np.isnan(average_precision([0.3, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_equals_definition_and_ignores_order_of_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 80))
  scores = rng.integers(0, 6, n) / 5.0
  positive = rng.random(n) < 0.35
  positive[0] = True
  want = reference_ap(scores, positive)
  assert average_precision(scores, positive) == pytest.approx(want, abs=1e-12)
  perm = rng.permutation(n)
  assert average_precision(scores[perm], positive[perm]) == pytest.approx(want, abs=1e-12)


def test_classification_map_skips_absent_classes():
  rng = np.random.default_rng(5)
  scores = rng.integers(0, 4, (40, 3)).astype(np.float32)
  labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
  labels[:, 1] = 0
  mean, ap = classification_map(scores, labels)
  assert np.isnan(ap[1])
  want = [reference_ap(scores[:, c], labels[:, c]) for c in (0, 2)]
  assert ap[[0, 2]] == pytest.approx(want, abs=1e-12)
  assert mean == pytest.approx(np.mean(want), abs=1e-12)
  with pytest.raises(ValueError, match="must both be"):
    classification_map(scores, labels[:, :2])


def test_similarity_blocks_and_pads():
  rng = np.random.default_rng(0)
  corpus, queries = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
  got = similarity(corpus, queries, block=10)
  np.testing.assert_allclose(got, corpus.astype(np.float64) @ queries.T.astype(np.float64), atol=1e-5)
  with pytest.raises(ValueError, match="share D"):
    similarity(corpus, queries[:, :4])


# --------------------------------------------------------------------------- rankings


@pytest.fixture(scope="module")
def case():
  return synthetic_case()


@pytest.fixture(scope="module")
def evaluation(case):
  corpus, queries, query_emb, qrels, class_emb = case
  return evaluator.evaluate_embeddings(corpus, queries, query_emb, qrels, class_emb, k=20, metrics=METRICS, block=16)


def test_rankings_equal_pytrec_eval_on_brute_force_runs(case, evaluation):
  corpus, queries, query_emb, qrels, _ = case
  for name, sensors in evaluator.RANKINGS.items():
    sub = corpus.select(np.isin(corpus.sensor, sensors))
    want, per_query = reference_ranking(sub, queries, query_emb, qrels, k=20)
    got = evaluation.metrics["rankings"][name]
    assert got["num_queries"] == len(per_query)
    assert got["num_docs"] == len(sub)
    for m in METRICS:
      assert got["metrics"][m] == pytest.approx(want[m], abs=1e-6), (name, m)
    # by query type: the mean of the per-query values over that type's queries
    types = {q["query_id"]: q["type"] for q in queries}
    for t, entry in got["by_type"].items():
      members = [q for q in per_query if types[q] == t]
      assert entry["num_queries"] == len(members)
      for m in METRICS:
        assert entry["metrics"][m] == pytest.approx(np.mean([per_query[q][TREC[m]] for q in members]), abs=1e-6), (
          name,
          t,
          m,
        )
  # q0 (relevant only in S1) is not a text->s2 query; q1 (nothing relevant) is nowhere
  assert "q0" not in evaluation.rankings["text->s2"].qids
  assert "q0" in evaluation.rankings["text->s1"].qids
  assert all("q1" not in r.qids for r in evaluation.rankings.values())


def test_by_source_ranks_each_source_on_its_own(case, evaluation):
  corpus, queries, query_emb, qrels, _ = case
  all_sources = evaluation.metrics["rankings"]["text->all"]["by_source"]
  assert list(all_sources) == list(SOURCES["s2"] + SOURCES["s1"])
  for source, entry in all_sources.items():
    sub = corpus.select(corpus.source == source)
    want, per_query = reference_ranking(sub, queries, query_emb, qrels, k=20)
    assert entry["num_docs"] == len(sub) and entry["num_queries"] == len(per_query)
    for m in METRICS:
      assert entry["metrics"][m] == pytest.approx(want[m], abs=1e-6), (source, m)
  assert list(evaluation.metrics["rankings"]["text->s1"]["by_source"]) == list(SOURCES["s1"])


def test_zero_shot_map_and_class_query_ndcg(case, evaluation):
  corpus, _, _, _, class_emb = case
  for name, sensors in evaluator.RANKINGS.items():
    sub = corpus.select(np.isin(corpus.sensor, sensors))
    scores = sub.emb.astype(np.float64) @ class_emb.T.astype(np.float64)
    z = evaluation.metrics["zero_shot"][name]
    aps = []
    for c, cls in enumerate(labels_lib.CLASSES):
      want = reference_ap(scores[:, c], sub.labels[:, c])
      if np.isnan(want):
        assert z["AP"][cls] is None
        continue
      aps.append(want)
      assert z["AP"][cls] == pytest.approx(want, abs=1e-9), (name, cls)
    assert z["mAP"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert z["num_classes"] == len(aps)
    runs = brute_force_run(class_emb, sub.emb, sub.keys, 20)
    qrels = {cls: {str(k): 1 for k in sub.keys[sub.labels[:, c] > 0]} for c, cls in enumerate(labels_lib.CLASSES)}
    run = {cls: r for cls, r in zip(labels_lib.CLASSES, runs) if qrels[cls]}
    per_query = pytrec_eval.RelevanceEvaluator({c: qrels[c] for c in run}, {"ndcg_cut.20"}).evaluate(run)
    for cls in labels_lib.CLASSES:
      got = z["nDCG@20"][cls]
      if cls in per_query:
        assert got == pytest.approx(per_query[cls]["ndcg_cut_20"], abs=1e-6)
      else:
        assert got is None


def test_select_is_a_view_for_contiguous_rows(case):
  corpus = case[0]
  s1 = corpus.select(corpus.sensor == "s1")
  assert np.shares_memory(s1.emb, corpus.emb) and set(s1.sensor) == {"s1"}
  odd = corpus.select(np.arange(len(corpus)) % 2 == 1)
  assert len(odd) == len(corpus) // 2 and not np.shares_memory(odd.emb, corpus.emb)


def test_duplicate_keys_are_an_error(case):
  corpus = case[0]
  embedded = {
    "s2": {
      "emb": corpus.emb[:2],
      "key": np.array(["cabuar_1", "cabuar_1"]),
      "labels": corpus.labels[:2],
      "lonlat": corpus.lonlat[:2],
    }
  }
  with pytest.raises(ValueError, match="cabuar_1.*twice"):
    evaluator.Corpus.from_embedded(embedded)


# --------------------------------------------------------------------------- files


def test_files_reproduce_metrics_in_pytrec_eval(case, evaluation, tmp_path):
  out = evaluator.write_outputs(tmp_path / "out", evaluation, tag="test run")
  metrics = evaluator.load_metrics(out)
  assert metrics == json.loads(json.dumps(evaluation.metrics))
  for name, entry in metrics["rankings"].items():
    run = trec.read_run(out / entry["files"]["run"])
    qrels = queries_lib.read_qrels(out / entry["files"]["qrels"])
    assert set(run) == set(qrels) == set(evaluation.rankings[name].qids)
    want, _ = pytrec_means(run, qrels)
    for m in METRICS:
      assert entry["metrics"][m] == pytest.approx(want[m], abs=1e-6), (name, m)
    lines = (out / entry["files"]["run"]).read_text().splitlines()
    assert all(len(line.split()) == 6 and line.split()[5] == "test_run" for line in lines)
    assert max(len(v) for v in run.values()) == min(20, entry["num_docs"])
  assert (out / "qrels.trec").is_file() and (out / "run.all.trec").is_file()
  assert oct(os.stat(out / "run.all.trec").st_mode & 0o044) != "0o0"  # readable by others
  text = (out / report.REPORT_FILE).read_text()
  assert "## By source dataset" in text and "| text->all |" in text and "quakeset" in text
  from PIL import Image

  with Image.open(out / report.CHART_FILE) as im:
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300


def test_write_outputs_removes_stale_run_files(case, evaluation, tmp_path):
  (tmp_path / "run.s2.trec").write_text("stale\n")
  partial = evaluator.Evaluation(evaluation.metrics, {"text->all": evaluation.rankings["text->all"]})
  evaluator.write_outputs(tmp_path, partial, tag="t", report=False)
  assert not (tmp_path / "run.s2.trec").exists() and (tmp_path / "run.all.trec").exists()


def test_compare_table_lists_differences(evaluation):
  a = json.loads(json.dumps(evaluation.metrics))
  b = json.loads(json.dumps(evaluation.metrics))
  b["rankings"]["text->all"]["metrics"]["nDCG@5"] = a["rankings"]["text->all"]["metrics"]["nDCG@5"] + 0.125
  text = report.compare_table([("A", a), ("B", b)])
  row = next(line for line in text.splitlines() if line.startswith("text->all nDCG@5 "))
  assert row.split()[-1] == "+0.1250"
  row = next(line for line in text.splitlines() if line.startswith("text->s2 nDCG@5 "))
  assert row.split()[-1] == "+0.0000"
  assert "zero-shot mAP text->all" in text


# --------------------------------------------------------------------------- queries


def test_queries_from_labels_rule():
  C = {c: i for i, c in enumerate(labels_lib.CLASSES)}
  rows = (
    [["Trees", "Water"]] * 4
    + [["Trees"]] * 3
    + [["Water", "Crops"]] * 3
    + [["Snow and Ice"]] * 4
    + [["Burned Area", "Trees"]] * 2
    + [["Crops"]] * 4
  )
  labels = np.zeros((len(rows), labels_lib.NUM_CLASSES), np.float32)
  for i, r in enumerate(rows):
    labels[i, [C[c] for c in r]] = 1
  keys = [f"benv2s2_{i:03d}" for i in range(len(rows))]
  lonlat = np.tile([[10.0, 50.0]], (len(rows), 1))
  lonlat[::2, 0] = -100.0  # half the corpus elsewhere...
  lonlat[10:14] = [[100.0, 30.0]]  # ...and all the snow in one far place
  queries, qrels = queries_rule.queries_from_labels(labels, keys, lonlat, min_support=3)
  texts = [q["text"] for q in queries]
  # singles in class order, then pairs by frequency (>= 3 samples); the pair with Burned Area has 2
  assert texts == ["trees", "crops", "water", "snow and ice", "burned area", "trees. water", "crops. water"]
  assert [q["query_id"] for q in queries] == [f"L{i:03d}" for i in range(7)]
  by_text = {q["text"]: q for q in queries}
  assert by_text["burned area"]["type"] == "crisis"
  assert by_text["snow and ice"]["type"] == "location"
  assert by_text["trees"]["type"] == "land_cover"
  tw = qrels[by_text["trees. water"]["query_id"]]
  assert tw["benv2s2_000"] == 2 and tw["benv2s2_004"] == 1 and tw["benv2s2_007"] == 1
  assert "benv2s2_010" not in tw  # no overlap: not judged
  assert set(qrels[by_text["trees"]["query_id"]].values()) == {2}
  with pytest.raises(ValueError, match=r"\[N, 12\]"):
    queries_rule.queries_from_labels(labels[:, :5], keys)
  with pytest.raises(ValueError, match="no query"):
    queries_rule.queries_from_labels(np.zeros_like(labels), keys)


def test_assign_types_keeps_known_and_derives_missing():
  keys = [f"k{i}" for i in range(20)]
  lonlat = np.zeros((20, 2), np.float32)
  lonlat[:10, 0] = 120.0
  queries = [
    {"query_id": "a", "text": "flooded area", "type": ""},
    {"query_id": "b", "text": "water", "type": "Location-dependent"},
    {"query_id": "c", "text": "crops"},
    {"query_id": "d", "text": "bare", "type": "weird"},
  ]
  qrels = {"c": {"k1": 2, "k2": 2, "k3": 1}, "d": {"k1": 1, "k15": 1}}
  typed = queries_rule.assign_types(queries, qrels, keys, lonlat)
  assert [q["type"] for q in typed] == ["crisis", "location", "land_cover", "land_cover"]
  # c's best-graded samples (k1, k2) sit in one cell holding half the corpus: lift 2 < 3
  lonlat[:18, 0] = -60.0
  lonlat[1:3] = [[120.0, 0.0]]
  assert queries_rule.assign_types(queries[2:3], qrels, keys, lonlat)[0]["type"] == "location"


def test_read_user_queries_and_qrels(tmp_path):
  (tmp_path / "q.tsv").write_text("a\ttrees. water\tcrisis\nb\tcrops\n")
  (tmp_path / "q.jsonl").write_text('{"_id": "a", "text": "trees"}\n')
  assert evaluator.read_queries(tmp_path / "q.tsv") == [
    {"query_id": "a", "text": "trees. water", "type": "crisis"},
    {"query_id": "b", "text": "crops", "type": ""},
  ]
  assert evaluator.read_queries(tmp_path / "q.jsonl") == [{"query_id": "a", "text": "trees", "type": ""}]
  (tmp_path / "bad.tsv").write_text("a trees\n")
  with pytest.raises(ValueError, match=r"bad.tsv:1: expected 'query_id<TAB>text"):
    evaluator.read_queries(tmp_path / "bad.tsv")
  folder = tmp_path / "qrels"
  folder.mkdir()
  (folder / "one.trec").write_text("a 0 d1 2\n")
  (folder / "two.tsv").write_text("query-id\tcorpus-id\tscore\nb\td2\t1\n")
  assert queries_lib.read_qrels(folder) == {"a": {"d1": 2}, "b": {"d2": 1}}
  (folder / "three.trec").write_text("a 0 d1 1\n")
  with pytest.raises(ValueError, match="judged 1 here and 2"):
    queries_lib.read_qrels(folder)
  with pytest.raises(FileNotFoundError, match="missing"):
    evaluator.read_queries(tmp_path / "missing.tsv")


def test_resolve_queries_official_labels_and_user(case, tmp_path):
  corpus = case[0]
  with pytest.raises(ValueError, match="go together"):
    evaluator.resolve_queries(tmp_path, corpus, queries_path=tmp_path / "q.tsv")
  queries, qrels, origin = evaluator.resolve_queries(tmp_path, corpus)  # nothing there: labels
  assert origin == "labels" and queries[0]["query_id"] == "L000"
  assert set(qrels) == {q["query_id"] for q in queries}
  (tmp_path / "queries.jsonl").write_text('{"query_id": "x", "text": "burned area"}\n')
  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.qrels").write_text(f"x 0 {corpus.keys[0]} 1\n")
  queries, qrels, origin = evaluator.resolve_queries(tmp_path, corpus)
  assert origin == "official" and queries == [{"query_id": "x", "text": "burned area", "type": "crisis"}]
  (tmp_path / "u.tsv").write_text("u1\twater\tland cover\n")
  (tmp_path / "u.qrels").write_text(f"u1 0 {corpus.keys[1]} 2\n")
  queries, qrels, origin = evaluator.resolve_queries(tmp_path, corpus, tmp_path / "u.tsv", tmp_path / "u.qrels")
  assert origin == "user" and queries[0]["type"] == "land_cover" and qrels == {"u1": {corpus.keys[1]: 2}}


def test_compare_subcommand(evaluation, tmp_path):
  """Two evaluations whose text->all nDCG@10 differ by a known amount: the table shows both values
  and that difference."""
  names = sorted(evaluation.metrics["rankings"]["text->all"]["metrics"])
  changed, same = names[0], names[1]
  base = evaluation.metrics["rankings"]["text->all"]["metrics"][changed]
  for name, step, shift in (("a", "untrained", 0.0), ("b", "6", 0.125)):
    m = json.loads(json.dumps(evaluation.metrics))
    m.update(config="geoclosp:sample", checkpoint={"step": step})
    m["rankings"]["text->all"]["metrics"][changed] = base + shift
    (tmp_path / name).mkdir()
    evaluator.write_json(tmp_path / name / evaluator.METRICS_FILE, m)
  proc = subprocess.run(
    [sys.executable, "-m", "closp_jax.evaluate", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert "geoclosp:sample@untrained" in proc.stdout and "Δ geoclosp:sample@6" in proc.stdout
  row = next(line for line in proc.stdout.splitlines() if line.startswith(f"text->all {changed} "))
  a, b, d = map(float, row.split()[-3:])
  assert a == pytest.approx(base, abs=1e-4) and b == pytest.approx(base + 0.125, abs=1e-4)
  assert d == pytest.approx(0.125, abs=1e-4)
  other = [line for line in proc.stdout.splitlines() if line.startswith(f"text->all {same} ")]
  assert other and float(other[0].split()[-1]) == pytest.approx(0.0, abs=1e-9)
  proc = subprocess.run(
    [sys.executable, "-m", "closp_jax.evaluate", "compare", str(tmp_path / "none")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"error: {tmp_path / 'none'} not found: expected an evaluation output folder" in proc.stderr


def test_judgments_index_drops_outside_docs_and_checks_grades(case):
  corpus = case[0]
  k0, k1 = str(corpus.keys[0]), str(corpus.keys[-1])
  j = evaluator.Judgments({"a": {k0: 2, "elsewhere": 3, k1: 0}, "b": {k1: 1}, "c": {k0: 0}}, corpus)
  assert j.restrict(corpus) == {"a": {k0: 2, k1: 0}, "b": {k1: 1}}
  s2 = corpus.select(corpus.sensor == "s2")
  assert j.restrict(s2) == {"a": {k0: 2}}
  with pytest.raises(ValueError, match=r"qrels\['a'\]\['x'\] = 1.5: grades must be integers"):
    evaluator.Judgments({"a": {"x": 1.5}}, corpus)


# --------------------------------------------------------------------------- end to end (slow)

TINY = ["--config.data.name=crisis_landmark/tiny", "--config.data.batch_size=16", "--config.data.eval_batch_size=32"]


def _run(args, env, timeout=900):
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _train(config, workdir, env, steps=2):
  _run(
    [
      "-m",
      "closp_jax.main",
      "--config",
      config,
      "--workdir",
      str(workdir),
      *TINY,
      f"--config.train.steps={steps}",
      "--config.eval.every_steps=0",
      f"--config.checkpoint.every_steps={steps}",
      "--config.eval.final=False",
      "--config.checkpoint.async_save=False",
    ],
    env,
  )


def _config(spec, data_dir):
  from closp_jax.config import load_config

  cfg = load_config(spec)
  cfg.unlock()
  cfg.data.name, cfg.data.data_dir = "crisis_landmark/tiny", str(data_dir)
  cfg.data.batch_size, cfg.data.eval_batch_size = 16, 32
  cfg.lock()
  return cfg


@pytest.fixture(scope="module")
def trained_geo(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  env = {**os.environ, "CLOSP_DATA_DIR": str(root / "data")}
  _train("configs/geoclosp.py", root / "geo", env)
  out = root / "geo_eval"
  # The evaluation reads the run's config from WORKDIR/config.json: no --config to repeat.
  proc = _run(["-m", "closp_jax.evaluate", "--workdir", str(root / "geo"), "--output", str(out)], env)
  return root, env, out, proc.stdout


@pytest.mark.slow
def test_binary_files_give_metrics_json_in_pytrec_eval(trained_geo):
  _, _, out, stdout = trained_geo
  assert "text->all" in stdout and "zero-shot classification mAP" in stdout
  m = evaluator.load_metrics(out)
  assert m["checkpoint"]["step"] == "2" and m["queries"]["origin"] == "official"
  assert m["dataset"]["docs"] == {"s2": 240, "s1": 240}
  names = m["metric_names"]
  trec_names = {"nDCG": "ndcg_cut", "mAP": "map_cut", "R": "recall", "P": "P"}
  measures = {f"{trec_names[n.split('@')[0]]}.{n.split('@')[1]}" for n in names}
  for ranking, entry in m["rankings"].items():
    run = trec.read_run(out / entry["files"]["run"])
    qrels = queries_lib.read_qrels(out / entry["files"]["qrels"])
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    assert len(per_query) == entry["num_queries"] > 0
    for name in names:
      family, k = name.split("@")
      want = np.mean([v[f"{trec_names[family]}_{k}"] for v in per_query.values()])
      assert entry["metrics"][name] == pytest.approx(want, abs=1e-6), (ranking, name)
      assert 0.0 <= entry["metrics"][name] <= 1.0
    assert max(len(v) for v in run.values()) == min(1000, entry["num_docs"])
  assert set(m["rankings"]["text->all"]["by_source"]) == {
    "benv2s2",
    "cabuar",
    "sen2flood",
    "benv2s1",
    "mmflood",
    "sen1flood",
    "quakeset",
  }
  assert set(m["rankings"]["text->all"]["by_type"]) <= set(queries_rule.QUERY_TYPES)
  assert 0.0 < m["zero_shot"]["text->all"]["mAP"] <= 1.0
  assert (out / "report.md").is_file() and (out / "chart.png").is_file()


@pytest.mark.slow
def test_partial_restore_equals_full_state_restore(trained_geo):
  import jax

  from closp_jax import checkpoint as ckpt_lib
  from closp_jax.parallel import mesh as mesh_lib
  from closp_jax.train import setup

  root = trained_geo[0]
  cfg = _config("configs/geoclosp.py", root / "data")
  mesh = mesh_lib.make_mesh(cfg.mesh)
  _, variables, label = ckpt_lib.restore_variables(root / "geo", cfg, "latest", mesh=mesh)
  _, init_vars, shardings, optimizer, _ = setup.build_model_and_optimizer(cfg, mesh, 2)
  state, _ = setup.create_state(init_vars, optimizer, shardings, mesh, int(cfg.seed))
  ckpt = ckpt_lib.Checkpointer(root / "geo" / "checkpoints", async_save=False)
  full = ckpt.restore(2, ckpt_lib.abstract_like(state))
  ckpt.close()
  assert label == "2"
  for got, want in ((variables["params"], full.params), (variables["batch_stats"], full.batch_stats)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # training moved the parameters away from the init the untrained baseline uses
  _, untrained, label = ckpt_lib.restore_variables(root / "geo", cfg, "untrained", mesh=mesh)
  assert label == "untrained"
  moved = [
    not np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(untrained["params"]), jax.tree.leaves(variables["params"]))
  ]
  assert any(moved)
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint for step 7"):
    ckpt_lib.restore_variables(root / "geo", cfg, "7", mesh=mesh)


@pytest.mark.slow
def test_untrained_baseline_and_compare(trained_geo):
  from closp_jax import evaluate

  root, _, out, _ = trained_geo
  cfg = _config("configs/geoclosp.py", root / "data")
  metrics = evaluator.evaluate_checkpoint(cfg, root / "geo", checkpoint="untrained")
  assert metrics["checkpoint"]["step"] == "untrained"
  assert (root / "geo" / "eval" / "untrained" / "metrics.json").is_file()
  text = evaluate.compare([str(root / "geo" / "eval" / "untrained"), str(out)])
  assert "geoclosp:sample@untrained" in text and "Δ geoclosp:sample@2" in text
  trained = evaluator.load_metrics(out)
  row = next(line for line in text.splitlines() if line.startswith("text->all nDCG@1000 "))
  a, b, d = map(float, row.split()[-3:])
  want = (
    trained["rankings"]["text->all"]["metrics"]["nDCG@1000"] - metrics["rankings"]["text->all"]["metrics"]["nDCG@1000"]
  )
  assert d == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
def test_two_processes_give_the_same_evaluation(trained_geo, tmp_path):
  import socket

  root, env, out, _ = trained_geo
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  code = (
    "import sys, jax\n"
    f"jax.distributed.initialize(coordinator_address='127.0.0.1:{port}', num_processes=2, "
    "process_id=int(sys.argv[1]))\n"
    "from closp_jax.config import load_config\n"
    "from closp_jax.retrieval import evaluator\n"
    "cfg = load_config('configs/geoclosp.py')\n"
    "cfg.unlock()\n"
    f"cfg.data.name, cfg.data.data_dir = 'crisis_landmark/tiny', {str(root / 'data')!r}\n"
    "cfg.data.batch_size, cfg.data.eval_batch_size = 16, 32\n"
    f"evaluator.evaluate_checkpoint(cfg, {str(root / 'geo')!r}, output={str(tmp_path / 'mp')!r})\n"
  )
  env = {**env, "PYTHONPATH": str(REPO)}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", code, str(i)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
  assert "2 process(es)" in logs[0]
  single, multi = evaluator.load_metrics(out), evaluator.load_metrics(tmp_path / "mp")
  assert multi["rankings"] == single["rankings"] and multi["zero_shot"] == single["zero_shot"]
  assert (tmp_path / "mp" / "run.all.trec").read_bytes() == (out / "run.all.trec").read_bytes()


@pytest.mark.slow
def test_rgb_variant_trains_and_evaluates(tmp_path):
  env = {**os.environ, "CLOSP_DATA_DIR": str(tmp_path / "data")}
  _train("configs/closp.py:rgb", tmp_path / "rgb", env)
  cfg = _config("configs/closp.py:rgb", tmp_path / "data")
  assert cfg.data.rgb and cfg.model.s2_in_chans == 3 and cfg.model.s1_in_chans == 3
  metrics = evaluator.evaluate_checkpoint(cfg, tmp_path / "rgb")
  assert metrics["config"] == "closp:rgb" and metrics["checkpoint"]["step"] == "2"
  for entry in metrics["rankings"].values():
    assert entry["num_queries"] > 0 and 0.0 <= entry["metrics"]["nDCG@1000"] <= 1.0
  assert (tmp_path / "rgb" / "eval" / "2" / "run.all.trec").is_file()


def test_eval_batch_check_names_the_flag():
  import jax

  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  evaluator.check_eval_batch(5, mesh)
  with pytest.raises(ValueError, match=r"config.data.eval_batch_size=0 must be a positive multiple of 1"):
    evaluator.check_eval_batch(0, mesh)

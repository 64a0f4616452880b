"""Ranking metrics against trec_eval (pytrec_eval), ir_measures and hand computations; TREC I/O."""
import math

import numpy as np
import pytest

from closp_jax.retrieval import metrics, trec

pytrec_eval = pytest.importorskip("pytrec_eval")
ir_measures = pytest.importorskip("ir_measures")

METRICS = ("nDCG@1", "nDCG@5", "nDCG@10", "nDCG@100", "mAP@5", "mAP@100", "R@1", "R@10",
           "R@100", "P@1", "P@10")
TREC_NAMES = {"nDCG": "ndcg_cut", "mAP": "map_cut", "R": "recall", "P": "P"}


def _trec_measures(names):
  by_family = {}
  for name in names:
    family, k = metrics.parse_metric(name)
    by_family.setdefault(TREC_NAMES[family], []).append(str(k))
  return {f"{fam}.{','.join(ks)}" for fam, ks in by_family.items()}


def _trec_key(name):
  family, k = metrics.parse_metric(name)
  return f"{TREC_NAMES[family]}_{k}"


def random_case(seed, num_queries=30, num_docs=60, depth=40):
  """Run with many tied scores, ids whose string order differs from numeric order, graded qrels."""
  rng = np.random.default_rng(seed)
  docs = [f"d{i}" for i in range(num_docs)]  # 'd10' < 'd9' as strings
  run, qrels = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    picked = rng.choice(num_docs, size=rng.integers(1, depth + 1), replace=False)
    scores = rng.integers(0, 5, size=len(picked)) / 4.0  # 5 distinct values: ties everywhere
    run[qid] = {docs[i]: float(s) for i, s in zip(picked, scores)}
    judged = rng.choice(num_docs, size=rng.integers(1, 25), replace=False)
    grades = rng.integers(-1, 4, size=len(judged))  # -1 and 0 are non-relevant
    if q % 7 == 3:
      grades = np.minimum(grades, 0)  # a query with judgments but nothing relevant
    qrels[qid] = {docs[i]: int(g) for i, g in zip(judged, grades)}
  run["only_in_run"] = {"d1": 1.0}
  qrels["only_in_qrels"] = {"d2": 3}
  return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pytrec_eval_per_query(seed):
  run, qrels = random_case(seed)
  mean, per_query = metrics.evaluate_run(run, qrels, METRICS)
  expected = pytrec_eval.RelevanceEvaluator(qrels, _trec_measures(METRICS)).evaluate(run)
  assert set(per_query) == set(expected) == {q for q in run if q in qrels}
  for qid, values in expected.items():
    for name in METRICS:
      assert per_query[qid][name] == pytest.approx(values[_trec_key(name)], abs=1e-6), (qid, name)
  for name in METRICS:
    want = np.mean([v[_trec_key(name)] for v in expected.values()])
    assert mean[name] == pytest.approx(want, abs=1e-6), name


def test_equals_ir_measures_aggregate():
  """ir_measures scores judged queries missing from the run as 0, like trec_eval -c."""
  run, qrels = random_case(5)
  names = ("nDCG@10", "nDCG@100", "mAP@100", "R@10", "P@10")
  ours, per_query = metrics.evaluate_run(run, qrels, names, missing_queries="zero")
  assert "only_in_qrels" in per_query
  theirs = ir_measures.calc_aggregate(
      [ir_measures.nDCG @ 10, ir_measures.nDCG @ 100, ir_measures.AP @ 100, ir_measures.R @ 10,
       ir_measures.P @ 10], qrels, run)
  got = {str(m): v for m, v in theirs.items()}
  for name, key in zip(names, ("nDCG@10", "nDCG@100", "AP@100", "R@10", "P@10")):
    assert ours[name] == pytest.approx(got[key], abs=1e-6), name


def test_hand_computed_example():
  # Ranking by score desc, ties by id desc: c (0.9), b (0.5), a (0.5), e (0.1).
  run = {"q": [("a", 0.5), ("e", 0.1), ("c", 0.9), ("b", 0.5)]}
  qrels = {"q": {"a": 2, "b": 0, "c": 1, "d": 3, "e": -1}}
  names = ("nDCG@2", "nDCG@3", "mAP@3", "mAP@10", "R@1", "R@3", "P@3", "P@10")
  _, per_query = metrics.evaluate_run(run, qrels, names)
  got = per_query["q"]
  idcg2 = 3 + 2 / math.log2(3)
  idcg3 = idcg2 + 1 / math.log2(4)
  assert got["nDCG@2"] == pytest.approx(1 / idcg2)
  assert got["nDCG@3"] == pytest.approx((1 + 2 / math.log2(4)) / idcg3)
  ap = (1 / 1 + 2 / 3) / 3  # relevant at ranks 1 and 3, three relevant in total
  assert got["mAP@3"] == pytest.approx(ap) and got["mAP@10"] == pytest.approx(ap)
  assert got["R@1"] == pytest.approx(1 / 3) and got["R@3"] == pytest.approx(2 / 3)
  assert got["P@3"] == pytest.approx(2 / 3) and got["P@10"] == pytest.approx(2 / 10)


def test_list_and_dict_runs_agree_and_input_order_is_ignored():
  run, qrels = random_case(7)
  rng = np.random.default_rng(0)
  as_lists = {}
  for qid, entries in run.items():
    items = list(entries.items())
    rng.shuffle(items)
    as_lists[qid] = items
  assert metrics.evaluate_run(run, qrels, METRICS) == metrics.evaluate_run(as_lists, qrels,
                                                                           METRICS)


def test_queries_without_relevant_docs_and_missing_queries():
  run = {"a": {"x": 1.0}, "b": {"y": 1.0}}
  qrels = {"a": {"x": 1}, "b": {"y": 0}, "c": {"z": 2}, "empty": {}}
  mean, per_query = metrics.evaluate_run(run, qrels, ("nDCG@10", "P@1"))
  assert set(per_query) == {"a", "b"}  # 'c' not in the run, 'empty' has no judgment
  assert per_query["b"] == {"nDCG@10": 0.0, "P@1": 0.0}
  assert mean["P@1"] == pytest.approx(0.5)
  mean_c, per_query_c = metrics.evaluate_run(run, qrels, ("nDCG@10", "P@1"),
                                             missing_queries="zero")
  assert set(per_query_c) == {"a", "b", "c"} and per_query_c["c"]["nDCG@10"] == 0.0
  assert mean_c["P@1"] == pytest.approx(1 / 3)


def test_errors_name_the_problem():
  qrels = {"q": {"a": 1}}
  with pytest.raises(ValueError, match="nDCG@k, mAP@k, R@k, P@k"):
    metrics.evaluate_run({"q": {"a": 1.0}}, qrels, ("MRR@10",))
  with pytest.raises(ValueError, match="k >= 1"):
    metrics.parse_metric("P@0")
  with pytest.raises(ValueError, match=r"run\['q'\]: document 'a' is ranked twice"):
    metrics.evaluate_run({"q": [("a", 1.0), ("b", 0.5), ("a", 0.2)]}, qrels)
  with pytest.raises(ValueError, match="must be finite"):
    metrics.evaluate_run({"q": {"a": float("nan")}}, qrels)
  with pytest.raises(ValueError, match=r"qrels\['q'\]\['a'\] = 0.5: grades must be integers"):
    metrics.evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 0.5}})
  with pytest.raises(ValueError, match="no query to score"):
    metrics.evaluate_run({"x": {"a": 1.0}}, qrels)
  with pytest.raises(ValueError, match="missing_queries"):
    metrics.evaluate_run({"q": {"a": 1.0}}, qrels, missing_queries="drop")
  assert metrics.parse_metric("ndcg@1000") == ("nDCG", 1000)


def test_run_file_reproduces_our_numbers_with_external_tools(tmp_path):
  """float32 scores with ties -> run file -> pytrec_eval on the file == evaluate_run in memory."""
  rng = np.random.default_rng(11)
  num_q, k, corpus = 20, 30, 80
  doc_names = np.array([f"img_{i}" for i in range(corpus)])
  qids = [f"query{i}" for i in range(num_q)]
  index = np.stack([rng.choice(corpus, k, replace=False) for _ in range(num_q)])
  # float32 values that a short decimal would merge, plus exact ties.
  scores = (np.float32(0.3) + rng.integers(0, 6, (num_q, k)).astype(np.float32)
            * np.float32(1e-7)).astype(np.float32)
  scores[:, -3:] = -np.inf  # padding as topk_search returns it
  doc_ids = doc_names[index]
  qrels = {q: {doc_names[j]: int(rng.integers(0, 4)) for j in rng.choice(corpus, 15, replace=False)}
           for q in qids}
  ours, _ = metrics.evaluate_run(trec.make_run(qids, doc_ids, scores), qrels, METRICS)

  run_path, qrels_path = tmp_path / "run.trec", tmp_path / "sub" / "qrels.txt"
  trec.write_run(run_path, qids, doc_ids, scores, tag="closp")
  trec.write_qrels(qrels_path, qrels)
  file_run, file_qrels = trec.read_run(run_path), trec.read_qrels(qrels_path)
  assert file_qrels == qrels
  assert all(len(v) == k - 3 for v in file_run.values())
  per_q = pytrec_eval.RelevanceEvaluator(file_qrels, _trec_measures(METRICS)).evaluate(file_run)
  for name in METRICS:
    want = np.mean([v[_trec_key(name)] for v in per_q.values()])
    assert ours[name] == pytest.approx(want, abs=1e-6), name

  # The rank column follows trec_eval's order and scores round-trip to the same float32.
  lines = [l.split() for l in run_path.read_text().splitlines()]
  first = [l for l in lines if l[0] == qids[0]]
  assert [int(l[3]) for l in first] == list(range(1, k - 2))
  keys = [(np.float32(l[4]), l[2]) for l in first]
  assert keys == sorted(keys, reverse=True)
  assert {l[5] for l in lines} == {"closp"} and {l[1] for l in lines} == {"Q0"}
  row = dict(zip(doc_ids[0], scores[0]))
  assert all(np.float32(l[4]) == row[l[2]] for l in first)
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_trec_readers_and_writers_reject_bad_input(tmp_path):
  beir = tmp_path / "test.tsv"
  beir.write_text("query-id\tcorpus-id\tscore\nq1\tdocA\t1\nq1\tdocB\t0\nq2\tdocA\t2\n")
  assert trec.read_qrels(beir) == {"q1": {"docA": 1, "docB": 0}, "q2": {"docA": 2}}
  bad = tmp_path / "bad.qrels"
  bad.write_text("q1 0 d1 1\nq1 0 d2 high\n")
  with pytest.raises(ValueError, match=r"bad.qrels:2: grade 'high' is not an integer"):
    trec.read_qrels(bad)
  dup = tmp_path / "dup.run"
  dup.write_text("q Q0 a 1 0.5 t\nq Q0 a 2 0.4 t\n")
  with pytest.raises(ValueError, match=r"dup.run:2: document 'a' appears twice"):
    trec.read_run(dup)
  short = tmp_path / "short.run"
  short.write_text("q Q0 a 1 0.5\n")
  with pytest.raises(ValueError, match=r"short.run:1: expected 6 columns"):
    trec.read_run(short)
  with pytest.raises(ValueError, match="no whitespace"):
    trec.write_run(tmp_path / "r", ["q 1"], [["a"]], [[1.0]], tag="t")
  with pytest.raises(ValueError, match="not finite"):
    trec.write_run(tmp_path / "r", ["q"], [["a"]], [[np.nan]], tag="t")
  with pytest.raises(ValueError, match="appears twice"):
    trec.write_run(tmp_path / "r", ["q"], [["a", "a"]], [[1.0, 0.5]], tag="t")
  assert not (tmp_path / "r").exists()
  trec.write_run(tmp_path / "r64", ["q"], [["a", "b"]], np.array([[0.1, 0.1 + 1e-16]]), "t")
  assert trec.read_run(tmp_path / "r64") == {"q": {"a": 0.1, "b": 0.1 + 1e-16}}

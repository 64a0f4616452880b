"""Ranking metrics against trec_eval (pytrec_eval), ir_measures and hand computations; TREC I/O."""

import math

import numpy as np
import pytest

from closp_jax.data.queries import read_qrels
from closp_jax.retrieval import metrics, trec

pytrec_eval = pytest.importorskip("pytrec_eval")
ir_measures = pytest.importorskip("ir_measures")

METRICS = ("nDCG@1", "nDCG@5", "nDCG@10", "nDCG@100", "mAP@5", "mAP@100", "R@1", "R@10", "R@100", "P@1", "P@10")
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
    [ir_measures.nDCG @ 10, ir_measures.nDCG @ 100, ir_measures.AP @ 100, ir_measures.R @ 10, ir_measures.P @ 10],
    qrels,
    run,
  )
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
  assert metrics.evaluate_run(run, qrels, METRICS) == metrics.evaluate_run(as_lists, qrels, METRICS)


def test_queries_without_relevant_docs_and_missing_queries():
  run = {"a": {"x": 1.0}, "b": {"y": 1.0}}
  qrels = {"a": {"x": 1}, "b": {"y": 0}, "c": {"z": 2}, "empty": {}}
  mean, per_query = metrics.evaluate_run(run, qrels, ("nDCG@10", "P@1"))
  assert set(per_query) == {"a", "b"}  # 'c' not in the run, 'empty' has no judgment
  assert per_query["b"] == {"nDCG@10": 0.0, "P@1": 0.0}
  assert mean["P@1"] == pytest.approx(0.5)
  mean_c, per_query_c = metrics.evaluate_run(run, qrels, ("nDCG@10", "P@1"), missing_queries="zero")
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
  scores = (np.float32(0.3) + rng.integers(0, 6, (num_q, k)).astype(np.float32) * np.float32(1e-7)).astype(np.float32)
  scores[:, -3:] = -np.inf  # padding as topk_search returns it
  doc_ids = doc_names[index]
  qrels = {q: {doc_names[j]: int(rng.integers(0, 4)) for j in rng.choice(corpus, 15, replace=False)} for q in qids}
  ours, _ = metrics.evaluate_run(trec.make_run(qids, doc_ids, scores), qrels, METRICS)

  run_path, qrels_path = tmp_path / "run.trec", tmp_path / "sub" / "qrels.txt"
  trec.write_run(run_path, qids, doc_ids, scores, tag="closp")
  trec.write_qrels(qrels_path, qrels)
  file_run, file_qrels = trec.read_run(run_path), read_qrels(qrels_path)
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
  assert read_qrels(beir) == {"q1": {"docA": 1, "docB": 0}, "q2": {"docA": 2}}
  bad = tmp_path / "bad.qrels"
  bad.write_text("q1 0 d1 1\nq1 0 d2 high\n")
  with pytest.raises(ValueError, match=r"bad.qrels:2: grade 'high' is not a number"):
    read_qrels(bad)
  # a grade written as a float with no fraction is that integer; a fraction is refused (one rule for
  # the dataset's judgments, a user's --qrels and the evaluations' own files)
  floats = tmp_path / "floats.qrels"
  floats.write_text("q1 0 d1 1.0\nq1 0 d2 0\n")
  assert read_qrels(floats) == {"q1": {"d1": 1, "d2": 0}}
  floats.write_text("q1 0 d1 1.5\n")
  with pytest.raises(ValueError, match=r"floats.qrels:1: grade '1.5' is not a whole number"):
    read_qrels(floats)
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


# --------------------------------------------------------------------------- fusion of sensors

from closp_jax.data import labels as labels_lib  # noqa: E402
from closp_jax.errors import UserError  # noqa: E402
from closp_jax.retrieval import evaluator, ranking  # noqa: E402


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _two_sensor_case(seed=0, n2=70, n1=50, dim=8, num_queries=9, s1_offset=0.6):
  """Every query shares a component (the last axis) with the S1 images, not with S2 images: S1's
  raw scores sit higher by about `s1_offset` times that component."""
  rng = np.random.default_rng(seed)
  queries = _unit(np.concatenate([rng.normal(size=(num_queries, dim - 1)), np.full((num_queries, 1), 3.0)], 1))
  e2 = _unit(np.concatenate([rng.normal(size=(n2, dim - 1)), np.zeros((n2, 1))], 1))
  e1 = np.concatenate([rng.normal(size=(n1, dim - 1)), np.zeros((n1, 1))], 1)
  e1 = _unit(np.concatenate([_unit(e1)[:, :-1], np.full((n1, 1), s1_offset)], 1))
  return queries, {"s2": e2, "s1": e1}


def test_fuse_scores_against_brute_force_statistics():
  queries, emb = _two_sensor_case()
  reference = _unit(np.random.default_rng(1).normal(size=(13, 8)))
  stats = {s: ranking.SensorScoreStats.from_embeddings(e, reference, block=16) for s, e in emb.items()}
  full = {s: queries.astype(np.float64) @ e.T.astype(np.float64) for s, e in emb.items()}
  top = {s: -np.sort(-f, axis=1)[:, :20] for s, f in full.items()}
  raw = ranking.fuse_scores(top, "raw")
  z = ranking.fuse_scores(top, "zscore", query_emb=queries, stats=stats)
  ref = ranking.fuse_scores(top, "reference", stats=stats)
  rrf = ranking.fuse_scores(top, "rrf")
  for s, f in full.items():
    np.testing.assert_array_equal(raw[s], top[s])
    # per query: mean and (population) standard deviation of its scores over the whole corpus
    want = (top[s] - f.mean(axis=1, keepdims=True)) / f.std(axis=1, keepdims=True)
    np.testing.assert_allclose(z[s], want, atol=1e-9)
    pairs = reference.astype(np.float64) @ emb[s].T.astype(np.float64)
    np.testing.assert_allclose(ref[s], (top[s] - pairs.mean()) / pairs.std(), atol=1e-9)
    np.testing.assert_allclose(rrf[s][0], 1.0 / (60 + np.arange(1, 21)))
    for fused in (z, ref, rrf):  # every method keeps each sensor's own order
      assert np.all(np.diff(fused[s], axis=1) <= 0)


def test_merge_ranked_raw_is_the_ranking_over_the_union_with_its_tie_rule():
  rng = np.random.default_rng(3)
  s2 = np.round(rng.uniform(size=(4, 6)), 1)  # coarse values: ties within and across sensors
  s1 = np.round(rng.uniform(size=(4, 5)), 1)
  full = np.concatenate([s2, s1], axis=1)
  order2, order1 = np.argsort(-s2, 1, kind="stable"), np.argsort(-s1, 1, kind="stable")
  fused = {"s2": np.take_along_axis(s2, order2, 1), "s1": np.take_along_axis(s1, order1, 1)}
  index = {"s2": order2, "s1": order1 + 6}
  scores, rows, which = ranking.merge_ranked(fused, index, k=7)
  want = np.argsort(-full, axis=1, kind="stable")[:, :7]  # S2 rows first among equal scores
  np.testing.assert_array_equal(rows, want)
  np.testing.assert_array_equal(scores, np.take_along_axis(full, want, 1))
  np.testing.assert_array_equal(which, (want >= 6).astype(int))
  padded = {"s2": np.array([[0.5, -np.inf]]), "s1": np.array([[0.7, 0.1]])}
  s, r, _ = ranking.merge_ranked(padded, {"s2": np.array([[3, -1]]), "s1": np.array([[8, 9]])}, k=4)
  np.testing.assert_array_equal(r, [[8, 3, 9, -1]])
  assert s[0, -1] == -np.inf


def test_fusion_errors_are_user_errors():
  with pytest.raises(UserError, match="expected one of raw, zscore, reference, rrf"):
    ranking.fuse_scores({"s2": np.zeros((1, 2))}, "borda")
  with pytest.raises(UserError, match="statistics of the s2 corpus"):
    ranking.fuse_scores({"s2": np.zeros((1, 2))}, "zscore", query_emb=np.zeros((1, 4)))
  stats = {"s2": ranking.SensorScoreStats.from_embeddings(np.eye(4, dtype=np.float32))}
  with pytest.raises(UserError, match="reference texts"):
    ranking.fuse_scores({"s2": np.zeros((1, 2))}, "reference", stats=stats)
  back = ranking.SensorScoreStats.from_dict(stats["s2"].to_dict())
  np.testing.assert_array_equal(back.second, stats["s2"].second)


def _fusion_corpus(seed=0, **case):
  queries, emb = _two_sensor_case(seed, **case)
  rng = np.random.default_rng(seed + 10)
  embedded = {}
  for s, src in (("s2", "benv2s2"), ("s1", "benv2s1")):
    n = len(emb[s])
    embedded[s] = {
      "emb": emb[s],
      "key": np.array([f"{src}_{i:07d}" for i in range(n)]),
      "labels": np.eye(labels_lib.NUM_CLASSES, dtype=np.float32)[rng.integers(0, 3, n)],
      "lonlat": np.zeros((n, 2), np.float32),
    }
  corpus = evaluator.Corpus.from_embedded(embedded)
  qs = [{"query_id": f"q{i}", "text": f"q{i}", "type": "land_cover"} for i in range(len(queries))]
  # relevant: the 8 best S2 documents of each query by score, and 8 random S1 ones
  qrels = {}
  for i, q in enumerate(queries):
    best2 = np.argsort(-(emb["s2"] @ q))[:8]
    some1 = rng.choice(len(emb["s1"]), 8, replace=False)
    qrels[f"q{i}"] = {**{f"benv2s2_{j:07d}": 1 for j in best2}, **{f"benv2s1_{j:07d}": 1 for j in some1}}
  return corpus, qs, queries, qrels


def test_evaluate_embeddings_fusion_raw_is_the_papers_ranking_and_fused_matches_brute_force():
  corpus, qs, queries, qrels = _fusion_corpus()
  k = 30
  raw = evaluator.evaluate_embeddings(corpus, qs, queries, qrels, k=k, fusion="raw")
  judged = evaluator.Judgments(qrels, corpus).restrict(corpus)
  direct = evaluator.rank_corpus("text->all", corpus, [q["query_id"] for q in qs], queries, judged, k=k)
  assert raw.rankings["text->all"].mean == direct.mean
  via_merge = evaluator.rank_fused("text->all", corpus, [q["query_id"] for q in qs], queries, judged, fusion="raw", k=k)
  np.testing.assert_array_equal(via_merge.doc_keys, direct.doc_keys)
  assert raw.metrics["rankings"]["text->all"]["fusion"] == "raw"
  for method in ("zscore", "reference", "rrf"):
    ev = evaluator.evaluate_embeddings(corpus, qs, queries, qrels, k=k, fusion=method)
    # brute force: every score, each sensor mapped with its whole-corpus statistics, one sort
    run = {}
    for i, q in enumerate(queries):
      fused, keys = [], []
      for s in ("s2", "s1"):
        part = corpus.select(corpus.sensor == s)
        sc = part.emb.astype(np.float64) @ q.astype(np.float64)
        if method == "zscore":
          sc = (sc - sc.mean()) / sc.std()
        elif method == "reference":
          pairs = queries.astype(np.float64) @ part.emb.T.astype(np.float64)  # reference: the queries
          sc = (sc - pairs.mean()) / pairs.std()
        else:
          sc = 1.0 / (60 + np.argsort(np.argsort(-sc, kind="stable"), kind="stable") + 1)
        fused.append(sc)
        keys.append(part.keys)
      fused, keys = np.concatenate(fused), np.concatenate(keys)
      top = np.argsort(-fused, kind="stable")[:k]
      run[qs[i]["query_id"]] = {str(keys[j]): float(fused[j]) for j in top}
    want = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10,100", "recall.10"}).evaluate(run)
    got = ev.rankings["text->all"].per_query
    for qid, values in want.items():
      assert got[qid]["nDCG@10"] == pytest.approx(values["ndcg_cut_10"], abs=1e-6), (method, qid)
      assert got[qid]["R@10"] == pytest.approx(values["recall_10"], abs=1e-6), (method, qid)
    assert ev.metrics["rankings"]["text->all"]["fusion"] == method
    # the per-sensor rankings do not depend on the fusion
    assert ev.metrics["rankings"]["text->s2"]["metrics"] == raw.metrics["rankings"]["text->s2"]["metrics"]


def test_fusion_recovers_the_sensor_that_raw_scores_bury():
  corpus, qs, queries, qrels = _fusion_corpus(seed=4, s1_offset=1.0)
  raw = evaluator.evaluate_embeddings(corpus, qs, queries, qrels, k=30, fusion="raw")
  z = evaluator.evaluate_embeddings(corpus, qs, queries, qrels, k=30, fusion="zscore")
  top_raw = raw.rankings["text->all"].doc_keys[:, :8]
  assert np.mean([str(d).startswith("benv2s1") for d in top_raw.ravel()]) > 0.9  # S1 crowds the top
  assert (
    z.metrics["rankings"]["text->all"]["metrics"]["nDCG@10"]
    > raw.metrics["rankings"]["text->all"]["metrics"]["nDCG@10"] + 0.2
  )

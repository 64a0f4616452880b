"""The synthetic archive's query set: balanced over the three types, typed by the evaluation's
grid-cell rule from the judgments, location-dependent because of the world's geography."""

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from closp_jax.data import labels as L
from closp_jax.data import synthetic as S
from closp_jax.data import synthetic_world as W
from closp_jax.retrieval import queries_rule

SAMPLE = dict(num_s2=4000, num_s1=4000, seed=0)  # crisis_landmark/sample's archive


@pytest.fixture(scope="module")
def sample():
  """The sample archive's records (labels, places, locations, splits), drawn without pixels, and
  its queries and judgments."""
  records = S.plan_records(SAMPLE["num_s2"], SAMPLE["num_s1"], SAMPLE["seed"])
  queries, qrels = S.build_queries(records)
  judged = collections.defaultdict(dict)
  for qid, key, grade in qrels:
    judged[qid][key] = grade
  test = [r for r in records if r.split == "test"]
  return records, test, queries, dict(judged)


def test_sample_has_at_least_25_queries_of_each_type(sample):
  _, _, queries, judged = sample
  counts = collections.Counter(q["type"] for q in queries)
  assert all(counts[t] >= 25 for t in queries_rule.QUERY_TYPES), counts
  assert sum(counts.values()) <= 3 * S.QUERIES_PER_TYPE
  assert len({q["query_id"] for q in queries}) == len({q["text"] for q in queries}) == len(queries)
  assert all(any(g == 2 for g in judged[q["query_id"]].values()) for q in queries)


def test_types_are_the_evaluation_rule_applied_to_the_judgments(sample):
  _, test, queries, judged = sample
  emptied = [{**q, "type": ""} for q in queries]
  retyped = queries_rule.assign_types(
    emptied, judged, [r.key for r in test], np.array([r.lonlat for r in test], np.float32)
  )
  assert [q["type"] for q in retyped] == [q["type"] for q in queries]


def test_location_queries_crowd_into_the_places_that_hold_the_rare_classes(sample):
  _, test, queries, judged = sample
  lonlat = np.array([r.lonlat for r in test])
  cell = {r.key: c for r, c in zip(test, np.floor((lonlat + [180, 90]) / 5).astype(int).tolist())}
  corpus_cells = collections.Counter(map(tuple, cell.values()))
  place = {r.key: r.place for r in test}
  confined = {"snow and ice", "flooded vegetation", "bare"}
  for q in queries:
    best = [k for k, g in judged[q["query_id"]].items() if g == 2]
    top, n = collections.Counter(tuple(cell[k]) for k in best).most_common(1)[0]
    share, lift = n / len(best), (n / len(best)) / (corpus_cells[top] / len(test))
    if q["type"] == "location":
      assert share >= 0.5 and lift >= 3, q
      assert confined & set(q["text"].split(". ")), q  # a class the world confines to a few places
      home = collections.Counter(place[k] for k in best).most_common(1)[0][0]
      assert not home.startswith(("Southwest coast", "Lakeland", "Danube", "Plateau")), (q, home)
    elif q["type"] == "land_cover":
      assert not (share >= 0.5 and lift >= 3), q


def test_crisis_queries_name_a_crisis_and_find_it_only_at_its_events(sample):
  _, test, queries, judged = sample
  place = {r.key: r.place for r in test}
  events = {p.name for s in W.SOURCES if s.event_label for p in s.places}
  crisis = [q for q in queries if q["type"] == "crisis"]
  assert {c.lower() for c in queries_rule.CRISIS_CLASSES} <= {q["text"] for q in crisis}
  for q in crisis:
    assert queries_rule.names_crisis(q["text"])
    best = [k for k, g in judged[q["query_id"]].items() if g == 2]
    if "burned area" in q["text"]:  # Portugal's CORINE burnt areas are the other fire-prone place
      assert all(place[k] in events or "Portugal" in place[k] for k in best)
    else:
      assert all(place[k] in events for k in best), q


def test_plan_records_is_what_the_archive_writes(tmp_path):
  out = S.write_archive(tmp_path / "a", 40, 40, seed=3)
  planned = S.plan_records(40, 40, 3)
  md = pq.read_table(out / S.METADATA_FILE).to_pydict()
  assert md["key"] == [r.key for r in planned]
  assert md["split"] == [r.split for r in planned]
  assert md["labels"] == [r.labels for r in planned]
  queries, qrels = S.build_queries(planned)
  assert [json.loads(line) for line in (out / S.QUERIES_FILE).read_text().splitlines()] == queries
  assert (out / S.QRELS_FILE).read_text() == "".join(f"{q} 0 {d} {g}\n" for q, d, g in qrels)


def test_balanced_rule_selects_per_type():
  C = {c: i for i, c in enumerate(L.CLASSES)}
  rows = (
    [["Trees", "Water"]] * 6
    + [["Trees", "Crops"]] * 8
    + [["Trees"]] * 6
    + [["Crops", "Water"]] * 5
    + [["Snow and Ice", "Bare"]] * 5
    + [["Snow and Ice"]] * 1
    + [["Flooded Area", "Crops"]] * 5
  )
  labels = np.zeros((len(rows), L.NUM_CLASSES), np.float32)
  for i, r in enumerate(rows):
    labels[i, [C[c] for c in r]] = 1
  keys = [f"k{i:02d}" for i in range(len(rows))]
  lonlat = np.tile([[10.0, 50.0]], (len(rows), 1))
  lonlat[::2, 0] = -100.0  # the rest of the corpus is spread over two cells...
  lonlat[25:31] = [[100.0, 30.0]]  # ...and all the snow lies in a third
  queries, qrels = queries_rule.queries_from_labels(labels, keys, lonlat, per_type=3, min_support=5)
  got = [(q["text"], q["type"]) for q in queries]
  # per type: single classes first (class order), then combinations by frequency; at most 3 each
  assert got == [
    ("trees", "land_cover"),
    ("crops", "land_cover"),
    ("water", "land_cover"),
    ("flooded area", "crisis"),
    ("crops. flooded area", "crisis"),
    ("bare", "location"),
    ("snow and ice", "location"),
    ("bare. snow and ice", "location"),
  ]
  assert [q["query_id"] for q in queries] == [f"L{i:03d}" for i in range(8)]
  tw = qrels[queries[0]["query_id"]]
  assert set(tw.values()) == {2} and len(tw) == 20
  # "trees. water" (6 samples) would be next for land cover; per_type=4 takes "trees. crops" (8) first
  more, _ = queries_rule.queries_from_labels(labels, keys, lonlat, per_type=4, min_support=5)
  assert [q["text"] for q in more if q["type"] == "land_cover"][-1] == "trees. crops"

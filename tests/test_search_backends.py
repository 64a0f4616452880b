"""Search backends: the exact engines (faiss fp16 flat, closp-jax topk_search) agree row for row,
with and without filters; IVF-PQ and HNSW find most of the exact top-k on clustered data and
return exact scores; narrow filters fall back to exact; errors name the fix. faiss is a declared
test dependency: in CI its absence fails these tests instead of skipping them."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from index_scale import clustered_unit_vectors  # noqa: E402

from closp_jax.search_lib import backends  # noqa: E402


def need_faiss():
  if not backends.faiss_available():
    if os.environ.get("CI") == "true":
      pytest.fail("faiss-cpu is a test dependency (the 'search' and 'test' extras); install it")
    pytest.skip("faiss-cpu not installed")


@pytest.fixture(scope="module")
def data():
  emb = clustered_unit_vectors(None, 20000, 64, clusters=64, noise=0.6, seed=1)
  queries = clustered_unit_vectors(None, 20, 64, clusters=64, noise=0.6, seed=2).astype(np.float32)
  return emb, queries


def exact_reference(emb, queries, k, mask=None):
  scores = queries @ emb.astype(np.float32).T
  if mask is not None:
    scores = np.where(mask[None], scores, -np.inf)
  rows = np.stack([np.argsort(-s, kind="stable")[:k] for s in scores])
  return np.take_along_axis(scores, rows, 1), rows


def test_exact_engines_agree_with_numpy(data, monkeypatch):
  need_faiss()
  emb, queries = data
  want_s, want_r = exact_reference(emb, queries, 50)
  mask = np.zeros(len(emb), bool)
  mask[::3] = True
  mask_s, mask_r = exact_reference(emb, queries, 50, mask)
  for engine in ("faiss", "jax", "auto"):
    b = backends.ExactBackend(emb, engine=engine)
    s, r = b.search(queries, 50)
    np.testing.assert_array_equal(r, want_r, err_msg=engine)
    np.testing.assert_allclose(s, want_s, atol=2e-6, err_msg=engine)
    s, r = b.search(queries[:3], 50, mask)  # 6,667 rows allowed: gathered and scored exactly
    np.testing.assert_array_equal(r, mask_r[:3], err_msg=engine)
    with monkeypatch.context() as m:
      m.setattr(backends, "SUBSET_EXACT", 100)  # wide filters: faiss's ID selector / topk_search's mask
      s, r = b.search(queries[:3], 50, mask)
    np.testing.assert_array_equal(r, mask_r[:3], err_msg=engine)
    np.testing.assert_allclose(s, mask_s[:3], atol=2e-6, err_msg=engine)
  # Few allowed rows: gathered and scored exactly, padded with -1 past the last one.
  few = np.zeros(len(emb), bool)
  few[[5, 17, 4000]] = True
  s, r = backends.ExactBackend(emb).search(queries[:2], 5, few)
  assert sorted(r[0][:3]) == [5, 17, 4000] and list(r[0][3:]) == [-1, -1] and np.isneginf(s[0][3:]).all()


def test_exact_ties_list_the_lower_row_first():
  need_faiss()
  emb = np.zeros((10, 8), np.float16)
  emb[:, 0] = 1.0  # every row ties
  for engine in ("faiss", "jax"):
    _, r = backends.ExactBackend(emb, engine=engine).search(np.eye(8, dtype=np.float32)[:1], 4)
    assert list(r[0]) == [0, 1, 2, 3], engine


def test_faiss_flat_holds_the_stored_bytes(data):
  need_faiss()
  emb, _ = data
  flat = backends.ExactBackend(emb, engine="faiss").flat()
  assert flat.ntotal == len(emb)
  np.testing.assert_array_equal(flat.reconstruct_n(0, 100), emb[:100].astype(np.float32))


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_indexes_recall_exact_scores_and_filters(data, tmp_path, kind, monkeypatch):
  need_faiss()
  emb, queries = data
  path = backends.build_ann(
    tmp_path, emb, kind, backends.AnnParams(nlist=64 if kind == "ivfpq" else 0, train_size=10000)
  )
  meta = json.loads((tmp_path / f"ann-{kind}.json").read_text())
  assert path.is_file() and meta["count"] == len(emb) and meta["type"] == kind
  b = backends.open_backend(tmp_path, emb, kind)
  s, r = b.search(queries, 20)
  want_s, want_r = exact_reference(emb, queries, 20)
  found = np.mean([len(set(a) & set(w)) / 20 for a, w in zip(r, want_r)])
  assert found >= 0.9, f"{kind}: recall@20 {found}"
  # The scores are the exact ones of the rows found.
  np.testing.assert_allclose(s, np.take_along_axis(queries @ emb.astype(np.float32).T, r, 1), atol=2e-6)
  # Filters: never a row outside the mask; a narrow one is searched exactly.
  mask = np.zeros(len(emb), bool)
  mask[1::2] = True
  monkeypatch.setattr(backends, "SUBSET_EXACT", 100)  # through faiss's ID selector
  _, r = b.search(queries[:4], 20, mask)
  assert (r % 2 == 1).all()
  monkeypatch.undo()
  narrow = np.zeros(len(emb), bool)
  narrow[:500] = True
  s, r = b.search(queries[:4], 20, narrow)
  np.testing.assert_array_equal(r, exact_reference(emb, queries[:4], 20, narrow)[1])


def test_backend_errors_name_the_fix(data, tmp_path):
  need_faiss()
  emb, _ = data
  with pytest.raises(
    backends.BackendError,
    match=r"ann-hnsw.faiss not found: build it with `closp-search index "
    r"--index_type hnsw",
  ):
    backends.open_backend(tmp_path, emb, "hnsw")
  with pytest.raises(backends.BackendError, match="unknown --index_type 'lsh'"):
    backends.open_backend(tmp_path, emb, "lsh")
  with pytest.raises(backends.BackendError, match="needs at least 256 rows"):
    backends.build_ann(tmp_path, emb[:100], "ivfpq")
  backends.build_ann(tmp_path, emb[:1000], "hnsw")
  with pytest.raises(backends.BackendError, match="holds 1000 rows, the index 20000: remove it"):
    backends.open_backend(tmp_path, emb, "hnsw")

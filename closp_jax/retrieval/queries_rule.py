"""Evaluation queries when the dataset has none: built from the corpus labels by a fixed rule.

Rule (docs/evaluation.md, "Queries from labels"):

* Queries: every class carried by at least one corpus sample (one query each, in the
  order of `labels.CLASSES`), then the `num_pairs` most frequent class pairs and the
  `num_triples` most frequent class triples, each carried in full by at least
  `min_support` samples. Frequency ties go to the pair/triple that comes first in class
  order. The text is the dataset's text rule ("trees. water"); ids are `L000`, `L001`, ...
  With `per_type=n` (balanced, what the synthetic archive writes): every class carried by a
  sample and every combination of 2 or 3 classes carried in full by at least `min_support`
  samples is typed by the rule below, and
  each type keeps up to n of them: its single classes first (class order), then the others by
  frequency (ties: class order); queries are listed land cover, crisis, location.
* Relevance (graded by label overlap): 2 when the sample carries every class of the query,
  1 when it carries some of them; samples with none are not judged (non-relevant).
  Single-class queries therefore only have grade 2.
* Type: `crisis` when the query names a crisis class (Flooded Area, Earthquake Damage,
  Burned Area); `location` when its grade-2 samples crowd into one place; `land_cover`
  otherwise. "One place" is a `cell_degrees` x `cell_degrees` lon/lat grid cell: at least
  half of the grade-2 samples lie in their most common cell, and that share is at least
  3 times the cell's share of the whole corpus.

`query_type` applies the same typing to queries from any source (official files without a
type field, user files) given the keys judged relevant to them.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from closp_jax.data import labels as labels_lib

CRISIS_CLASSES = ("Flooded Area", "Earthquake Damage", "Burned Area")
QUERY_TYPES = ("land_cover", "crisis", "location")
_TYPE_ALIASES = {
  "land_cover": "land_cover",
  "landcover": "land_cover",
  "land cover": "land_cover",
  "land-cover": "land_cover",
  "semantic": "land_cover",
  "general": "land_cover",
  "crisis": "crisis",
  "disaster": "crisis",
  "event": "crisis",
  "location": "location",
  "location_dependent": "location",
  "location-dependent": "location",
  "location dependent": "location",
  "geographic": "location",
  "geo": "location",
}


def normalize_type(value: str) -> str | None:
  """A query file's type field -> one of QUERY_TYPES; None when empty or not recognised."""
  return _TYPE_ALIASES.get(" ".join(str(value or "").split()).lower())


def _check_corpus(labels: np.ndarray, keys: Sequence[str], lonlat: np.ndarray | None) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] != labels_lib.NUM_CLASSES:
    raise ValueError(f"corpus labels must be a [N, {labels_lib.NUM_CLASSES}] multi-hot array, got shape {labels.shape}")
  if len(keys) != labels.shape[0]:
    raise ValueError(f"corpus keys ({len(keys)}) and labels ({labels.shape[0]}) differ in length")
  if lonlat is not None and np.shape(lonlat) != (labels.shape[0], 2):
    raise ValueError(f"corpus lonlat must be [N, 2] = [{labels.shape[0]}, 2], got {np.shape(lonlat)}")
  return labels > 0


def _candidates(hot: np.ndarray, num_pairs: int, num_triples: int, min_support: int) -> list[tuple[int, ...]]:
  singles = [(c,) for c in range(hot.shape[1]) if hot[:, c].any()]
  combos: list[tuple[int, ...]] = []
  for size, top in ((2, num_pairs), (3, num_triples)):
    counts: collections.Counter = collections.Counter()
    for row in hot:
      counts.update(itertools.combinations(np.flatnonzero(row).tolist(), size))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    combos += [c for c, n in ranked[:top] if n >= min_support]
  return singles + combos


def cell_of(lonlat: np.ndarray, cell_degrees: float) -> np.ndarray:
  """Integer id of the lon/lat grid cell of each [lon, lat] row."""
  lonlat = np.asarray(lonlat, np.float64)
  ix = np.floor((lonlat[:, 0] + 180.0) / cell_degrees).astype(np.int64)
  iy = np.floor((lonlat[:, 1] + 90.0) / cell_degrees).astype(np.int64)
  return ix * 100_000 + iy


def is_location_dependent(
  relevant_cells: np.ndarray, corpus_cells: np.ndarray, *, min_share: float = 0.5, min_lift: float = 3.0
) -> bool:
  """True when the relevant samples crowd into one grid cell (see the module docstring)."""
  if len(relevant_cells) == 0 or len(corpus_cells) == 0:
    return False
  cells, counts = np.unique(relevant_cells, return_counts=True)
  top = int(np.argmax(counts))
  share = counts[top] / len(relevant_cells)
  base = np.count_nonzero(corpus_cells == cells[top]) / len(corpus_cells)
  return bool(share >= min_share and base > 0 and share / base >= min_lift)


def names_crisis(text: str) -> bool:
  """True when the query text names one of the crisis classes."""
  lowered = " ".join(text.lower().split())
  return any(labels_lib.class_text(c) in lowered for c in CRISIS_CLASSES)


def query_type(
  text: str, relevant_keys: Sequence[str], key_index: Mapping[str, int], corpus_cells: np.ndarray | None
) -> str:
  """crisis / location / land_cover for a query (text, keys of its most relevant samples)."""
  if names_crisis(text):
    return "crisis"
  if corpus_cells is not None:
    rows = [key_index[k] for k in relevant_keys if k in key_index]
    if is_location_dependent(corpus_cells[rows], corpus_cells):
      return "location"
  return "land_cover"


def _supported_combos(hot: np.ndarray, max_size: int, min_support: int) -> list[tuple[tuple[int, ...], int]]:
  """Every class carried by a sample and every combination of 2..max_size classes carried in
  full by >= min_support samples, with its count, in class order."""
  out = []
  for size in range(1, max_size + 1):
    for combo in itertools.combinations(range(hot.shape[1]), size):
      n = int(np.count_nonzero(hot[:, list(combo)].all(axis=1)))
      if n >= (min_support if size > 1 else 1):
        out.append((combo, n))
  return out


def _combo_type(combo: Sequence[int], full: np.ndarray, cells: np.ndarray | None) -> str:
  names = [labels_lib.CLASSES[c] for c in combo]
  if any(c in CRISIS_CLASSES for c in names):
    return "crisis"
  if cells is not None and is_location_dependent(cells[full], cells):
    return "location"
  return "land_cover"


def _balanced(hot: np.ndarray, cells: np.ndarray | None, per_type: int, min_support: int) -> list[tuple[int, ...]]:
  """Up to per_type combinations of each type: singles first, then by frequency."""
  chosen: dict[str, list] = {t: [] for t in QUERY_TYPES}
  for combo, n in _supported_combos(hot, 3, min_support):
    full = np.flatnonzero(hot[:, list(combo)].all(axis=1))
    single = len(combo) == 1
    chosen[_combo_type(combo, full, cells)].append((not single, 0 if single else -n, combo))
  return [combo for t in QUERY_TYPES for _, _, combo in sorted(chosen[t])[:per_type]]


def queries_from_labels(
  labels: np.ndarray,
  keys: Sequence[str],
  lonlat: np.ndarray | None = None,
  *,
  num_pairs: int = 12,
  num_triples: int = 6,
  min_support: int = 3,
  cell_degrees: float = 5.0,
  prefix: str = "L",
  per_type: int | None = None,
) -> tuple[list[dict], dict[str, dict[str, int]]]:
  """(queries [{query_id, text, type}], qrels {qid: {key: grade}}) by the rule above.

  labels: [N, 12] multi-hot of the corpus samples, keys: their ids, lonlat: [N, 2] degrees
  (without it no query is typed `location`). per_type: None for the frequency rule
  (num_pairs, num_triples), or the number of queries of each type (balanced).
  """
  hot = _check_corpus(labels, keys, lonlat)
  keys = [str(k) for k in keys]
  cells = cell_of(lonlat, cell_degrees) if lonlat is not None else None
  if per_type is None:
    combos = _candidates(hot, num_pairs, num_triples, min_support)
  else:
    combos = _balanced(hot, cells, int(per_type), min_support)
  queries, qrels = [], {}
  for n, combo in enumerate(combos):
    qid = f"{prefix}{n:03d}"
    names = [labels_lib.CLASSES[c] for c in combo]
    overlap = hot[:, list(combo)].sum(axis=1)
    full = np.flatnonzero(overlap == len(combo))
    some = np.flatnonzero((overlap > 0) & (overlap < len(combo)))
    judged = {keys[i]: 2 for i in full}
    judged.update({keys[i]: 1 for i in some})
    qrels[qid] = judged
    queries.append(
      {"query_id": qid, "text": labels_lib.classes_to_text(names), "type": _combo_type(combo, full, cells)}
    )
  if not queries:
    raise ValueError("no query can be built from the corpus labels: no sample carries a class")
  return queries, qrels


def class_queries(prefix: str = "C") -> list[dict]:
  """One query per class, its name as text (zero-shot classification): ids C00..C11."""
  return [
    {"query_id": f"{prefix}{i:02d}", "text": labels_lib.class_text(c), "class": c}
    for i, c in enumerate(labels_lib.CLASSES)
  ]


def assign_types(
  queries: list[dict],
  qrels: Mapping[str, Mapping[str, int]],
  keys: Sequence[str],
  lonlat: np.ndarray | None,
  cell_degrees: float = 5.0,
) -> list[dict]:
  """Copies of `queries` whose `type` is one of QUERY_TYPES.

  A recognised type field is kept (normalised); otherwise the type follows the rule, with the
  query's highest-graded judged samples as its relevant set.
  """
  key_index = {str(k): i for i, k in enumerate(keys)}
  cells = cell_of(lonlat, cell_degrees) if lonlat is not None and len(keys) else None
  out = []
  for q in queries:
    kind = normalize_type(q.get("type", ""))
    if kind is None:
      judged = qrels.get(q["query_id"], {})
      top = max((g for g in judged.values() if g > 0), default=None)
      best = [d for d, g in judged.items() if top is not None and g == top]
      kind = query_type(q["text"], best, key_index, cells)
    out.append({**q, "type": kind})
  return out

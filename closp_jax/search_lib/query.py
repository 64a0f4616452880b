"""Text queries against an index: exact top-k by inner product, with sensor and distance filters."""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from closp_jax.search_lib.index import SearchIndex, SearchIndexError, model_fingerprint

EARTH_RADIUS_KM = 6371.0088
SENSOR_CHOICES = ("all", "s2", "s1")


def haversine_km(lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float) -> np.ndarray:
  """Great-circle distance (km, mean Earth radius) from (lon0, lat0) to each (lon, lat), degrees."""
  lon, lat = np.radians(np.asarray(lon, np.float64)), np.radians(np.asarray(lat, np.float64))
  lon0, lat0 = math.radians(lon0), math.radians(lat0)
  a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat) * math.cos(lat0) * np.sin((lon - lon0) / 2) ** 2
  return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def parse_lonlat(text: str) -> tuple[float, float]:
  """'LON,LAT' (degrees) -> (lon, lat); a clear error otherwise."""
  parts = text.split(",")
  try:
    lon, lat = (float(p) for p in parts)
  except ValueError:
    raise ValueError(f"--near {text!r}: expected LON,LAT in degrees, e.g. 13.40,52.52 (write --near=-3.7,40.4 "
                     "when LON is negative)") from None
  if abs(lat) > 90 or abs(lon) > 180:
    raise ValueError(f"--near {text!r}: lon must be in [-180, 180] and lat in [-90, 90]")
  return lon, lat


def filter_mask(index: SearchIndex, sensor: str = "all", near: tuple[float, float] | None = None,
                radius_km: float | None = None) -> np.ndarray:
  """bool [N]: rows of `sensor` ('all', 's2', 's1') within radius_km of near=(lon, lat)."""
  if sensor not in SENSOR_CHOICES:
    raise ValueError(f"sensor must be one of {SENSOR_CHOICES}, got {sensor!r}")
  mask = np.ones(len(index), bool)
  if sensor != "all":
    mask &= index.meta["sensor"] == sensor
  if (near is None) != (radius_km is None):
    raise ValueError("--near and --radius-km go together")
  if near is not None:
    if not radius_km > 0:
      raise ValueError(f"--radius-km must be positive, got {radius_km}")
    dist = haversine_km(index.meta["lon"], index.meta["lat"], *near)
    mask &= np.nan_to_num(dist, nan=np.inf) <= radius_km
  return mask


def check_model(index: SearchIndex, model, model_dir) -> None:
  """The query model must be the one that embedded the index."""
  want = index.manifest["model"]["fingerprint"]
  got = model_fingerprint(model_dir)
  if want != got:
    raise SearchIndexError(f"{model_dir} is not the model that built {index.folder} (that was "
                           f"{index.manifest['model']['path']}, step {index.manifest['model']['step']}); "
                           "query with the same model or index again")
  if int(model.embed_dim) != int(index.manifest["embed_dim"]):
    raise SearchIndexError(f"model dim {model.embed_dim} != index dim {index.manifest['embed_dim']}")


def search(index: SearchIndex, model, text: str, *, sensor: str = "all", k: int = 20,
           near: tuple[float, float] | None = None, radius_km: float | None = None) -> list[dict]:
  """Ranked results for one text: [{rank, score, row, key, sensor, source, lon, lat, timestamp, labels, ...}].

  Exact: every allowed row is scored (in blocks of the memory-mapped float16 embeddings, in
  float32); equal scores keep the lower row first. Fewer than k rows pass the filters -> fewer results.
  """
  from closp_jax.retrieval.topk import topk_search  # pylint: disable=import-outside-toplevel
  if k < 1:
    raise ValueError(f"--k must be at least 1, got {k}")
  mask = filter_mask(index, sensor, near, radius_km)
  allowed = int(mask.sum())
  if allowed == 0:
    return []
  q = model.encode_text([text])
  scores, rows = topk_search(q, index.embeddings, k=min(k, len(index)), corpus_mask=mask)
  out = []
  for rank, (score, row) in enumerate(zip(scores[0], rows[0]), 1):
    if row < 0:
      break
    entry = {"rank": rank, "score": float(score), "row": int(row), **index.row(int(row))}
    if near is not None:
      entry["distance_km"] = float(haversine_km(entry["lon"], entry["lat"], *near))
    out.append(entry)
  return out


def format_results(results: Sequence[dict]) -> str:
  """A fixed-width table: rank, score, key, sensor, source, lon/lat, labels."""
  if not results:
    return "no results (nothing in the index passes the filters)"
  width = max(len("key"), *(len(r["key"]) for r in results))
  lines = [f"{'rank':>4}  {'score':>7}  {'key':<{width}}  {'sensor':<6}  {'source':<10}  {'lon,lat':<19}  labels"]
  for r in results:
    lonlat = "-" if math.isnan(r["lon"]) else f"{r['lon']:.4f},{r['lat']:.4f}"
    lines.append(f"{r['rank']:>4}  {r['score']:>7.4f}  {r['key']:<{width}}  {r['sensor']:<6}  {r['source']:<10}  "
                 f"{lonlat:<19}  {', '.join(r['labels']) or '-'}")
  return "\n".join(lines)


def results_json(results: Sequence[dict]) -> str:
  """JSON list of results (NaN locations as null)."""
  def clean(r):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
  return json.dumps([clean(r) for r in results], indent=2)

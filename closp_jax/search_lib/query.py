"""Queries against an index: text or a stored embedding -> top-k, with sensor, place and date filters."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from closp_jax.errors import UserError
from closp_jax.retrieval.ranking import DEFAULT_FUSION, SensorScoreStats, check_fusion, fuse_scores, merge_ranked
from closp_jax.search_lib.index import SearchIndex, SearchIndexError, model_fingerprint

EARTH_RADIUS_KM = 6371.0088
SENSOR_CHOICES = ("all", "s2", "s1")


class QueryError(UserError, ValueError):
  """A query, filter or key that cannot be used; the message names it and what was expected."""


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
    raise QueryError(
      f"--near {text!r}: expected LON,LAT in degrees, e.g. 13.40,52.52 (write --near=-3.7,40.4 when LON is negative)"
    ) from None
  if abs(lat) > 90 or abs(lon) > 180:
    raise QueryError(f"--near {text!r}: lon must be in [-180, 180] and lat in [-90, 90]")
  return lon, lat


def parse_bbox(text: str) -> tuple[float, float, float, float]:
  """'MINLON,MINLAT,MAXLON,MAXLAT' (degrees) -> a tuple; MINLON > MAXLON crosses the antimeridian."""
  parts = str(text).split(",")
  try:
    box = tuple(float(p) for p in parts)
  except ValueError:
    box = ()
  if len(box) != 4 or not all(math.isfinite(v) for v in box):
    raise QueryError(f"bbox {text!r}: expected MINLON,MINLAT,MAXLON,MAXLAT in degrees, e.g. 12.9,52.3,13.8,52.7")
  minlon, minlat, maxlon, maxlat = box
  if not (-180 <= minlon <= 180 and -180 <= maxlon <= 180 and -90 <= minlat <= maxlat <= 90):
    raise QueryError(f"bbox {text!r}: longitudes must be in [-180, 180], latitudes in [-90, 90] with MINLAT <= MAXLAT")
  return box  # type: ignore[return-value]


def parse_date(text: str, *, end: bool = False) -> np.datetime64:
  """'YYYY-MM-DD' or an ISO date-time -> datetime64[s]; a bare end date includes its whole day."""
  text = str(text).strip()
  try:
    value = np.datetime64(text.rstrip("Z"), "s")
  except ValueError:
    raise QueryError(f"date {text!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS") from None
  if end and len(text) == 10:
    value = value + np.timedelta64(86399, "s")
  return value


def row_times(index: SearchIndex) -> np.ndarray:
  """datetime64[s] per row from the metadata's timestamp (NaT where empty or unreadable); cached."""
  cache = index.__dict__.setdefault("_cache", {})
  if "times" not in cache:
    out = np.full(len(index), np.datetime64("NaT"), "datetime64[s]")
    for i, t in enumerate(index.meta["timestamp"]):
      t = str(t).strip().rstrip("Z")
      if t:
        try:
          out[i] = np.datetime64(t[:19], "s")
        except ValueError:
          pass
    cache["times"] = out
  return cache["times"]


def filter_mask(
  index: SearchIndex,
  sensor: str = "all",
  near: tuple[float, float] | None = None,
  radius_km: float | None = None,
  bbox: tuple[float, float, float, float] | None = None,
  start: np.datetime64 | None = None,
  end: np.datetime64 | None = None,
) -> np.ndarray:
  """bool [N]: rows of `sensor` ('all', 's2', 's1') within radius_km of near=(lon, lat), inside bbox
  (lon/lat degrees; MINLON > MAXLON wraps the antimeridian) and taken between start and end
  (inclusive). Rows without a location never pass a place filter, rows without a time never a date filter."""
  if sensor not in SENSOR_CHOICES:
    raise QueryError(f"sensor must be one of {', '.join(SENSOR_CHOICES)}, got {sensor!r}")
  mask = np.ones(len(index), bool)
  if sensor != "all":
    mask &= index.meta["sensor"] == sensor
  if (near is None) != (radius_km is None):
    raise QueryError("--near and --radius-km go together")
  if near is not None:
    if not radius_km > 0:
      raise QueryError(f"--radius-km must be positive, got {radius_km}")
    dist = haversine_km(index.meta["lon"], index.meta["lat"], *near)
    mask &= np.nan_to_num(dist, nan=np.inf) <= radius_km
  if bbox is not None:
    minlon, minlat, maxlon, maxlat = bbox
    lon, lat = index.meta["lon"], index.meta["lat"]
    with np.errstate(invalid="ignore"):
      in_lat = (lat >= minlat) & (lat <= maxlat)
      in_lon = (lon >= minlon) & (lon <= maxlon) if minlon <= maxlon else (lon >= minlon) | (lon <= maxlon)
    mask &= in_lat & in_lon
  if start is not None or end is not None:
    times = row_times(index)
    ok = ~np.isnat(times)
    if start is not None:
      ok &= times >= start
    if end is not None:
      ok &= times <= end
    if start is not None and end is not None and start > end:
      raise QueryError(f"start {start} is after end {end}")
    mask &= ok
  return mask


def check_model(index: SearchIndex, model, model_dir) -> None:
  """The query model must be the one that embedded the index."""
  want = index.manifest["model"]["fingerprint"]
  got = model_fingerprint(model_dir)
  if want != got:
    raise SearchIndexError(
      f"{model_dir} is not the model that built {index.folder} (that was "
      f"{index.manifest['model']['path']}, step {index.manifest['model']['step']}); "
      "query with the same model or index again"
    )
  if int(model.embed_dim) != int(index.manifest["embed_dim"]):
    raise SearchIndexError(f"model dim {model.embed_dim} != index dim {index.manifest['embed_dim']}")


def _results(index: SearchIndex, scores: np.ndarray, rows: np.ndarray, near) -> list[dict]:
  out = []
  for score, row in zip(scores, rows):
    if row < 0:
      break
    entry = {"rank": len(out) + 1, "score": float(score), "row": int(row), **index.row(int(row))}
    if near is not None:
      entry["distance_km"] = float(haversine_km(entry["lon"], entry["lat"], *near))
    out.append(entry)
  return out


def _backend(index: SearchIndex, backend):
  if backend is not None:
    return backend
  cache = index.__dict__.setdefault("_cache", {})
  if "exact" not in cache:
    from closp_jax.search_lib.backends import ExactBackend  # pylint: disable=import-outside-toplevel

    cache["exact"] = ExactBackend(index.embeddings)
  return cache["exact"]


def search_vector(
  index: SearchIndex,
  query: np.ndarray,
  *,
  k: int = 20,
  backend=None,
  near=None,
  exclude_row: int | None = None,
  **filters,
) -> list[dict]:
  """Ranked rows for one query vector [D] under the filters of `filter_mask` (sensor, near +
  radius_km, bbox, start, end); `exclude_row` is never returned."""
  if k < 1:
    raise QueryError(f"k must be at least 1, got {k}")
  mask = filter_mask(index, near=near, **filters)
  if exclude_row is not None:
    mask[exclude_row] = False
  if not mask.any():
    return []
  full = bool(mask.all())
  scores, rows = _backend(index, backend).search(
    np.asarray(query, np.float32)[None], min(k, len(index)), None if full else mask
  )
  return _results(index, scores[0], rows[0], near)


def search(
  index: SearchIndex,
  model,
  text: str,
  *,
  sensor: str = "all",
  k: int = 20,
  near: tuple[float, float] | None = None,
  radius_km: float | None = None,
  backend=None,
  fusion: str = DEFAULT_FUSION,
  **filters,
) -> list[dict]:
  """Ranked results for one text: [{rank, score, row, key, sensor, source, lon, lat, timestamp, labels, ...}].

  The default backend is exact: every allowed row is scored (the memory-mapped float16 embeddings, in
  float32); equal scores keep the lower row first. `backend` is one from search_lib.backends
  (exact, ivfpq, hnsw). Fewer than k rows pass the filters -> fewer results. With sensor 'all',
  `fusion` (closp_jax.retrieval.ranking: raw, zscore, rrf) says how the S2 and S1 lists merge; the
  scores returned are then the fused ones.
  """
  if not str(text).strip():
    raise QueryError("the query text is empty: type what to look for, e.g. 'flooded area'")
  if k < 1:
    raise QueryError(f"k must be at least 1, got {k}")
  mask = filter_mask(index, sensor, near, radius_km, **filters)  # checks the filters before encoding
  if not mask.any():
    return []
  q = model.encode_text([text])[0]
  return search_text_vector(
    index, q, k=k, backend=backend, sensor=sensor, fusion=fusion, near=near, radius_km=radius_km, **filters
  )


def search_text_vector(
  index: SearchIndex,
  q: np.ndarray,
  *,
  k: int = 20,
  backend=None,
  sensor: str = "all",
  fusion: str = DEFAULT_FUSION,
  **filters,
) -> list[dict]:
  """Ranked rows for one text embedding [D]: `search_vector`, with the two sensors' lists merged by
  `fusion` when sensor is 'all' (raw: one ranking by inner product, as the paper evaluates)."""
  check_fusion(fusion)
  if sensor != "all" or fusion == "raw":
    return search_vector(index, q, k=k, backend=backend, sensor=sensor, **filters)
  return _search_fused(index, q, k=k, backend=backend, fusion=fusion, **filters)


def _sensor_stats(index: SearchIndex, sensor: str) -> SensorScoreStats:
  """Moments of one sensor's stored embeddings (computed once per index and cached)."""
  cache = index.__dict__.setdefault("_cache", {})
  key = f"stats:{sensor}"
  if key not in cache:
    cache[key] = SensorScoreStats.from_embeddings(index.embeddings[np.flatnonzero(index.meta["sensor"] == sensor)])
  return cache[key]


def _search_fused(
  index: SearchIndex, q: np.ndarray, *, k: int, backend, fusion: str, near=None, radius_km=None, **filters
) -> list[dict]:
  """Each sensor's own top k, mapped onto one scale by `fusion`, merged (closp_jax.retrieval.ranking)."""
  if fusion == "reference":
    raise QueryError(
      "fusion 'reference' needs a reference set of texts, which a search index does not keep; use raw, zscore or rrf"
    )
  scores, rows, stats = {}, {}, {}
  for sensor in ("s2", "s1"):
    found = search_vector(index, q, k=k, backend=backend, sensor=sensor, near=near, radius_km=radius_km, **filters)
    if not found:
      continue
    scores[sensor] = np.array([[r["score"] for r in found]], np.float64)
    rows[sensor] = np.array([[r["row"] for r in found]], np.int64)
    if fusion == "zscore":
      stats[sensor] = _sensor_stats(index, sensor)
  if not scores:
    return []
  fused = fuse_scores(scores, fusion, query_emb=np.asarray(q, np.float64)[None], stats=stats)
  merged, merged_rows, _ = merge_ranked(fused, rows, k)
  return _results(index, merged[0], merged_rows[0], near)


def similar(index: SearchIndex, key: str, *, k: int = 20, backend=None, **filters) -> list[dict]:
  """ "More like this": the rows nearest the stored embedding of `key` (itself excluded)."""
  row = index.row_of(key)
  query = np.asarray(index.embeddings[row], np.float32)
  return search_vector(index, query, k=k, backend=backend, exclude_row=row, **filters)


def format_results(results: Sequence[dict]) -> str:
  """A fixed-width table: rank, score, key, sensor, source, lon/lat, labels."""
  if not results:
    return "no results (nothing in the index passes the filters)"
  width = max(len("key"), *(len(r["key"]) for r in results))
  lines = [f"{'rank':>4}  {'score':>7}  {'key':<{width}}  {'sensor':<6}  {'source':<10}  {'lon,lat':<19}  labels"]
  for r in results:
    lonlat = "-" if math.isnan(r["lon"]) else f"{r['lon']:.4f},{r['lat']:.4f}"
    lines.append(
      f"{r['rank']:>4}  {r['score']:>7.4f}  {r['key']:<{width}}  {r['sensor']:<6}  {r['source']:<10}  "
      f"{lonlat:<19}  {', '.join(r['labels']) or '-'}"
    )
  return "\n".join(lines)


def results_json(results: Sequence[dict]) -> str:
  """JSON list of results (NaN locations as null)."""

  def clean(r):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}

  return json.dumps([clean(r) for r in results], indent=2)

"""Search results as GeoJSON (RFC 7946; opens in QGIS and any GIS) and as CSV.

GeoJSON: a FeatureCollection, one Point feature per result at its (lon, lat) in WGS84 degrees (RFC
7946's only CRS, so no "crs" member), in rank order; a result without a location has geometry null.
Properties: rank, score, key, sensor, source, timestamp, labels (a string of names joined with
"; ", which QGIS shows as text; labels_list keeps the JSON list), thumbnail (a URL, from the server)
and row. CSV: the same fields, one line per result, lon and lat as columns.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence

from closp_jax import atomic

FIELDS = ("rank", "score", "key", "sensor", "source", "lon", "lat", "timestamp", "labels", "thumbnail", "row")


def _num(v):
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def feature_collection(results: Sequence[dict], **meta) -> dict:
  """The results as a GeoJSON FeatureCollection dict (`meta`: extra top-level members, e.g. query)."""
  feats = []
  for r in results:
    lon, lat = _num(r.get("lon")), _num(r.get("lat"))
    geom = {"type": "Point", "coordinates": [lon, lat]} if lon is not None and lat is not None else None
    props = {
      "rank": r.get("rank"),
      "score": r.get("score"),
      "key": r.get("key"),
      "sensor": r.get("sensor"),
      "source": r.get("source"),
      "timestamp": r.get("timestamp") or None,
      "labels": "; ".join(r.get("labels") or []),
      "labels_list": list(r.get("labels") or []),
      "thumbnail": r.get("thumbnail"),
      "row": r.get("row"),
    }
    feats.append({"type": "Feature", "id": r.get("key"), "geometry": geom, "properties": props})
  return {"type": "FeatureCollection", **meta, "features": feats}


def to_geojson(results: Sequence[dict], **meta) -> str:
  return json.dumps(feature_collection(results, **meta), indent=1) + "\n"


def to_csv(results: Sequence[dict]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(FIELDS)
  for r in results:
    row = []
    for f in FIELDS:
      v = r.get(f)
      if f == "labels":
        v = "; ".join(v or [])
      v = _num(v)
      row.append("" if v is None else v)
    w.writerow(row)
  return buf.getvalue()


def write_results(results: Sequence[dict], path, **meta) -> None:
  """Writes .geojson / .json as GeoJSON and .csv as CSV, through a temporary file and a rename."""
  text = to_csv(results) if str(path).lower().endswith(".csv") else to_geojson(results, **meta)
  atomic.write_text(path, text)

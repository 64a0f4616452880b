"""The search web page and its JSON API: Flask, served by waitress (docs/search.md, "serve").

    app = create_app(SearchService(index, model, cache_dir=...))     # a WSGI app (tests: app.test_client())
    server = make_server(app, host="127.0.0.1", port=8080)           # waitress, threads
    server.run()

Routes (GET, with Flask's HEAD and OPTIONS; any other method is 405, an unknown path 404):
  /                       the page (static/index.html: Leaflet map, search form, thumbnail grid)
  /static/<file>          the page's own files (closp_jax/search_lib/static/); nothing else on disk
  /api/info               index size, sensors, location and time extent, max k, tile URL
  /api/search?q=TEXT&k=K[&sensor=s2|s1|all][&bbox=minlon,minlat,maxlon,maxlat][&start=DATE&end=DATE][&format=json|geojson|csv]
  /api/similar?key=KEY&k=K[same filters][&format=...]
  /thumbnails/<row>.png   a result's picture (S2 true colour, S1 false colour), rendered once into the cache folder

Bad input is a 4xx with {"error": "one line"}: empty text, k outside 1..max_k, a malformed bbox or
date, an unknown sensor (400), an unknown key (404), a query string over MAX_QUERY_CHARS (414).
The server writes only below its cache folder (thumbnails, each through a temporary file and a
rename).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from pathlib import Path

import numpy as np

from closp_jax import atomic
from closp_jax.errors import UserError
from closp_jax.retrieval.ranking import check_fusion
from closp_jax.search_lib import geojson
from closp_jax.search_lib.index import SearchIndex, SearchIndexError
from closp_jax.search_lib.query import QueryError, parse_bbox, parse_date, row_times, search_text_vector, similar

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_K = 100
HARD_MAX_K = 1000
MAX_QUERY_CHARS = 2048  # the whole query string
MAX_TEXT_CHARS = 500  # the q parameter
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = "&copy; OpenStreetMap contributors"


def default_cache_dir(index_folder: str | os.PathLike) -> Path:
  """~/.cache/closp_jax/search/<16 hex digits of the index folder's absolute path> (or $XDG_CACHE_HOME)."""
  base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
  digest = hashlib.sha256(str(Path(index_folder).absolute()).encode()).hexdigest()[:16]
  return base / "closp_jax" / "search" / digest


class SearchService:
  """What the routes call: searches with one index, one model and one backend; thumbnails."""

  def __init__(
    self,
    index: SearchIndex,
    model,
    *,
    backend=None,
    cache_dir: str | os.PathLike | None = None,
    max_k: int = DEFAULT_MAX_K,
    tiles: str | None = OSM_TILES,
    attribution: str = OSM_ATTRIBUTION,
  ):
    if not 1 <= max_k <= HARD_MAX_K:
      raise QueryError(f"--max_k must be in [1, {HARD_MAX_K}], got {max_k}")
    self.index, self.model, self.backend = index, model, backend
    self.max_k, self.tiles, self.attribution = max_k, tiles, attribution
    self.cache_dir = Path(cache_dir or default_cache_dir(index.folder)).absolute()
    self._model_lock = threading.Lock()
    self._source_lock = threading.Lock()
    self._source = None
    self.encode = functools.lru_cache(maxsize=1024)(self._encode)

  def _encode(self, text: str) -> np.ndarray:
    with self._model_lock:
      return self.model.encode_text([text])[0]

  def info(self) -> dict:
    meta = self.index.meta
    lon, lat = meta["lon"], meta["lat"]
    ok = np.isfinite(lon) & np.isfinite(lat)
    times = row_times(self.index)
    good = times[~np.isnat(times)]
    sensors = {s: int(np.sum(meta["sensor"] == s)) for s in ("s2", "s1")}
    return {
      "count": len(self.index),
      "sensors": sensors,
      "max_k": self.max_k,
      "bbox": [float(lon[ok].min()), float(lat[ok].min()), float(lon[ok].max()), float(lat[ok].max())]
      if ok.any()
      else None,
      "time_range": [str(good.min())[:10], str(good.max())[:10]] if good.size else None,
      "tiles": self.tiles,
      "attribution": self.attribution,
      "backend": getattr(self.backend, "kind", "exact"),
      "model": self.index.manifest["model"].get("name"),
    }

  def filters(self, args) -> tuple[int, dict]:
    """(k, filters) from request arguments; QueryError names the bad one."""
    raw_k = args.get("k", "20")
    try:
      k = int(raw_k)
    except ValueError:
      raise QueryError(f"k={raw_k!r}: expected a whole number from 1 to {self.max_k}") from None
    if not 1 <= k <= self.max_k:
      raise QueryError(f"k={k}: expected 1 to {self.max_k} (this server's maximum)")
    out: dict = {"sensor": args.get("sensor", "all") or "all"}
    if args.get("fusion"):
      out["fusion"] = check_fusion(args["fusion"])
    if args.get("bbox"):
      out["bbox"] = parse_bbox(args["bbox"])
    if args.get("start"):
      out["start"] = parse_date(args["start"])
    if args.get("end"):
      out["end"] = parse_date(args["end"], end=True)
    return k, out

  def search(self, text: str, k: int, **filters) -> list[dict]:
    text = (text or "").strip()
    if not text:
      raise QueryError("q is empty: type what to look for, e.g. 'flooded area'")
    if len(text) > MAX_TEXT_CHARS:
      raise QueryError(f"q has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return search_text_vector(self.index, self.encode(text), k=k, backend=self.backend, **filters)

  def similar(self, key: str, k: int, **filters) -> list[dict]:
    filters.pop("fusion", None)  # image -> image: one sensor scale, nothing to fuse
    if not key:
      raise QueryError("key is empty: give the key of a result, e.g. key=benv2s2_0000207")
    return similar(self.index, key, k=k, backend=self.backend, **filters)

  def thumbnail(self, row: int) -> Path:
    """The PNG of `row`, rendered into the cache folder on first request."""
    path = self.cache_dir / "thumbnails" / f"{row}.png"
    if path.is_file():
      return path
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from closp_jax.search_lib.contact_sheet import tile_rgb  # pylint: disable=import-outside-toplevel

    entry = self.index.row(row)
    with self._source_lock:
      if self._source is None:
        self._source = self.index.source()
      image = self._source.image(entry)
    rgb = Image.fromarray(tile_rgb(np.asarray(image), entry["sensor"]))
    atomic.write_with(path, lambda tmp: rgb.save(tmp, format="PNG"))
    return path


def _public(results: list[dict]) -> list[dict]:
  """The API's fields (NaN -> null) with the thumbnail URL."""
  out = []
  for r in results:
    lon, lat = r["lon"], r["lat"]
    out.append(
      {
        "rank": r["rank"],
        "key": r["key"],
        "score": r["score"],
        "sensor": r["sensor"],
        "source": r["source"],
        "lon": None if math.isnan(lon) else lon,
        "lat": None if math.isnan(lat) else lat,
        "labels": list(r["labels"]),
        "timestamp": r["timestamp"] or None,
        "thumbnail": f"/thumbnails/{r['row']}.png",
        "row": r["row"],
      }
    )
  return out


def create_app(service: SearchService):
  """The Flask app around `service` (see the module docstring for its routes)."""
  from flask import Flask, abort, jsonify, request, send_file, send_from_directory  # pylint: disable=import-outside-toplevel

  app = Flask("closp_search", static_folder=None)
  app.url_map.merge_slashes = False  # '//x' is a 404, not a redirect
  app.config["MAX_CONTENT_LENGTH"] = 1024  # GET only: no request needs a body
  app.json.sort_keys = False
  img_src = "'self' data:"
  if service.tiles:  # the tile host may serve images too ({s} subdomains as a CSP wildcard)
    from urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel

    parts = urlsplit(service.tiles.replace("{s}", "*"))
    if parts.scheme in ("http", "https") and parts.netloc:
      img_src += f" {parts.scheme}://{parts.netloc}"
  csp = (
    f"default-src 'self'; img-src {img_src}; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
  )

  @app.after_request
  def headers(resp):
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp

  @app.before_request
  def limits():
    if len(request.query_string) > MAX_QUERY_CHARS:
      return jsonify(error=f"query string over {MAX_QUERY_CHARS} bytes"), 414
    return None

  def fail(status: int, message: str):
    resp = jsonify(error=message)
    resp.status_code = status
    return resp

  @app.errorhandler(QueryError)
  def bad_query(err):
    return fail(400, str(err).splitlines()[0])

  @app.errorhandler(SearchIndexError)
  def bad_key(err):
    return fail(404, str(err).splitlines()[0])

  @app.errorhandler(UserError)
  def user_error(err):
    return fail(400, str(err).splitlines()[0])

  @app.errorhandler(404)
  def not_found(_):
    return fail(404, "not found")

  @app.errorhandler(405)
  def not_allowed(_):
    return fail(405, "method not allowed: this server answers GET only")

  @app.errorhandler(413)
  def too_large(_):
    return fail(413, "request too large")

  def answer(results: list[dict], what: dict):
    fmt = request.args.get("format", "json")
    body = _public(results)
    if fmt == "json":
      return jsonify(results=body)
    if fmt == "geojson":
      resp = app.response_class(geojson.to_geojson(body, query=what), mimetype="application/geo+json")
      resp.headers["Content-Disposition"] = "attachment; filename=closp-search.geojson"
      return resp
    if fmt == "csv":
      resp = app.response_class(geojson.to_csv(body), mimetype="text/csv")
      resp.headers["Content-Disposition"] = "attachment; filename=closp-search.csv"
      return resp
    raise QueryError(f"format={fmt!r}: expected json, geojson or csv")

  @app.get("/")
  def page():
    return send_from_directory(STATIC, "index.html")

  @app.get("/static/<path:name>")
  def static_file(name):
    return send_from_directory(STATIC, name)  # safe_join: a path outside STATIC is a 404

  @app.get("/api/info")
  def info():
    return jsonify(service.info())

  @app.get("/api/search")
  def api_search():
    k, filters = service.filters(request.args)
    q = request.args.get("q", "")
    return answer(service.search(q, k, **filters), {"q": q, **_echo(request.args)})

  @app.get("/api/similar")
  def api_similar():
    k, filters = service.filters(request.args)
    key = request.args.get("key", "")
    return answer(service.similar(key, k, **filters), {"key": key, **_echo(request.args)})

  @app.get("/thumbnails/<name>")
  def thumbnail(name):
    stem, dot, ext = name.partition(".")
    if ext != "png" or not stem.isdigit() or int(stem) >= len(service.index):
      abort(404)
    return send_file(service.thumbnail(int(stem)), mimetype="image/png", max_age=3600)

  return app


def _echo(args) -> dict:
  return {k: args[k] for k in ("k", "sensor", "bbox", "start", "end") if k in args}


def make_server(app, *, host: str = "127.0.0.1", port: int = 8080, threads: int = 8):
  """A waitress server for `app` (not started: call .run(); .close() stops it)."""
  try:
    import waitress  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError("closp-search serve needs flask and waitress: pip install 'closp-jax[search]'") from e
  return waitress.create_server(
    app,
    host=host,
    port=port,
    threads=threads,
    ident="closp-search",
    max_request_header_size=16384,
    max_request_body_size=1024,
    connection_limit=256,
    channel_timeout=60,
  )

r"""closp-search: index satellite archives, search them with text, serve a search page.

  closp-search index --model MODEL_DIR (--data crisis_landmark/sample [--split test] | --folder PATCHES/ |
      --scenes SCENE.tif|FOLDER [--scenes ...] | --stac CATALOG.json) --out INDEX [--index_type exact|ivfpq|hnsw]
  closp-search query --index INDEX "flooded area" [--sensor s1|s2|all] [--k 20] [--near LON,LAT --radius-km R]
      [--bbox MINLON,MINLAT,MAXLON,MAXLAT] [--start DATE] [--end DATE] [--json] [--png results.png]
      [--geojson results.geojson] [--csv results.csv] [--index_type exact|ivfpq|hnsw]
  closp-search serve --index INDEX [--host 127.0.0.1] [--port 8080] [--max_k 100] [--tiles URL|none]

(also `python -m closp_jax.search ...`). `index` embeds every patch with an exported model
(closp_jax.export) into INDEX, resumably; with --num_processes / JAX_NUM_PROCESSES (the trainer's
multi-process set-up) each process embeds a shard and process 0 merges them. `query` prints the
ranked results, `serve` runs the web page and its JSON API. See docs/search.md.

Flags live in a FlagValues of this binary's own (absl), not the global one: closp_jax.evaluate
defines --model, --data, --data_dir and --out globally, and one process (a test run) may import both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from closp_jax import errors

COMMANDS = ("index", "query", "serve")


class UsageError(errors.UserError):
  """Flags or arguments that do not fit the subcommand."""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Every flag of closp-search, in `fv`."""
  d = {"flag_values": fv}
  # what to index
  flags.DEFINE_string(
    "model",
    None,
    "Exported model folder (closp-export / python -m closp_jax.export); query and "
    "serve default to the one that built the index.",
    **d,
  )
  flags.DEFINE_string("data", None, "index: a prepared tfds dataset, e.g. crisis_landmark/sample.", **d)
  flags.DEFINE_string("folder", None, "index: a folder of .npy / GeoTIFF patches (sidecar .json for metadata).", **d)
  flags.DEFINE_multi_string(
    "scenes",
    None,
    "index: GeoTIFF / COG scene files or folders of them, cut into 120-px chips (repeat the flag for several).",
    **d,
  )
  flags.DEFINE_string(
    "stac",
    None,
    "index: a local STAC catalog.json / collection.json / item file (Sentinel-2 L2A, Sentinel-1 GRD items).",
    **d,
  )
  flags.DEFINE_string("split", "test", "index --data: the dataset split.", **d)
  flags.DEFINE_string(
    "data_dir",
    None,
    "index --data: where the dataset is prepared (default: $CLOSP_DATA_DIR or ~/tensorflow_datasets).",
    **d,
  )
  flags.DEFINE_alias("data-dir", "data_dir", flag_values=fv)
  flags.DEFINE_enum(
    "sensor",
    "all",
    ["all", "s2", "s1"],
    "index --data: only this sensor; --folder/--scenes: the "
    "sensor of every file (default: from band names); query: results of this sensor only.",
    **d,
  )
  flags.DEFINE_string(
    "bands",
    None,
    "index --folder/--scenes: band order of GeoTIFFs without band descriptions, "
    "e.g. B1,B2,B3,B4,B5,B6,B7,B8,B8A,B9,B11,B12 or VV,VH.",
    **d,
  )
  flags.DEFINE_string(
    "timestamp", None, "index --scenes: acquisition time of scenes whose files carry none (ISO 8601).", **d
  )
  flags.DEFINE_float(
    "max_nodata", 0.0, "index --scenes/--stac: skip chips with more than this fraction of nodata pixels (0: any).", **d
  )
  flags.DEFINE_string("out", None, "index: the index folder.", **d)
  flags.DEFINE_integer("chunk", 512, "index: rows per resumable chunk.", **d)
  flags.DEFINE_integer("batch_size", 64, "index: images per model call.", **d)
  flags.DEFINE_alias("batch-size", "batch_size", flag_values=fv)
  # index types
  flags.DEFINE_enum(
    "index_type",
    "exact",
    ["exact", "ivfpq", "hnsw"],
    "index: also build this approximate index; query/serve: search with it (exact: every row scored).",
    **d,
  )
  flags.DEFINE_integer("nlist", 0, "ivfpq: inverted lists (0: 4 sqrt(N), a power of two, at most 8192).", **d)
  flags.DEFINE_integer("pq_m", 0, "ivfpq: PQ sub-quantizers of 8 bits (0: dim / 8).", **d)
  flags.DEFINE_integer("hnsw_m", 32, "hnsw: graph degree.", **d)
  flags.DEFINE_integer("nprobe", 0, "ivfpq: lists visited per query (0: as built, 64).", **d)
  flags.DEFINE_integer("ef_search", 0, "hnsw: search breadth (0: as built, 256).", **d)
  flags.DEFINE_integer("refine", 0, "ivfpq/hnsw: candidates re-scored exactly, x k (0: as built, 4).", **d)
  # multi-process indexing (as the trainer)
  flags.DEFINE_string("coordinator_address", None, "index: host:port of process 0, for a multi-process build.", **d)
  flags.DEFINE_integer("num_processes", None, "index: processes in a multi-process build.", **d)
  flags.DEFINE_integer("process_id", None, "index: this process's index in a multi-process build.", **d)
  # query
  flags.DEFINE_string("index", None, "query/serve: the index folder.", **d)
  flags.DEFINE_integer("k", 20, "query: number of results.", **d)
  flags.DEFINE_string("near", None, "query: LON,LAT in degrees, with --radius-km (write --near=-3.7,40.4).", **d)
  flags.DEFINE_float("radius-km", None, "query: keep results within this many km of --near.", **d)
  flags.DEFINE_alias("radius_km", "radius-km", flag_values=fv)
  flags.DEFINE_string("bbox", None, "query: MINLON,MINLAT,MAXLON,MAXLAT in degrees (write --bbox=-10,35,5,44).", **d)
  flags.DEFINE_string("start", None, "query: results taken on or after this date (YYYY-MM-DD).", **d)
  flags.DEFINE_string("end", None, "query: results taken on or before this date (YYYY-MM-DD, inclusive).", **d)
  flags.DEFINE_enum(
    "fusion",
    "raw",
    ["raw", "zscore", "rrf"],
    "query --sensor all: how the S2 and S1 lists merge "
    "(raw: one ranking by inner product; zscore / rrf: see docs/evaluation.md).",
    **d,
  )
  flags.DEFINE_bool("json", False, "query: print the results as JSON.", **d)
  flags.DEFINE_string("png", None, "query: write a contact sheet of the results to this PNG.", **d)
  flags.DEFINE_integer("columns", 5, "query --png: tiles per row.", **d)
  flags.DEFINE_string("geojson", None, "query: write the results as GeoJSON (opens in QGIS).", **d)
  flags.DEFINE_string("csv", None, "query: write the results as CSV.", **d)
  # serve
  flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on (127.0.0.1: this machine only).", **d)
  flags.DEFINE_integer("port", 8080, "serve: port.", **d)
  flags.DEFINE_integer("max_k", 100, "serve: the largest k a request may ask for (at most 1000).", **d)
  flags.DEFINE_integer("threads", 8, "serve: worker threads.", **d)
  flags.DEFINE_string(
    "cache_dir",
    None,
    "serve: where thumbnails are written (default: ~/.cache/closp_jax/search/<hash of the index path>).",
    **d,
  )
  flags.DEFINE_string(
    "tiles",
    "osm",
    "serve: map tiles: osm (OpenStreetMap), none (the bundled world outline only), or a URL template with {z}/{x}/{y}.",
    **d,
  )
  flags.DEFINE_float("stop_after", None, "serve: stop after this many seconds (tests, demos).", **d)
  return fv


def parse(argv: Sequence[str]) -> tuple[str, list[str], flags.FlagValues]:
  """(subcommand, other positional arguments, flags) from a full argv (program name first)."""
  fv = define_flags(flags.FlagValues())
  try:
    rest = fv(list(argv))
  except flags.Error as e:
    raise UsageError(f"{e} (see closp-search --help)") from None
  positional = rest[1:]
  if not positional or positional[0] not in COMMANDS:
    got = positional[0] if positional else "nothing"
    raise UsageError(f"the first argument is the subcommand, one of {', '.join(COMMANDS)}; got {got!r}")
  return positional[0], positional[1:], fv


def _need(fv, *names: str, command: str) -> None:
  missing = [n for n in names if fv[n].value is None]
  if missing:
    raise UsageError(f"{command} needs {', '.join('--' + n for n in missing)}")


def _source(fv):
  from closp_jax.search_lib import sources  # pylint: disable=import-outside-toplevel

  given = [n for n in ("data", "folder", "scenes", "stac") if fv[n].value]
  if len(given) != 1:
    raise UsageError(f"index needs exactly one of --data, --folder, --scenes, --stac (got {given or 'none'})")
  sensor = None if fv.sensor == "all" else fv.sensor
  bands = None
  if fv.bands:
    from closp_jax.search_lib.geotiff import parse_bands  # pylint: disable=import-outside-toplevel

    bands = parse_bands(fv.bands)
  if fv.data:
    return sources.ArchiveSource(fv.data, fv.split, fv.data_dir, sources.SENSORS if sensor is None else (sensor,))
  if fv.folder:
    return sources.FolderSource(fv.folder, sensor, bands)
  if fv.scenes:
    from closp_jax.search_lib import scenes  # pylint: disable=import-outside-toplevel

    found, root = scenes.scenes_from_paths(fv.scenes, bands=bands, sensor=sensor, timestamp=fv.timestamp)
    return scenes.SceneSource(
      found,
      max_nodata=fv.max_nodata,
      stream=sys.stderr,
      description={"kind": "scenes", "root": str(root), "scenes": [s.describe() for s in found]},
    )
  from closp_jax.search_lib import stac  # pylint: disable=import-outside-toplevel

  return stac.catalog_source(fv.stac, max_nodata=fv.max_nodata, stream=sys.stderr)


def run_index(fv) -> int:
  from closp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import index as index_lib  # pylint: disable=import-outside-toplevel

  _need(fv, "model", "out", command="index")
  try:
    plan = distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
  except distributed.DistributedConfigError as e:
    raise UsageError(str(e)) from None
  source = _source(fv)
  kwargs = {"chunk": fv.chunk, "batch_size": fv.batch_size}
  if plan.starts:
    import jax  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    pid, n = jax.process_index(), jax.process_count()
    index_lib.build_index_shard(fv.model, fv.out, source, pid, n, **kwargs)
    multihost_utils.sync_global_devices("closp-search index: shards written")
    if pid == 0:
      index_lib.merge_shards(fv.model, fv.out, source, n, stream=sys.stderr)
    multihost_utils.sync_global_devices("closp-search index: merged")
    if pid != 0:
      return 0
  else:
    index_lib.build_index(fv.model, fv.out, source, **kwargs)
  if fv.index_type != "exact":
    from closp_jax.search_lib import backends  # pylint: disable=import-outside-toplevel

    idx = index_lib.open_index(fv.out)
    params = backends.AnnParams(nlist=fv.nlist, pq_m=fv.pq_m, hnsw_m=fv.hnsw_m)
    path = backends.build_ann(idx.folder, idx.embeddings, fv.index_type, params, stream=sys.stderr)
    print(f"{fv.index_type} index {path}", file=sys.stderr)
  print(f"index {fv.out}: {len(source)} patches")
  return 0


def open_for_search(fv):
  """(index, model, backend) for query and serve."""
  from closp_jax.exported import ExportedModelError, load_exported  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import backends  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import index as index_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import query as query_lib  # pylint: disable=import-outside-toplevel

  index = index_lib.open_index(fv.index)
  model_dir = fv.model or index.manifest["model"]["path"]
  try:
    model = load_exported(model_dir)
  except ExportedModelError as e:
    raise UsageError(str(e)) from None
  query_lib.check_model(index, model, model_dir)
  search_params = {k: fv[k].value for k in ("nprobe", "ef_search", "refine") if fv[k].value}
  backend = backends.open_backend(index.folder, index.embeddings, fv.index_type, **search_params)
  return index, model, backend


def run_query(fv, args: list[str]) -> int:
  from closp_jax.search_lib import query as query_lib  # pylint: disable=import-outside-toplevel

  _need(fv, "index", command="query")
  if len(args) != 1:
    raise UsageError(f"query takes one text after the subcommand, got {len(args)}: {args}")
  filters = {"sensor": fv.sensor}
  if fv.near:
    filters["near"] = query_lib.parse_lonlat(fv.near)
  if fv["radius-km"].value is not None:
    filters["radius_km"] = fv["radius-km"].value
  if fv.bbox:
    filters["bbox"] = query_lib.parse_bbox(fv.bbox)
  if fv.start:
    filters["start"] = query_lib.parse_date(fv.start)
  if fv.end:
    filters["end"] = query_lib.parse_date(fv.end, end=True)
  index, model, backend = open_for_search(fv)
  results = query_lib.search(index, model, args[0], k=fv.k, backend=backend, fusion=fv.fusion, **filters)
  print(query_lib.results_json(results) if fv.json else query_lib.format_results(results))
  for path in (fv.geojson, fv.csv):
    if path:
      from closp_jax.search_lib import geojson  # pylint: disable=import-outside-toplevel

      geojson.write_results(results, path, query={"q": args[0]})
      print(f"wrote {path} ({len(results)} results)", file=sys.stderr)
  if fv.png:
    if not results:
      print("no results: no contact sheet written", file=sys.stderr)
      return 0
    from closp_jax.search_lib import contact_sheet  # pylint: disable=import-outside-toplevel

    source = index.source()
    sheet, _ = contact_sheet.contact_sheet(results, [source.image(r) for r in results], columns=fv.columns)
    contact_sheet.save_png(sheet, fv.png)
    print(f"wrote {fv.png} ({len(results)} tiles)", file=sys.stderr)
  return 0


def run_serve(fv) -> int:
  import threading  # pylint: disable=import-outside-toplevel

  from closp_jax.search_lib import server  # pylint: disable=import-outside-toplevel

  _need(fv, "index", command="serve")
  index, model, backend = open_for_search(fv)
  tiles = {"osm": server.OSM_TILES, "none": None}.get(fv.tiles, fv.tiles)
  service = server.SearchService(index, model, backend=backend, cache_dir=fv.cache_dir, max_k=fv.max_k, tiles=tiles)
  app = server.create_app(service)
  httpd = server.make_server(app, host=fv.host, port=fv.port, threads=fv.threads)
  if fv.stop_after:
    timer = threading.Timer(fv.stop_after, httpd.close)
    timer.daemon = True
    timer.start()
  print(
    f"closp-search: serving {index.folder} ({len(index)} patches, {getattr(backend, 'kind', 'exact')}) on "
    f"http://{fv.host}:{httpd.effective_port}/ ; thumbnails in {service.cache_dir}",
    file=sys.stderr,
    flush=True,
  )
  try:
    httpd.run()
  except (KeyboardInterrupt, OSError, ValueError):  # Ctrl-C, or the socket closed by --stop_after
    pass
  return 0


def main(argv: Sequence[str]) -> int:
  """The binary: argv is the full command line, program name first. User faults raise UserError."""
  argv = list(argv)
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    print(define_flags(flags.FlagValues()).get_help())
    return 0
  command, args, fv = parse(argv)
  if command != "query" and args:
    raise UsageError(f"{command} takes no positional arguments, got {args}")
  if command == "index":
    try:
      return run_index(fv)
    except KeyboardInterrupt:
      print(f"interrupted: run the same command again to resume {fv.out}", file=sys.stderr)
      return 130
  if command == "query":
    return run_query(fv, args)
  return run_serve(fv)


def run(argv: Sequence[str] | None = None) -> None:
  """Console-script entry (closp-search): main() through errors.run_main (one-line user errors, exit 1)."""
  argv = list(sys.argv if argv is None else argv)
  errors.run_main(lambda _: main(argv), argv=argv[:1])


if __name__ == "__main__":
  run()

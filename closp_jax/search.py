r"""Search satellite archives with text: build an index, then query it.

  python -m closp_jax.search index --model MODEL_DIR --data crisis_landmark/sample --split test --out INDEX
  python -m closp_jax.search index --model MODEL_DIR --folder PATCHES/ [--sensor s2|s1] --out INDEX
  python -m closp_jax.search query --index INDEX "flooded area" [--sensor s1|s2|all] [--k 20] \
      [--near LON,LAT --radius-km R] [--json] [--png results.png] [--model MODEL_DIR]

`index` embeds every patch with an exported model (closp_jax.export) into INDEX (float16
memory-mapped embeddings + metadata.parquet), printing progress; run it again after a stop and it
resumes. `query` prints the ranked results (rank, score, key, sensor, source, lon/lat, labels) or
JSON, and with --png draws a contact sheet (S2 true colour, S1 VV/VH false colour). See docs/search.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m closp_jax.search", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  ix = sub.add_parser("index", help="embed an archive or a folder of patches into an index")
  ix.add_argument("--model", required=True, help="exported model folder (python -m closp_jax.export)")
  what = ix.add_mutually_exclusive_group(required=True)
  what.add_argument("--data", help="a prepared tfds dataset, e.g. crisis_landmark/sample")
  what.add_argument("--folder", help="a folder of .npy / GeoTIFF patches (sidecar .json for lon/lat)")
  ix.add_argument("--split", default="test", help="dataset split (default: test)")
  ix.add_argument("--data_dir", "--data-dir", default=None, help="where the dataset is prepared "
                  "(default: $CLOSP_DATA_DIR or ~/tensorflow_datasets)")
  ix.add_argument("--sensor", choices=("s2", "s1", "all"), default="all",
                  help="dataset: index only this sensor; folder: the sensor of every patch (default: from bands)")
  ix.add_argument("--out", required=True, help="the index folder")
  ix.add_argument("--chunk", type=int, default=512, help="rows per resumable chunk (default 512)")
  ix.add_argument("--batch_size", "--batch-size", type=int, default=64, help="images per model call (default 64)")
  q = sub.add_parser("query", help="rank an index's patches for a text")
  q.add_argument("--index", required=True, help="the index folder")
  q.add_argument("text", help="the query, e.g. 'flooded area'")
  q.add_argument("--model", default=None, help="exported model folder (default: the one that built the index)")
  q.add_argument("--sensor", choices=("all", "s2", "s1"), default="all")
  q.add_argument("--k", type=int, default=20, help="number of results (default 20)")
  q.add_argument("--near", default=None, help="LON,LAT in degrees (with --radius-km; --near=-3.7,40.4 for negatives)")
  q.add_argument("--radius-km", "--radius_km", dest="radius_km", type=float, default=None)
  q.add_argument("--json", action="store_true", help="print the results as JSON")
  q.add_argument("--png", default=None, help="write a contact sheet of the results to this PNG")
  q.add_argument("--columns", type=int, default=5, help="tiles per row of the contact sheet (default 5)")
  return p


def run_index(args) -> int:
  from closp_jax.search_lib import index as index_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import sources  # pylint: disable=import-outside-toplevel
  if args.data:
    sensors = sources.SENSORS if args.sensor == "all" else (args.sensor,)
    source = sources.ArchiveSource(args.data, args.split, args.data_dir, sensors)
  else:
    source = sources.FolderSource(args.folder, None if args.sensor == "all" else args.sensor)
  out = index_lib.build_index(args.model, args.out, source, chunk=args.chunk, batch_size=args.batch_size)
  print(f"index {out}: {len(source)} patches")
  return 0


def run_query(args) -> int:
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import index as index_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib import query as query_lib  # pylint: disable=import-outside-toplevel
  index = index_lib.open_index(args.index)
  model_dir = args.model or index.manifest["model"]["path"]
  model = load_exported(model_dir)
  query_lib.check_model(index, model, model_dir)
  near = query_lib.parse_lonlat(args.near) if args.near else None
  results = query_lib.search(index, model, args.text, sensor=args.sensor, k=args.k, near=near,
                             radius_km=args.radius_km)
  print(query_lib.results_json(results) if args.json else query_lib.format_results(results))
  if args.png:
    if not results:
      print("no results: no contact sheet written", file=sys.stderr)
      return 0
    from closp_jax.search_lib import contact_sheet  # pylint: disable=import-outside-toplevel
    source = index.source()
    images = [source.image(r) for r in results]
    sheet, _ = contact_sheet.contact_sheet(results, images, columns=args.columns)
    contact_sheet.save_png(sheet, args.png)
    print(f"wrote {args.png} ({len(results)} tiles)", file=sys.stderr)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from closp_jax.exported import ExportedModelError  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib.index import SearchIndexError  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib.sources import SourceError  # pylint: disable=import-outside-toplevel
  try:
    return run_index(args) if args.command == "index" else run_query(args)
  except (SearchIndexError, SourceError, ExportedModelError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    if args.command == "index":
      print(f"interrupted: run the same command again to resume {args.out}", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())

"""Search an archive with an exported model: index, query, serve.

  sources.py        what gets indexed: a prepared crisis_landmark split, or a folder of .npy /
                    GeoTIFF patches with their locations
  geotiff.py        GeoTIFF through rasterio: bands by name, locations, patches
  scenes.py         GeoTIFF / COG scenes cut into 120-px chips (bands resampled to 10 m, nodata
                    chips skipped)
  stac.py           local STAC catalogues: Sentinel-2 L2A and Sentinel-1 GRD items as scenes
  index.py          build_index (resumable, float16 memory-mapped embeddings + a parquet of
                    metadata), multi-process shards and their merge, open_index
  backends.py       top-k: exact (faiss fp16 flat or topk_search), IVF-PQ and HNSW (faiss)
  query.py          search() / similar(): text or a stored embedding -> ranked results with
                    sensor, place and date filters
  geojson.py        results as GeoJSON and CSV
  contact_sheet.py  the PNG: S2 true colour, S1 VV/VH false colour, captions
  server.py         the web page and its JSON API (Flask on waitress); static/ holds the page
                    and the vendored map library

The binary is closp_jax/search.py; docs/search.md has worked examples.
"""

"""Search an archive with an exported model: index, query, contact sheet.

  sources.py        what gets indexed: a prepared crisis_landmark split, or a folder of .npy /
                    GeoTIFF patches with their locations
  geotiff.py        GeoTIFF patches: pixels (tifffile) and the centre pixel's lon/lat
  index.py          build_index (resumable, float16 memory-mapped embeddings + a parquet of
                    metadata), open_index
  query.py          search(): text -> ranked results with sensor and distance filters
  contact_sheet.py  the PNG: S2 true colour, S1 VV/VH false colour, captions

The binary is closp_jax/search.py; docs/search.md has worked examples.
"""

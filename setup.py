"""closp-jax: text-to-satellite-image retrieval beyond RGB (CLOSP / GeoCLOSP) in JAX."""

from setuptools import find_packages, setup

# Ranges for users; constraints.txt pins the exact versions CI and the README's test command install
# (the data path, the sharding code and the checkpoint layout were checked against those releases).
CORE = [
  "jax>=0.10.2,<0.11",
  "jaxlib>=0.10.2,<0.11",
  "flax>=0.12.8,<0.13",
  "optax>=0.2.8,<0.3",
  "orbax-checkpoint>=0.12.8,<0.13",
  "tensorflow-datasets>=4.9.10,<5",
  # tfds 4.9.10 imports importlib_resources but declares it only for old Pythons.
  "importlib_resources>=6",
  "grain>=0.2.18,<0.3",
  "tokenizers>=0.21",
  "safetensors>=0.5",
  # Pretrained weights by name resolve through the Hugging Face cache (closp_jax/weights/hub.py).
  "huggingface_hub>=1.0,<3",
  "numpy>=2.0",
  "ml-collections>=1.0",
  "absl-py>=2.0",
  "h5py>=3.10",
  "hdf5plugin>=5.0",
  "pyarrow>=15",
  "pyproj>=3.6",
  "tensorboardX>=2.6",
  "pillow>=10",
  "tqdm>=4.66",
  # jax.export serialisation (the export binary and load_exported) needs it; jax does not declare it.
  "flatbuffers>=24",
]

EXTRAS = {
  # What the tests need beyond the core: independent references for the metrics and the maths.
  "test": [
    "pytest>=8",
    "scipy>=1.11",
    "ir-measures>=0.3",
    "pytrec-eval-terrier>=0.5.6",
    "tifffile>=2024.1",  # writes GeoTIFFs with hand-set GeoKeys in the scene tests
    "ruff>=0.8",
    # the search page, its indexes and the scene readers are tested in CI (a missing one fails there)
    "faiss-cpu>=1.15,<2",
    "flask>=3.0",
    "waitress>=3.0",
    "rasterio>=1.4",
    "pystac>=1.10",
    # 4.52 needs a certifi newer than some mirrors carry
    "selenium>=4.20,<4.52",
  ],
  # The search page (closp-search serve) and the faiss-backed indexes (exact flat, IVF-PQ, HNSW).
  "search": [
    "faiss-cpu>=1.15,<2",
    "flask>=3.0",
    "waitress>=3.0",
  ],
  # Real scenes into a search index: GeoTIFF / COG scenes (bands by name) and STAC catalogues.
  "scenes": [
    "rasterio>=1.4",
    "pystac>=1.10",
  ],
  # Reference checks and benchmarks only; never imported by the library itself. torchvision 0.29.1
  # is the release that works with timm on these machines, and it needs torch 2.14.1.
  "torch": [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "transformers>=5.20,<6",
    # The authors resize ViT inputs with kornia's Resize; tests check our resize against it.
    "kornia==0.8.1",
  ],
}

setup(
  name="closp-jax",
  version="0.2.0",
  description="CLOSP / GeoCLOSP text-to-satellite-image retrieval (Sentinel-2, Sentinel-1, text, location) in JAX/Flax",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  # The recipes in configs/ ship inside the package as closp_jax.configs (--config geoclosp:paper).
  packages=find_packages(include=["closp_jax", "closp_jax.*"]) + ["closp_jax.configs"],
  package_dir={"closp_jax.configs": "configs"},
  package_data={"closp_jax": ["**/*.json", "**/*.txt", "**/*.tsv", "search_lib/static/**/*"]},
  install_requires=CORE,
  extras_require=EXTRAS,
  entry_points={
    "console_scripts": [
      "closp-train = closp_jax.main:run",
      "closp-evaluate = closp_jax.evaluate:run",
      "closp-export = closp_jax.export:run",
      "closp-search = closp_jax.search:run",
    ]
  },
  license="Apache-2.0",
)

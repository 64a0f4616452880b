"""closp-jax: text-to-satellite-image retrieval beyond RGB (CLOSP / GeoCLOSP) in JAX."""
from setuptools import find_packages, setup

# Versions are pinned where the stack's behaviour was checked (see docs/architecture.md):
# the data path and the sharding code rely on details that moved between releases.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    # tfds 4.9.10 imports importlib_resources but declares it only for old Pythons.
    "importlib_resources>=6",
    "grain==0.2.18",
    "transformers>=5.20,<6",
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
        "tifffile>=2024.1",
    ],
    # Indexing folders of GeoTIFF patches with the search tool.
    "geotiff": [
        "tifffile>=2024.1",
    ],
    # Reference checks and benchmarks only; never imported by the library itself.
    # torchvision 0.29.1 is the release that works with timm on these machines, and it needs
    # torch 2.14.1; both are pinned together.
    # Benchmarks' extra references (benchmarks/run.py).
    "bench": [
        "faiss-cpu==1.15.1",
    ],
    "torch": [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm==1.0.31",
        # The authors resize ViT inputs with kornia's Resize; tests check our resize against it.
        "kornia==0.8.1",
    ],
}

setup(
    name="closp-jax",
    version="0.1.0",
    description="CLOSP / GeoCLOSP text-to-satellite-image retrieval (Sentinel-2, Sentinel-1, text, location) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["closp_jax", "closp_jax.*"]),
    package_data={"closp_jax": ["**/*.json", "**/*.txt", "**/*.tsv"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)

"""closp-jax: CLOSP / GeoCLOSP text-to-satellite-image retrieval in JAX/Flax."""
__version__ = "0.1.0"

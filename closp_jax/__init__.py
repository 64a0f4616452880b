"""closp-jax: CLOSP / GeoCLOSP text-to-satellite-image retrieval in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy, so `import closp_jax` stays light
  if name == "load_exported":
    from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

    return load_exported
  raise AttributeError(f"module 'closp_jax' has no attribute {name!r}")

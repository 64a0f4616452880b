"""Data: label vocabulary, synthetic CrisisLandMark archive writer, dataset builders."""

# Importing the package registers the TFDS builder `crisis_landmark` (tfds.builder / tfds build).
from closp_jax.data import crisis_landmark  # noqa: E402,F401

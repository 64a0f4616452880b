"""The training recipes, installed with the package as `closp_jax.configs` (`--config geoclosp:paper`)."""

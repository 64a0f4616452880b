"""GeoCLOSP: CLOSP plus a location encoder contrasted with the image embeddings.

Variants as configs/closp.py: sample (default), paper, vit_s, vit_l, pod, rgb.
"""
from closp_jax.config import get_config as _get_config


def get_config(arg=None):
  return _get_config(arg, geo=True)

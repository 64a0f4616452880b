"""CLOSP: text, Sentinel-2 and Sentinel-1 in one space.

Variants (`--config configs/closp.py:VARIANT`): sample (default; CPU-sized towers on the built-in
sample archive), paper (ResNet-50 + MiniLM as published), vit_s, vit_l, pod, rgb (RGB-only baseline).
"""
from closp_jax.config import get_config as _get_config


def get_config(arg=None):
  return _get_config(arg, geo=False)

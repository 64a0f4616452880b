"""Pretrained weights: local files only, read without running pickled code.

Public API (imported lazily, so `closp_jax.weights.locate` stays light for data workers):
  load_minilm, load_bert, load_tokenizer            BERT / all-MiniLM-L6-v2 (minilm.py)
  load_satclip                                      SatCLIP location encoders (satclip.py)
  load_geoclip_location                             GeoCLIP's location encoder (geoclip_import.py)
  load_closp_checkpoint, export_closp_state_dict,   the authors' CLOSP / GeoCLOSP checkpoints
  infer_model_config, merge_submodule               (closp_checkpoint.py)
  load_timm_resnet, load_timm_vit,                  timm / TorchGeo image encoders (timm_import.py)
  export_timm_resnet, export_timm_vit
  load_state_dict, UnsafeWeightsError               safe reading (safe_load.py)
  WeightMismatchError                               names / shapes that do not fit (convert.py)
  find_minilm_folder, WeightsNotFoundError          where the files are (locate.py)
  REGISTRY, WeightsEntry, lookup                     published weights by name (registry.py)
  WeightsError, UnknownWeightsError, WeightsKindError
  resolve, fetch, WeightsUnavailableError,           a name or path -> a verified local file (hub.py)
  WeightsChecksumError
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
  "load_minilm": "minilm",
  "load_bert": "minilm",
  "load_tokenizer": "minilm",
  "load_satclip": "satclip",
  "load_geoclip_location": "geoclip_import",
  "load_closp_checkpoint": "closp_checkpoint",
  "export_closp_state_dict": "closp_checkpoint",
  "infer_model_config": "closp_checkpoint",
  "merge_submodule": "closp_checkpoint",
  "load_timm_resnet": "timm_import",
  "load_timm_vit": "timm_import",
  "export_timm_resnet": "timm_import",
  "export_timm_vit": "timm_import",
  "load_state_dict": "safe_load",
  "UnsafeWeightsError": "safe_load",
  "WeightMismatchError": "convert",
  "find_minilm_folder": "locate",
  "WeightsNotFoundError": "locate",
  "REGISTRY": "registry",
  "WeightsEntry": "registry",
  "lookup": "registry",
  "WeightsError": "registry",
  "UnknownWeightsError": "registry",
  "WeightsKindError": "registry",
  "resolve": "hub",
  "fetch": "hub",
  "WeightsUnavailableError": "hub",
  "WeightsChecksumError": "hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'closp_jax.weights' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"closp_jax.weights.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))

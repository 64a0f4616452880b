"""Read weight files without running pickled code.

safetensors files are read directly. PyTorch files (.pt, .pth, .ckpt, .bin) are read with
`torch.load(weights_only=True)`, which refuses any pickle that would construct objects other than
tensors and plain containers; PyTorch is then needed (the `torch` extra).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax.errors import UserError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


class UnsafeWeightsError(UserError, ValueError):
  """Raised when a weight file would need arbitrary code to be unpickled."""


def _to_numpy(value: Any) -> Any:
  """Tensors become numpy arrays (float32 for floating types); containers are walked."""
  if hasattr(value, "detach") and hasattr(value, "numpy"):
    t = value.detach().cpu()
    if t.is_floating_point():
      t = t.float()
    return t.numpy()
  if isinstance(value, dict):
    return {k: _to_numpy(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_to_numpy(v) for v in value)
  return value


def load_torch_file(path: str | os.PathLike) -> Any:
  """Loads a PyTorch file with weights_only=True; tensors come back as numpy arrays."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file not found: {path}")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (pip install -e '.[torch]'), or convert it to safetensors") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError (or RuntimeError wrapping it)
    if "weights_only" in str(e) or "Unpickl" in type(e).__name__ or "unpickl" in str(e).lower():
      raise UnsafeWeightsError(
        f"refused to load {path}: it holds pickled objects other than tensors and plain "
        f"containers, and loading it would run code from the file. Convert it to safetensors "
        f"on a machine you trust. ({type(e).__name__}: {str(e).splitlines()[0]})"
      ) from e
    raise
  return _to_numpy(obj)


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
  """A flat {name: numpy array} from a safetensors or PyTorch file.

  For PyTorch files holding a checkpoint dict, `key` picks the entry (e.g. 'state_dict');
  with key=None a top-level 'state_dict' or 'model' entry is used when present.
  """
  path = Path(path)
  if path.suffix in SAFETENSORS_SUFFIXES:
    if not path.is_file():
      raise FileNotFoundError(f"weight file not found: {path}")
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    return dict(load_file(str(path)))
  if path.suffix not in TORCH_SUFFIXES:
    raise ValueError(
      f"{path}: unknown weight file type {path.suffix!r}; expected one of "
      f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
    )
  obj = load_torch_file(path)
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      raise KeyError(
        f"{path}: no entry {key!r} (top-level keys: {list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__})"
      )
    obj = obj[key]
  elif isinstance(obj, dict):
    for k in ("state_dict", "model", "model_state_dict"):
      if k in obj and isinstance(obj[k], dict):
        obj = obj[k]
        break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: {bad[:10]}")
  return obj

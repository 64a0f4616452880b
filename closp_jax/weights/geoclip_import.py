"""Import GeoCLIP's location encoder from the weights shipped in the `geoclip` package.

    module, variables = load_geoclip_location()          # geoclip/model/weights/location_encoder_weights.pth
    feats = module.apply(variables, lonlat)              # [B, 512]; lonlat = (lon, lat) degrees

`variables` holds 'params' (the MLPs) and 'batch_stats' (each branch's fixed random Fourier matrix
`b`, which GeoCLIP never trains). The package is located without being imported (importing it needs
pandas and PyTorch); the file is read with weights_only=True, so PyTorch is needed to read it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.models.location import GeoCLIPLocationEncoder
from closp_jax.weights import convert
from closp_jax.weights.locate import WeightsNotFoundError
from closp_jax.weights.safe_load import load_state_dict

_WEIGHTS = Path("model") / "weights" / "location_encoder_weights.pth"
_BRANCH = re.compile(r"^LocEnc(\d+)\.capsule\.0\.b$")
_CAPSULE = re.compile(r"^LocEnc0\.capsule\.(\d+)\.weight$")


def geoclip_weights_path() -> Path:
  """The location-encoder weights file of the installed `geoclip` package."""
  module = sys.modules.get("geoclip")
  if module is not None and getattr(module, "__path__", None):
    locations = list(module.__path__)  # already imported (or set up by a caller)
  else:
    spec = importlib.util.find_spec("geoclip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
  if not locations:
    raise WeightsNotFoundError(
      "the geoclip package is not installed: `pip install --no-deps geoclip==1.3.0` ships GeoCLIP's "
      f"location-encoder weights ({_WEIGHTS}), or pass the path of that file"
    )
  path = Path(locations[0]) / _WEIGHTS
  if not path.is_file():
    raise WeightsNotFoundError(f"the geoclip package at {path.parent.parent.parent} has no {_WEIGHTS}")
  return path


def geoclip_rules(branches: int, depth: int, prefix: str = "") -> list[convert.TensorRule]:
  """Rules between GeoCLIP LocationEncoder names (`<prefix>LocEnc<i>.capsule.<j>.*`, `.head.0.*`)
  and GeoCLIPLocationEncoder variables (the Fourier matrices in 'batch_stats')."""
  rules = []
  for i in range(branches):
    t, f = f"{prefix}LocEnc{i}.", f"LocEnc{i}"
    rules.append(convert.TensorRule(f"{t}capsule.0.b", ("batch_stats", f, "b")))
    for j in range(depth):
      rules += convert.dense_rules(f"{t}capsule.{2 * j + 1}", (f, f"capsule_{2 * j + 1}"))
    rules += convert.dense_rules(f"{t}head.0", (f, "head_0"))
  return rules


def geoclip_geometry(state_dict: Mapping[str, np.ndarray], *, source: str = "state dict") -> dict[str, int]:
  """rff_dim, hidden, depth, out and the number of branches of a GeoCLIP LocationEncoder state dict."""
  branches = sorted(int(m.group(1)) for k in state_dict if (m := _BRANCH.match(k)))
  capsules = sorted(int(m.group(1)) for k in state_dict if (m := _CAPSULE.match(k)))
  if not branches or not capsules or "LocEnc0.head.0.weight" not in state_dict:
    raise convert.WeightMismatchError(
      f"{source}: not a GeoCLIP location encoder (expected LocEnc<i>.capsule.0.b, LocEnc<i>.capsule.<j>.weight "
      f"and LocEnc<i>.head.0.weight; names look like: {', '.join(list(state_dict)[:8])})"
    )
  return {
    "branches": len(branches),
    "rff_dim": int(np.shape(state_dict["LocEnc0.capsule.0.b"])[0]),
    "hidden": int(np.shape(state_dict["LocEnc0.capsule.1.weight"])[0]),
    "depth": len(capsules),
    "out": int(np.shape(state_dict["LocEnc0.head.0.weight"])[0]),
  }


def geoclip_variables(
  state_dict: Mapping[str, np.ndarray], module: GeoCLIPLocationEncoder, *, prefix: str = "", source: str = "state dict"
) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `module` from a GeoCLIP LocationEncoder state dict under `prefix`."""
  sd = convert.strip_prefix(state_dict, prefix, source=source)
  expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.float32))
  return convert.import_state_dict(sd, geoclip_rules(len(module.sigmas), module.depth), expected, source=source)


def load_geoclip_location(
  path: str | os.PathLike | None = None, *, sigmas: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8)
) -> tuple[GeoCLIPLocationEncoder, dict[str, Any]]:
  """(module, variables) of GeoCLIP's location encoder; path=None reads the geoclip package's file.

  `sigmas` only label the branches (the trained Fourier matrices already carry their scale); their
  number must match the file's branches.
  """
  path = geoclip_weights_path() if path is None else Path(path)
  sd = load_state_dict(path)
  geo = geoclip_geometry(sd, source=str(path))
  if geo["branches"] != len(sigmas):
    raise convert.WeightMismatchError(
      f"{path}: {geo['branches']} GeoCLIP branches in the file, but {len(sigmas)} sigmas given ({sigmas})"
    )
  module = GeoCLIPLocationEncoder(
    sigmas=tuple(sigmas), rff_dim=geo["rff_dim"], hidden=geo["hidden"], depth=geo["depth"], out=geo["out"]
  )
  return module, geoclip_variables(sd, module, source=str(path))

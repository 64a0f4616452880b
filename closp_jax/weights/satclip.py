"""Import SatCLIP location encoders (spherical harmonics + SIREN) from SatCLIP checkpoints.

    module, params = load_satclip("satclip-resnet50-l10.ckpt")
    feats = module.apply({"params": params}, lonlat)     # [B, 256]

A SatCLIP Lightning checkpoint holds `hyper_parameters` (legendre_polys, capacity, num_hidden_layers,
embed_dim, le_type, pe_type, harmonics_calculation) and a `state_dict` whose location-encoder tensors
are `model.location.nnet.layers.<i>.{weight,bias}` and `model.location.nnet.last_layer.*` (the
spherical harmonics have no weights). Plain state dicts (safetensors or torch) with those names, or
the same names under another prefix, are read too. The geometry is read from the tensor shapes and
checked against the hyper-parameters when they are present.

The file is read with weights_only=True: a checkpoint whose pickle holds other objects (some
Lightning versions store hyper-parameters in their own classes) is refused with
UnsafeWeightsError; convert it once, on a machine you trust, to a plain state dict or safetensors.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.models.location import SH_CONVENTIONS, SatCLIPLocationEncoder
from closp_jax.weights import convert
from closp_jax.weights.safe_load import SAFETENSORS_SUFFIXES, load_state_dict, load_torch_file

_log = logging.getLogger(__name__)

# SatCLIP's `harmonics_calculation` -> closp_jax convention. SatCLIP's default "analytic" table, as
# shipped when its checkpoints were trained, is "analytic_2023" (see closp_jax/models/location.py).
HARMONICS_CALCULATION = {"analytic": "analytic_2023", "closed-form": "closed_form"}

_LAYER = re.compile(r"layers\.(\d+)\.weight$")


def siren_rules(layers: int, prefix: str = "") -> list[convert.TensorRule]:
  """Rules between SatCLIP SirenNet names (`<prefix>layers.<i>.*`, `<prefix>last_layer.*`) and
  SatCLIPLocationEncoder params."""
  rules = []
  for i in range(layers):
    rules += convert.dense_rules(f"{prefix}layers.{i}", (f"layers_{i}",))
  rules += convert.dense_rules(f"{prefix}last_layer", ("last_layer",))
  return rules


def siren_geometry(state_dict: Mapping[str, np.ndarray], prefix: str, *, source: str = "state dict") -> dict[str, int]:
  """degree, hidden, layers, out of the SIREN whose tensors are under `prefix`."""
  idx = sorted(int(m.group(1)) for k in state_dict if k.startswith(prefix) and (m := _LAYER.match(k[len(prefix) :])))
  last = f"{prefix}last_layer.weight"
  if not idx or last not in state_dict:
    raise convert.WeightMismatchError(
      f"{source}: no SIREN under {prefix!r} (expected {prefix}layers.<i>.weight and {last})"
    )
  first = np.shape(state_dict[f"{prefix}layers.0.weight"])
  degree = math.isqrt(int(first[1]))
  if degree * degree != int(first[1]):
    raise convert.WeightMismatchError(
      f"{source}: {prefix}layers.0.weight has shape {tuple(first)}; its input width {first[1]} is not L**2 "
      "for a spherical-harmonics degree L"
    )
  return {"degree": degree, "hidden": int(first[0]), "layers": len(idx), "out": int(np.shape(state_dict[last])[0])}


def siren_params(
  state_dict: Mapping[str, np.ndarray], module: SatCLIPLocationEncoder, *, prefix: str = "", source: str = "state dict"
) -> dict[str, Any]:
  """SatCLIPLocationEncoder params (numpy float32) from the SIREN tensors under `prefix`."""
  sd = convert.strip_prefix(state_dict, prefix, source=source)
  expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.float32))
  # Other tensors under the prefix (e.g. a posenc buffer) are not the SIREN's.
  ignore = [k for k in sd if not (k.startswith("layers.") or k.startswith("last_layer."))]
  return convert.import_state_dict(sd, siren_rules(module.layers), expected, ignore=ignore, source=source)["params"]


def _find_prefix(state_dict: Mapping[str, np.ndarray], source: str) -> str:
  """The prefix of the location SIREN: '<...>location.nnet.' preferred, else any '<...>nnet.'."""
  ends = [k[: -len("last_layer.weight")] for k in state_dict if k.endswith("last_layer.weight")]
  for want in ("location.nnet.", "nnet.", ""):
    for p in ends:
      if p.endswith(want):
        return p
  raise convert.WeightMismatchError(
    f"{source}: no SatCLIP location encoder found (no tensor named '...last_layer.weight'; names look like: "
    f"{', '.join(list(state_dict)[:8])})"
  )


def _read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  if path.suffix in SAFETENSORS_SUFFIXES:
    return load_state_dict(path), {}
  obj = load_torch_file(path)
  if isinstance(obj, Mapping) and "state_dict" in obj:
    hparams = obj.get("hyper_parameters") or {}
    return dict(obj["state_dict"]), dict(hparams) if isinstance(hparams, Mapping) else {}
  return load_state_dict(path), {}


def load_satclip(
  path: str | os.PathLike, *, sh_convention: str | None = None, prefix: str | None = None
) -> tuple[SatCLIPLocationEncoder, dict[str, Any]]:
  """(module, params) of the location encoder in a SatCLIP checkpoint.

  Args:
    path: a SatCLIP Lightning .ckpt, or a state dict file (safetensors / torch).
    sh_convention: spherical-harmonics convention; None takes it from the checkpoint's
      `harmonics_calculation` ("analytic" -> "analytic_2023", "closed-form" -> "closed_form"), and
      "analytic_2023" (SatCLIP's default when its released checkpoints were trained) without one.
    prefix: where the SIREN tensors are (default: found, e.g. "model.location.nnet.").
  """
  path = Path(path)
  sd, hp = _read_checkpoint(path)
  source = str(path)
  if hp:
    if hp.get("le_type", "sphericalharmonics") != "sphericalharmonics":
      raise ValueError(
        f"{source}: le_type is {hp['le_type']!r}; only 'sphericalharmonics' SatCLIP encoders are supported"
      )
    if hp.get("pe_type", "siren") != "siren":
      raise ValueError(f"{source}: pe_type is {hp['pe_type']!r}; only 'siren' SatCLIP encoders are supported")
  if sh_convention is None:
    calc = hp.get("harmonics_calculation", "analytic")
    if calc not in HARMONICS_CALCULATION:
      raise ValueError(
        f"{source}: harmonics_calculation {calc!r} is not supported (supported: {', '.join(HARMONICS_CALCULATION)})"
      )
    sh_convention = HARMONICS_CALCULATION[calc]
  if sh_convention not in SH_CONVENTIONS:
    raise ValueError(f"sh_convention must be one of {SH_CONVENTIONS}, got {sh_convention!r}")
  prefix = _find_prefix(sd, source) if prefix is None else prefix
  geo = siren_geometry(sd, prefix, source=source)
  for key, field in (
    ("legendre_polys", "degree"),
    ("capacity", "hidden"),
    ("num_hidden_layers", "layers"),
    ("embed_dim", "out"),
  ):
    if key in hp and int(hp[key]) != geo[field]:
      raise convert.WeightMismatchError(
        f"{source}: hyper_parameters[{key!r}] = {hp[key]} but the tensors have {field} = {geo[field]}"
      )
  module = SatCLIPLocationEncoder(**geo, sh_convention=sh_convention)
  _log.info("%s: SatCLIP location encoder %s, convention %s", source, geo, sh_convention)
  return module, siren_params(sd, module, prefix=prefix, source=source)

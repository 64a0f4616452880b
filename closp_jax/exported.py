"""Load a model folder written by `python -m closp_jax.export` and encode with it.

    m = closp_jax.load_exported("MODEL_DIR")
    q = m.encode_text(["flooded area", "trees. water"])          # [2, D] float32, unit rows
    z = m.encode_image(patches, "s2")                            # raw archive values, NHWC
    loc = m.encode_location([[13.4, 52.5]])                      # GeoCLOSP only: (lon, lat) degrees

Everything runs through the serialized jax.export functions and model.safetensors: this module
imports neither the model code (closp_jax.models, flax) nor the data pipeline, and needs only jax,
numpy, safetensors and tokenizers. The functions run on whatever backend jax uses (cpu, cuda,
rocm, tpu).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax.errors import UserError

FORMAT = "closp-jax-export"
SUPPORTED_VERSIONS = (1,)
S2_STORED = 12  # bands stored in the release: 13 minus the zero B10
S2_ZERO_BAND = 10  # where B10 goes


class ExportedModelError(UserError, ValueError):
  """The folder is not a usable export, or the inputs do not fit it; the message says which."""


def _bucket(n: int, cap: int) -> int:
  """Padded batch size: the next power of two, capped (few distinct shapes -> few compilations)."""
  size = 1
  while size < n:
    size *= 2
  return min(size, cap)


class ExportedModel:
  """An exported CLOSP / GeoCLOSP model. See the module docstring."""

  def __init__(self, folder: str | os.PathLike):
    import jax  # pylint: disable=import-outside-toplevel
    from jax import export as jax_export  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    self.folder = Path(folder)
    cfg_path = self.folder / "config.json"
    if not cfg_path.is_file():
      raise ExportedModelError(
        f"{cfg_path} not found: {self.folder} is not a closp_jax export folder "
        "(write one with `python -m closp_jax.export`)"
      )
    try:
      self.config: dict[str, Any] = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
      raise ExportedModelError(f"{cfg_path}: not valid JSON ({e})") from e
    if self.config.get("format") != FORMAT:
      raise ExportedModelError(f"{cfg_path}: field 'format' is {self.config.get('format')!r}, expected {FORMAT!r}")
    if self.config.get("version") not in SUPPORTED_VERSIONS:
      raise ExportedModelError(
        f"{cfg_path}: field 'version' is {self.config.get('version')!r}; this closp_jax "
        f"reads versions {SUPPORTED_VERSIONS}"
      )
    for field in ("weights", "functions", "sensors", "text", "embed_dim"):
      if field not in self.config:
        raise ExportedModelError(f"{cfg_path}: missing field {field!r}")
    self.embed_dim = int(self.config["embed_dim"])
    self.max_len = int(self.config["text"]["max_len"])
    self.image_size = int(self.config.get("image_size", 120))
    self.logit_scale = float(self.config.get("logit_scale", 1.0))

    weights_path = self.folder / self.config["weights"]
    if not weights_path.is_file():
      raise ExportedModelError(f"{weights_path} not found (named by {cfg_path} field 'weights')")
    weights = load_file(os.fspath(weights_path))
    self._functions: dict[str, Any] = {}
    self._weights: dict[str, dict] = {}
    for name, file in self.config["functions"].items():
      path = self.folder / file
      if not path.is_file():
        raise ExportedModelError(f"{path} not found (named by {cfg_path} field 'functions.{name}')")
      exported = jax_export.deserialize(bytearray(path.read_bytes()))
      args, _ = jax.tree_util.tree_unflatten(exported.in_tree, list(range(len(exported.in_avals))))
      wanted = args[0]
      missing = sorted(k for k in wanted if k not in weights)
      if missing:
        raise ExportedModelError(f"{weights_path} lacks tensors that {file} reads: {missing[:5]}")
      for k, i in wanted.items():
        aval = exported.in_avals[i]
        if tuple(weights[k].shape) != tuple(aval.shape) or weights[k].dtype != aval.dtype:
          raise ExportedModelError(
            f"{weights_path}: tensor {k} is {weights[k].dtype}{list(weights[k].shape)}, "
            f"{file} expects {aval.dtype}{list(aval.shape)}"
          )
      self._weights[name] = {k: jax.device_put(weights[k]) for k in wanted}
      self._functions[name] = jax.jit(exported.call)
    self._tokenizer = None

  # -- properties ------------------------------------------------------------------------------
  @property
  def has_location(self) -> bool:
    return "location" in self._functions

  @property
  def sensors(self) -> tuple[str, ...]:
    return tuple(s for s in ("s2", "s1") if s in self._functions)

  def __repr__(self) -> str:
    ckpt = self.config.get("checkpoint") or {}
    origin = "the authors' checkpoint" if ckpt.get("kind") == "official" else f"step {ckpt.get('step')}"
    return (
      f"ExportedModel({str(self.folder)!r}, {self.config.get('name')}, {origin}, dim {self.embed_dim}, "
      f"towers {sorted(self._functions)})"
    )

  # -- running ---------------------------------------------------------------------------------
  def _run(self, name: str, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    n = len(arrays[0])
    if n == 0:
      return np.zeros((0, self.embed_dim), np.float32)
    fn, weights = self._functions[name], self._weights[name]
    out = []
    for start in range(0, n, batch_size):
      chunk = [a[start : start + batch_size] for a in arrays]
      m = len(chunk[0])
      size = _bucket(m, batch_size)
      if size != m:
        chunk = [np.concatenate([c, np.zeros((size - m,) + c.shape[1:], c.dtype)]) for c in chunk]
      out.append(np.asarray(fn(weights, *chunk))[:m])
    return np.concatenate(out).astype(np.float32, copy=False)

  # -- text ------------------------------------------------------------------------------------
  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask int32 [N, max_len]: [CLS] ... [SEP] padded with 0; a longer text
    is cut keeping its final [SEP] (as the trainer tokenises)."""
    if isinstance(texts, str):
      raise TypeError("encode_text expects a list of texts, got one str; wrap it in a list")
    if self._tokenizer is None:
      from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

      path = self.folder / self.config["text"].get("tokenizer", "tokenizer/tokenizer.json")
      if not path.is_file():
        raise ExportedModelError(f"{path} not found (the export's tokenizer)")
      tok = Tokenizer.from_file(os.fspath(path))
      tok.no_padding()
      tok.no_truncation()
      self._tokenizer = tok
    ids = np.zeros((len(texts), self.max_len), np.int32)
    mask = np.zeros((len(texts), self.max_len), np.int32)
    for i, enc in enumerate(self._tokenizer.encode_batch([str(t) for t in texts])):
      row = list(enc.ids)
      if len(row) > self.max_len:
        row = row[: self.max_len - 1] + row[-1:]
      ids[i, : len(row)] = row
      mask[i, : len(row)] = 1
    return ids, mask

  def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> unit vectors float32 [N, embed_dim]."""
    ids, mask = self.tokenize(list(texts) if not isinstance(texts, str) else texts)
    return self._run("text", [ids, mask], batch_size)

  # -- images ----------------------------------------------------------------------------------
  def encode_image(self, images: Any, sensor: str, *, layout: str = "NHWC", batch_size: int = 64) -> np.ndarray:
    """Image patches -> unit vectors float32 [N, embed_dim].

    images: [N, H, W, C] (layout "NHWC") or [N, C, H, W] ("NCHW"); one patch without N is accepted.
    H = W = 120. Raw archive values: S2 C=13 (the bands of config.json `sensors.s2.bands`; B10 may be
    all zero) or C=12 (the stored bands without B10, which is inserted as zeros), reflectance x
    10,000; S1 C=2 (VV, VH) linear backscatter. NaN filling and normalisation happen inside the
    exported function.
    """
    if sensor not in ("s2", "s1"):
      raise ExportedModelError(f"sensor must be 's2' or 's1', got {sensor!r}")
    if layout not in ("NHWC", "NCHW"):
      raise ExportedModelError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4:
      raise ExportedModelError(f"{sensor} images must be 4-d [N, H, W, C] ({layout}), got shape {x.shape}")
    if layout == "NCHW":
      x = np.transpose(x, (0, 2, 3, 1))
    bands = self.config["sensors"][sensor]["bands"]
    if sensor == "s2" and x.shape[-1] == S2_STORED:
      x = np.insert(x, S2_ZERO_BAND, 0.0, axis=-1)
    want = (self.image_size, self.image_size, len(bands))
    if tuple(x.shape[1:]) != want:
      extra = " or 12 (without B10)" if sensor == "s2" else ""
      raise ExportedModelError(
        f"{sensor} images have shape {x.shape} ({layout} after adding N), expected [N, {want[0]}, {want[1]}, "
        f"{want[2]}] in NHWC: {len(bands)} bands {', '.join(bands)}{extra}"
      )
    return self._run(sensor, [np.ascontiguousarray(x)], batch_size)

  # -- location --------------------------------------------------------------------------------
  def encode_location(self, lonlat: Any, batch_size: int = 1024) -> np.ndarray:
    """(lon, lat) degrees [N, 2] (or one pair) -> unit vectors float32 [N, embed_dim]. GeoCLOSP only."""
    if not self.has_location:
      raise ExportedModelError(f"{self.folder} has no location encoder (a CLOSP, not a GeoCLOSP model)")
    x = np.asarray(lonlat, np.float32)
    if x.ndim == 1:
      x = x[None]
    if x.ndim != 2 or x.shape[1] != 2:
      raise ExportedModelError(f"lonlat must be [N, 2] (lon, lat) degrees, got shape {x.shape}")
    return self._run("location", [x], batch_size)


def load_exported(folder: str | os.PathLike) -> ExportedModel:
  """Loads a model folder written by closp_jax.export (see ExportedModel)."""
  return ExportedModel(folder)

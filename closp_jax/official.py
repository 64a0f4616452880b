"""The authors' released CLOSP / GeoCLOSP checkpoints as closp_jax export folders, no training needed.

    python -m closp_jax.export --from-official best_model.pth --out models/closp-rn
    python -m closp_jax.export --from-official closp/geoclosp-rn --out models/geoclosp-rn
    path = export_official("best_model.pth", "models/closp-rn")      # the library call behind it

A checkpoint is what the authors' train.py saves, `torch.save(model.state_dict(), "best_model.pth")`
of their CLOSP / GeoCLOSP class (DarthReca/closp models/closp.py), or the same tensors as a
safetensors file, possibly under a wrapper prefix (`model.`), or a folder holding one (a Hugging Face
model folder: model.safetensors or pytorch_model.bin beside config.json), or a registry name
(closp/closp-rn, closp/closp-vs, closp/closp-vl, closp/geoclosp-rn) resolved by
closp_jax.weights.hub. Torch files are read weights-only (closp_jax.weights.safe_load).

The variant is read from the tensors (closp_jax.weights.closp_checkpoint.infer_model_config) and must
be one of the released layouts, closp_jax.weights.registry.RELEASED_LAYOUTS:

  CLOSP-RN     TorchGeo ResNet-50 S2 and S1 towers, each ending in timm's 1000-way `fc`; projections 1000 -> 384
  CLOSP-VS     ViT-S/16 S2 tower with a 1000-way `head` (TorchGeo), ViT-S/16 S1 without (num_classes=0);
               inputs resized 120 -> 224 as kornia's K.Resize(224) does (bilinear, corners aligned)
  CLOSP-VL     ViT-L/16 S2 and S1 towers without heads; the same resize
  GeoCLOSP-RN  CLOSP-RN + SatCLIP's location encoder (L = 10 spherical harmonics, SIREN) -> 384

Inputs as the authors' `encode_image` / `val_*_transform` feed them: S2 divided by 10,000, S1 as
stored (closp_jax.data.normalize modes 'scale' and 'none'); text tokenised to 64 tokens, the CLS
token of BERT's last hidden state; every embedding L2-normalised; fixed logit scale 1.0.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax.export import PLATFORMS, ExportError, check_formats, check_out, make_input_spec, write_folder

# Registry names of the released checkpoints (closp_jax.weights.registry) and the variant each holds.
REGISTRY_VARIANTS = {
  "closp/closp-rn": "CLOSP-RN",
  "closp/closp-vs": "CLOSP-VS",
  "closp/closp-vl": "CLOSP-VL",
  "closp/geoclosp-rn": "GeoCLOSP-RN",
}
# What the authors' code feeds the towers (models/closp.py: K.Normalize(mean=0, std=10000) on S2,
# no transform on S1; the tokenizer pads and truncates to max_length=64).
NORMALIZATION = {"s2": "scale", "s1": "none"}
SCALE_DIVISOR = {"s2": 10000.0, "s1": 1.0}
MAX_LEN = 64
AUTHORS_CODE = "github.com/DarthReca/closp@4938033 models/closp.py (CLOSP, GeoCLOSP)"
# Weight files looked for in a checkpoint folder, in this order.
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "best_model.pth", "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# The model_config fields a released layout fixes (the text and embedding geometry are read from the file).
_LAYOUT_FIELDS = (
  "s2_encoder",
  "s1_encoder",
  "s2_in_chans",
  "s1_in_chans",
  "s2_head_classes",
  "s1_head_classes",
  "image_size",
  "resize_align_corners",
  "location.enabled",
)


class OfficialCheckpointError(ExportError):
  """The given checkpoint cannot be exported as a released variant; the message names the file and why."""


# ---- reading -------------------------------------------------------------------------------------


def _resolve_name(name: str) -> Path:
  """A registry name -> its local file (the hub cache, downloaded once when online).

  The one call site of closp_jax.weights.hub here."""
  from closp_jax.weights import hub, registry  # pylint: disable=import-outside-toplevel

  try:
    return hub.resolve(name)
  except (registry.WeightsError, OSError) as e:
    raise OfficialCheckpointError(" ".join(str(e).split())) from e


def _weights_in_folder(folder: Path) -> list[Path]:
  """The weight file(s) of a checkpoint folder (all shards of a sharded safetensors model)."""
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    import json  # pylint: disable=import-outside-toplevel

    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as e:
      raise OfficialCheckpointError(f"{index}: not a safetensors index (expected a 'weight_map' object)") from e
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
      raise OfficialCheckpointError(f"{index} names shards that are not in {folder}: {missing[:3]}")
    return [folder / s for s in shards]
  for name in FOLDER_FILES:
    if (folder / name).is_file():
      return [folder / name]
  found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
  if len(found) == 1:
    return found
  raise OfficialCheckpointError(
    f"{folder}: expected one weight file ({', '.join(FOLDER_FILES)}, or a single *.safetensors / *.pth / *.bin), "
    f"found {[p.name for p in found] or 'none'}"
  )


def read_checkpoint(source: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[Path], str | None]:
  """(state dict, the files read, registry name or None) of a checkpoint file, folder or registry name."""
  from closp_jax.weights.safe_load import UnsafeWeightsError, load_state_dict  # pylint: disable=import-outside-toplevel

  text = os.fspath(source)
  path = Path(text).expanduser()
  name = None
  if path.is_dir():
    files = _weights_in_folder(path)
  elif path.is_file():
    files = [path]
  elif text in REGISTRY_VARIANTS:
    name, files = text, [_resolve_name(text)]
  else:
    raise OfficialCheckpointError(
      f"{text}: no such file or folder, and not a released checkpoint's name (expected a .pth/.bin/.safetensors "
      f"state dict, a folder holding one, or one of {', '.join(REGISTRY_VARIANTS)})"
    )
  sd: dict[str, np.ndarray] = {}
  for f in files:
    try:
      part = load_state_dict(f)
    except UnsafeWeightsError as e:  # names the file already
      raise OfficialCheckpointError(" ".join(str(e).split())) from e
    except (ValueError, KeyError, OSError, ImportError) as e:
      raise OfficialCheckpointError(f"{f}: cannot read a state dict ({' '.join(str(e).split())})") from e
    sd.update(part)
  return sd, files, name


def _layout(cfg: Any) -> dict[str, Any]:
  out = {}
  for field in _LAYOUT_FIELDS:
    value = cfg
    for part in field.split("."):
      value = value[part]
    out[field] = value
  return out


def _describe(layout: dict[str, Any]) -> str:
  def tower(t):
    head = layout[f"{t}_head_classes"]
    return f"{t} {layout[f'{t}_encoder']}({layout[f'{t}_in_chans']} bands){' head ' + str(head) if head else ''}"

  loc = "location encoder" if layout["location.enabled"] else "no location encoder"
  return f"{tower('s2')}, {tower('s1')}, {loc}"


def paper_layouts() -> dict[str, dict[str, Any]]:
  """{variant: the layout fields of its model_config}."""
  from closp_jax.models.towers import model_config  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.registry import RELEASED_LAYOUTS  # pylint: disable=import-outside-toplevel

  return {v: _layout(model_config(**fields)) for v, fields in RELEASED_LAYOUTS.items()}


def official_config(
  sd: dict[str, np.ndarray], source: str, *, variant: str | None = None, text_heads: int | None = None
) -> tuple[str, Any]:
  """(variant, model_config) of the authors' checkpoint `sd` read from `source` (named in errors).

  The towers are read from the tensors and must be one released layout; `variant`, when given,
  must be that one. BERT's geometry and the embedding width come from the file; the attention
  heads (not stored) default to hidden // 32 (12 for MiniLM); SatCLIP's harmonics are the
  'analytic_2023' table the authors' code imports (see docs/export.md).
  """
  from closp_jax.weights import convert  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.closp_checkpoint import infer_model_config  # pylint: disable=import-outside-toplevel

  known = paper_layouts()
  if variant is not None and variant not in known:
    raise OfficialCheckpointError(f"--variant {variant!r}: expected one of {', '.join(known)}")
  try:
    cfg = infer_model_config(sd, text_heads=text_heads, sh_convention="analytic_2023")
  except convert.WeightMismatchError as e:
    raise OfficialCheckpointError(_named(e, source)) from e
  except KeyError as e:
    raise OfficialCheckpointError(f"{source}: not a CLOSP checkpoint (no tensor {e.args[0]!r})") from e
  if cfg.location.enabled and cfg.location.kind != "satclip":
    raise OfficialCheckpointError(
      f"{source}: its location encoder is {cfg.location.kind}, but the released "
      "GeoCLOSP uses SatCLIP's (location_encoder.nnet.*)"
    )
  layout = _layout(cfg)
  found = [v for v, want in known.items() if want == layout]
  if not found:
    raise OfficialCheckpointError(
      f"{source}: its tensors ({_describe(layout)}) match none of the released variants: "
      + "; ".join(f"{v} ({_describe(want)})" for v, want in known.items())
    )
  if variant is not None and variant != found[0]:
    raise OfficialCheckpointError(
      f"{source} holds a {found[0]} checkpoint ({_describe(layout)}), not --variant {variant} "
      f"({_describe(known[variant])})"
    )
  return found[0], cfg


def _named(error: Exception, source: str) -> str:
  """The importer's message about an in-memory "state dict", on one line and naming `source`."""
  text = " ".join(str(error).split())
  for anonymous in ("state dict: ", "state dict "):
    if text.startswith(anonymous):
      text = text[len(anonymous) :]
      return f"{source}: {text}" if anonymous.endswith(": ") else f"{source} {text}"
  return f"{source}: {text}"


def _sha256(files: Sequence[Path]) -> str:
  h = hashlib.sha256()
  for f in files:
    with open(f, "rb") as fh:
      for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


def load_official(
  source: str | os.PathLike, *, variant: str | None = None, text_heads: int | None = None
) -> dict[str, Any]:
  """The authors' checkpoint as closp_jax variables: {'variant', 'model_config', 'variables',
  'files', 'name'} ('name': the registry name, when one was given)."""
  from closp_jax.weights import convert  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.closp_checkpoint import load_closp_checkpoint  # pylint: disable=import-outside-toplevel

  sd, files, name = read_checkpoint(source)
  where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"
  if name is not None and variant is not None and REGISTRY_VARIANTS[name] != variant:
    raise OfficialCheckpointError(f"{name} is the released {REGISTRY_VARIANTS[name]}, not --variant {variant}")
  found, cfg = official_config(
    sd, where, variant=variant or (REGISTRY_VARIANTS[name] if name else None), text_heads=text_heads
  )
  try:
    variables = load_closp_checkpoint(sd, cfg)
  except convert.WeightMismatchError as e:
    raise OfficialCheckpointError(_named(e, where)) from e
  return {"variant": found, "model_config": cfg, "variables": variables, "files": files, "name": name}


# ---- the export ----------------------------------------------------------------------------------


def export_official(
  source: str | os.PathLike,
  out: str | os.PathLike,
  *,
  variant: str | None = None,
  formats: Sequence[str] = ("jax",),
  overwrite: bool = False,
  platforms: Sequence[str] = PLATFORMS,
  text_heads: int | None = None,
) -> Path:
  """Writes the export folder `out` (the format closp_jax.load_exported reads) of the authors'
  checkpoint `source` (file, folder or registry name; see the module docstring). Returns its path."""
  check_formats(formats)
  out = check_out(out, overwrite)
  loaded = load_official(source, variant=variant, text_heads=text_heads)
  files = loaded["files"]
  spec = make_input_spec(NORMALIZATION, SCALE_DIVISOR, rgb=False)
  checkpoint = {
    "kind": "official",
    "variant": loaded["variant"],
    "registry_name": loaded["name"],
    "files": [str(f.absolute()) for f in files],
    "sha256": _sha256(files),
    "step": None,
    "model_class": AUTHORS_CODE,
  }
  folder = files[0].parent
  tokenizer_dir = folder if (folder / "tokenizer.json").is_file() else None
  return write_folder(
    out,
    loaded["model_config"],
    loaded["variables"],
    spec,
    max_len=MAX_LEN,
    name=loaded["variant"],
    checkpoint=checkpoint,
    training_config=None,
    formats=formats,
    platforms=platforms,
    tokenizer_dir=tokenizer_dir,
  )

r"""Export a trained checkpoint, or the authors' released one, as a self-contained model folder.

  closp-export --workdir DIR [--checkpoint latest|best|STEP] --out MODEL_DIR \
      [--format jax|torch] [--data_dir D] [--overwrite]
  closp-export --from-official CKPT [--variant CLOSP-RN|CLOSP-VS|CLOSP-VL|GeoCLOSP-RN] \
      --out MODEL_DIR [--format jax|torch] [--overwrite]
  (python -m closp_jax.export ... works the same; DIR and MODEL_DIR may be relative paths)

The run's config comes from DIR/config.json. Exit status: 0, or 1 with one line `error: ...`.

MODEL_DIR (written into a temporary sibling folder, then renamed into place):
  model.safetensors      every variable, flat: 'params/<module>/.../<name>', 'batch_stats/...'
  config.json            what the encoders expect (bands, normalisation, text length), the run's config
  tokenizer/             the tokenizer files the text tower was trained with
  encode_text.jax        serialized jax.export functions (symbolic batch size, lowered for
  encode_s2.jax          cpu, cuda, rocm and tpu); each takes (weights, inputs), `weights` being
  encode_s1.jax          the model.safetensors tensors of its tower
  encode_location.jax    (GeoCLOSP only)
  README.md
  closp_torch.safetensors   (--format torch) the state dict in the original CLOSP naming

The image functions take raw archive values (see docs/export.md): NaN filling and the per-sensor
normalisation the model was trained with (for the authors' checkpoints: S2 / 10,000, S1 as stored,
closp_jax/official.py) are inside them.
`closp_jax.load_exported(MODEL_DIR)` runs them without this package's model code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax import atomic
from closp_jax.data import normalize, pipeline, preprocess
from closp_jax.errors import UserError

FORMAT = "closp-jax-export"
VERSION = 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
IMAGE_SIZE = 120
S2_BANDS = preprocess.S2_BANDS
S1_BANDS = preprocess.S1_BANDS
NAN_FILL = preprocess.NAN_FILL
S2_RGB = pipeline.S2_RGB  # B4, B3, B2 in the 13-band order
FORMATS = ("jax", "torch")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Parameter groups each exported function reads (the scalars are read by every tower's setup).
TOWER_GROUPS = {
  "s2": ("s2_encoder", "s2_projection"),
  "s1": ("s1_encoder", "s1_projection"),
  "text": ("text_model", "text_projection"),
  "location": ("location_encoder", "location_projection"),
}
SCALARS = ("logit_scale", "logit_bias")


class ExportError(UserError, ValueError):
  """The workdir, checkpoint or output folder does not allow an export; the message says why."""


# ---- reading the run -----------------------------------------------------------------------------


def model_config_of(cfg):
  """The locked model config (closp_jax.models.towers.model_config) of a training config."""
  from closp_jax.models.towers import model_config  # pylint: disable=import-outside-toplevel

  return model_config(**cfg.model.to_dict())


def restore_variables(workdir: str | os.PathLike, cfg, checkpoint: str | int = "latest") -> tuple[int, dict]:
  """(step, {'params', 'batch_stats'} as numpy trees) of a run (closp_jax.checkpoint.restore_variables)."""
  import jax  # pylint: disable=import-outside-toplevel

  from closp_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  _, variables, step = ckpt_lib.restore_variables(workdir, cfg, checkpoint)
  return int(step), {c: jax.tree.map(np.asarray, variables.get(c, {})) for c in ("params", "batch_stats")}


def dataset_band_stats(cfg, data_dir: str | os.PathLike | None = None) -> dict:
  """Train-split band statistics of the run's dataset (needed to standardise inputs)."""
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  data_dir = data_dir or cfg.data.data_dir or None
  try:
    builder = pipeline.get_builder(cfg.data.name, data_dir=data_dir, prepare=False)
    return pipeline.band_stats(builder)
  except (FileNotFoundError, KeyError) as e:
    raise ExportError(
      f"the model standardises its inputs with the band statistics of {cfg.data.name}, which is not "
      f"readable in {data_dir or pipeline.default_data_dir()} ({e}); pass --data_dir (or band_stats=) "
      "where the dataset was prepared"
    ) from e


# ---- what the encoders expect --------------------------------------------------------------------


def input_spec(cfg, band_stats: Mapping[str, Any] | None) -> dict:
  """Per sensor: bands, NaN fill, normalisation (x - shift) * scale, as the trainer's pipeline does
  (closp_jax.data.normalize, per config.data.normalization and config.data.scale_divisor)."""
  return make_input_spec(
    normalize.modes_from_config(cfg), normalize.divisors_from_config(cfg), band_stats, rgb=bool(cfg.data.rgb)
  )


def make_input_spec(
  modes: Mapping[str, str],
  divisors: Mapping[str, float],
  band_stats: Mapping[str, Any] | None = None,
  *,
  rgb: bool = False,
) -> dict:
  """The input spec of `modes` ({'s2': mode, 's1': mode}, closp_jax.data.normalize.MODES) with the
  `scale` divisors and, for `standardize`, the train-split band statistics."""
  spec = {"image_size": IMAGE_SIZE, "rgb": bool(rgb)}
  for sensor, bands in (("s2", S2_BANDS), ("s1", S1_BANDS)):
    try:
      shift, scale = normalize.affine(
        sensor, modes[sensor], len(bands), divisor=divisors[sensor], stats=(band_stats or {}).get(sensor)
      )
    except ValueError as e:
      raise ExportError(f"config.data.normalization.{sensor}={modes[sensor]!r}: {e}") from e
    spec[sensor] = {
      "bands": list(bands),
      "nan_fill": NAN_FILL[sensor],
      "normalization": modes[sensor],
      "shift": shift.tolist(),
      "scale": scale.tolist(),
    }
  return spec


def _prepare_images(x, entry: dict, sensor: str, rgb: bool):
  """Raw archive values -> the model's input (inside the exported function)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  x = jnp.where(jnp.isnan(x), jnp.float32(entry["nan_fill"]), x)
  x = (x - np.asarray(entry["shift"], np.float32)) * np.asarray(entry["scale"], np.float32)
  if rgb:
    if sensor == "s2":
      x = x[..., list(S2_RGB)]
    else:
      x = jnp.concatenate([x, x[..., :1] - x[..., 1:2]], axis=-1)
  return x


# ---- flat weights --------------------------------------------------------------------------------


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{'params/s2_encoder/conv1/kernel': array, 'batch_stats/...': array} (float32 where floating)."""
  out: dict[str, np.ndarray] = {}

  def walk(prefix: str, node):
    if isinstance(node, Mapping):
      for k in sorted(node):
        walk(f"{prefix}/{k}" if prefix else str(k), node[k])
      return
    arr = np.asarray(node)
    out[prefix] = np.array(arr, np.float32 if arr.dtype.kind == "f" else arr.dtype, order="C")  # keeps 0-d

  for collection in ("params", "batch_stats"):
    walk(collection, variables.get(collection, {}))
  return out


def unflatten_weights(flat: Mapping[str, Any]) -> dict:
  """The inverse of flatten_variables: {'params': {...}, 'batch_stats': {...}}."""
  tree: dict = {"params": {}, "batch_stats": {}}
  for name, value in flat.items():
    node = tree
    *path, leaf = name.split("/")
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def tower_weights(flat: Mapping[str, Any], tower: str) -> dict:
  """The tensors one exported function reads: its tower's groups and the temperature scalars."""
  groups = TOWER_GROUPS[tower] + SCALARS
  return {k: v for k, v in flat.items() if k.split("/")[1] in groups}


# ---- jax.export ----------------------------------------------------------------------------------


def export_functions(
  mcfg, flat: Mapping[str, np.ndarray], spec: dict, max_len: int, platforms: Sequence[str] = PLATFORMS
) -> dict[str, bytes]:
  """{'text'|'s2'|'s1'|['location']: serialized jax.export.Exported} with a symbolic batch size."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax import export as jax_export  # pylint: disable=import-outside-toplevel

  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel

  model = CLOSP(mcfg)
  rgb = bool(spec["rgb"])

  def image_fn(sensor):
    method = model.encode_s2 if sensor == "s2" else model.encode_s1

    def encode(weights, images):
      x = _prepare_images(images.astype(jnp.float32), spec[sensor], sensor, rgb)
      return model.apply(unflatten_weights(weights), x, train=False, method=method)

    return encode

  def encode_text(weights, input_ids, attention_mask):
    return model.apply(unflatten_weights(weights), input_ids, attention_mask, train=False, method=model.encode_text)

  def encode_location(weights, lonlat):
    return model.apply(
      unflatten_weights(weights), lonlat.astype(jnp.float32), train=False, method=model.encode_location
    )

  b = jax_export.symbolic_shape("b")[0]
  structs = {
    "text": (encode_text, (jax.ShapeDtypeStruct((b, max_len), jnp.int32),) * 2),
    "s2": (image_fn("s2"), (jax.ShapeDtypeStruct((b, IMAGE_SIZE, IMAGE_SIZE, len(S2_BANDS)), jnp.float32),)),
    "s1": (image_fn("s1"), (jax.ShapeDtypeStruct((b, IMAGE_SIZE, IMAGE_SIZE, len(S1_BANDS)), jnp.float32),)),
  }
  if mcfg.location.enabled:
    structs["location"] = (encode_location, (jax.ShapeDtypeStruct((b, 2), jnp.float32),))
  out = {}
  for name, (fn, args) in structs.items():
    weights = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tower_weights(flat, name).items()}
    exported = jax_export.export(jax.jit(fn), platforms=tuple(platforms))(weights, *args)
    out[name] = bytes(exported.serialize())
  return out


# ---- the folder ----------------------------------------------------------------------------------


def _readme(meta: dict) -> str:
  loc = meta["location"] is not None
  fns = ", ".join(f"`{f}`" for f in meta["functions"].values())
  ckpt = meta["checkpoint"]
  origin = f"the authors' {ckpt['variant']} checkpoint" if ckpt.get("kind") == "official" else f"step {ckpt['step']}"
  return f"""# {meta["name"]} (closp-jax export, {origin})

A {"GeoCLOSP" if loc else "CLOSP"} model: text, Sentinel-2, Sentinel-1{" and location" if loc else ""} encoders
into one {meta["embed_dim"]}-d space (unit vectors; score = dot product).

```python
import closp_jax
m = closp_jax.load_exported("{meta["folder_name"]}")
q = m.encode_text(["flooded area"])                    # [1, {meta["embed_dim"]}]
z = m.encode_image(s2_patches, "s2")                   # [B, 120, 120, 13] raw archive values
scores = z @ q[0]
```

Without closp_jax (jax, numpy and safetensors only):

```python
import jax
from safetensors.numpy import load_file
fn = jax.export.deserialize(bytearray(open("encode_s2.jax", "rb").read()))
names = jax.tree_util.tree_unflatten(fn.in_tree, range(len(fn.in_avals)))[0][0]   # the tensors it reads
tensors = load_file("model.safetensors")
emb = fn.call({{k: tensors[k] for k in names}}, s2_patches)
```

- Images: NHWC float32, 120 x 120. S2: the 13 bands {", ".join(S2_BANDS)} (B10 is zero in
  CrisisLandMark), reflectance x 10,000 as stored. S1: VV, VH linear backscatter as stored.
  NaN becomes {NAN_FILL["s2"]} (S2) / {NAN_FILL["s1"]} (S1); then (x - shift) * scale per band as in
  config.json ("sensors"), all inside the exported functions.
- Text: tokenizer/tokenizer.json, [CLS] ... [SEP] padded with 0 to {meta["text"]["max_len"]} tokens.
- Functions: {fns} (jax.export, batch size symbolic, lowered for {", ".join(meta["platforms"])}).
- Weights: model.safetensors, names 'params/<module path>' and 'batch_stats/<module path>'.
{"- closp_torch.safetensors: the state dict in the original CLOSP naming (load_state_dict strict)." if meta.get("torch") else ""}
"""


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
  """The absolute output folder; an error when it exists and overwrite is False."""
  out = Path(out).absolute()
  if out.exists() and not overwrite:
    raise ExportError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
  return out


def check_formats(formats: Sequence[str]) -> None:
  bad = [f for f in formats if f not in FORMATS]
  if bad:
    raise ExportError(f"unknown format(s) {bad}: expected some of {FORMATS}")


def write_folder(
  out: Path,
  mcfg,
  variables: Mapping[str, Any],
  spec: dict,
  *,
  max_len: int,
  name: str,
  checkpoint: dict,
  training_config: dict | None,
  formats: Sequence[str] = ("jax",),
  platforms: Sequence[str] = PLATFORMS,
  tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
  """Writes the model folder `out` (see the module docstring) from a model config, its variables and
  the input spec: into a temporary sibling folder, renamed into place at the end (an existing `out`
  is replaced then, never half-written). `checkpoint` says where the weights came from;
  `tokenizer_dir` holds the tokenizer files (default: the installed all-MiniLM-L6-v2)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from closp_jax.weights.locate import find_minilm_folder  # pylint: disable=import-outside-toplevel

  flat = flatten_variables(variables)
  functions = export_functions(mcfg, flat, spec, max_len, platforms)
  scale, bias = _logit_params(mcfg, flat)
  meta = {
    "format": FORMAT,
    "version": VERSION,
    "name": name,
    "folder_name": out.name,
    "embed_dim": int(mcfg.embed_dim),
    "checkpoint": checkpoint,
    "weights": "model.safetensors",
    "functions": {k: f"encode_{k}.jax" for k in functions},
    "platforms": list(platforms),
    "sensors": {s: spec[s] for s in ("s2", "s1")},
    "image_size": IMAGE_SIZE,
    "rgb": spec["rgb"],
    "text": {"max_len": int(max_len), "tokenizer": "tokenizer/tokenizer.json"},
    "location": {"input": "(lon, lat) degrees"} if "location" in functions else None,
    "logit_scale": scale,
    "logit_bias": bias,
    "torch": "closp_torch.safetensors" if "torch" in formats else None,
    "model_config": mcfg.to_dict(),
    "training_config": training_config,
  }
  tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else find_minilm_folder(None)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
  try:
    save_file(flat, str(tmp / "model.safetensors"), metadata={"format": FORMAT, "version": str(VERSION)})
    for fn_name, blob in functions.items():
      (tmp / f"encode_{fn_name}.jax").write_bytes(blob)
    (tmp / "tokenizer").mkdir()
    for f in TOKENIZER_FILES:
      if (tok_src / f).is_file():
        shutil.copyfile(tok_src / f, tmp / "tokenizer" / f)
    if "torch" in formats:
      write_torch_state_dict(variables, mcfg, tmp / "closp_torch.safetensors", scale, bias)
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    (tmp / "README.md").write_text(_readme(meta))
    for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and safetensors create owner-only entries
      os.chmod(path, 0o755 if path.is_dir() else 0o644)
    atomic.replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def export_model(
  workdir: str | os.PathLike,
  out: str | os.PathLike,
  *,
  checkpoint: str | int = "latest",
  formats: Sequence[str] = ("jax",),
  config=None,
  band_stats: Mapping[str, Any] | None = None,
  data_dir: str | os.PathLike | None = None,
  overwrite: bool = False,
  platforms: Sequence[str] = PLATFORMS,
) -> Path:
  """Writes the model folder `out` from a training workdir; returns its path.

  config: the training config (default: WORKDIR/config.json). band_stats: per-sensor train-split
  mean/std (default: read from the run's prepared dataset, `data_dir` overriding its location);
  needed when inputs are standardised. formats: 'jax' (always written) and 'torch'.
  """
  check_formats(formats)
  out = check_out(out, overwrite)
  from closp_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  cfg = config if config is not None else ckpt_lib.load_run_config(workdir)
  mcfg = model_config_of(cfg)
  step, variables = restore_variables(workdir, cfg, checkpoint)
  if band_stats is None and normalize.needs_stats(normalize.modes_from_config(cfg)):
    band_stats = dataset_band_stats(cfg, data_dir)
  spec = input_spec(cfg, band_stats)
  return write_folder(
    out,
    mcfg,
    variables,
    spec,
    max_len=int(cfg.data.max_len),
    name=str(cfg.get("name", "closp")),
    checkpoint={"kind": "workdir", "workdir": str(Path(workdir).absolute()), "step": int(step)},
    training_config=json.loads(cfg.to_json()),
    formats=formats,
    platforms=platforms,
  )


def _logit_params(mcfg, flat) -> tuple[float, float]:
  temp = mcfg.temperature
  if temp.learnable:
    scale = float(np.exp(min(float(flat["params/logit_scale"]), np.log(100.0))))
    bias = float(flat["params/logit_bias"]) if "params/logit_bias" in flat else 0.0
  else:
    scale, bias = float(temp.init_scale), float(temp.sigmoid_bias or 0.0)
  return scale, bias


def write_torch_state_dict(
  variables: Mapping[str, Any], mcfg, path: str | os.PathLike, logit_scale: float, logit_bias: float
) -> None:
  """The original-named CLOSP state dict as safetensors (no pickle; load with safetensors.torch.load_file).

  The original model has a fixed temperature and no such tensor: a learned logit_scale / logit_bias is
  left out of the tensors and stored in the file's metadata instead, so load_state_dict(strict=True) fits.
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from closp_jax.weights.closp_checkpoint import export_closp_state_dict  # pylint: disable=import-outside-toplevel

  sd = export_closp_state_dict(variables, mcfg)
  sd = {k: np.array(v, order="C") for k, v in sd.items() if k not in SCALARS}
  save_file(
    sd,
    os.fspath(path),
    metadata={"format": "closp-state-dict", "logit_scale": repr(logit_scale), "logit_bias": repr(logit_bias)},
  )


# ---- binary --------------------------------------------------------------------------------------


def _flags():
  """The binary's flags, defined when it runs (importing the library defines none)."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  f = {
    "workdir": flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/)."),
    "from_official": flags.DEFINE_string(
      "from-official",
      None,
      "The authors' released checkpoint: a .pth/.bin/.safetensors state dict, a "
      "folder holding one, or a name (closp/closp-rn, closp/closp-vs, closp/closp-vl, closp/geoclosp-rn).",
    ),
    "variant": flags.DEFINE_string(
      "variant",
      None,
      "With --from-official: CLOSP-RN, CLOSP-VS, CLOSP-VL or GeoCLOSP-RN (default: read from "
      "the tensors); a checkpoint of another variant is an error.",
    ),
    "checkpoint": flags.DEFINE_string("checkpoint", "latest", "With --workdir: latest, best or a step number."),
    "out": flags.DEFINE_string("out", None, "The model folder to write."),
    "format": flags.DEFINE_enum(
      "format", "jax", list(FORMATS), "jax, or torch: also the state dict in the original CLOSP naming."
    ),
    "data_dir": flags.DEFINE_string("data_dir", None, "Where the run's dataset is prepared (band statistics)."),
    "overwrite": flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder."),
  }
  flags.DEFINE_alias("from_official", "from-official")
  return f


def main(argv, f) -> int:
  from absl import app  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (f["workdir"].value is None) == (f["from_official"].value is None):
    raise app.UsageError("pass --workdir (a training run) or --from-official (the authors' checkpoint), one of them")
  if f["out"].value is None:
    raise app.UsageError("--out (the model folder to write) is required")
  formats = ("jax", "torch") if f["format"].value == "torch" else ("jax",)
  if f["from_official"].value is not None:
    from closp_jax import official  # pylint: disable=import-outside-toplevel

    path = official.export_official(
      f["from_official"].value,
      f["out"].value,
      variant=f["variant"].value,
      formats=formats,
      overwrite=f["overwrite"].value,
    )
  else:
    if f["variant"].value is not None:
      raise app.UsageError("--variant goes with --from-official (a workdir's config says what it trained)")
    path = export_model(
      f["workdir"].value,
      f["out"].value,
      checkpoint=f["checkpoint"].value,
      formats=formats,
      data_dir=f["data_dir"].value,
      overwrite=f["overwrite"].value,
    )
  size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  print(f"wrote {path} ({size / 2**20:.1f} MiB): " + ", ".join(sorted(p.name for p in path.iterdir())))
  return 0


def run() -> None:
  """The `closp-export` console script."""
  from closp_jax import errors  # pylint: disable=import-outside-toplevel

  f = _flags()
  errors.run_main(lambda argv: main(argv, f))


if __name__ == "__main__":
  # Run from the imported module, so that its error classes are the ones the library raises
  # (under `python -m`, this file is also loaded as __main__ with classes of its own).
  from closp_jax.export import run as _run  # pylint: disable=import-self

  _run()

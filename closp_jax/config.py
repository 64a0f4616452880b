"""The schema of every training config: its keys, their defaults and allowed values, and loading.

The recipes live in configs/ (configs/closp.py, configs/geoclosp.py, shared parts in
configs/common.py; installed with the package as `closp_jax.configs`): each starts from
`defaults()` and sets what its variant trains. This module holds no recipe. docs/configs.md lists
every key; tests/test_configs_doc.py checks it against `defaults()`. Configs are locked: a mistyped
key is an error naming the valid keys.

A config is named by a packaged recipe, `geoclosp:paper` (works from any folder), or by a file,
`configs/geoclosp.py:paper` / `/abs/path/my_recipe.py:variant`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import ml_collections

from closp_jax.errors import UserError

PARAM_GROUPS = (
  "s2_encoder",
  "s1_encoder",
  "text_model",
  "s2_projection",
  "s1_projection",
  "location_encoder",
  "location_projection",
  "logit_scale",
  "logit_bias",
)
RECIPE_PACKAGE = "closp_jax.configs"


def defaults() -> ml_collections.ConfigDict:
  """Every key with its default value (unlocked; recipes set what they need, then lock)."""
  from closp_jax.models.towers import model_config  # pylint: disable=import-outside-toplevel

  c = ml_collections.ConfigDict()
  c.name = "closp"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "crisis_landmark/sample"
  c.data.data_dir = ""  # '' -> $CLOSP_DATA_DIR or ~/tensorflow_datasets
  c.data.manual_dir = ""  # the official release folder, for crisis_landmark/full
  c.data.batch_size = 64  # per sensor, global (all processes together)
  c.data.eval_batch_size = 256  # global
  # Per sensor: 'none' (as stored), 'scale' (x / scale_divisor) or 'standardize' (train-split band
  # statistics). The authors: S2 / 10,000 and S1 as stored (:paper); the sample standardises S1.
  c.data.normalization = ml_collections.ConfigDict({"s2": "scale", "s1": "standardize"})
  c.data.scale_divisor = ml_collections.ConfigDict({"s2": 10000.0, "s1": 1.0})
  c.data.augment = "flips_rot90"  # 'none', 'flips' (the authors') or 'flips_rot90'
  c.data.max_len = 64
  c.data.bucket = False  # pad text to the batch's longest in buckets of 16/32/64
  c.data.worker_count = 0
  c.data.rgb = False  # RGB-only baseline: S2 bands 4,3,2; S1 as VV, VH, VV-VH

  c.model = model_config()

  c.init = ml_collections.ConfigDict()
  c.init.text = "minilm"  # 'minilm' (installed all-MiniLM-L6-v2), a local HF BERT folder, or '' (random)
  c.init.s2 = ""  # timm/TorchGeo state dict (.safetensors, or .pth read weights-only)
  c.init.s1 = ""
  c.init.location = ""  # SatCLIP / GeoCLIP weights for the location encoder ('' random)

  c.loss = ml_collections.ConfigDict()
  c.loss.kind = "softmax"  # 'softmax' (CLIP InfoNCE) or 'sigmoid' (SigLIP)
  c.loss.chunked = False  # shard_map loss that never holds the global B x B logits
  c.loss.cross_sensor_negatives = False
  c.loss.location_directions = "both"  # GeoCLOSP: 'both' (4 terms) or 'location_to_image' (3 of 4)
  c.loss.weights = ml_collections.ConfigDict({"s2_text": 1.0, "s1_text": 1.0, "s2_location": 1.0, "s1_location": 1.0})

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # 'adamw' (decoupled decay) or 'adam' (L2 decay added to the gradient)
  c.optim.lr = 1e-3
  c.optim.schedule = "warmup_cosine"  # 'one_cycle', 'warmup_cosine' or 'constant'
  c.optim.warmup_steps = 20
  c.optim.end_lr_factor = 0.01
  c.optim.pct_start = 0.3
  c.optim.div_factor = 25.0
  c.optim.final_div_factor = 1e4
  c.optim.cycle_momentum = False  # one_cycle: beta1 cycles max_momentum -> base_momentum -> max_momentum
  c.optim.base_momentum = 0.85
  c.optim.max_momentum = 0.95
  c.optim.b1 = 0.9  # beta1 when it does not cycle
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01
  c.optim.decay = "matrices"  # which parameters decay: 'matrices' (kernels, embeddings) or 'all'
  c.optim.grad_clip = 1.0
  c.optim.grad_accum_steps = 1
  # Learning-rate multiplier per parameter group (groups a model lacks are ignored at 1.0).
  c.optim.multipliers = ml_collections.ConfigDict({g: 1.0 for g in PARAM_GROUPS})
  c.optim.freeze_towers = ("s2_encoder", "s1_encoder", "text_model")
  c.optim.freeze_steps = 0
  c.optim.frozen = ("text_model",)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300
  c.train.epochs = 0.0  # > 0: steps = epochs x steps per epoch of the larger sensor
  c.train.sensor_updates = "joint"  # 'joint' (one update per step) or 'alternate' (S2, then S1)
  c.train.log_every_steps = 10
  c.train.nonfinite = "stop"  # 'stop' or 'skip' on a NaN/Inf loss or gradient norm
  c.train.stop_after = 0  # > 0: checkpoint and stop after this step (the run resumes later)
  c.train.record_data_order = False  # append a digest of every batch to WORKDIR/data_order.txt

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 100
  c.eval.final = True  # retrieval table of the final vs the untrained model
  c.eval.max_corpus = 0  # > 0: cap the corpus per sensor (quick looks)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.profile = ml_collections.ConfigDict()
  c.profile.steps = ""  # "A:B": jax.profiler trace of steps A..B-1 to WORKDIR/profile ('' off)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.slices = 1  # > 1: multi-slice (DCN) data parallelism over equal groups of hosts
  c.mesh.rules = "dp"

  return c


def upgrade_saved_config(data: dict) -> dict:
  """A config saved by an older closp-jax (WORKDIR/config.json) in today's shape, values unchanged:
  data.normalization was the S2 mode alone (S1 was always standardised) and data.augment a bool
  (flips and 90-degree rotations)."""
  data = dict(data)
  d = dict(data.get("data", {}))
  if isinstance(d.get("normalization"), str):
    d["normalization"] = {"s2": d["normalization"], "s1": "standardize"}
  d.setdefault("scale_divisor", {"s2": 10000.0, "s1": 1.0})
  if isinstance(d.get("augment"), bool):
    d["augment"] = "flips_rot90" if d["augment"] else "none"
  data["data"] = d
  return data


class ConfigKeyError(UserError, KeyError):
  def __str__(self):
    return str(self.args[0])


def set_key(cfg: ml_collections.ConfigDict, dotted: str, value) -> None:
  """cfg.a.b = value for dotted 'a.b'; ConfigKeyError names the key and the valid ones when it does not exist."""
  node = cfg
  parts = dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigKeyError(f"unknown config key {dotted!r}: no {part!r}; valid keys there: {', '.join(valid)}")
    if i < len(parts) - 1:
      node = node[part]
  node[parts[-1]] = value


class ConfigNotFoundError(UserError, FileNotFoundError):
  """--config names neither a packaged recipe nor a file."""


def packaged_recipes() -> list[str]:
  """Names of the recipes installed with the package (configs/*.py but common)."""
  folder = Path(importlib.import_module(RECIPE_PACKAGE).__file__).parent
  return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common"))


def resolve_config_spec(spec: str) -> str:
  """'geoclosp:paper' -> '/installed/closp_jax/configs/geoclosp.py:paper'; a file path (with an
  optional ':variant') is returned with its path made absolute. Raises ConfigNotFoundError."""
  path, sep, arg = spec.partition(":")
  if path.endswith(".py") or os.sep in path or "/" in path:
    if not Path(path).is_file():
      raise ConfigNotFoundError(
        f"config file {path!r} not found (from {os.getcwd()}); name a packaged recipe instead, one of "
        f"{', '.join(packaged_recipes())}, e.g. --config geoclosp:paper"
      )
    return str(Path(path).absolute()) + sep + arg
  if path not in packaged_recipes():
    raise ConfigNotFoundError(
      f"--config {spec!r}: no packaged recipe {path!r}; the recipes are {', '.join(packaged_recipes())} "
      "(e.g. --config geoclosp:paper), or pass a file such as configs/geoclosp.py:paper"
    )
  module = importlib.import_module(f"{RECIPE_PACKAGE}.{path}")
  return module.__file__ + sep + arg


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The locked config `--config spec` gives: 'geoclosp:paper' or 'path/to/recipe.py[:variant]'."""
  path, _, arg = resolve_config_spec(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location("closp_config_module", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_override_keys(config: ml_collections.ConfigDict, argv: list[str], flag: str = "config") -> None:
  """Raises ConfigKeyError naming the key and the valid keys for any --config.a.b=... that does not exist."""
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    dotted = arg[len(prefix) :].split("=", 1)[0]
    node = config
    walked = []
    for part in dotted.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ("config." + ".".join(walked)) if walked else "config"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigKeyError(
          f"unknown config key '{flag}.{dotted}': {where} has no key {part!r}; valid keys: {', '.join(valid)} "
          f"(docs/configs.md lists them all)"
        )
      walked.append(part)
      node = node[part]


class ConfigValueError(UserError, ValueError):
  """A config value is out of its range or not one of its choices; the message names the key and the fix."""


_CHOICES = {
  "data.normalization.s2": ("none", "scale", "standardize"),
  "data.normalization.s1": ("none", "scale", "standardize"),
  "data.augment": ("none", "flips", "flips_rot90"),
  "loss.kind": ("softmax", "sigmoid"),
  "loss.location_directions": ("both", "location_to_image"),
  "optim.name": ("adamw", "adam"),
  "optim.decay": ("all", "matrices"),
  "train.sensor_updates": ("joint", "alternate"),
  "optim.schedule": ("one_cycle", "warmup_cosine", "constant"),
  "train.nonfinite": ("stop", "skip"),
  "mesh.rules": ("dp", "fsdp"),
}
# key -> (lowest allowed value, what it means); checked as numbers.
_AT_LEAST = {
  "data.batch_size": (1, "samples per sensor per step, all processes together"),
  "data.eval_batch_size": (1, "samples per evaluation batch"),
  "data.max_len": (1, "text tokens"),
  "data.worker_count": (0, "grain worker processes (0: read in the main process)"),
  "train.log_every_steps": (1, "steps between progress lines"),
  "train.stop_after": (0, "0 (off) or the step after which to checkpoint and stop"),
  "train.epochs": (0, "0 (use train.steps) or the number of epochs"),
  "eval.every_steps": (0, "0 (off) or steps between validations"),
  "eval.max_corpus": (0, "0 (all) or a cap per sensor"),
  "checkpoint.every_steps": (1, "steps between checkpoints"),
  "checkpoint.keep": (1, "checkpoints kept"),
  "optim.grad_accum_steps": (1, "micro-batches per step"),
  "optim.warmup_steps": (0, "warm-up steps"),
  "optim.weight_decay": (0, "AdamW weight decay"),
  "optim.grad_clip": (0, "0 (off) or the global-norm clip"),
}


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks the values a run needs before anything is built; ConfigValueError names key, value and fix.

  Types are already checked by the config flags (`--config.train.steps=ten` is refused while
  parsing); this checks choices and ranges that would otherwise fail late (after the dataset
  build or compilation) or silently (a zero checkpoint interval, an unknown non-finite policy).
  """
  problems = []
  for key, choices in _CHOICES.items():
    value = _get(cfg, key)
    if value not in choices:
      problems.append(f"config.{key}={value!r} is not one of {', '.join(map(repr, choices))}")
  for key, (low, meaning) in _AT_LEAST.items():
    value = _get(cfg, key)
    try:
      number = float(value)
    except (TypeError, ValueError):
      problems.append(f"config.{key}={value!r} is not a number ({meaning})")
      continue
    if not number >= low:  # also catches NaN
      problems.append(f"config.{key}={value!r} must be >= {low} ({meaning})")
  lr = float(cfg.optim.lr)
  if not (lr > 0 and lr != float("inf")):
    problems.append(f"config.optim.lr={cfg.optim.lr!r} must be a positive finite number")
  steps, epochs = int(cfg.train.steps), float(cfg.train.epochs)
  if steps <= 0 and epochs <= 0:
    problems.append(
      f"config.train.steps={steps} with config.train.epochs={epochs}: set "
      f"--config.train.steps to a positive count or --config.train.epochs > 0"
    )
  for key in ("freeze_towers", "frozen"):
    unknown = [g for g in tuple(cfg.optim[key]) if g not in PARAM_GROUPS]
    if unknown:
      problems.append(f"config.optim.{key} names unknown parameter groups {unknown}; groups: {', '.join(PARAM_GROUPS)}")
  for key, value in cfg.loss.weights.items():
    if not float(value) >= 0:
      problems.append(f"config.loss.weights.{key}={value!r} must be >= 0")
  active = [
    k
    for k, v in cfg.loss.weights.items()
    if float(v) > 0 and (cfg.model.location.enabled or not k.endswith("_location"))
  ]
  if not active:
    problems.append(
      "config.loss.weights: every active loss term has weight 0; give at least one "
      "of s2_text, s1_text (or, with a location encoder, s2_location, s1_location) a "
      "positive weight"
    )
  for key in ("data", "fsdp", "tensor"):
    size = cfg.mesh[key]
    if not isinstance(size, int) or (size < 1 and size != -1):
      problems.append(f"config.mesh.{key}={size!r} must be a positive device count or -1 (the rest)")
  if str(cfg.profile.steps):
    from closp_jax.train import profile  # pylint: disable=import-outside-toplevel

    try:
      profile.parse_steps(str(cfg.profile.steps))
    except ValueError as e:
      problems.append(f"config.profile.steps={cfg.profile.steps!r}: {e}")
  if problems:
    raise ConfigValueError(
      "invalid config:\n  "
      + "\n  ".join(problems)
      + "\nFix the value(s) with --config.KEY=VALUE (docs/configs.md lists every key and its range)."
    )


def exit_on_bad_config_args(argv: list[str]) -> None:
  """For binaries, before absl parses flags: resolves `--config NAME[:variant]` to the recipe's file
  (absl's config flag reads files) in argv, and exits with 'error: ...' naming the valid keys when
  a --config.key override is mistyped (before any work starts)."""
  import sys  # pylint: disable=import-outside-toplevel

  from closp_jax.errors import report  # pylint: disable=import-outside-toplevel

  for i, a in enumerate(argv):
    try:
      if a.startswith("--config="):
        argv[i] = "--config=" + resolve_config_spec(a.split("=", 1)[1])
        spec = argv[i].split("=", 1)[1]
      elif a == "--config" and i + 1 < len(argv):
        argv[i + 1] = resolve_config_spec(argv[i + 1])
        spec = argv[i + 1]
      else:
        continue
      check_override_keys(load_config(spec), argv)
    except UserError as e:
      sys.exit(report(e))

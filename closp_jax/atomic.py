"""Write, then rename: a file appears whole or not at all.

Every file closp-jax writes for users to keep (metrics, run files, reports, configs, index
manifests, archive metadata) goes through `write_with`: the content is written to a hidden
temporary file beside the target (same folder, so the rename stays on one file system), then
renamed over the target. A failure while writing leaves the previous file untouched and removes
the temporary one. Files get the usual permissions of the process's umask.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_with(path, write: Callable[[Path], Any]) -> Path:
  """Calls write(tmp) for a temporary path beside `path`, then renames tmp to `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def write_text(path, text: str) -> Path:
  """Writes `text` (UTF-8, newlines as given) to `path` atomically."""
  def write(tmp: Path) -> None:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  return write_with(path, write)


def write_json(path, obj: Any, **dumps_kwargs) -> Path:
  """json.dumps(obj, **dumps_kwargs) and a final newline, written to `path` atomically."""
  return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def replace_dir(tmp, out) -> Path:
  """Renames the finished folder `tmp` to `out` (same parent). An existing `out` is first moved
  aside into a hidden folder beside it and removed once the new one is in place."""
  tmp, out = Path(tmp), Path(out)
  if not out.exists():
    os.replace(tmp, out)
    return out
  trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
  os.replace(out, trash / "old")
  os.replace(tmp, out)
  shutil.rmtree(trash, ignore_errors=True)
  return out

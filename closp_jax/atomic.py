"""Write, then rename: a file appears whole or not at all.

Every file closp-jax writes for users to keep (metrics, run files, reports, configs, index
manifests, archive metadata) goes through `write_with`: the content is written to a hidden
temporary file beside the target (same folder, so the rename stays on one file system), then
renamed over the target. The temporary file's data is flushed to disk (fsync) before the rename
and the folder's entry after it, so a machine that loses power right after a write finds the old
file or the new one, never an empty or partial one. A failure while writing leaves the previous
file untouched and removes the temporary one. Files get the usual permissions of the process's umask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_path(path) -> None:
  """Flushes a file's data, or a folder's entries, to disk (a no-op where the OS refuses it)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some file systems do not fsync folders
    pass
  finally:
    os.close(fd)


def fsync_tree(folder) -> None:
  """fsync of every file below `folder`, then of every folder (deepest first)."""
  folder = Path(folder)
  dirs = [folder]
  for p in sorted(folder.rglob("*")):
    if p.is_dir():
      dirs.append(p)
    elif p.is_file():
      fsync_path(p)
  for d in reversed(dirs):
    fsync_path(d)


def write_with(path, write: Callable[[Path], Any]) -> Path:
  """Calls write(tmp) for a temporary path beside `path`, flushes it to disk, renames it to `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    write(tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  fsync_path(path.parent)
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
  fsync_tree(tmp)
  if not out.exists():
    os.replace(tmp, out)
    fsync_path(out.parent)
    return out
  trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
  os.replace(out, trash / "old")
  os.replace(tmp, out)
  fsync_path(out.parent)
  shutil.rmtree(trash, ignore_errors=True)
  return out

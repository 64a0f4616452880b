"""closp_jax.atomic: whole files or none, previous content kept on failure."""

import json
import os

import pytest

from closp_jax import atomic


def test_write_text_and_json_replace_the_file_and_leave_no_temporary(tmp_path):
  path = tmp_path / "sub" / "a.json"
  atomic.write_json(path, {"b": 1, "a": [1.5]}, sort_keys=True)
  assert path.read_text() == '{"a": [1.5], "b": 1}\n'
  atomic.write_text(path, "second\r\n")
  assert path.read_bytes() == b"second\r\n"  # newlines as given
  assert os.listdir(path.parent) == ["a.json"]
  mask = os.umask(0)
  os.umask(mask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
  path = tmp_path / "m.json"
  atomic.write_json(path, {"ok": True})

  def fail(tmp):
    tmp.write_text("half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    atomic.write_with(path, fail)
  assert json.loads(path.read_text()) == {"ok": True}
  assert os.listdir(tmp_path) == ["m.json"]
  with pytest.raises(ValueError):
    atomic.write_json(path, {"x": float("nan")}, allow_nan=False)
  assert json.loads(path.read_text()) == {"ok": True}


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
  out = tmp_path / "export"
  for generation in ("one", "two"):
    tmp = tmp_path / f".tmp-{generation}"
    tmp.mkdir()
    (tmp / "config.json").write_text(generation)
    atomic.replace_dir(tmp, out)
    assert (out / "config.json").read_text() == generation
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_the_data_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
  """fsync of the temporary file happens before os.replace, then of the folder: a crash right after
  the rename cannot leave an empty file under the final name."""
  events = []
  real_fsync, real_replace = os.fsync, os.replace
  names = {}

  def fsync(fd):
    events.append(("fsync", names.get(fd) or os.readlink(f"/proc/self/fd/{fd}")))
    return real_fsync(fd)

  def replace(src, dst):
    events.append(("replace", str(src), str(dst)))
    return real_replace(src, dst)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(os, "replace", replace)
  path = tmp_path / "metrics.json"
  atomic.write_json(path, {"a": 1})
  kinds = [e[0] for e in events]
  assert kinds == ["fsync", "replace", "fsync"]
  assert events[0][1].endswith(".metrics.json.tmp" + str(os.getpid())) and events[1][2] == str(path)
  assert events[2][1] == str(tmp_path)
  events.clear()
  tmp = tmp_path / "tmpdir"
  (tmp / "sub").mkdir(parents=True)
  (tmp / "sub" / "w.bin").write_bytes(b"1")
  atomic.replace_dir(tmp, tmp_path / "out")
  kinds = [e[0] for e in events]
  file_synced = max(i for i, e in enumerate(events) if e[0] == "fsync" and e[1].endswith("w.bin"))
  assert kinds.index("replace") > file_synced and kinds[-1] == "fsync"

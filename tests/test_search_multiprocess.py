"""Indexing across processes: launch/local_multiprocess.sh starts 2 `closp-search index` processes
joined by a loopback coordinator (the trainer's set-up); each embeds its shard, process 0 merges,
and the result equals a one-process index bit for bit (rows, metadata, manifest)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from search_helpers import REPO, export_fresh_model, write_patch_folder

from closp_jax.search_lib.index import build_index, open_index, shard_rows
from closp_jax.search_lib.sources import FolderSource


def test_shard_rows_cover_every_row_once():
  for n in (0, 1, 5, 6, 7, 1001):
    for p in (1, 2, 3, 8):
      ranges = [shard_rows(n, i, p) for i in range(p)]
      assert ranges[0][0] == 0 and ranges[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
      assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


@pytest.mark.slow
def test_two_processes_build_the_same_index_as_one(tmp_path):
  model_dir, model = export_fresh_model(tmp_path)
  folder = write_patch_folder(tmp_path / "patches")
  out = tmp_path / "index2"
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), PYTHON=sys.executable
  )
  proc = subprocess.run(
    [
      "bash",
      str(REPO / "launch" / "local_multiprocess.sh"),
      "--devices_per_process",
      "1",
      "--logdir",
      str(tmp_path / "logs"),
      "--script",
      str(REPO / "closp_jax" / "search.py"),
      "2",
      "--",
      "index",
      "--model",
      str(model_dir),
      "--folder",
      str(folder),
      "--out",
      str(out),
      "--chunk",
      "2",
      "--batch_size",
      "4",
    ],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
  assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
  assert "merged 2 shards" in logs
  two = open_index(out)
  assert sorted(os.listdir(out)) == ["embeddings.npy", "index.json", "metadata.parquet"]  # shards removed
  one_dir = tmp_path / "index1"
  build_index(model_dir, one_dir, FolderSource(folder), chunk=4, batch_size=4, progress=False, model=model)
  one = open_index(one_dir)
  np.testing.assert_array_equal(np.asarray(two.embeddings), np.asarray(one.embeddings))
  for c, v in one.meta.items():
    assert list(map(str, two.meta[c])) == list(map(str, v)), c
  strip = lambda m: {k: v for k, v in m.items() if k != "model"}  # noqa: E731
  assert strip(two.manifest) == strip(one.manifest)
  assert two.manifest["model"]["fingerprint"] == one.manifest["model"]["fingerprint"]
  # The merged index is complete: the one-process command finds nothing to do.
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "closp_jax.search",
      "index",
      "--model",
      str(model_dir),
      "--folder",
      str(folder),
      "--out",
      str(out),
    ],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert run.returncode == 0 and "nothing to do" in run.stderr, run.stderr[-2000:]
  assert json.loads((out / "index.json").read_text())["complete"] is True

"""Shared fixtures: one prepared tiny dataset per test session."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data dir holding crisis_landmark/tiny (300 S2 + 300 S1 synthetic samples), built once."""
  data_dir = tmp_path_factory.mktemp("tfds")
  env = dict(os.environ, CLOSP_DATA_DIR=str(data_dir))
  code = "from closp_jax.data import pipeline; pipeline.get_builder('crisis_landmark/tiny')"
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, capture_output=True)
  return str(data_dir)


def run_trainer(workdir, data_dir, *overrides, config="configs/geoclosp.py", timeout=600, check=True):
  """Runs the training binary in a subprocess; returns the CompletedProcess."""
  env = dict(os.environ, CLOSP_DATA_DIR=str(data_dir))
  cmd = [sys.executable, "-m", "closp_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc

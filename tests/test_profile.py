"""config.profile.steps: a jax.profiler trace of the chosen steps; the compiled step's analysis."""

import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest
from conftest import run_trainer
from test_train import TINY

from closp_jax import config as config_lib
from closp_jax.train import profile


def test_parse_steps():
  assert profile.parse_steps("") is None
  assert profile.parse_steps("10:15") == (10, 15)
  assert profile.parse_steps(" 0:1 ") == (0, 1)
  for bad in ("10", "15:10", "3:3", "-1:4", "a:b", "1:2:3"):
    with pytest.raises(ValueError, match="A:B"):
      profile.parse_steps(bad)


def test_bad_profile_steps_is_a_config_error():
  cfg = config_lib.load_config("closp")
  with cfg.unlocked():
    cfg.profile.steps = "15:10"
  with pytest.raises(config_lib.ConfigValueError, match=r"config\.profile\.steps='15:10'"):
    config_lib.validate(cfg)


def test_compiled_analysis_counts_a_matmul():
  n, m, k = 64, 48, 32
  f = jax.jit(lambda a, b: a @ b)
  a = jnp.ones((n, k), jnp.float32)
  b = jnp.ones((k, m), jnp.float32)
  out = profile.compiled_analysis(f, a, b)
  assert out["flops"] == pytest.approx(2 * n * m * k, rel=0.01)  # multiply-add = 2 FLOPs
  assert out["argument_bytes"] == (n * k + k * m) * 4
  assert out["output_bytes"] == n * m * 4
  assert "GFLOP" in profile.describe("x", out)


@pytest.mark.slow
def test_training_writes_trace_and_analysis(tmp_path, tiny_data_dir):
  workdir = tmp_path / "run"
  proc = run_trainer(
    workdir, tiny_data_dir, *TINY, "--config.train.steps=4", "--config.profile.steps=1:3", config="configs/closp.py"
  )
  log = proc.stdout + proc.stderr
  assert "profiling steps 1 to 2" in log
  assert "compiled step (trains " in log and "GFLOP" in log  # the sample keeps the text tower frozen
  analyses = json.loads((workdir / "profile" / "compiled_steps.json").read_text())
  (only,) = analyses.values()  # the tiny recipe has one phase
  assert only["flops"] > 1e9 and only["temp_bytes"] > 0
  runs = list((workdir / "profile" / "plugins" / "profile").iterdir())
  assert len(runs) == 1
  files = os.listdir(runs[0])
  assert any(f.endswith(".xplane.pb") for f in files)
  (trace_file,) = [f for f in files if f.endswith(".trace.json.gz")]
  with gzip.open(runs[0] / trace_file) as f:
    events = json.load(f)["traceEvents"]
  steps = sorted(
    {int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "step_num" in e.get("args", {})}
  )
  assert steps == [1, 2]  # exactly the window, as annotated steps

"""The experiments suite: a half-finished suite resumes, finished runs are reused, the files say what
the report says."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from closp_jax.experiments import suite as suite_lib

SMALL = [
  "--data",
  "crisis_landmark/tiny",
  "--seeds",
  "1",
  "--steps",
  "2",
  "--runs",
  "closp,untrained",
  "--set",
  "data.batch_size=16",
  "--set",
  "data.eval_batch_size=64",
]


def _suite(out, tiny_data_dir, *extra):
  env = dict(os.environ, CLOSP_DATA_DIR=tiny_data_dir)
  return subprocess.run(
    [sys.executable, "-m", "closp_jax.experiments", "paper", "--out", str(out), *SMALL, *extra],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )


@pytest.mark.slow
def test_a_half_finished_suite_resumes_and_reuses_what_is_done(tmp_path, tiny_data_dir):
  out = tmp_path / "suite"
  # 1. stopped after the first training step of the first run (as a preemption would stop it)
  first = _suite(out, tiny_data_dir, "--set", "train.stop_after=1")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "the suite stopped in closp seed 0" in first.stderr and not (out / "results.json").exists()
  assert (out / "runs" / "closp" / "seed0" / "workdir" / "checkpoints" / "1").is_dir()
  # 2. the same command without the stop: training resumes from step 1, both runs finish
  second = _suite(out, tiny_data_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr and "(step 1)" in second.stderr
  metrics = out / "runs" / "closp" / "seed0" / "eval" / "metrics.json"
  stamp = metrics.stat().st_mtime_ns
  results = json.loads((out / "results.json").read_text())
  assert {f["name"] for f in results["findings"]} == {"trained_vs_untrained_on_all", "fused_vs_raw_on_all"}
  # 3. again: nothing is trained or evaluated, everything is reused, the results are the same
  third = _suite(out, tiny_data_dir)
  assert third.returncode == 0 and third.stderr.count("finished earlier, reused") == 2
  assert metrics.stat().st_mtime_ns == stamp
  assert json.loads((out / "results.json").read_text())["findings"] == results["findings"]
  # every figure of the report can be recomputed from the TREC files of the run folders
  for f in results["findings"]:
    a_run, _, fusion = f["a"].partition("+")
    folder = out / "runs" / a_run / "seed0" / ("eval" if not fusion else f"eval_{fusion}")
    values, types = suite_lib.per_query_metric(folder, "text->all")
    assert len(values) == f["queries"] and set(types) >= set(values)
    assert np.mean(list(values.values())) == pytest.approx(f["mean_a"], abs=1e-9)
  for name in ("metrics.json", "run.all.trec", "qrels.trec", "queries.jsonl"):
    assert (out / "runs" / "untrained" / "seed0" / "eval" / name).is_file()


def test_the_suite_names_bad_runs_and_variants(tmp_path):
  with pytest.raises(suite_lib.SuiteError, match="unknown runs \\['closp2'\\]"):
    suite_lib.Suite(tmp_path, runs=("closp2",))
  with pytest.raises(suite_lib.SuiteError, match="--variant 'big'"):
    suite_lib.run_specs("big")
  with pytest.raises(suite_lib.SuiteError, match="--seeds 0"):
    suite_lib.Suite(tmp_path, seeds=0)
  from closp_jax.config import ConfigKeyError  # pylint: disable=import-outside-toplevel

  spec = suite_lib.run_specs("sample")[0]
  with pytest.raises(ConfigKeyError, match="'data.batchsize': no 'batchsize'; valid keys there: .*batch_size"):
    suite_lib.run_config(spec, 0, data="d", data_dir=None, manual_dir=None, steps=1, overrides=(("data.batchsize", 1),))


def test_every_run_shares_the_bridge_and_the_single_sensor_runs_drop_one_loss():
  """Fair comparisons: every sample run trains the same shared text projection; s2_only / s1_only
  differ from closp only in the other sensor's loss weight; the configs load and validate."""
  from closp_jax.config import validate  # pylint: disable=import-outside-toplevel

  configs = {
    s.name: suite_lib.run_config(s, 0, data="crisis_landmark/sample", data_dir=None, manual_dir=None, steps=3)
    for s in suite_lib.run_specs("sample")
  }
  for name, cfg in configs.items():
    validate(cfg)
    assert cfg.model.text.text_projection and cfg.train.steps == 3 and not cfg.eval.final, name
  assert configs["s2_only"].loss.weights.s1_text == 0 and configs["s2_only"].loss.weights.s2_text == 1
  assert configs["s1_only"].loss.weights.s2_text == 0 and configs["s1_only"].loss.weights.s1_text == 1
  assert configs["geoclosp"].model.location.enabled and not configs["closp"].model.location.enabled
  assert configs["rgb"].data.rgb and configs["rgb"].model.s2_in_chans == 3

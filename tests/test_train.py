"""The training binary: runs, resumes bit-for-bit, rejects bad config keys."""
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, run_trainer

TINY = ["--config.data.name=crisis_landmark/tiny", "--config.data.batch_size=16",
        "--config.data.eval_batch_size=64", "--config.eval.every_steps=0", "--config.eval.final=False",
        "--config.checkpoint.every_steps=100", "--config.checkpoint.async_save=False",
        "--config.train.record_data_order=True", "--config.train.log_every_steps=1"]


def _params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return restored["params"]


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + k + "/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


@pytest.mark.slow
def test_resume_gives_the_same_parameters_and_data_order(tmp_path, tiny_data_dir):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run_trainer(straight, tiny_data_dir, *TINY, "--config.train.steps=10")
  first = run_trainer(resumed, tiny_data_dir, *TINY, "--config.train.steps=10", "--config.train.stop_after=5")
  assert "Run the same command again to resume" in first.stdout
  second = run_trainer(resumed, tiny_data_dir, *TINY, "--config.train.steps=10")
  assert "resumed from" in second.stdout

  order_a = (straight / "data_order.txt").read_text().split()
  order_b = (resumed / "data_order.txt").read_text().split()
  assert len(order_a) == 20 and order_a == order_b

  a, b = _flat(_params(straight, 10)), _flat(_params(resumed, 10))
  assert a.keys() == b.keys()
  init = _flat(_params(resumed, 5))
  moved = 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    moved += not np.allclose(a[k], init[k])
  assert moved > 0  # training between step 5 and 10 changed parameters


def test_unknown_config_key_is_named_with_the_valid_keys():
  proc = subprocess.run(
      [sys.executable, "-m", "closp_jax.main", "--config=configs/closp.py", "--config.train.stepz=3"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "train.stepz" in proc.stderr and "steps" in proc.stderr


def test_every_variant_has_the_documented_keys():
  from closp_jax.config import VARIANTS, get_config
  for geo in (False, True):
    for variant in VARIANTS:
      c = get_config(variant, geo)
      for key in ("train.steps", "data.batch_size", "data.name", "checkpoint.every_steps",
                  "eval.every_steps", "seed"):
        node = c
        for part in key.split("."):
          node = node[part]
      assert c.model.location.enabled == geo
  with pytest.raises(ValueError, match="unknown config variant"):
    get_config("papr", False)

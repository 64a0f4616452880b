"""The training binary: runs, resumes bit-for-bit, rejects bad config keys."""

import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, run_trainer

TINY = [
  "--config.data.name=crisis_landmark/tiny",
  "--config.data.batch_size=16",
  "--config.data.eval_batch_size=64",
  "--config.eval.every_steps=0",
  "--config.eval.final=False",
  "--config.checkpoint.every_steps=100",
  "--config.checkpoint.async_save=False",
  "--config.train.record_data_order=True",
  "--config.train.log_every_steps=1",
]


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
  assert "Run the same command again to resume" in first.stderr
  second = run_trainer(resumed, tiny_data_dir, *TINY, "--config.train.steps=10")
  assert "resumed from" in second.stderr

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
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "train.stepz" in proc.stderr and "steps" in proc.stderr


def test_every_variant_of_every_recipe_loads_and_validates():
  from closp_jax.config import ConfigValueError, load_config, validate
  from closp_jax.configs.common import VARIANTS

  for recipe in ("closp", "geoclosp"):
    for variant in VARIANTS:
      c = load_config(f"{recipe}:{variant}")
      validate(c)
      assert c.name == f"{recipe}:{variant}"
      assert c.model.location.enabled == (recipe == "geoclosp")
      assert c.is_locked
  with pytest.raises(ConfigValueError, match="unknown config variant 'papr'"):
    load_config("closp:papr")


def _scalars(folder, tag: str) -> dict[int, float]:
  """{step: value} of a scalar tag in a TensorBoard run folder, read from its event files (TFRecord
  framing: length, crc, an Event protobuf, crc)."""
  import struct  # pylint: disable=import-outside-toplevel

  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  out = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.tag == tag:
          out[int(event.step)] = float(value.simple_value)
  return out


@pytest.mark.slow
def test_validation_best_checkpoint_final_table_log_and_tensorboard(tmp_path, tiny_data_dir):
  """A run that validates every 2 steps and ends with the retrieval table: the validation losses are
  reported, best.json names the step with the lowest one (and that checkpoint is kept while
  checkpoint.keep=1 drops the others), the table on stdout is the one saved in eval/final_6.json next
  to eval/untrained.json, train.log holds the run's messages, and TensorBoard has the train and
  validation losses under the same tag."""
  import json  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / "w"
  proc = run_trainer(
    workdir,
    tiny_data_dir,
    "--config.data.name=crisis_landmark/tiny",
    "--config.data.batch_size=16",
    "--config.data.eval_batch_size=64",
    "--config.train.steps=6",
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=2",
    "--config.checkpoint.keep=1",
    "--config.eval.final=True",
    "--config.checkpoint.async_save=False",
    "--config.optim.lr=3e-3",
  )
  val = {int(s): float(v) for s, v in re.findall(r"validation at step (\d+): loss ([0-9.]+)", proc.stderr)}
  assert sorted(val) == [2, 4, 6], proc.stderr[-3000:]
  best = json.loads((workdir / "checkpoints" / "best.json").read_text())
  assert best["step"] == min(val, key=val.get) and best["val_loss"] == pytest.approx(val[best["step"]], abs=1e-4)
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({6, best["step"]})
  final = json.loads((workdir / "eval" / "final_6.json").read_text())
  untrained = json.loads((workdir / "eval" / "untrained.json").read_text())
  assert set(final) == set(untrained) == {"text->all", "text->s2", "text->s1"}
  assert "Retrieval on the test corpus" in proc.stdout
  for ranking in final:
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f"{ranking} ") and " nDCG@1000 " in line)
    trained, before, change = map(float, row.split()[-3:])
    assert trained == pytest.approx(final[ranking]["nDCG@1000"], abs=1e-4)
    assert before == pytest.approx(untrained[ranking]["nDCG@1000"], abs=1e-4)
    assert change == pytest.approx(trained - before, abs=2e-4)
  log = (workdir / "train.log").read_text()
  assert "validation at step 4" in log and "step 6/6" in log and "Retrieval on the test corpus" in log
  runs = {run: _scalars(workdir / "tensorboard" / run, "loss") for run in ("train", "validation")}
  assert sorted(runs["train"]) == [1, 2, 3, 4, 5, 6] and sorted(runs["validation"]) == [2, 4, 6]
  assert all(runs["validation"][s] == pytest.approx(val[s], abs=1e-4) for s in val)


KNOB_RUNS = {
  # every knob that changes what a step computes, run through the trainer (3-4 steps on tiny)
  "sigmoid_bucket_adam_multipliers_flips": [
    "--config.loss.kind=sigmoid",
    "--config.model.temperature.sigmoid_bias=-10.0",
    "--config.data.bucket=True",
    "--config.optim.name=adam",
    "--config.optim.multipliers.s2_projection=0.5",
    "--config.data.augment=flips",
  ],
  "cross_sensor_accumulation_location_to_image": [
    "--config.loss.cross_sensor_negatives=True",
    "--config.optim.grad_accum_steps=2",
    "--config.loss.location_directions=location_to_image",
  ],
  "alternate_one_cycle_late_unfreeze": [
    "--config.train.sensor_updates=alternate",
    "--config.optim.schedule=one_cycle",
    "--config.optim.cycle_momentum=True",
    "--config.optim.decay=all",
    "--config.optim.freeze_towers=s2_encoder",
    "--config.optim.freeze_steps=2",
  ],
  "grain_workers_no_augmentation": ["--config.data.worker_count=1", "--config.data.augment=none"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KNOB_RUNS))
def test_config_knobs_run_through_the_trainer(tmp_path, tiny_data_dir, name):
  import re  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / name
  proc = run_trainer(
    workdir,
    tiny_data_dir,
    *TINY,
    "--config.train.steps=4",
    "--config.checkpoint.every_steps=2",
    "--config.checkpoint.keep=3",
    *KNOB_RUNS[name],
  )
  losses = [float(v) for v in re.findall(r"step \d+/4 \(\d+%\) loss=([-0-9.e]+)", proc.stderr)]
  assert len(losses) == 4 and all(np.isfinite(losses)), proc.stderr[-3000:]
  terms = set(re.findall(r" (\w+_(?:text|location))=", proc.stderr))
  if "cross_sensor" in name:
    assert "all_text" in terms and "s2_location" in terms
  else:
    assert {"s2_text", "s1_text"} <= terms
  if "late_unfreeze" in name:
    at = {s: _flat(_params(workdir, s)) for s in (2, 4)}
    s2 = [k for k in at[2] if k.startswith("s2_encoder/")]
    assert s2 and any(not np.array_equal(at[2][k], at[4][k]) for k in s2)  # trains from update 2 on
    # before update 2 the S2 tower is frozen: its parameters at step 2 are the initial ones
    import jax  # pylint: disable=import-outside-toplevel

    from closp_jax.checkpoint import load_run_config, restore_variables  # pylint: disable=import-outside-toplevel

    _, init, _ = restore_variables(workdir, load_run_config(workdir), "untrained")
    init_flat = _flat({"s2_encoder": jax.device_get(init["params"]["s2_encoder"])})
    assert sorted(init_flat) == sorted(s2)
    for k in s2:
      np.testing.assert_array_equal(at[2][k], init_flat[k], err_msg=k)

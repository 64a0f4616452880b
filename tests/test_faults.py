"""Faults: preemption and kills (also during a checkpoint write), non-finite values, bad config and
topology, bad data, untrusted files. Each test provokes the fault and checks what the user reads.

The runs of the training binary that train (kill/resume, non-finite) are marked slow; the error
paths that stop before compilation run in the default suite.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5_archive
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_trainer

# The tiny dataset, a random text tower and short texts: the smallest model that trains every tower.
TINY = [
  "--config.data.name=crisis_landmark/tiny",
  "--config.data.batch_size=16",
  "--config.data.eval_batch_size=64",
  "--config.eval.every_steps=0",
  "--config.eval.final=False",
  "--config.init.text=",
  "--config.data.max_len=16",
  "--config.train.log_every_steps=1",
  "--config.train.record_data_order=True",
]

# Runs closp_jax.main with orbax's final rename of every checkpoint paused: the test kills the
# process while a checkpoint is half-way (its files written under a temporary name, not renamed).
PAUSED_SAVE_DRIVER = r"""
import asyncio, os, runpy, sys
from orbax.checkpoint._src.path import atomicity
marker = os.environ["CLOSP_TEST_PAUSE_MARKER"]
def pause(cls):
  original = cls.finalize
  async def finalize(self, *args, **kwargs):
    with open(marker + ".tmp", "w") as f:
      f.write(str(self.get()))
    os.replace(marker + ".tmp", marker)
    await asyncio.sleep(3600)
    return await original(self, *args, **kwargs)
  cls.finalize = finalize
pause(atomicity.AtomicRenameTemporaryPath)
pause(atomicity.CommitFileTemporaryPath)
sys.argv = ["closp_jax.main"] + sys.argv[1:]
runpy.run_module("closp_jax.main", run_name="__main__", alter_sys=True)
"""


# --------------------------------------------------------------------------- helpers


class Trainer:
  """The training binary in a subprocess, its output read line by line (with timeouts)."""

  def __init__(self, workdir, data_dir, *overrides, driver: str | None = None, env: dict | None = None):
    env = dict(os.environ, CLOSP_DATA_DIR=str(data_dir), **(env or {}))
    head = ["-c", driver] if driver else ["-m", "closp_jax.main"]
    cmd = [sys.executable, *head, "--config=configs/geoclosp.py", f"--workdir={workdir}", *TINY, *overrides]
    self.proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, pattern: str, timeout: float = 600) -> str:
    """Blocks until a line matches `pattern`; fails (with the output) if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      try:
        line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
      except queue.Empty:
        break
      if line is None:
        raise AssertionError(f"trainer exited before printing {pattern!r}:\n{self.output}")
      self.lines.append(line)
      if re.search(pattern, line):
        return line
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.output}")

  def signal(self, sig) -> None:
    self.proc.send_signal(sig)

  def finish(self, timeout: float = 600) -> int:
    rc = self.proc.wait(timeout=timeout)
    while True:
      line = self._queue.get(timeout=30)
      if line is None:
        break
      self.lines.append(line)
    return rc

  @property
  def output(self) -> str:
    return "".join(self.lines)

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(timeout=60)


@contextlib.contextmanager
def trainer(*args, **kwargs):
  t = Trainer(*args, **kwargs)
  try:
    yield t
  finally:
    t.kill()


def steps_in(workdir) -> list[int]:
  from closp_jax.checkpoint import list_steps  # pylint: disable=import-outside-toplevel

  return list_steps(Path(workdir) / "checkpoints")


def saved_state(workdir, step) -> dict[str, np.ndarray]:
  """Every array of the saved train state (params, BatchNorm statistics, optimizer state, rng), flat."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {
    jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
  }


def data_order(workdir) -> dict[int, str]:
  """step -> digest of its batches; a step run again after a resume keeps its last digest."""
  order = {}
  for line in (Path(workdir) / "data_order.txt").read_text().splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 16:  # a kill may cut the last line
      order[int(parts[0])] = parts[1]
  return order


def run_binary(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "closp_jax.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, **(env or {})),
  )


def assert_user_error(proc, *needles):
  """Exit status 1, `error: ...` on stderr naming every needle, no traceback, nothing trained."""
  assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  assert "error: " in proc.stderr, proc.stderr[-4000:]
  for needle in needles:
    assert needle in proc.stderr, (needle, proc.stderr[-4000:])
  assert "step 1/" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- preemption and kills


@pytest.mark.slow
def test_sigterm_and_sigkill_at_any_point_resume_bit_for_bit(tmp_path, tiny_data_dir):
  """12 steps straight == the same 12 steps stopped by SIGTERM, SIGKILL during an asynchronous
  checkpoint write and SIGKILL mid-training, each resumed: identical train state and data order."""
  steps = ["--config.train.steps=12", "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=True"]
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run_trainer(straight, tiny_data_dir, *TINY, *steps)

  # 1. SIGTERM mid-training: the current step finishes, is saved, the run exits 75 (EX_TEMPFAIL, so a
  # scheduler requeues it) saying how to resume.
  with trainer(resumed, tiny_data_dir, *steps) as t:
    t.wait_for(r"^step 2/12")
    t.signal(signal.SIGTERM)
    assert t.finish() == 75, t.output
  assert re.search(
    r"stopped \(SIGTERM\) after step (\d+); checkpoint saved in .*Run the same command again "
    r"to resume",
    t.output,
  ), t.output
  stopped_at = int(re.search(r"after step (\d+)", t.output).group(1))
  assert steps_in(resumed)[-1] == stopped_at and 2 <= stopped_at < 12
  start = saved_state(resumed, stopped_at)  # (checkpoint.keep removes it later)

  # 2. SIGKILL while the next checkpoint is being written (orbax's final rename held back).
  marker = tmp_path / "writing"
  with trainer(
    resumed, tiny_data_dir, *steps, driver=PAUSED_SAVE_DRIVER, env={"CLOSP_TEST_PAUSE_MARKER": str(marker)}
  ) as t:
    t.wait_for(rf"resumed from .*/checkpoints/{stopped_at} \(step {stopped_at}\)")
    deadline = time.monotonic() + 600
    while not marker.exists() and time.monotonic() < deadline and t.proc.poll() is None:
      time.sleep(0.05)
    assert marker.exists(), t.output
    t.proc.send_signal(signal.SIGKILL)
    t.finish()
  half_written = [p.name for p in (resumed / "checkpoints").iterdir() if "tmp" in p.name]
  assert half_written, "the kill should have left a half-written checkpoint behind"
  assert steps_in(resumed)[-1] == stopped_at  # the half-written one is not a step

  # 3. SIGKILL at an arbitrary step: resumes from the newest complete checkpoint and says which.
  with trainer(resumed, tiny_data_dir, *steps) as t:
    t.wait_for(rf"resumed from .*/checkpoints/{stopped_at} \(step {stopped_at}\)")
    t.wait_for(r"^step 9/12")
    t.proc.send_signal(signal.SIGKILL)  # maybe while step 6 or 9 is written in the background
    t.finish()
  newest = steps_in(resumed)[-1]
  assert stopped_at <= newest < 12

  # 4. Run to the end.
  final = run_trainer(resumed, tiny_data_dir, *TINY, *steps)
  assert f"resumed from {resumed}/checkpoints/{newest} (step {newest})" in final.stderr

  a, b = saved_state(straight, 12), saved_state(resumed, 12)
  assert a.keys() == b.keys() and any("params" in k for k in a)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{k} differs after resuming"
  assert any(not np.array_equal(start[k], a[k]) for k in a if "params" in k)  # training moved them
  assert data_order(straight) == data_order(resumed) and len(data_order(straight)) == 12


def test_stop_signal_before_training_exits_cleanly(tmp_path, tiny_data_dir):
  """Before the first step there is nothing to save: exit 75 (stopped, not finished) at once, with how
  to resume."""
  with trainer(tmp_path / "w", tiny_data_dir, "--config.train.steps=5") as t:
    t.wait_for(r"^closp-jax geoclosp")  # printed before the dataset is opened and the model built
    t.signal(signal.SIGTERM)
    assert t.finish(timeout=120) == 75, t.output
  assert "stopped (SIGTERM) during setup: no checkpoint yet" in t.output, t.output
  assert "Run the same command again to resume" in t.output
  assert "Traceback" not in t.output and steps_in(tmp_path / "w") == []


AGREE_SCRIPT = r"""
import sys, jax
port, i = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i)
from closp_jax.train.preemption import StopRequest
stop = StopRequest()
before = stop.agree()
if i == 1:
  stop.signal = "SIGTERM"  # as the handler records it: only process 1 was signalled
print("AGREED", i, before, "|", stop.agree(), flush=True)
"""


def test_processes_agree_on_a_signal_only_one_of_them_received():
  """Multi-host: a signal to one process makes every process stop after the same step."""
  import socket  # pylint: disable=import-outside-toplevel

  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", AGREE_SCRIPT, str(port), str(i)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert "AGREED 0 None | a stop signal to process 1" in outs[0], outs[0][-2000:]
  assert "AGREED 1 None | SIGTERM" in outs[1], outs[1][-2000:]


# --------------------------------------------------------------------------- checkpoints (in process)


def _small_state(value: float):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return {"w": jnp.full((64, 64), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _saved(directory, steps, async_save=False):
  from closp_jax.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel

  ckpt = Checkpointer(directory, keep=10, async_save=async_save)
  for s in steps:
    ckpt.save(s, _small_state(s))
  ckpt.close()


def test_checkpoint_killed_while_written_is_never_restored(tmp_path):
  """SIGKILL during an asynchronous write leaves a temporary folder; restore takes the newest complete step."""
  directory = tmp_path / "checkpoints"
  marker = tmp_path / "writing"
  script = PAUSED_SAVE_DRIVER.split("sys.argv = ")[0] + (
    "import sys\nsys.path.insert(0, sys.argv[1])\n"
    "import jax.numpy as jnp\nfrom closp_jax.checkpoint import Checkpointer\n"
    "ckpt = Checkpointer(sys.argv[2], keep=10, async_save=True)\n"
    "for s in (1, 2):\n"
    "  ckpt.save(s, {'w': jnp.full((64, 64), float(s)), 'step': jnp.asarray(s, jnp.int32)})\n"
    "  if s == 1:\n"
    "    ckpt.wait()\n"
    "    os.environ['CLOSP_TEST_PAUSE_MARKER'] = marker\n"
    "ckpt.wait()\n"
  )
  script = script.replace(
    'marker = os.environ["CLOSP_TEST_PAUSE_MARKER"]',
    'marker = os.environ["CLOSP_TEST_PAUSE_MARKER"]\nos.environ["CLOSP_TEST_PAUSE_MARKER"] = ""',
  )
  script = script.replace(
    "  async def finalize(self, *args, **kwargs):\n",
    "  async def finalize(self, *args, **kwargs):\n"
    "    if not os.environ['CLOSP_TEST_PAUSE_MARKER']:\n"
    "      return await original(self, *args, **kwargs)\n",
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", script, REPO, str(directory)],
    cwd=REPO,
    env=dict(os.environ, CLOSP_TEST_PAUSE_MARKER=str(marker)),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    assert marker.exists(), proc.communicate()[0][-3000:]
    proc.kill()
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == ["1", "2.orbax-checkpoint-tmp"]

  from closp_jax.checkpoint import Checkpointer, abstract_like  # pylint: disable=import-outside-toplevel

  ckpt = Checkpointer(directory, keep=10, async_save=False)
  messages = []
  state, step = ckpt.restore_latest(abstract_like(_small_state(0)), say=messages.append)
  assert step == 1 and float(state["w"][0, 0]) == 1.0 and messages == []
  assert not (directory / "2.orbax-checkpoint-tmp").exists()  # removed when the directory was opened
  ckpt.save(2, _small_state(2))  # the step that was lost can be written again
  ckpt.close()


def test_corrupt_or_half_deleted_checkpoints_are_set_aside(tmp_path):
  """Truncated files (a crashed machine) or a half-deleted old step: named, moved aside, the next older restored."""
  directory = tmp_path / "checkpoints"
  _saved(directory, (1, 2, 3))
  for f in (directory / "3" / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      os.truncate(f, f.stat().st_size // 2)
  for f in (directory / "2" / "state").rglob("manifest.ocdbt"):
    f.unlink()

  from closp_jax.checkpoint import Checkpointer, CheckpointError, abstract_like  # pylint: disable=import-outside-toplevel

  ckpt = Checkpointer(directory, keep=10, async_save=False)
  messages = []
  state, step = ckpt.restore_latest(abstract_like(_small_state(0)), say=messages.append)
  assert step == 1 and float(state["w"][0, 0]) == 1.0
  assert len(messages) == 2
  assert f"checkpoint {directory / '3'} is incomplete or corrupt" in messages[0]
  assert f"checkpoint {directory / '2'} is incomplete or corrupt" in messages[1]
  assert "moved it to" in messages[0] and "trying the next older checkpoint" in messages[0]
  assert ckpt.all_steps() == [1]
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints_unreadable").iterdir()) == ["2", "3"]
  ckpt.save(2, _small_state(2))  # numbering continues where the good state left off
  ckpt.close()

  for f in (directory / "1" / "state").rglob("manifest.ocdbt"):
    f.unlink()
  for f in (directory / "2" / "state").rglob("manifest.ocdbt"):
    f.unlink()
  ckpt = Checkpointer(directory, keep=10, async_save=False)
  with pytest.raises(CheckpointError, match=r"none of the checkpoints .* could be read back \(steps 2, 1"):
    ckpt.restore_latest(abstract_like(_small_state(0)), say=messages.append)


def test_checkpoint_of_another_model_is_an_error_not_damage(tmp_path):
  """A changed config (other shapes or names) must not be mistaken for corruption and moved aside."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from closp_jax.checkpoint import Checkpointer, CheckpointError, abstract_like  # pylint: disable=import-outside-toplevel

  directory = tmp_path / "checkpoints"
  _saved(directory, (1, 2))
  other = {"w": jnp.zeros((32, 64), jnp.float32), "step": jnp.asarray(0, jnp.int32), "extra": jnp.zeros(3)}
  ckpt = Checkpointer(directory, keep=10, async_save=False)
  with pytest.raises(CheckpointError) as err:
    ckpt.restore_latest(abstract_like(other), say=pytest.fail)
  message = str(err.value)
  assert f"checkpoint {directory / '2'} holds a different train state" in message
  assert "w: saved float32[64, 64], model float32[32, 64]" in message and "extra" in message
  assert "config.json" in message and ckpt.all_steps() == [1, 2]
  assert not (tmp_path / "checkpoints_unreadable").exists()


def _disk_usage_with(free_bytes: int):
  """A stand-in for shutil.disk_usage reporting `free_bytes` free."""
  return lambda path: shutil._ntuple_diskusage(total=1 << 30, used=(1 << 30) - free_bytes, free=free_bytes)  # pylint: disable=protected-access


def test_disk_full_during_a_save_names_the_step_and_keeps_the_last_one(tmp_path, monkeypatch):
  """The write of checkpoint 2 fails with ENOSPC (injected where orbax starts it, as a full disk
  makes it fail): a CheckpointError names the step, the free space and the latest complete
  checkpoint, which still restores; no half-written folder is left as a step."""
  import errno  # pylint: disable=import-outside-toplevel

  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from closp_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.checkpoint import Checkpointer, CheckpointError, abstract_like  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  noisy = lambda: {"w": jnp.asarray(rng.standard_normal((300, 1024), np.float32))}  # noqa: E731
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 2:
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "2"))
    return real_save(self, step, *args, **kwargs)

  ckpt = Checkpointer(tmp_path / "checkpoints", keep=5, async_save=True)
  first = noisy()
  ckpt.save(1, first)
  ckpt.wait()
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage", _disk_usage_with(int(1.5 * 2**20)))
  with pytest.raises(CheckpointError) as err:
    ckpt.save(2, noisy())
    ckpt.wait()
  message = str(err.value)
  assert "checkpoint 2" in message and "No space left on device" in message and "1.5 MiB free" in message, message
  assert "the latest complete checkpoint is still step 1" in message, message
  assert "Free space" in message and "run the same command again to resume" in message
  with pytest.raises(CheckpointError, match=r"less than one checkpoint of this model"):
    ckpt.check_space(10 << 20)
  monkeypatch.undo()
  reopened = Checkpointer(tmp_path / "checkpoints", keep=5, async_save=False)
  state, step = reopened.restore_latest(abstract_like(first), say=lambda s: None)
  assert step == 1 and np.array_equal(np.asarray(state["w"]), np.asarray(first["w"]))
  assert [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name] == []


# --------------------------------------------------------------------------- non-finite values


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss_stops_or_skips_naming_step_and_terms(tmp_path, tiny_data_dir, policy):
  """lr=1e30 blows the parameters up after step 1: step 2's loss is NaN."""
  workdir = tmp_path / "w"
  proc = run_trainer(
    workdir,
    tiny_data_dir,
    *TINY,
    "--config.train.steps=4",
    "--config.optim.lr=1e30",
    "--config.optim.schedule=constant",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=10",
    "--config.checkpoint.async_save=False",
    f"--config.train.nonfinite={policy}",
    check=False,
  )
  if policy == "stop":
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    m = re.search(r"error: non-finite values at step (\d+): ([^(]+) \(", proc.stderr)
    assert m, proc.stderr[-3000:]
    bad_step, terms = int(m.group(1)), m.group(2)
    assert re.search(r"\bloss(/\w+)?\b", terms), terms
    assert f"The latest checkpoint, step {bad_step - 1}, holds the last good state" in proc.stderr
    assert "--config.train.nonfinite=skip" in proc.stderr
    assert steps_in(workdir)[-1] == bad_step - 1
    state = saved_state(workdir, bad_step - 1)
    assert all(np.isfinite(v).all() for k, v in state.items() if v.dtype.kind == "f")
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = re.findall(r"non-finite values at step (\d+): .*; step skipped \(parameters unchanged\)", proc.stderr)
    assert skipped, proc.stderr[-3000:]
    first_bad = int(skipped[0])
    before, after = saved_state(workdir, first_bad - 1), saved_state(workdir, 4)
    for k in before:
      if "params" in k:
        assert np.array_equal(before[k], after[k]), k


# --------------------------------------------------------------------------- config and topology


def test_config_values_wrong_types_and_unknown_keys_are_named():
  proc = run_binary(
    "--config=configs/geoclosp.py",
    "--config.train.nonfinite=ignore",
    "--config.checkpoint.every_steps=0",
    "--config.optim.lr=-1.0",
    "--workdir=/tmp/unused",
  )
  assert_user_error(
    proc,
    "config.train.nonfinite='ignore' is not one of 'stop', 'skip'",
    "config.checkpoint.every_steps=0 must be >= 1",
    "config.optim.lr=-1.0",
    "--config.KEY=VALUE",
  )
  proc = run_binary("--config=configs/geoclosp.py", "--config.train.steps=ten")
  assert proc.returncode != 0 and "--config.train.steps=ten" in proc.stderr and "int" in proc.stderr
  proc = run_binary("--config=configs/geoclosp.py", "--config.optim.lrate=0.1")
  assert proc.returncode != 0 and "optim.lrate" in proc.stderr and "lr" in proc.stderr

  from closp_jax.config import ConfigValueError, load_config, validate  # pylint: disable=import-outside-toplevel

  c = load_config("geoclosp:sample")
  with c.unlocked():
    c.loss.weights.s2_text = c.loss.weights.s1_text = 0.0
    c.loss.weights.s2_location = c.loss.weights.s1_location = 0.0
    c.mesh.fsdp = 0
    c.optim.frozen = ("text_tower",)
  with pytest.raises(ConfigValueError) as err:
    validate(c)
  for needle in ("every active loss term has weight 0", "config.mesh.fsdp=0", "'text_tower'"):
    assert needle in str(err.value)


def test_mesh_that_does_not_match_the_devices(tmp_path, tiny_data_dir):
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path}",
    *TINY,
    "--config.mesh.data=3",
    env={"CLOSP_DATA_DIR": tiny_data_dir},
  )
  assert_user_error(proc, "needs 3 devices but this run has 1", "--config.mesh.data=-1")


def test_batch_not_divisible_by_the_data_axes(tmp_path, tiny_data_dir):
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path}",
    *TINY,
    "--config.data.batch_size=6",
    env={"CLOSP_DATA_DIR": tiny_data_dir, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert_user_error(
    proc,
    "config.data.batch_size=6 must be a positive multiple of the data-parallel size 4",
    "--config.data.batch_size=8",
  )


def test_batch_larger_than_the_dataset(tmp_path, tiny_data_dir):
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path}",
    *TINY,
    "--config.data.batch_size=64",
    env={"CLOSP_DATA_DIR": tiny_data_dir},
  )
  assert_user_error(proc, "training samples", "fewer than config.data.batch_size=64", "--config.data.batch_size")


def test_missing_or_unknown_dataset(tmp_path):
  empty = tmp_path / "no_data"
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path / 'w'}",
    "--config.data.name=crisis_landmark/full",
    env={"CLOSP_DATA_DIR": str(empty)},
  )
  assert_user_error(
    proc,
    "crisis_landmark/full converts the official release",
    "--config.data.manual_dir",
    "crisislandmark.h5",
    "metadata.parquet",
  )
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path / 'w'}",
    "--config.data.name=crisis_landmark/full",
    f"--config.data.manual_dir={tmp_path / 'nowhere'}",
    env={"CLOSP_DATA_DIR": str(empty)},
  )
  assert_user_error(proc, f"release folder {tmp_path / 'nowhere'} lacks crisislandmark.h5")
  proc = run_binary(
    "--config=configs/geoclosp.py",
    f"--workdir={tmp_path / 'w'}",
    "--config.data.name=crisis_landmark/smal",
    env={"CLOSP_DATA_DIR": str(empty)},
  )
  assert_user_error(proc, "unknown dataset 'crisis_landmark/smal'", "crisis_landmark/sample")


def test_unwritable_workdir(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  proc = run_binary("--config=configs/geoclosp.py", f"--workdir={a_file / 'run'}")
  assert_user_error(proc, f"workdir {a_file / 'run'} is not writable", "pass --workdir")


@pytest.mark.parametrize("code,reason", [("EROFS", "Read-only file system"), ("ENOSPC", "No space left on device")])
def test_a_read_only_or_full_workdir_is_named_before_any_work(tmp_path, monkeypatch, code, reason):
  """The workdir probe's write fails as a read-only or full disk makes it fail (the OSError injected
  into the probe's write): a RunConfigError naming the folder, the OS reason and the fix."""
  import errno  # pylint: disable=import-outside-toplevel

  from closp_jax.train.setup import RunConfigError, check_workdir  # pylint: disable=import-outside-toplevel

  def refuse(self, data):
    raise OSError(getattr(errno, code), reason, str(self))

  monkeypatch.setattr(Path, "write_bytes", refuse)
  with pytest.raises(RunConfigError) as err:
    check_workdir(tmp_path / "run")
  message = str(err.value)
  assert f"workdir {tmp_path / 'run'} is not writable ({reason})" in message and "pass --workdir" in message
  assert "free space for checkpoints" in message


# --------------------------------------------------------------------------- data faults


def _build(root, release):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from closp_jax.data import crisis_landmark  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  builder = tfds.builder("crisis_landmark/full", data_dir=str(root / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(release)))
  return builder


def _edit_sample(release, shard, key, dataset, edit):
  with h5py.File(release / shard, "r+") as f:
    data = f[key][dataset][()]
    edit(data)
    del f[key][dataset]
    f[key].create_dataset(dataset, data=data)


@pytest.mark.parametrize("fault", ["not_hdf5", "truncated"])
def test_corrupt_hdf5_shard_names_file_and_key(tmp_path, fault):
  from closp_jax.data.crisis_landmark import ReleaseFileError  # pylint: disable=import-outside-toplevel

  release = tmp_path / "release"
  h5_archive.write_archive(release)
  shard = release / "mmflood.h5"
  if fault == "not_hdf5":
    shard.write_bytes(b"<html>not found</html>" * 100)
  else:
    os.truncate(shard, shard.stat().st_size // 2)
  with pytest.raises(ReleaseFileError) as err:
    _build(tmp_path, release)
  message = str(err.value)
  assert str(shard) in message and "mmflood_0000" in message and "download it again" in message


@pytest.mark.parametrize("value,what", [(np.inf, "1 infinite"), (3.0e38, "0 infinite")])
def test_damaged_pixel_values_name_file_and_key(tmp_path, value, what):
  from closp_jax.data.preprocess import SampleFormatError  # pylint: disable=import-outside-toplevel

  release = tmp_path / "release"
  h5_archive.write_archive(release)
  _edit_sample(release, "cabuar.h5", "cabuar_0001", "image", lambda a: a.__setitem__((3, 7, 9), value))
  with pytest.raises(SampleFormatError) as err:
    _build(tmp_path, release)
  message = str(err.value)
  assert "cabuar.h5:/cabuar_0001" in message and f"({what})" in message and "band(s) [3]" in message


def test_wrong_channel_count_names_file_and_key(tmp_path):
  from closp_jax.data.preprocess import SampleFormatError  # pylint: disable=import-outside-toplevel

  with pytest.raises(SampleFormatError) as err:
    h5_archive.build_full(tmp_path, bad_shape_key="benv2s1_0001")
  assert "benv2s1_part1.h5:/benv2s1_0001" in str(err.value) and "(3, 120, 120)" in str(err.value)


@pytest.mark.parametrize("coords", ["nan_centre", "far_outside"])
def test_coordinates_out_of_range_name_file_and_key(tmp_path, coords):
  from closp_jax.data.preprocess import SampleFormatError  # pylint: disable=import-outside-toplevel

  release = tmp_path / "release"
  h5_archive.write_archive(release)

  def edit(a):
    a[:, 60, 60] = np.nan if coords == "nan_centre" else 4.0e7

  _edit_sample(release, "quakeset.h5", "quakeset_0001", "coords", edit)
  with pytest.raises(SampleFormatError) as err:
    _build(tmp_path, release)
  assert "quakeset.h5:/quakeset_0001" in str(err.value) and "lon/lat" in str(err.value)


def test_empty_labels_name_metadata_file_and_key(tmp_path):
  from closp_jax.data.labels import UnknownLabelError  # pylint: disable=import-outside-toplevel

  release = tmp_path / "release"
  h5_archive.write_archive(release)
  table = pq.read_table(release / "metadata.parquet").to_pydict()
  table["labels"][table["key"].index("mmflood_0001")] = []
  pq.write_table(
    pa.table(
      {"key": table["key"], "split": table["split"], "labels": pa.array(table["labels"], pa.list_(pa.string()))}
    ),
    release / "metadata.parquet",
  )
  with pytest.raises(UnknownLabelError) as err:
    _build(tmp_path, release)
  assert "metadata.parquet" in str(err.value) and "'mmflood_0001' has no labels" in str(err.value)


def test_nan_pixels_are_replaced_counted_and_logged(tmp_path, capsys):
  builder, expected, _ = h5_archive.build_full(tmp_path)
  out = capsys.readouterr().out
  nan = builder.info.metadata["nan_replaced"]
  total = {s: sum(nan[split]["values"][s] for split in ("train", "test")) for s in ("s2", "s1")}
  want = {s: sum(e["nan_count"] for e in expected.values() if e["sensor"] == s) for s in ("s2", "s1")}
  assert total == want and sum(want.values()) > 0
  assert re.search(r"NaN replaced: s2 \d+ samples / \d+ values, s1 \d+ samples / \d+ values", out), out


def test_truncated_array_record_names_the_file(tmp_path, tiny_data_dir):
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  data_dir = tmp_path / "data"
  shutil.copytree(tiny_data_dir, data_dir)
  builder = pipeline.get_builder("crisis_landmark/tiny", data_dir=str(data_dir), prepare=False)
  shard = Path(os.fspath(builder.info.splits["train"].filepaths[0]))
  os.truncate(shard, shard.stat().st_size * 2 // 3)
  with pytest.raises(pipeline.DataFileError) as err:
    pipeline.train_iterator(builder, batch_size=8, seed=0)
  message = str(err.value)
  assert str(shard) in message and "cannot be read" in message and "rebuild it" in message
  shard.unlink()
  with pytest.raises(pipeline.DataFileError, match="which is missing"):
    pipeline.eval_iterator(builder, "train", "s2", batch_size=8)


# --------------------------------------------------------------------------- untrusted files


def test_no_code_path_unpickles():
  """No module loads pickles: weights go through safetensors or torch.load(weights_only=True)."""
  risky = re.compile(r"pickle\.loads?\(|cloudpickle|dill\.|allow_pickle\s*=\s*True|torch\.load\(")
  found = []
  for path in Path(REPO, "closp_jax").rglob("*.py"):
    for n, line in enumerate(path.read_text().splitlines(), 1):
      if risky.search(line) and not ("torch.load(" in line and "weights_only=True" in line):
        found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
  assert not found, "\n".join(found)


class _Payload:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_exported_model_loader_never_runs_pickled_code(tmp_path):
  import json  # pylint: disable=import-outside-toplevel

  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from closp_jax import exported  # pylint: disable=import-outside-toplevel

  folder = tmp_path / "model"
  folder.mkdir()
  marker = tmp_path / "code_ran"
  (folder / "config.json").write_text(
    json.dumps(
      {
        "format": exported.FORMAT,
        "version": exported.SUPPORTED_VERSIONS[0],
        "weights": "model.safetensors",
        "functions": {"text": "text.jax_exported"},
        "sensors": ["s2", "s1"],
        "text": {"max_len": 16},
        "embed_dim": 8,
      }
    )
  )
  payload = pickle.dumps({"w": _Payload(marker)})
  (folder / "model.safetensors").write_bytes(payload)
  (folder / "text.jax_exported").write_bytes(payload)
  with pytest.raises(Exception):  # noqa: B017  (any refusal will do; running the payload will not)
    exported.load_exported(folder)
  assert not marker.exists()
  save_file({"w": np.zeros((2,), np.float32)}, str(folder / "model.safetensors"))
  with pytest.raises(Exception):  # noqa: B017
    exported.load_exported(folder)
  assert not marker.exists()
  pickle.loads(payload)  # control: the payload does run code when unpickled
  assert marker.is_dir()

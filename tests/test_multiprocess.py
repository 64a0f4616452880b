"""Multi-process runs on one machine: start-up plans, global batches, checkpoints across layouts.

Processes are real: launch/local_multiprocess.sh starts them with a loopback coordinator and
4 fake CPU devices each (gloo collectives). The training comparison is the issue's acceptance
test: 2 processes x 4 devices for 5 steps give the same losses and parameters (1e-5) as
1 process x 8 devices, and a checkpoint written by the 2 processes resumes on 1.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from closp_jax.parallel import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")
DRIVER = os.path.join(REPO, "tests", "sharded_train_driver.py")


# --------------------------------------------------------------------------- start-up plans


def test_single_process_starts_nothing():
  assert distributed.plan(environ={}) == distributed.Plan("single", None)
  assert not distributed.plan(environ={}).starts
  assert (
    distributed.plan(auto=False, environ={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}).source
    == "single"
  )


def test_flags_give_an_explicit_plan_with_detection_off():
  p = distributed.plan("10.0.0.1:1234", 4, 3, environ={"SLURM_JOB_ID": "7"})
  assert p.source == "flags"
  assert p.kwargs == {
    "coordinator_address": "10.0.0.1:1234",
    "num_processes": 4,
    "process_id": 3,
    "cluster_detection_method": "deactivate",
  }
  assert distributed.plan("h:1", 1, 0, environ={}).source == "single"


@pytest.mark.parametrize(
  "args,match",
  [
    (("h:1", 2, None), "needs all of --coordinator_address, --num_processes, --process_id"),
    ((None, 2, 0), "--coordinator_address"),
    (("h:1", 2, 2), r"--process_id=2 must be in \[0, --num_processes=2\)"),
    (("hostonly", 2, 0), "expected host:port"),
    (("h:1", "two", 0), "--num_processes='two': expected an integer"),
  ],
)
def test_bad_flags_are_named(args, match):
  with pytest.raises(distributed.DistributedConfigError, match=match):
    distributed.plan(*args, environ={})


def test_environment_plan():
  env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:999", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  p = distributed.plan(environ=env)
  assert p.source == "the environment" and p.kwargs["process_id"] == 1 and p.kwargs["num_processes"] == 2
  with pytest.raises(distributed.DistributedConfigError, match="JAX_COORDINATOR_ADDRESS"):
    distributed.plan(environ={"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})


def _slurm_env(**extra):
  env = {
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "16",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[017-018]",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
  }
  env.update(extra)
  return env


def test_slurm_one_process_per_gpu():
  p = distributed.plan(environ=_slurm_env())
  assert p.source == "slurm"
  assert p.kwargs == {
    "coordinator_address": f"gpu017:{123456 % 4096 + 61440}",
    "num_processes": 16,
    "process_id": 9,
    "cluster_detection_method": "deactivate",
    "local_device_ids": [1],
  }
  # srun --gpus-per-task=1 already shows each task its one GPU: nothing to restrict.
  assert "local_device_ids" not in distributed.plan(environ=_slurm_env(CUDA_VISIBLE_DEVICES="5")).kwargs


def test_slurm_one_process_per_node_sees_all_its_gpus():
  env = _slurm_env(
    SLURM_NTASKS="2",
    SLURM_PROCID="1",
    SLURM_LOCALID="0",
    SLURM_STEP_TASKS_PER_NODE="1(x2)",
    JAX_COORDINATOR_ADDRESS="gpu017:5555",
  )
  p = distributed.plan(environ=env)
  assert p.kwargs == {
    "coordinator_address": "gpu017:5555",
    "num_processes": 2,
    "process_id": 1,
    "cluster_detection_method": "deactivate",
  }
  assert distributed.plan(environ=_slurm_env(SLURM_NTASKS="1")).source == "single"


def test_cloud_tpu_plans_let_jax_detect():
  assert distributed.plan(auto=True, environ={}) == distributed.Plan("auto", {})
  assert distributed.plan(environ={"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}).source == "auto"
  assert distributed.plan(environ={"TPU_WORKER_HOSTNAMES": "t0"}).source == "single"
  assert distributed.plan(environ={"MEGASCALE_COORDINATOR_ADDRESS": "c:8080"}).source == "auto"


@pytest.mark.parametrize(
  "nodelist", ["node001", "node001,host2", "node[001-015],host2", "node[001,007-015],host2", "a-b[9-12]"]
)
def test_first_host_agrees_with_jax_slurm_detection(nodelist, monkeypatch):
  from jax._src.clusters.slurm_cluster import SlurmCluster

  monkeypatch.setenv("SLURM_STEP_NODELIST", nodelist)
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  expected = SlurmCluster.get_coordinator_address(timeout_secs=None, override_coordinator_port=None)
  assert f"{distributed.first_host(nodelist)}:{77 % 4096 + 61440}" == expected


def test_first_host_of_a_one_node_bracket():
  # JAX's own parser keeps the ']' here ('gpu3]'); the coordinator must be a real host name.
  assert distributed.first_host("gpu[3]") == "gpu3"
  with pytest.raises(distributed.DistributedConfigError, match="cannot read the SLURM node list"):
    distributed.first_host("")


@pytest.mark.parametrize("spec,node,tasks", [("8(x2)", 1, 8), ("4,2", 1, 2), ("3(x2),1", 2, 1), ("1", 0, 1)])
def test_slurm_tasks_on_a_node(spec, node, tasks):
  env = {"SLURM_STEP_TASKS_PER_NODE": spec, "SLURM_NODEID": str(node)}
  assert distributed._slurm_tasks_on_this_node(env) == tasks  # pylint: disable=protected-access


# --------------------------------------------------------------------------- two real processes

_TWO_PROCESS_SCRIPT = r"""
import argparse, json, os, sys
sys.path.insert(0, {repo!r})
p = argparse.ArgumentParser()
p.add_argument("--coordinator_address"); p.add_argument("--num_processes", type=int)
p.add_argument("--process_id", type=int); p.add_argument("--out"); p.add_argument("--ckpt")
a = p.parse_args()
from closp_jax.parallel import distributed
plan = distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)
import grain, jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from closp_jax.parallel import data_checkpoint, mesh as mesh_lib

out = {{"plan": plan.source, "process": jax.process_index(), "count": jax.process_count(),
       "local": jax.local_device_count(), "global": jax.device_count()}}
mesh = mesh_lib.make_mesh({{"data": 4, "fsdp": 2, "tensor": 1}})
out["rows"] = mesh_lib.process_rows(mesh, 16).tolist()
full = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
g = mesh_lib.global_batch(mesh_lib.local_rows({{"x": full}}, mesh), mesh)["x"]
out["gathered_equal"] = bool(np.array_equal(np.asarray(multihost_utils.process_allgather(g, tiled=True)), full))
out["sum"] = float(jax.jit(lambda x: jnp.sum(x * x))(g))
# Two slices over DCN = the two processes: the outer factor of 'data' follows the process.
sliced = mesh_lib.make_mesh({{"data": 2, "fsdp": -1, "tensor": 1, "slices": 2}})
out["slice_mesh"] = dict(sliced.shape)
out["slice_procs"] = [[d.process_index for d in row.flat] for row in sliced.devices]
# The data position, saved by both processes.
it = iter(grain.MapDataset.range(1000).batch(4).to_iter_dataset())
for _ in range(3):
  next(it)
mgr = ocp.CheckpointManager(a.ckpt, item_names=("data",), item_handlers={{"data": data_checkpoint.DataIteratorHandler()}})
mgr.save(3, args=ocp.args.Composite(data=data_checkpoint.DataSave(it)))
mgr.wait_until_finished()
mgr.close()
if jax.process_index() == 0:
  with open(a.out, "w") as f:
    json.dump(out, f)
"""

_ONE_PROCESS_RESTORE = r"""
import json, sys
sys.path.insert(0, {repo!r})
import grain, orbax.checkpoint as ocp
from closp_jax.parallel import data_checkpoint
it = iter(grain.MapDataset.range(1000).batch(4).to_iter_dataset())
mgr = ocp.CheckpointManager({ckpt!r}, item_names=("data",), item_handlers={{"data": data_checkpoint.DataIteratorHandler()}})
mgr.restore(3, args=ocp.args.Composite(data=data_checkpoint.DataRestore(it)))
print("NEXT" + json.dumps(next(it).tolist()))
"""


def _launch(nproc, script, *args, timeout=600, devices=4):
  cmd = [
    "bash",
    LAUNCH,
    str(nproc),
    "--devices_per_process",
    str(devices),
    "--python",
    sys.executable,
    "--script",
    str(script),
    "--",
    *map(str, args),
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def test_two_processes_build_global_batches_and_their_data_state_resumes_on_one(tmp_path):
  script = tmp_path / "two.py"
  script.write_text(_TWO_PROCESS_SCRIPT.format(repo=REPO))
  out, ckpt = tmp_path / "out.json", tmp_path / "ckpt"
  _launch(2, script, "--out", out, "--ckpt", ckpt)
  r = json.loads(out.read_text())
  assert (r["plan"], r["count"], r["local"], r["global"]) == ("flags", 2, 4, 8)
  assert r["rows"] == list(range(8))  # process 0 feeds the first half of the global batch
  assert r["gathered_equal"]
  assert r["sum"] == float(np.sum(np.arange(48.0) ** 2))
  assert r["slice_mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert r["slice_procs"] == [[0, 0, 0, 0], [1, 1, 1, 1]]
  saved = sorted(f for f in os.listdir(ckpt / "3" / "data") if f.endswith(".json"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

  proc = subprocess.run(
    [sys.executable, "-c", _ONE_PROCESS_RESTORE.format(repo=REPO, ckpt=str(ckpt))],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.split("NEXT", 1)[1]) == [12, 13, 14, 15]
  assert "written by 2 process(es), resumed by 1" in proc.stdout


def test_differing_process_states_are_refused(tmp_path):
  from closp_jax.parallel import data_checkpoint

  (tmp_path / "process_0-of-2.json").write_text(json.dumps({"next_index": 3}))
  (tmp_path / "process_1-of-2.json").write_text(json.dumps({"next_index": 4}))
  with pytest.raises(data_checkpoint.DataStateError, match="Resume with 2 processes"):
    data_checkpoint.state_for_this_process(tmp_path)
  (tmp_path / "process_1-of-2.json").unlink()
  with pytest.raises(data_checkpoint.DataStateError, match="incomplete"):
    data_checkpoint.state_for_this_process(tmp_path)
  (tmp_path / "process_0-of-2.json").unlink()
  with pytest.raises(data_checkpoint.DataStateError, match="holds no data-iterator state"):
    data_checkpoint.state_for_this_process(tmp_path)


def test_a_failing_process_stops_the_others(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text(
    "import sys, time\n"
    "pid = [a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1]\n"
    "sys.exit(3) if pid == '1' else time.sleep(120)\n"
  )
  proc = subprocess.run(
    ["bash", LAUNCH, "2", "--python", sys.executable, "--script", str(script)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 3
  assert "process 1 exited with status 3" in proc.stderr


# --------------------------------------------------------------------------- training, 2 x 4 vs 1 x 8

TRAIN = [
  "--steps",
  "5",
  "--batch_size",
  "16",
  "--mesh",
  "4,2,1",
  "--rules",
  "fsdp",
  "--chunked",
  "--adam_eps",
  "1e-6",
]  # eps: see tests/test_sharding.py


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_on_one(tiny_data_dir, tmp_path):
  env8 = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")

  def one_process(out, *args):
    proc = subprocess.run(
      [sys.executable, DRIVER, "--data_dir", tiny_data_dir, "--out", str(out), *args],
      env=env8,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc

  one_process(tmp_path / "one.npz", *TRAIN)
  ckpt = tmp_path / "ckpt"
  _launch(
    2,
    DRIVER,
    "--data_dir",
    tiny_data_dir,
    "--out",
    tmp_path / "two.npz",
    *TRAIN,
    "--ckpt_dir",
    ckpt,
    "--save_steps",
    "3,5",
    timeout=1200,
  )
  one, two = dict(np.load(tmp_path / "one.npz")), dict(np.load(tmp_path / "two.npz"))
  assert (int(two["processes"]), int(two["devices"])) == (2, 8)
  assert (int(one["processes"]), int(one["devices"])) == (1, 8)
  keys = [k for k in one if k.startswith(("params", "batch_stats"))]
  assert len(keys) > 50 and sorted(keys) == sorted(k for k in two if k.startswith(("params", "batch_stats")))
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=0, atol=1e-5)
  for k in keys:
    np.testing.assert_allclose(two[k], one[k], rtol=0, atol=1e-5, err_msg=k)

  # The 2-process checkpoint of step 3, resumed by 1 process on a data-parallel mesh.
  proc = one_process(
    tmp_path / "resumed.npz",
    *TRAIN[:4],
    "--mesh",
    "8,1,1",
    "--rules",
    "dp",
    "--chunked",
    "--adam_eps",
    "1e-6",
    "--ckpt_dir",
    str(ckpt),
    "--resume_step",
    "3",
  )
  assert "written by 2 process(es), resumed by 1" in proc.stdout
  resumed = dict(np.load(tmp_path / "resumed.npz"))
  np.testing.assert_allclose(resumed["losses"], two["losses"][3:], rtol=0, atol=1e-5)
  for k in keys:
    np.testing.assert_allclose(resumed[k], two[k], rtol=0, atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------- the trainer itself

TRAINER = [
  "--config=configs/geoclosp.py",
  "--config.data.name=crisis_landmark/tiny",
  "--config.data.batch_size=16",
  "--config.data.eval_batch_size=64",
  "--config.eval.every_steps=0",
  "--config.eval.final=False",
  "--config.checkpoint.every_steps=2",
  "--config.checkpoint.async_save=False",
  "--config.init.text=",
  "--config.model.text.layers=1",
  "--config.train.log_every_steps=1",
]


@pytest.mark.slow
def test_trainer_on_two_processes_resumes_on_one(tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, CLOSP_DATA_DIR=tiny_data_dir)
  cmd = [
    "bash",
    LAUNCH,
    "2",
    "--python",
    sys.executable,
    "--",
    *TRAINER,
    f"--workdir={workdir}",
    "--config.train.steps=4",
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  log = proc.stdout + proc.stderr
  assert "2 process(es)" in log and "step 4/4" in log
  saved = sorted(f for f in os.listdir(workdir / "checkpoints" / "4" / "data") if f.endswith(".json"))
  assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
    [sys.executable, "-m", "closp_jax.main", *TRAINER, f"--workdir={workdir}", "--config.train.steps=6"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  log = proc.stdout + proc.stderr
  assert "resumed from" in log and "written by 2 process(es), resumed by 1" in log
  assert "step 6/6" in log
  assert not (tmp_path / "run" / "checkpoints_unreadable").exists()

"""Launch scripts: shellcheck-clean, and their --dry-run prints the exact commands with what was given."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu")
SCRIPTS = sorted(
  [os.path.join("launch", "local_multiprocess.sh"), os.path.join("launch", "gpu", "slurm.sbatch")]
  + [os.path.join("launch", "tpu", f) for f in os.listdir(TPU) if f.endswith(".sh")]
)
CONFIG = "configs/geoclosp.py:pod"
WORKDIR = "gs://closp-test-bucket/runs/pod-1"


def _run(*args, env=None, check=True):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  full_env.update(env or {})
  proc = subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=full_env)
  if check and proc.returncode:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def _commands(stdout: str) -> list[str]:
  return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.skipif(
  shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_every_script_passes_shellcheck():
  assert len(SCRIPTS) >= 10
  proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_script_is_executable_and_documents_dry_run():
  for path in SCRIPTS:
    full = os.path.join(REPO, path)
    if path.endswith("common.sh"):
      continue
    assert os.access(full, os.X_OK), path
    text = open(full, encoding="utf-8").read()
    assert "--dry-run" in text or "parse_flags" in text, path


def test_local_multiprocess_dry_run():
  out = _run(
    "launch/local_multiprocess.sh",
    "--dry-run",
    "3",
    "--port",
    "4567",
    "--devices_per_process",
    "2",
    "--",
    f"--config={CONFIG}",
    "--workdir=/tmp/w x",
  ).stdout
  lines = [l for l in out.splitlines() if "closp_jax.main" in l]
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert "JAX_PLATFORMS=cpu" in line and "--xla_force_host_platform_device_count=2" in line
    assert f"--coordinator_address=127.0.0.1:4567 --num_processes=3 --process_id={i}" in line
    assert f"--config={CONFIG}" in line and "--workdir=/tmp/w\\ x" in line
    assert f"process_{i}.log" in line


def test_local_multiprocess_rejects_bad_arguments():
  proc = _run("launch/local_multiprocess.sh", "--dry-run", "zero", check=False)
  assert proc.returncode == 2 and "must be a positive integer" in proc.stderr
  proc = _run("launch/local_multiprocess.sh", "--dry-run", "2", "--bogus", check=False)
  assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr


TPU_FLAGS = [
  "--name",
  "closp-pod",
  "--zone",
  "us-east5-b",
  "--accelerator_type",
  "v6e-256",
  "--config",
  CONFIG,
  "--workdir",
  WORKDIR,
  "--dry-run",
]


def test_tpu_pod_dry_run_names_everything_in_order():
  out = _run("launch/tpu/pod.sh", *TPU_FLAGS, "--", "--config.train.steps=100").stdout
  cmds = _commands(out)
  assert cmds[0].startswith(
    "gcloud compute tpus tpu-vm create closp-pod --zone=us-east5-b --accelerator-type=v6e-256 --version=v2-alpha-tpuv6e"
  )
  assert any(c.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in c for c in cmds)
  setup = [c for c in cmds if "remote_setup.sh" in c]
  assert len(setup) == 1 and "--worker=all" in setup[0] and "--mount\\ gs://closp-test-bucket" in setup[0]
  train = [c for c in cmds if "remote_train.sh" in c]
  assert len(train) == 1 and "--worker=all" in train[0]
  assert f"--config={CONFIG}" in train[0]
  assert "--workdir=/mnt/gcs/closp-test-bucket/runs/pod-1" in train[0]
  assert "--config.train.steps=100" in train[0]
  assert any("--worker=0" in c and "tail" in c for c in cmds)
  assert cmds[-1] == "gcloud compute tpus tpu-vm delete closp-pod --zone=us-east5-b --quiet"


def test_tpu_train_dry_run_names_config_and_workdir():
  out = _run("launch/tpu/train.sh", *TPU_FLAGS, "--project", "my-proj").stdout
  (cmd,) = _commands(out)
  assert cmd.startswith("gcloud compute tpus tpu-vm ssh closp-pod --zone=us-east5-b --project=my-proj --worker=all")
  assert f"--config={CONFIG}" in cmd and "/mnt/gcs/closp-test-bucket/runs/pod-1" in cmd
  assert "/mnt/gcs/closp-test-bucket/tensorflow_datasets" in cmd  # the default data dir


def test_tpu_queued_multislice_create_and_delete():
  out = _run(
    "launch/tpu/create.sh", "--name", "q", "--zone", "us-west4-a", "--queued", "--slices", "2", "--spot", "--dry-run"
  ).stdout
  cmds = _commands(out)
  assert cmds[0] == (
    "gcloud compute tpus queued-resources create q --zone=us-west4-a "
    "--accelerator-type=v5litepod-256 --runtime-version=v2-alpha-tpuv5-lite "
    "--node-count=2 --node-prefix=q --spot"
  )
  assert "queued-resources describe q" in cmds[1]
  out = _run(
    "launch/tpu/train.sh", "--name", "q", "--zone", "z", "--slices", "2", "--workdir", WORKDIR, "--dry-run"
  ).stdout
  cmds = _commands(out)
  assert [c.split()[5] for c in cmds] == ["q-0", "q-1"]
  assert all("--config.mesh.slices=2" in c for c in cmds)
  (cmd,) = _commands(_run("launch/tpu/delete.sh", "--name", "q", "--zone", "z", "--queued", "--dry-run").stdout)
  assert cmd == "gcloud compute tpus queued-resources delete q --zone=z --force --quiet"


def test_tpu_scripts_refuse_missing_or_local_workdirs():
  proc = _run("launch/tpu/train.sh", "--name", "n", "--zone", "z", "--dry-run", check=False)
  assert proc.returncode == 2 and "--workdir is required" in proc.stderr
  proc = _run("launch/tpu/train.sh", "--name", "n", "--zone", "z", "--workdir", "/tmp/x", "--dry-run", check=False)
  assert proc.returncode == 2 and "must be a gs:// path" in proc.stderr
  proc = _run("launch/tpu/create.sh", "--zone", "z", "--dry-run", check=False)
  assert proc.returncode == 2 and "--name is required" in proc.stderr
  proc = _run(
    "launch/tpu/create.sh", "--name", "n", "--zone", "z", "--accelerator_type", "x-8", "--dry-run", check=False
  )
  assert proc.returncode == 2 and "pass --runtime_version" in proc.stderr


def test_remote_scripts_dry_run():
  out = _run(
    "launch/tpu/remote_train.sh",
    "--data_dir",
    "/mnt/gcs/b/tfds",
    "--log",
    "l.log",
    "--pid_file",
    "p",
    "--dry-run",
    "--",
    f"--config={CONFIG}",
    "--workdir=/mnt/gcs/b/w",
  ).stdout
  assert (
    "nohup env CLOSP_DATA_DIR=/mnt/gcs/b/tfds python3 -m closp_jax.main --distributed_auto=true "
    f"--config={CONFIG} --workdir=/mnt/gcs/b/w > l.log"
  ) in out
  out = _run("launch/tpu/remote_setup.sh", "--jax_version", "0.10.2", "--dry-run").stdout
  assert "jax\\[tpu\\]==0.10.2" in out and "-e ." in out


def test_slurm_dry_run_outside_an_allocation():
  out = _run(
    "launch/gpu/slurm.sbatch",
    "--dry-run",
    "--nodes",
    "4",
    "--config",
    CONFIG,
    "--workdir",
    "/shared/run",
    "--",
    "--config.train.steps=7",
  )
  (cmd,) = _commands(out.stdout)
  assert cmd.startswith("srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8")
  assert "JAX_COORDINATOR_ADDRESS=node0:61440" in cmd
  assert f"--config={CONFIG} --workdir=/shared/run --config.train.steps=7" in cmd
  assert "4 node(s) x 1 process(es) = 4 processes" in out.stderr


def test_slurm_dry_run_inside_an_allocation_uses_the_first_node(tmp_path):
  # A stand-in `scontrol show hostnames` on PATH, as SLURM would expand the node list.
  fake = tmp_path / "scontrol"
  fake.write_text("#!/usr/bin/env bash\nprintf 'gpu017\\ngpu018\\ngpu019\\n'\n")
  fake.chmod(0o755)
  env = {
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
    "SLURM_JOB_NODELIST": "gpu[017-019]",
    "SLURM_JOB_ID": "123456",
    "SLURM_GPUS_ON_NODE": "4",
  }
  out = _run(
    "launch/gpu/slurm.sbatch",
    "--dry-run",
    "--per_gpu",
    "--config",
    CONFIG,
    "--workdir",
    "/shared/r",
    "--data_dir",
    "/shared/tfds",
    env=env,
  )
  (cmd,) = _commands(out.stdout)
  port = 61440 + 123456 % 4096
  assert cmd.startswith("srun --nodes=3 --ntasks-per-node=4 --gpus-per-task=1")
  assert f"JAX_COORDINATOR_ADDRESS=gpu017:{port}" in cmd and "CLOSP_DATA_DIR=/shared/tfds" in cmd
  assert f"--config={CONFIG} --workdir=/shared/r" in cmd
  assert "3 node(s) x 4 process(es) = 12 processes" in out.stderr


@pytest.mark.parametrize("trainer_exit,requeued", [(75, True), (0, False), (1, False)])
def test_slurm_requeues_a_run_that_stopped_with_exit_75(tmp_path, trainer_exit, requeued):
  """Inside an allocation (stand-in srun and scontrol on PATH): the trainer's exit status 75 (stopped by
  SIGTERM after its checkpoint) makes the script `scontrol requeue` the job; 0 and 1 do not. The
  script exits with the trainer's status either way."""
  log = tmp_path / "calls.txt"
  (tmp_path / "scontrol").write_text(
    f"#!/usr/bin/env bash\necho \"scontrol $*\" >> {log}\nif [[ $1 == show ]]; then printf 'gpu001\\n'; fi\n"
  )
  (tmp_path / "srun").write_text(f'#!/usr/bin/env bash\necho "srun $*" >> {log}\nexit {trainer_exit}\n')
  for name in ("scontrol", "srun"):
    (tmp_path / name).chmod(0o755)
  env = {
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
    "SLURM_JOB_NODELIST": "gpu001",
    "SLURM_JOB_ID": "4242",
    "SLURM_SUBMIT_DIR": REPO,
  }
  proc = _run("launch/gpu/slurm.sbatch", "--config", CONFIG, "--workdir", "/shared/r", env=env, check=False)
  assert proc.returncode == trainer_exit
  calls = log.read_text().splitlines()
  assert any(c.startswith("srun ") and "-m closp_jax.main" in c for c in calls)
  assert ("scontrol requeue 4242" in calls) == requeued
  if requeued:
    assert "requeueing job 4242" in proc.stderr


def test_slurm_requires_config_and_workdir():
  proc = _run("launch/gpu/slurm.sbatch", "--dry-run", "--workdir", "/w", check=False)
  assert proc.returncode == 2 and "--config is required" in proc.stderr
  proc = _run("launch/gpu/slurm.sbatch", "--config", CONFIG, "--workdir", "/w", check=False)
  assert proc.returncode == 2 and "not inside a SLURM allocation" in proc.stderr

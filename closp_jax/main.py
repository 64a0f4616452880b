r"""Train CLOSP / GeoCLOSP.

  python -m closp_jax.main --config configs/geoclosp.py [--workdir DIR] [--config.key=value ...]

With no dataset prepared, `crisis_landmark/sample` is built first (a synthetic archive in the
official release layout). Resumes automatically from WORKDIR/checkpoints.

Exit status: 0 when training finished or was stopped by SIGTERM/SIGINT (a checkpoint of the
last finished step is saved; run the same command again to resume); 1 with a one-paragraph
`error: ...` on stderr for a fault the user fixes (config, devices, dataset, workdir,
non-finite values; docs/operations.md lists them); a traceback only for unexpected errors.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from closp_jax.config import exit_on_bad_config_args
from closp_jax.train.preemption import Preempted, install_early_handlers, stopped_message

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, summaries and evaluations go "
                               "(default: ./workdir/<config name>).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool("distributed_auto", None, "Let JAX detect the cluster (Cloud TPU, SLURM); "
                          "default: on when such an environment is seen.")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
  return "workdir/" + config.name.replace(":", "-")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax and grain log every checkpoint step at INFO; the trainer prints its own progress.
  logging.set_verbosity(logging.WARNING)
  from closp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  try:
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
    from closp_jax.train import loop  # pylint: disable=import-outside-toplevel  (after initialize)
    loop.train_and_evaluate(config, _WORKDIR.value or default_workdir(config))
  except _user_errors() as e:
    sys.exit(f"error: {e}")


def _user_errors() -> tuple[type[BaseException], ...]:
  """Faults with a message that says the fix: printed without a traceback, exit status 1."""
  # pylint: disable=import-outside-toplevel
  from closp_jax import checkpoint, config
  from closp_jax.data.crisis_landmark import ReleaseFileError
  from closp_jax.data.labels import UnknownLabelError
  from closp_jax.data.pipeline import DataFileError, DatasetNameError
  from closp_jax.data.preprocess import SampleFormatError
  from closp_jax.parallel.distributed import DistributedConfigError
  from closp_jax.parallel.mesh import MeshConfigError
  from closp_jax.train.loop import NonFiniteError
  from closp_jax.train.setup import RunConfigError
  from closp_jax.weights.convert import WeightMismatchError
  from closp_jax.weights.registry import WeightsError
  from closp_jax.weights.safe_load import UnsafeWeightsError
  return (config.ConfigValueError, config.ConfigKeyError, RunConfigError, MeshConfigError,
          DistributedConfigError, checkpoint.CheckpointError, NonFiniteError, SampleFormatError,
          ReleaseFileError, UnknownLabelError, DataFileError, DatasetNameError, UnsafeWeightsError,
          WeightsError, WeightMismatchError, FileNotFoundError)


if __name__ == "__main__":
  install_early_handlers()  # a stop signal during start-up (imports, flags) exits cleanly
  try:
    exit_on_bad_config_args(sys.argv)
    app.run(main)
  except Preempted as stop:  # before the run installed its own handlers: nothing to save yet
    print(stopped_message(stop, None, "WORKDIR/checkpoints"), flush=True)
    sys.exit(0)

r"""Train CLOSP / GeoCLOSP.

  closp-train --config geoclosp[:VARIANT] [--workdir DIR] [--config.key=value ...]
  python -m closp_jax.main --config configs/geoclosp.py[:VARIANT] ...      (a recipe file works too)

With no dataset prepared, `crisis_landmark/sample` is built first (a synthetic archive in the
official release layout). Resumes automatically from WORKDIR/checkpoints. WORKDIR/config.json
keeps the run's config (closp-evaluate and closp-export read it), WORKDIR/train.log its output.

Exit status (docs/operations.md): 0 when training finished (or stopped at train.stop_after);
75 (EX_TEMPFAIL) when SIGTERM / SIGINT stopped it, after saving a checkpoint of the last finished
step: run the same command again to resume (launch/gpu/slurm.sbatch requeues on 75); 1 with one
line `error: ...` on stderr for a fault the user fixes (config, devices, dataset, workdir, weights,
non-finite values); a traceback only for a bug.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from closp_jax import errors
from closp_jax.config import exit_on_bad_config_args
from closp_jax.train.preemption import Preempted, install_early_handlers, stopped_message

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training recipe: a packaged name (closp, geoclosp) or a file (configs/*.py), with an "
  "optional :variant (geoclosp:paper).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints, summaries, logs and evaluations go (default: ./workdir/<config name>)."
)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool(
  "distributed_auto",
  None,
  "Let JAX detect the cluster (Cloud TPU, SLURM); default: on when such an environment is seen.",
)
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
  return "workdir/" + config.name.replace(":", "-")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from closp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
  # pylint: disable=import-outside-toplevel  (after initialize: these touch the devices)
  from closp_jax.retrieval.training_eval import TrainingEvaluator
  from closp_jax.train import loop

  result = loop.train_and_evaluate(
    config, _WORKDIR.value or default_workdir(config), evaluator_factory=TrainingEvaluator
  )
  return errors.EXIT_STOPPED if result.get("signal") else errors.EXIT_OK


def run() -> None:
  """The `closp-train` console script."""
  install_early_handlers()  # a stop signal during start-up (imports, flags) exits cleanly
  try:
    exit_on_bad_config_args(sys.argv)
    errors.run_main(main)
  except Preempted as stop:  # before the run installed its own handlers: nothing to save yet
    print(stopped_message(stop, None, "WORKDIR/checkpoints"), file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_STOPPED)


if __name__ == "__main__":
  run()

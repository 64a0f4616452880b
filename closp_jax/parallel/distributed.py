"""Multi-process (multi-host) start-up on JAX's own runtime.

`initialize()` calls jax.distributed.initialize from explicit flags when given, or lets JAX
auto-detect the cluster (Cloud TPU pods, SLURM) when `auto=True`. A single process needs nothing.
"""
from __future__ import annotations

import os

import jax

_ENV_HINTS = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool | None = None) -> None:
  """Starts jax.distributed when this run has several processes; a no-op for one process."""
  explicit = coordinator_address or (num_processes and num_processes > 1)
  if explicit:
    if not coordinator_address or num_processes is None or process_id is None:
      raise ValueError(
          "multi-process start needs all of --coordinator_address, --num_processes and --process_id "
          f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    if not 0 <= int(process_id) < int(num_processes):
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id))
    return
  if auto is None:
    auto = any(k in os.environ for k in _ENV_HINTS) and int(os.environ.get("SLURM_NTASKS", "2")) > 1
  if auto:
    jax.distributed.initialize()

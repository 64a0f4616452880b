"""Multi-process (multi-host) start-up on JAX's own runtime, and process-0-only output.

Where the process layout comes from, first match wins:
  1. flags: --coordinator_address, --num_processes, --process_id (all three);
  2. the environment: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID
     (what launch/local_multiprocess.sh and launch/gpu/slurm.sbatch export);
  3. SLURM (`srun`): SLURM_NTASKS > 1; coordinator = the first host of the step's node list;
     one process per GPU when several tasks share a node, else one per node with all its GPUs;
  4. Cloud TPU: `auto=True` (launch/tpu passes --distributed_auto), or a multi-host
     TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS in the environment: JAX asks the
     TPU metadata for everything.
A single process needs nothing and starts nothing.

`plan()` decides (a pure function of its arguments and the environment, so it is tested
without starting anything); `initialize()` carries the plan out.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax

from closp_jax.errors import UserError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_TPU_HINTS = ("MEGASCALE_COORDINATOR_ADDRESS",)


class DistributedConfigError(UserError, ValueError):
  """The flags or environment describe an impossible process layout."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the run. `kwargs` go to jax.distributed.initialize (None: do not call)."""

  source: str  # 'single', 'flags', 'environment', 'slurm' or 'auto'
  kwargs: dict[str, Any] | None

  @property
  def starts(self) -> bool:
    return self.kwargs is not None


def _int(value, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise DistributedConfigError(f"{name}={value!r}: expected an integer") from None


def _explicit(coordinator_address, num_processes, process_id, source: str, names: tuple[str, str, str]) -> Plan:
  if not coordinator_address or num_processes is None or process_id is None:
    given = dict(zip(names, (coordinator_address, num_processes, process_id)))
    raise DistributedConfigError(f"a multi-process start from {source} needs all of {', '.join(names)} (got {given})")
  n, i = _int(num_processes, names[1]), _int(process_id, names[2])
  if n < 1 or not 0 <= i < n:
    raise DistributedConfigError(f"{names[2]}={i} must be in [0, {names[1]}={n})")
  if ":" not in str(coordinator_address):
    raise DistributedConfigError(f"{names[0]}={coordinator_address!r}: expected host:port")
  if n == 1:
    return Plan("single", None)
  # Detection off: the layout is fully given, and SLURM detection would otherwise hide all but
  # one GPU of a node from a process that owns the whole node.
  return Plan(
    source,
    {
      "coordinator_address": str(coordinator_address),
      "num_processes": n,
      "process_id": i,
      "cluster_detection_method": "deactivate",
    },
  )


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-004,9],login1' -> 'gpu003'."""
  m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not m or not m.group(1):
    raise DistributedConfigError(f"cannot read the SLURM node list {nodelist!r}")
  prefix, ranges = m.group(1), m.group(2)
  if ranges is None:
    return prefix
  return prefix + re.split(r"[,-]", ranges)[0]


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> int:
  """Tasks of this step on this node, from SLURM_STEP_TASKS_PER_NODE ('8(x2)' or '4,2') and the node id."""
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
  counts: list[int] = []
  for part in filter(None, spec.split(",")):
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if not m:
      return int(env.get("SLURM_NTASKS_PER_NODE", "1") or 1)
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  node = int(env.get("SLURM_NODEID", "0") or 0)
  if counts:
    return counts[min(node, len(counts) - 1)]
  return int(env.get("SLURM_NTASKS_PER_NODE", "1") or 1)


def _slurm(env: Mapping[str, str]) -> Plan:
  n = _int(env["SLURM_NTASKS"], "SLURM_NTASKS")
  if n <= 1:
    return Plan("single", None)
  nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not nodes:
    raise DistributedConfigError(
      "SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set: run the trainer under srun"
    )
  coordinator = env.get(ENV_COORDINATOR)
  if not coordinator:
    port = env.get("JAX_COORDINATOR_PORT") or str(_int(env.get("SLURM_JOB_ID", "0"), "SLURM_JOB_ID") % 4096 + 61440)
    coordinator = f"{first_host(nodes)}:{port}"
  kwargs = {
    "coordinator_address": coordinator,
    "num_processes": n,
    "process_id": _int(env["SLURM_PROCID"], "SLURM_PROCID"),
    "cluster_detection_method": "deactivate",
  }
  # Several tasks on a node: one GPU each, unless SLURM (--gpus-per-task=1) already made only
  # that one visible. One task on a node: it drives all the node's GPUs.
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if (
    _slurm_tasks_on_this_node(env) > 1
    and "SLURM_LOCALID" in env
    and len(visible) != 1
    and not env.get("JAX_LOCAL_DEVICE_IDS")
  ):
    kwargs["local_device_ids"] = [_int(env["SLURM_LOCALID"], "SLURM_LOCALID")]
  return Plan("slurm", kwargs)


def _tpu_multihost(env: Mapping[str, str]) -> bool:
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1 or any(env.get(k) for k in _TPU_HINTS)


def plan(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool | None = None,
  environ: Mapping[str, str] | None = None,
) -> Plan:
  """Decides how this process joins the run (see the module docstring for the order)."""
  env = os.environ if environ is None else environ
  if coordinator_address or (num_processes is not None and int(num_processes) > 1) or process_id is not None:
    return _explicit(
      coordinator_address,
      num_processes,
      process_id,
      "flags",
      ("--coordinator_address", "--num_processes", "--process_id"),
    )
  if auto is False:
    return Plan("single", None)
  if env.get(ENV_NUM_PROCESSES) or env.get(ENV_PROCESS_ID):
    return _explicit(
      env.get(ENV_COORDINATOR),
      env.get(ENV_NUM_PROCESSES),
      env.get(ENV_PROCESS_ID),
      "the environment",
      (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID),
    )
  if "SLURM_JOB_ID" in env and "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
    return _slurm(env)
  if auto or _tpu_multihost(env):
    return Plan("auto", {})
  return Plan("single", None)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool | None = None,
) -> Plan:
  """Starts jax.distributed when this run has several processes; a no-op for one process.

  Must run before anything touches a JAX device. Returns the plan it carried out.
  """
  p = plan(coordinator_address, num_processes, process_id, auto=auto)
  if p.starts and not jax.distributed.is_initialized():
    jax.distributed.initialize(**p.kwargs)
  return p


def is_main_process() -> bool:
  """True on process 0, the one that prints, writes summaries and small files."""
  return jax.process_index() == 0


def main_print(*args, file=None, **kwargs) -> None:
  """print() on process 0 only (flushed), so N processes do not repeat every line."""
  if is_main_process():
    print(*args, file=file or sys.stdout, flush=True, **kwargs)


def quiet_other_processes() -> None:
  """absl logging at ERROR on processes other than 0 (their warnings repeat process 0's)."""
  if not is_main_process():
    from absl import logging  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.ERROR)


def describe() -> str:
  """One line: process i of n, local/global devices and platform."""
  return (
    f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local / "
    f"{jax.device_count()} global {jax.devices()[0].platform} device(s)"
  )

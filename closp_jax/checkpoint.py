"""Checkpoints: orbax CheckpointManager over {train state, data iterator state}.

Layout: WORKDIR/checkpoints/<step>/{state,data}. Orbax writes each checkpoint into a temporary
folder (`<step>.orbax-checkpoint-tmp-*`) and renames it when complete, so a run killed at any
moment, also during an asynchronous write, leaves only complete checkpoints under step names;
leftover temporary folders are deleted when the next run opens the directory. The last `keep`
checkpoints are kept, plus the best one by validation loss (its step is recorded in
`best.json`, written atomically).

A step folder that cannot be read back (files truncated or lost by a crash of the machine,
a half-deleted old step, a full disk at the time) is not trusted: `restore_latest` tries the
steps newest first, moves an unreadable one aside to WORKDIR/checkpoints_unreadable/ and says
so, and restores the newest one that reads back whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from closp_jax import atomic
from closp_jax.errors import UserError
from closp_jax.parallel import data_checkpoint

BEST_METRIC = "val_loss"


class CheckpointError(UserError, RuntimeError):
  """A checkpoint cannot be written or read; the message names the step, the folder and the fix."""


def _metric(metrics) -> float:
  return -float(metrics[BEST_METRIC])


class Checkpointer:
  """Saves and restores the train state and the data-iterator state together."""

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).expanduser().absolute()  # orbax wants absolute paths
    self.keep = max(int(keep), 1)
    self._last_saved: int | None = None  # the step of the latest save started (for error messages)
    policy = cm.AnyPreservationPolicy(
      [
        cm.LatestN(n=max(int(keep), 1)),
        cm.BestN(get_metric_fn=_metric, n=1, keep_checkpoints_without_metrics=False),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=("state", "data"),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": data_checkpoint.DataIteratorHandler()},
    )

  # -- queries ---------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    path = self.directory / "best.json"
    if not path.is_file():
      return None
    step = int(json.loads(path.read_text())["step"])
    return step if step in self.all_steps() else None

  def resolve(self, which: str | int) -> int:
    """'latest', 'best' or a step number -> an existing step; a clear error otherwise."""
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {self.directory}")
    if which == "latest":
      return max(steps)
    if which == "best":
      best = self.best_step()
      if best is None:
        raise CheckpointError(
          f"no best checkpoint recorded in {self.directory} (best.json is written at each "
          f"validation); available steps: {sorted(steps)}"
        )
      return best
    step = int(which)
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {sorted(steps)}")
    return step

  # -- save / restore --------------------------------------------------------
  def save(self, step: int, state, data_iterator=None, metrics: dict | None = None, force: bool = False) -> bool:
    """Starts writing checkpoint `step` (in the background with async_save).

    A write that fails (full disk, lost permissions) raises CheckpointError naming the step,
    the folder, the free space and the latest complete checkpoint, which stays as it was.
    Errors of an earlier background write surface here or in `wait`.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = data_checkpoint.DataSave(data_iterator)
    try:
      saved = self.manager.save(
        int(step),
        args=ocp.args.Composite(**items),
        metrics={k: float(v) for k, v in metrics.items()} if metrics else None,
        force=force,
      )
    except Exception as e:  # orbax wraps the OSError of a failed write in various types
      raise self._write_error(int(step), e) from e
    self._last_saved = int(step)
    if saved and metrics and BEST_METRIC in metrics:
      self._record_best(int(step), float(metrics[BEST_METRIC]))
    return saved

  def _write_error(self, step: int | None, err: BaseException) -> CheckpointError:
    try:
      free = f"{shutil.disk_usage(self.directory).free / 2**20:.1f} MiB free"
    except OSError:
      free = "free space unknown"
    try:
      latest = self.latest_complete_step()
    except Exception:  # pylint: disable=broad-except
      latest = None
    step = step if step is not None else self._last_saved
    what = f"checkpoint {step}" if step is not None else "a checkpoint"
    kept = (
      f"the latest complete checkpoint is still step {latest}"
      if latest is not None
      else "no complete checkpoint exists yet"
    )
    return CheckpointError(
      f"writing {what} to {self.directory} failed ({_root_cause(err)}; {free}); {kept}. "
      f"Free space or fix the permissions there (or pass --workdir on another disk), then run "
      f"the same command again to resume."
    )

  def check_space(self, nbytes: int) -> str | None:
    """Raises CheckpointError if one checkpoint of `nbytes` cannot fit; a warning if `keep`+1 may not."""
    free = shutil.disk_usage(self.directory).free
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    if free < nbytes + (1 << 20):
      raise CheckpointError(
        f"{self.directory} has {mib(free)} free, less than one checkpoint of this model "
        f"(about {mib(nbytes)}): free space or pass --workdir on a disk with at least "
        f"{mib((self.keep + 1) * nbytes)} free"
      )
    if free < (self.keep + 1) * nbytes:
      return (
        f"warning: {self.directory} has {mib(free)} free; keeping {self.keep} checkpoints of "
        f"about {mib(nbytes)} each (plus one being written) may fill it"
      )
    return None

  def _record_best(self, step: int, value: float) -> None:
    if jax.process_index() != 0:
      return
    path = self.directory / "best.json"
    if path.is_file():
      current = json.loads(path.read_text())
      if current.get(BEST_METRIC, float("inf")) <= value and int(current["step"]) in self.all_steps() + [step]:
        return
    atomic.write_json(path, {"step": step, BEST_METRIC: value})

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores onto the shardings of `abstract_state` (any topology); the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = data_checkpoint.DataRestore(data_iterator)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    return restored["state"]

  def latest_complete_step(self) -> int | None:
    """The newest step folder with a final name (it may still turn out unreadable)."""
    return self.manager.latest_step()

  def restore_latest(
    self, abstract_state, data_iterator=None, say: Callable[[str], None] = print
  ) -> tuple[Any, int | None]:
    """(state, step) from the newest checkpoint that reads back whole; (None, None) if there is none.

    An unreadable step is moved to `<directory>_unreadable/<step>-<time>` (so a later save of
    that step number is not blocked and it is never picked again), named in a message, and
    the next older step is tried. Raises CheckpointError if step folders exist but none reads.
    """
    tried = []
    while True:
      step = self.latest_complete_step()
      if step is None:
        if tried:
          raise CheckpointError(
            f"none of the checkpoints in {self.directory} could be read back (steps "
            f"{', '.join(map(str, tried))}, moved to {self.unreadable_dir}); delete "
            f"{self.directory} to start from scratch"
          )
        return None, None
      try:
        problem = self.layout_mismatch(step, abstract_state)
        if problem is None:
          state = self.restore(step, abstract_state, data_iterator)
      except data_checkpoint.DataStateError as e:  # a layout it cannot be mapped onto: not damage
        raise CheckpointError(f"checkpoint {self.directory / str(step)}: {e}") from e
      except Exception as e:  # pylint: disable=broad-except  # tensorstore/orbax/json raise many types
        tried.append(step)
        moved = self._set_aside(step)
        self.manager.reload()
        say(
          f"checkpoint {self.directory / str(step)} is incomplete or corrupt and was not restored "
          f"({_root_cause(e)}); moved it to {moved}; trying the next older checkpoint"
        )
        continue
      if problem is not None:  # a readable checkpoint of another model: not damage, do not touch it
        raise CheckpointError(
          f"checkpoint {self.directory / str(step)} holds a different train state than this config "
          f"builds ({problem}). Resume with the config it was written with (saved as config.json "
          f"in the workdir), or pass another --workdir to start a new run."
        )
      return state, step

  def layout_mismatch(self, step: int, abstract_state) -> str | None:
    """None when checkpoint `step` holds the arrays of `abstract_state` (names, shapes, dtypes).

    Otherwise a short description of the difference. Raises if the checkpoint's metadata
    cannot be read (the caller treats that as damage).
    """
    meta = self.manager.item_metadata(int(step))["state"]
    if meta is None:
      raise CheckpointError(f"checkpoint {step} has no readable metadata for its state")
    saved, wanted = _layout(getattr(meta, "tree", meta)), _layout(abstract_state)
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    changed = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    if not (missing or extra or changed):
      return None
    parts = []
    if missing:
      parts.append(f"{len(missing)} array(s) missing from it, e.g. {', '.join(missing[:3])}")
    if extra:
      parts.append(f"{len(extra)} it has that this model lacks, e.g. {', '.join(extra[:3])}")
    for k in changed[:3]:
      parts.append(f"{k}: saved {saved[k][1]}{list(saved[k][0])}, model {wanted[k][1]}{list(wanted[k][0])}")
    return "; ".join(parts)

  @property
  def unreadable_dir(self) -> Path:
    return self.directory.with_name(self.directory.name + "_unreadable")

  def _set_aside(self, step: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = self.unreadable_dir / f"{step}-{stamp}"
    n = 1
    while target.exists():  # the same step set aside twice within a second
      target, n = self.unreadable_dir / f"{step}-{stamp}-{n}", n + 1
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      os.replace(self.directory / str(step), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      multihost_utils.sync_global_devices(f"closp_checkpoint_set_aside_{step}")
    return target

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # a failed background write
      raise self._write_error(None, e) from e

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _root_cause(err: BaseException) -> str:
  """The innermost exception's type and message, shortened in the middle (the OS reason is at the end)."""
  while err.__cause__ is not None or err.__context__ is not None:
    err = err.__cause__ or err.__context__
  text = " ".join(str(err).split())
  if len(text) > 400:
    text = text[:180] + " ... " + text[-200:]
  return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _layout(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """'params/s2_encoder/...' -> (shape, dtype) for a state pytree or orbax's metadata tree of it."""

  def name(entry) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(name(e) for e in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in leaves}


def list_steps(directory: str | os.PathLike) -> list[int]:
  """Sorted steps with a final (complete) folder name under `directory`, without opening orbax."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# ---- the one way binaries read a run's parameters -----------------------------------------------


def load_run_config(workdir: str | os.PathLike):
  """The config a training run saved in WORKDIR/config.json (ConfigDict, older shapes upgraded)."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  from closp_jax.config import upgrade_saved_config  # pylint: disable=import-outside-toplevel

  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise CheckpointError(
      f"{path} not found: {workdir} is not a training workdir (the trainer writes config.json when a run "
      "starts); pass the workdir of a run (closp-train --workdir DIR)"
    )
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  for key in ("model", "data"):
    if key not in data:
      raise CheckpointError(f"{path}: no {key!r} section; expected a closp-jax training config")
  return ml_collections.ConfigDict(upgrade_saved_config(data))


def restore_variables(workdir: str | os.PathLike, config, which: str | int = "latest", *, mesh=None):
  """(model, {'params', 'batch_stats'}, label) of a run: what evaluate, export and search read.

  which: 'latest', 'best', a step number, or 'untrained' (the config's initial variables: its seed
  and the pretrained towers named in config.init, exactly what the trainer starts from). Only params
  and batch_stats are read (not the optimizer state), onto `mesh` (default: one CPU device) whatever
  topology wrote them. A checkpoint of another model is a CheckpointError naming the step and the
  config, and stays in place.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.train import setup  # pylint: disable=import-outside-toplevel

  workdir = Path(workdir).expanduser().absolute()  # orbax wants absolute paths; users give relative ones
  if mesh is None:
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")[:1]), ("data",))
  model = CLOSP(config.model)
  rng = jax.random.key(int(config.seed))
  if str(which) == "untrained":
    variables, shardings = setup.init_variables(model, config, mesh, rng)
    variables, _ = setup.load_pretrained(variables, config, shardings)
    return model, variables, "untrained"
  directory = Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise CheckpointError(
      f"no checkpoints folder {directory}: train first (closp-train --workdir {workdir}), "
      "or ask for the untrained model (--checkpoint untrained)"
    )
  ckpt = Checkpointer(directory, async_save=False)
  try:
    step = ckpt.resolve(which)
  finally:
    ckpt.close()
  boxed = jax.eval_shape(lambda r: model.init(r, *setup.dummy_inputs(config), train=False), rng)
  rules = mesh_lib.logical_rules(config.mesh.rules) if "mesh" in config else None
  target = {}
  for col in ("params", "batch_stats"):
    tree = boxed.get(col, {})
    if col == "batch_stats" and not tree:
      continue
    shardings = (
      mesh_lib.param_shardings(tree, mesh, rules)
      if rules is not None
      else jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), nn.unbox(tree))
    )
    target[col] = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(tree), shardings
    )
  state_dir = directory / str(step) / "state"
  quiet = logging.getLogger("absl")
  level = quiet.level
  quiet.setLevel(logging.ERROR)  # orbax warns that the item folder has no step metadata; it is the step's
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      restored = ckptr.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        ),
      )
  except Exception as err:  # orbax raises several types for a tree that does not match
    raise CheckpointError(
      f"{state_dir}: the checkpoint's parameters do not fit the model of {Path(workdir) / 'config.json'} "
      f"({_root_cause(err)}); it stays in place"
    ) from err
  finally:
    quiet.setLevel(level)
  return model, {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}, str(step)

"""Checkpoints: orbax CheckpointManager over {train state, data iterator state}.

Layout: WORKDIR/checkpoints/<step>/{state,data}. Orbax writes each checkpoint into a temporary
folder and renames it when complete, so a run killed at any moment leaves only complete
checkpoints behind; `latest_step` only ever sees those. The last `keep` checkpoints are kept,
plus the best one by validation loss (its step is recorded in `best.json`, written atomically).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

BEST_METRIC = "val_loss"


class CheckpointError(RuntimeError):
  pass


def _metric(metrics) -> float:
  return -float(metrics[BEST_METRIC])


class Checkpointer:
  """Saves and restores the train state and the data-iterator state together."""

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=max(int(keep), 1)),
        cm.BestN(get_metric_fn=_metric, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

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
            f"validation); available steps: {sorted(steps)}")
      return best
    step = int(which)
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {sorted(steps)}")
    return step

  # -- save / restore --------------------------------------------------------
  def save(self, step: int, state, data_iterator=None, metrics: dict | None = None, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self.manager.save(
        int(step), args=ocp.args.Composite(**items),
        metrics={k: float(v) for k, v in metrics.items()} if metrics else None, force=force)
    if saved and metrics and BEST_METRIC in metrics:
      self._record_best(int(step), float(metrics[BEST_METRIC]))
    return saved

  def _record_best(self, step: int, value: float) -> None:
    if jax.process_index() != 0:
      return
    path = self.directory / "best.json"
    if path.is_file():
      current = json.loads(path.read_text())
      if current.get(BEST_METRIC, float("inf")) <= value and int(current["step"]) in self.all_steps() + [step]:
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, BEST_METRIC: value}))
    os.replace(tmp, path)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores onto the shardings of `abstract_state` (any topology); the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

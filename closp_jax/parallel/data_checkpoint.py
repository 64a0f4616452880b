"""Data-iterator checkpoints that survive a change in the number of processes.

grain's orbax handler writes one file per process, `process_<i>-of-<n>.json`, and on restore
reads the file of the same i and n: a checkpoint written by 2 processes cannot be resumed by
1 (or by 64) without this module. The trainer's iterators hold only a step position
(`{"next_index": k}`) that is the same on every process, so a checkpoint from another layout
is restored by setting that common position: training continues at the same step of the
epoch schedule, each process reading its new share of the records from there on.

`DataIteratorHandler` is grain's handler with that restore; `DataSave` / `DataRestore` are its
orbax args. `restore_iterator` does the same for a `<step>/data` folder directly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from closp_jax.errors import UserError

_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


class DataStateError(UserError, ValueError):
  """The data-iterator state in a checkpoint cannot be restored on this layout."""


def _layout() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def saved_states(directory) -> dict[int, dict[int, str]]:
  """{process count: {process index: state text}} of the state files in a checkpoint's data folder."""
  out: dict[int, dict[int, str]] = {}
  for path in epath.Path(directory).iterdir():
    m = _FILE.fullmatch(path.name)
    if m:
      out.setdefault(int(m.group(2)), {})[int(m.group(1))] = path.read_text()
  return out


def state_for_this_process(directory) -> tuple[Any, str]:
  """(state, note) for this process: its own file, or the common state of another layout."""
  directory = epath.Path(directory)
  index, count = _layout()
  own = directory / f"process_{index}-of-{count}.json"
  if own.exists():
    return json.loads(own.read_text()), ""
  layouts = saved_states(directory)
  if not layouts:
    raise DataStateError(f"{directory} holds no data-iterator state (process_<i>-of-<n>.json)")
  saved_count = max(layouts)
  files = layouts[saved_count]
  if len(files) != saved_count:
    raise DataStateError(
      f"{directory}: the data-iterator state of a {saved_count}-process run is incomplete "
      f"(files for processes {sorted(files)})"
    )
  states = {i: json.loads(text) for i, text in files.items()}
  first = states[0]
  if any(s != first for s in states.values()):
    raise DataStateError(
      f"{directory}: written by {saved_count} processes whose iterator states differ "
      f"({', '.join(f'{i}: {states[i]}' for i in sorted(states)[:3])}); they cannot be mapped onto "
      f"{count} process(es). Resume with {saved_count} processes."
    )
  note = (
    f"data iterator: checkpoint written by {saved_count} process(es), resumed by {count}; "
    f"continuing at the same position {first} (each process now reads its new share)"
  )
  return first, note


def restore_iterator(directory, iterator) -> str:
  """Sets `iterator` (a grain DatasetIterator) from a checkpoint's data folder; returns a note ('' if same layout)."""
  state, note = state_for_this_process(directory)
  iterator.set_state(state)
  return note


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's orbax handler; restore also accepts a checkpoint written by another number of processes."""

  def restore(self, directory: epath.Path, item=None, args=None):
    item = item or args.item  # pytype: disable=attribute-error
    if not isinstance(item, grain.DatasetIterator):
      return super().restore(directory, item=item, args=args)
    note = restore_iterator(directory, item)
    if note and jax.process_index() == 0:
      print(note, flush=True)
    if hasattr(item, "start_prefetch"):
      item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any

"""SIGTERM / SIGINT during a run: stop cleanly, never lose a finished step.

A run goes through three phases, and a stop signal means something different in each:

  setup     (flags, dataset build, model init, restore): nothing new to save. The signal
            raises `Preempted` at once; the binary prints how to resume and exits 0.
  train     (the step loop): the signal only sets a flag. The loop finishes the step it is in,
            saves a checkpoint of that step (with the data-iterator state) and returns.
            A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once.
  final     (the evaluation after the last step, whose checkpoint is already saved): the
            signal raises `Preempted`; the next start finds the final checkpoint and only
            evaluates again.

`Preempted` derives from BaseException, as KeyboardInterrupt does, so library code that
catches `Exception` does not swallow it.

With several JAX processes a signal may reach only some of them; `agree()` makes every
process see the same decision at the same step (a one-integer all-gather), so they all save
the same step and stop together.
"""

from __future__ import annotations

import signal

import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESUME_HINT = "Run the same command again to resume."


class Preempted(BaseException):
  """A stop signal arrived where there is nothing to checkpoint (before or after the step loop)."""

  def __init__(self, signal_name: str, phase: str):
    super().__init__(signal_name, phase)
    self.signal_name = signal_name
    self.phase = phase

  def __str__(self):
    return f"{self.signal_name} during {self.phase}"


class StopRequest:
  """Installs SIGTERM/SIGINT handlers for the life of a run (a context manager).

  `phase` is 'setup', 'train' or 'final' (see the module docstring); the loop moves it on.
  `signal` is the name of the first stop signal received during training, else None.
  """

  def __init__(self):
    self.signal: str | None = None
    self.phase = "setup"
    self._previous: dict = {}

  def __enter__(self) -> StopRequest:
    for sig in STOP_SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.phase != "train":
      raise Preempted(name, self.phase)
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signal = self.signal or name

  def agree(self) -> str | None:
    """The stop decision shared by all processes (the local one with a single process)."""
    import jax  # pylint: disable=import-outside-toplevel

    if jax.process_count() == 1:
      return self.signal
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    flags = np.asarray(multihost_utils.process_allgather(np.int32(self.signal is not None)))
    if self.signal is None and flags.max() > 0:
      self.signal = f"a stop signal to process {int(np.argmax(flags.reshape(-1)))}"
    return self.signal


def install_early_handlers() -> None:
  """Until a run installs its StopRequest: a stop signal raises Preempted('start-up').

  The binary calls this first thing, so a signal during imports or flag parsing ends the
  process with a message and exit code 0 instead of a traceback.
  """

  def handle(signum, frame):  # pylint: disable=unused-argument
    raise Preempted(signal.Signals(signum).name, "start-up")

  for sig in STOP_SIGNALS:
    signal.signal(sig, handle)


def stopped_message(err: Preempted, latest_step: int | None, directory) -> str:
  """What the user reads when a run stops before or after the step loop."""
  if err.phase == "final":
    saved = f"the final checkpoint (step {latest_step}) is saved in {directory}"
    return (
      f"stopped ({err.signal_name}) during the final evaluation; {saved}. Run the same command again to evaluate it."
    )
  if latest_step is None:
    saved = "no checkpoint yet (training had not started), nothing to save"
  else:
    saved = f"nothing new to save; the latest checkpoint is step {latest_step} in {directory}"
  return f"stopped ({err.signal_name}) during {err.phase}: {saved}. {RESUME_HINT}"

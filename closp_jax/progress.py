"""One way to report long work: messages and progress on stderr, a copy in a log file.

    report = Reporter(log_path=workdir / "train.log")
    report.say("resumed from ...")                          # a message line
    with report.task(total=150, desc="train", unit="step", start=10) as bar:
      bar.update(11, loss=0.93, lr=1e-3)                  # absolute position, postfix fields

On a terminal a task is a tqdm bar (messages print above it); elsewhere (files, CI, pods, a
scheduler's log) it is plain lines, at most one per `every` positions and one per `seconds`:
`step 20/150 (13%) loss=0.9312 lr=0.001 | 123.4 step/s ETA 00:01:05`. The log file gets the
plain lines and messages either way. Results (tables, paths written) are the caller's to print on
stdout; everything here goes to stderr, and only from JAX process 0 unless told otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _fmt_time(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):
    return "--:--"
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_value(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
  return str(value)


def _is_main_process() -> bool:
  try:
    import jax  # pylint: disable=import-outside-toplevel

    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except  (no backend yet: a single process)
    return True


class Reporter:
  """Messages and progress for one run of a binary (see the module docstring)."""

  def __init__(self, *, enabled: bool | None = None, stream=None, log_path: str | Path | None = None):
    self.enabled = _is_main_process() if enabled is None else enabled
    self.stream = stream or sys.stderr
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.log = None
    if log_path is not None and self.enabled:
      Path(log_path).parent.mkdir(parents=True, exist_ok=True)
      self.log = open(log_path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    self._bar = None

  def _log(self, text: str) -> None:
    if self.log is not None:
      self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
      self.log.flush()

  def say(self, text: str) -> None:
    """A message line (above a running bar on a terminal)."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)
    self._log(text)

  def task(
    self, total: int | None, desc: str, unit: str = "it", *, start: int = 0, every: int = 1, seconds: float = 30.0
  ) -> Task:
    return Task(self, total, desc, unit, start=start, every=every, seconds=seconds)

  def close(self) -> None:
    if self.log is not None:
      self.log.close()
      self.log = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Task:
  """The progress of one long piece of work (Reporter.task)."""

  def __init__(
    self, reporter: Reporter, total: int | None, desc: str, unit: str, *, start: int, every: int, seconds: float
  ):
    self.reporter, self.total, self.desc, self.unit = reporter, total, desc, unit
    self.position = start
    self.every, self.seconds = max(int(every), 1), float(seconds)
    self._t0, self._p0 = time.perf_counter(), start
    self._last_line = 0.0
    self._bar = None
    if reporter.enabled and reporter.tty:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel

      self._bar = tqdm(
        total=total, initial=start, desc=desc, unit=unit, file=reporter.stream, dynamic_ncols=True, leave=True
      )
      reporter._bar = self._bar  # pylint: disable=protected-access

  def restart_clock(self) -> None:
    """Measure rates from here on (e.g. after the first step, which compiles)."""
    self._t0, self._p0 = time.perf_counter(), self.position

  def rate(self) -> float:
    elapsed = time.perf_counter() - self._t0
    return (self.position - self._p0) / elapsed if elapsed > 0 and self.position > self._p0 else 0.0

  def line(self, **postfix) -> str:
    """The plain-text progress line of the current position."""
    rate = self.rate()
    parts = [f"{self.desc} {self.position}"]
    if self.total:
      parts[0] += f"/{self.total} ({100.0 * self.position / self.total:.0f}%)"
    fields = " ".join(f"{k}={_fmt_value(v)}" for k, v in postfix.items())
    if fields:
      parts.append(fields)
    tail = f"| {rate:.1f} {self.unit}/s"
    if self.total and rate:
      tail += f" ETA {_fmt_time((self.total - self.position) / rate)}"
    parts.append(tail)
    return " ".join(parts)

  def update(self, position: int | None = None, *, advance: int = 0, force: bool = False, **postfix) -> None:
    """Moves to `position` (or by `advance`); shows `postfix` fields."""
    previous = self.position
    self.position = position if position is not None else self.position + advance
    rep = self.reporter
    if not rep.enabled:
      return
    at_end = self.total is not None and self.position >= self.total
    if self._bar is not None:
      self._bar.update(self.position - previous)
      if postfix:
        self._bar.set_postfix_str(" ".join(f"{k}={_fmt_value(v)}" for k, v in postfix.items()), refresh=False)
      if force or at_end or self.position % self.every == 0:
        rep._log(self.line(**postfix))  # pylint: disable=protected-access
      return
    now = time.perf_counter()
    due = self.position % self.every == 0 or now - self._last_line >= self.seconds
    if force or at_end or due:
      text = self.line(**postfix)
      print(text, file=rep.stream, flush=True)
      rep._log(text)  # pylint: disable=protected-access
      self._last_line = now

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self.reporter._bar = None  # pylint: disable=protected-access
      self._bar = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

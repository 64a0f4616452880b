"""Progress output: a one-line bar on a terminal, plain log lines otherwise (files, CI, pods)."""
from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """Reports step, loss terms, lr, temperature, samples/s and ETA."""

  def __init__(self, total_steps: int, start_step: int, samples_per_step: int, *, enabled: bool = True,
               stream=None, every: int = 10):
    self.total = total_steps
    self.start_step = start_step
    self.samples_per_step = samples_per_step
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self.every = max(int(every), 1)
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._t0 = None
    self._s0 = start_step
    self._last_len = 0

  def start_timer(self, step: int) -> None:
    """Starts the clock after the first (compiling) step, so rates are steady-state figures."""
    self._t0 = time.perf_counter()
    self._s0 = step

  def rate(self, step: int) -> float:
    if self._t0 is None or step <= self._s0:
      return 0.0
    return (step - self._s0) * self.samples_per_step / (time.perf_counter() - self._t0)

  def update(self, step: int, metrics: dict, lr: float) -> None:
    if not self.enabled or (step % self.every and step != self.total):
      return
    rate = self.rate(step)
    steps_per_s = rate / self.samples_per_step if rate else 0.0
    eta = (self.total - step) / steps_per_s if steps_per_s else float("nan")
    terms = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("loss/"))
    text = (f"step {step}/{self.total} loss={metrics['loss']:.4f} {terms} lr={lr:.3g} "
            f"scale={metrics['logit_scale']:.3g} {rate:.1f} samples/s "
            f"ETA {_fmt_time(eta) if eta == eta else '--:--'}")
    if self.tty:
      width = 24
      done = int(width * step / max(self.total, 1))
      line = f"\r[{'#' * done}{'.' * (width - done)}] {text}"
      pad = max(self._last_len - len(line), 0)
      self.stream.write(line + " " * pad)
      self._last_len = len(line)
      if step == self.total:
        self.stream.write("\n")
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self.tty and self._last_len:
      self.stream.write("\n")
      self._last_len = 0
    self.stream.write(text + "\n")
    self.stream.flush()

"""Looking inside the train step: a jax.profiler trace of chosen steps, and the compiled step's
memory and cost analysis.

`--config.profile.steps=10:15` traces the five updates 10 to 14 (0-based, as the state counts them
before the update) into WORKDIR/profile: TensorBoard's profile tab reads `plugins/profile/*/*.xplane.pb`
(`tensorboard --logdir WORKDIR/profile`) and Perfetto (ui.perfetto.dev) opens `*.trace.json.gz`. Each
traced update is a `train` step annotation, so the trace viewer groups the device work by step.

Every compiled step variant (one per freezing phase) is analysed once, when it is first compiled:
XLA's FLOP and bytes-accessed counts and the device memory it needs (arguments, outputs, temporaries,
code). The log gets one line per variant; WORKDIR/profile/compiled_steps.json keeps the full figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax

from closp_jax import atomic


def parse_steps(spec: str) -> tuple[int, int] | None:
  """'A:B' -> (A, B) with 0 <= A < B; '' -> None. ValueError says what is expected."""
  spec = spec.strip()
  if not spec:
    return None
  start, sep, stop = spec.partition(":")
  try:
    a, b = int(start), int(stop)
  except ValueError:
    a = b = None
  if not sep or a is None or not 0 <= a < b:
    raise ValueError("expected 'A:B', two step numbers with 0 <= A < B, e.g. '10:15' (steps 10 to 14)")
  return a, b


def _number(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return None


def compiled_analysis(jitted: Callable, *args) -> dict:
  """FLOPs, bytes accessed and device memory of `jitted` compiled for `args` (the same compilation the
  next call reuses). Figures a backend does not report are None."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  out = {
    "flops": _number(cost.get("flops")),
    "transcendentals": _number(cost.get("transcendentals")),
    "bytes_accessed": _number(cost.get("bytes accessed")),
  }
  try:
    mem = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):  # backends without it
    mem = None
  for field in ("argument", "output", "alias", "temp", "generated_code"):
    out[f"{field}_bytes"] = _number(getattr(mem, f"{field}_size_in_bytes", None))
  return out


def _gib(x):
  return "?" if x is None else f"{x / 2**30:.2f} GiB"


def describe(name: str, a: dict) -> str:
  """One log line for a compiled step's analysis."""
  flops = "?" if a["flops"] is None else f"{a['flops'] / 1e9:.1f} GFLOP"
  moved = "?" if a["bytes_accessed"] is None else f"{a['bytes_accessed'] / 2**30:.2f} GiB accessed"
  peak = None
  if a["argument_bytes"] is not None and a["temp_bytes"] is not None:
    peak = a["argument_bytes"] + a["temp_bytes"] + (a["output_bytes"] or 0) - (a["alias_bytes"] or 0)
  return (
    f"compiled step ({name}): {flops}, {moved} per device; memory: arguments {_gib(a['argument_bytes'])}, "
    f"temporaries {_gib(a['temp_bytes'])}, about {_gib(peak)} in all"
  )


class StepProfiler:
  """Starts a jax.profiler trace before update A and stops it after update B-1 (once the device is done)."""

  def __init__(self, workdir: Path, spec: str, *, start_step: int, total: int, say: Callable[[str], None]):
    self.directory = Path(workdir) / "profile"
    self.window = parse_steps(spec)
    self.say = say
    self.active = False
    self.analyses: dict = {}
    if self.window is not None:
      a, b = self.window
      if b > total:
        say(f"profile.steps={spec}: the run has {total} steps; tracing steps {a} to {min(b, total) - 1} only")
      if a < start_step:
        say(f"profile.steps={spec}: the run resumes at step {start_step}, past step {a}; no trace this time")
        self.window = None

  def analyse(self, name: str, jitted: Callable, *args) -> None:
    """Logs the compiled analysis of a step variant once, and records it in profile/compiled_steps.json."""
    if name in self.analyses:
      return
    a = self.analyses[name] = compiled_analysis(jitted, *args)
    self.say(describe(name, a))
    if jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
      atomic.write_text(self.directory / "compiled_steps.json", json.dumps(self.analyses, indent=2, sort_keys=True))

  def annotation(self, step: int):
    """Context for dispatching update `step`: starts the trace at A; a step annotation while tracing."""
    if self.window is not None and step == self.window[0] and not self.active:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self.active = True
      self.say(f"profiling steps {self.window[0]} to {self.window[1] - 1} into {self.directory}")
    if self.active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return _NULL

  def after(self, step: int, outputs) -> None:
    """After dispatching update `step`: at B-1 waits for `outputs` and writes the trace."""
    if self.active and step + 1 >= self.window[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      self.window = None
      self.say(
        f"profile written to {self.directory} (tensorboard --logdir {self.directory}, or *.trace.json.gz in Perfetto)"
      )


class _Null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


_NULL = _Null()

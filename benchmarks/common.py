"""What every benchmark row shares: alternated timing, medians, ratio orientation, table, JSON.

A row compares closp-jax with a reference on one figure:

    {"closp_jax": x, "reference": y, "unit": "samples/s", "ratio": r, "detail": {...}}

`ratio` is oriented so that above 1 means closp-jax is better: x / y for rates (higher is
better), y / x for costs such as bytes or seconds (lower is better). `detail` holds the raw
repeats and anything else worth keeping (load average at the time, FLOPs, settings).

Timing: every contender is warmed up first (compilation, caches, allocator), then the
contenders run in alternation, reversing the order every round (A B, B A, A B, ...), so a
change of machine load during the measurement hits all of them alike. The figure is the
median over rounds.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HIGHER = "higher"  # rates: samples/s, FLOP/s
LOWER = "lower"  # costs: bytes, seconds


def load_average() -> float:
  """The 1-minute load average (NaN where the OS does not report one)."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return float("nan")


def alternate(
  contenders: Mapping[str, Callable[[], Any]],
  *,
  repeats: int,
  warmup: int = 1,
  clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
  """Seconds per call of each contender, measured in alternated rounds after `warmup` calls each.

  Each callable does one unit of work and returns when it is finished (block on device work
  inside it). Round r runs the contenders in their given order when r is even and reversed
  when r is odd. Returns {name: [seconds of round 0, round 1, ...]}.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  if warmup < 0:
    raise ValueError(f"warmup must be >= 0, got {warmup}")
  names = list(contenders)
  if not names:
    raise ValueError("alternate() needs at least one contender")
  for name in names:
    for _ in range(warmup):
      contenders[name]()
  times: dict[str, list[float]] = {n: [] for n in names}
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      start = clock()
      contenders[name]()
      times[name].append(clock() - start)
  return times


def median(values) -> float:
  values = [float(v) for v in values]
  if not values:
    raise ValueError("median of no values")
  return float(statistics.median(values))


def rates(seconds: list[float], work: float) -> list[float]:
  """Work per second for each timing (e.g. samples per step / seconds per step)."""
  return [work / s if s > 0 else math.inf for s in seconds]


def oriented_ratio(closp_jax: float, reference: float, better: str) -> float:
  """> 1 means closp-jax is better: x/y when higher is better, y/x when lower is better."""
  if better not in (HIGHER, LOWER):
    raise ValueError(f"better must be {HIGHER!r} or {LOWER!r}, got {better!r}")
  num, den = (closp_jax, reference) if better == HIGHER else (reference, closp_jax)
  if den == 0:
    return math.inf if num > 0 else math.nan
  return num / den


def make_row(
  closp_jax: float, reference: float, unit: str, better: str, detail: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """One JSON row; see the module docstring."""
  row = {
    "closp_jax": float(closp_jax),
    "reference": float(reference),
    "unit": unit,
    "ratio": float(oriented_ratio(closp_jax, reference, better)),
  }
  row["detail"] = {"better": better, "load_avg_1m": load_average(), **dict(detail or {})}
  return row


def timed_row(
  times: Mapping[str, list[float]],
  closp_name: str,
  reference_name: str,
  work: float,
  unit: str,
  detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """A 'higher is better' rate row from alternate() output: median of work / seconds per round."""
  jx = rates(times[closp_name], work)
  ref = rates(times[reference_name], work)
  extra = {
    "closp_jax_repeats": [round(v, 3) for v in jx],
    "reference_repeats": [round(v, 3) for v in ref],
    **dict(detail or {}),
  }
  return make_row(median(jx), median(ref), unit, HIGHER, extra)


def check_row(name: str, row: Mapping[str, Any]) -> None:
  """Raises ValueError naming the row and field when a row lacks the documented shape."""
  for field, kind in (("closp_jax", (int, float)), ("reference", (int, float)), ("unit", str), ("ratio", (int, float))):
    if field not in row:
      raise ValueError(f"row {name!r}: missing field {field!r}")
    if not isinstance(row[field], kind):
      raise ValueError(f"row {name!r}: field {field!r} should be {kind}, got {type(row[field]).__name__}")


def _fmt(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  if value == 0:
    return "0"
  mag = abs(value)
  if mag >= 1e6:
    return f"{value:,.0f}"
  if mag >= 100:
    return f"{value:.0f}"
  if mag >= 1:
    return f"{value:.2f}"
  return f"{value:.3g}"


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
  """A fixed-width text table of the rows (also valid Markdown)."""
  header = ("row", "closp-jax", "reference", "unit", "ratio")
  body = [
    (name, _fmt(r["closp_jax"]), _fmt(r["reference"]), r["unit"], f"{r['ratio']:.2f}x") for name, r in rows.items()
  ]
  widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  out += [line(b) for b in body]
  return "\n".join(out)


def write_json(path: str | os.PathLike, rows: Mapping[str, Mapping[str, Any]]) -> Path:
  """Writes the rows (checked) to `path` through a temporary file and a rename."""
  for name, row in rows.items():
    check_row(name, row)
  from closp_jax import atomic  # pylint: disable=import-outside-toplevel

  return atomic.write_json(path, rows, indent=2, sort_keys=True)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_summary() -> dict[str, Any]:
  """What the figures were measured on (printed with the table, copied into docs/benchmarks.md)."""
  import jax  # pylint: disable=import-outside-toplevel

  info = {
    "cpu": cpu_model(),
    "cpus": os.cpu_count(),
    "load_avg_1m": load_average(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
  }
  try:
    import torch  # pylint: disable=import-outside-toplevel

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    pass
  return info


def matmul_gflops(n: int = 2048, calls: int = 3) -> float:
  """float32 [n, n] @ [n, n] GFLOP/s with jax on the default device (best of `calls` after warm-up)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(calls):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best / 1e9

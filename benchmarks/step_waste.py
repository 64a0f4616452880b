"""Waste in the train step, measured change by change (issue: the accelerator step at 2-4% of peak).

Each row builds the step twice with benchmarks.jax_step.ClospStep, as the trainer builds it, once
without and once with one change, and times both in alternated rounds in the same process; XLA's
FLOP and bytes-accessed counts of both compiled steps go with it. A change is kept in the library only
where its row shows a gain. "closp_jax" is the step with the change, "reference" the step without.

    python -m benchmarks.step_waste --out benchmarks/results/step-waste-$(date +%F).json

Rows:
  text_bucket       label texts padded to the dataset's bucket (16 tokens) instead of data.max_len (64)
  bn_fast_variance  BatchNorm statistics in one pass (E[x^2] - E[x]^2) instead of two
  text_table_projection  a trained text projection over the frozen text model: the model's outputs
                    looked up in the table of dataset texts instead of run every step (sample, 64 + 64)
  pod_dtype_audit   not timed: dot/convolution operand dtypes in the lowered `:pod` step (bf16 intended)

Run it alone on a quiet machine: a benchmark beside other work is not a measurement.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import sys

import jax

from benchmarks import common
from benchmarks.jax_step import ClospStep


def say(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _cost(step: ClospStep) -> dict:
  cost = step.compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return {
    "flops": float(cost.get("flops", float("nan"))),
    "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
  }


@contextlib.contextmanager
def _fast_variance(on: bool):
  """Builds ResNet BatchNorm layers with use_fast_variance=on while active."""
  from closp_jax.models import resnet  # pylint: disable=import-outside-toplevel

  original = resnet.FAST_VARIANCE
  resnet.FAST_VARIANCE = on
  try:
    yield
  finally:
    resnet.FAST_VARIANCE = original


def ab_row(with_change: ClospStep, without: ClospStep, repeats: int, detail: dict) -> dict:
  times = common.alternate({"closp_jax": with_change.run, "reference": without.run}, repeats=repeats, warmup=1)
  a, b = _cost(with_change), _cost(without)
  detail = {
    **detail,
    "flops_with": a["flops"],
    "flops_without": b["flops"],
    "bytes_accessed_with": a["bytes_accessed"],
    "bytes_accessed_without": b["bytes_accessed"],
    "loss_with": with_change.metrics()["loss"],
    "loss_without": without.metrics()["loss"],
  }
  return common.timed_row(times, "closp_jax", "reference", with_change.samples_per_step, "samples/s", detail)


def text_bucket(variant: str, batch: int, repeats: int) -> dict:
  say(f"text_bucket: {variant}, {batch} per sensor, text 16 vs 64 tokens ...")
  short = ClospStep.build(variant, batch_size=batch, text_len=16)
  long = ClospStep.build(variant, batch_size=batch, text_len=64)
  return ab_row(short, long, repeats, {"variant": variant, "batch_per_sensor": batch, "text_len": [16, 64]})


def bn_fast_variance(variant: str, batch: int, repeats: int) -> dict:
  say(f"bn_fast_variance: {variant} (towers trained), {batch} per sensor ...")
  overrides = {"optim.frozen": ()}
  with _fast_variance(True):
    fast = ClospStep.build(variant, batch_size=batch, overrides=overrides, text_len=16)
  with _fast_variance(False):
    two_pass = ClospStep.build(variant, batch_size=batch, overrides=overrides, text_len=16)
  return ab_row(fast, two_pass, repeats, {"variant": variant, "batch_per_sensor": batch, "towers": "trained"})


def text_table_projection(batch: int, repeats: int) -> dict:
  """The sample towers with a trained text projection over the frozen MiniLM (the experiments suite's
  bridge): the text model's outputs looked up per text_id vs the text model run on every batch."""
  say(f"text_table_projection: sample + trained text projection, {batch} per sensor ...")
  overrides = {"model.text.text_projection": True}
  table = ClospStep.build("sample", batch_size=batch, overrides=overrides, text_len=16)
  run = ClospStep.build("sample", batch_size=batch, overrides=overrides, text_len=16, use_text_table=False)
  if not table.use_text_table or run.use_text_table:
    raise RuntimeError("text_table_projection: expected the table in one step and not in the other")
  return ab_row(table, run, repeats, {"variant": "sample", "batch_per_sensor": batch, "text_len": 16})


_OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?:\s*\((tensor<[^)]*)\)\s*->")


def pod_dtype_audit(batch: int) -> dict:
  """Operand element types of every matmul / convolution in the lowered :pod step (not compiled)."""
  say(f"pod_dtype_audit: lowering the :pod step at {batch} per sensor ...")
  from benchmarks.jax_step import closp_config, synthetic_batch  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.train import setup  # pylint: disable=import-outside-toplevel
  from closp_jax.train.step import make_train_step, phase_at  # pylint: disable=import-outside-toplevel

  cfg = closp_config("pod", {"data.batch_size": batch, "optim.freeze_steps": 0, "loss.chunked": False})
  mesh = mesh_lib.make_mesh(cfg.mesh)
  model, variables, shardings, optimizer, _ = setup.build_model_and_optimizer(cfg, mesh, 1000)
  state, _ = setup.create_state(variables, optimizer, shardings, mesh, 0)
  phase = phase_at(cfg, sorted(state.params), 0)
  fn = make_train_step(cfg, phase, model=model, optimizer=optimizer, mesh=mesh)
  host = synthetic_batch(cfg, batch, text_len=16)
  keys = ("image", "input_ids", "attention_mask", "lonlat", "text_id")
  gbatch = mesh_lib.global_batch({s: {k: host[s][k] for k in keys} for s in ("s2", "s1")}, mesh)
  table = jax.numpy.zeros((1, 1), jax.numpy.float32)
  text = jax.jit(fn).lower(state, gbatch, table).as_text()
  counts: collections.Counter = collections.Counter()
  for op, operands in _OP.findall(text):
    types = sorted(set(re.findall(r"x(bf16|f32|f16|f64)>", operands)))
    counts[f"{op}:{'/'.join(types)}"] += 1
  f32 = sum(n for k, n in counts.items() if "f32" in k)
  total = sum(counts.values())
  return {
    "closp_jax": total - f32,
    "reference": total,
    "unit": "bf16 matmuls+convs (of all)",
    "ratio": (total - f32) / total if total else float("nan"),
    "detail": {"ops_by_operand_dtype": dict(counts), "batch_per_sensor": batch, "model_dtype": cfg.model.dtype},
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="JSON file for the rows")
  parser.add_argument("--variant", default="paper", help="recipe variant the timed rows build (default paper)")
  parser.add_argument("--batch", type=int, default=8, help="samples per sensor per step")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rows", default="text_bucket,bn_fast_variance,text_table_projection,pod_dtype_audit")
  args = parser.parse_args(argv)
  rows = {}
  for name in args.rows.split(","):
    if name == "text_bucket":
      rows[name] = text_bucket(args.variant, args.batch, args.repeats)
    elif name == "bn_fast_variance":
      rows[name] = bn_fast_variance(args.variant, args.batch, args.repeats)
    elif name == "text_table_projection":
      rows[name] = text_table_projection(64, args.repeats)
    elif name == "pod_dtype_audit":
      rows[name] = pod_dtype_audit(args.batch)
    else:
      parser.error(f"unknown row {name!r}")
    say(
      f"  {name}: {rows[name]['closp_jax']:.4g} vs {rows[name]['reference']:.4g} {rows[name]['unit']}, ratio {rows[name]['ratio']:.3f}"
    )
  machine = common.machine_summary()
  for row in rows.values():
    row["detail"]["machine"] = machine
  common.write_json(args.out, rows)
  print(common.format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())

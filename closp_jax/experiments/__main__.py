r"""The paper's findings as one command (closp_jax/experiments/suite.py, docs/experiments.md).

  python -m closp_jax.experiments paper [--data crisis_landmark/sample] [--seeds 3] --out DIR
  python -m closp_jax.experiments paper --quick --out DIR
  python -m closp_jax.experiments paper --variant paper --data crisis_landmark/full --manual_dir M --out DIR

Trains and evaluates every run for every seed (finished runs are reused: run the same command again
after a stop), then writes DIR/results.json (its `findings` list: one paired test per comparison),
DIR/report.md and DIR/chart.png. --quick: one seed and 100 training steps (the sample: minutes on a
laptop). Exit status: 0, or 1 with one line `error: ...`.
"""

from __future__ import annotations

from absl import app, flags

from closp_jax import errors

QUICK_STEPS = 100


def _flags() -> dict:
  return {
    "data": flags.DEFINE_string(
      "data", "crisis_landmark/sample", "The dataset (crisis_landmark/sample, /tiny, /full)."
    ),
    "data_dir": flags.DEFINE_string("data_dir", None, "Where datasets are prepared (default: $CLOSP_DATA_DIR)."),
    "manual_dir": flags.DEFINE_string("manual_dir", None, "crisis_landmark/full: the official release folder."),
    "seeds": flags.DEFINE_integer("seeds", 3, "Training seeds per run (0, 1, ...)."),
    "out": flags.DEFINE_string("out", None, "The suite's folder (runs/, results.json, report.md)."),
    "variant": flags.DEFINE_enum(
      "variant",
      "sample",
      ["sample", "paper"],
      "sample (CPU-sized recipes) or paper (the authors' recipe, for the real release on accelerators).",
    ),
    "steps": flags.DEFINE_integer(
      "steps", None, f"Training steps per run (default: the recipe's; --quick: {QUICK_STEPS})."
    ),
    "quick": flags.DEFINE_bool("quick", False, f"One seed, {QUICK_STEPS} steps per run."),
    "runs": flags.DEFINE_list("runs", None, "Only these runs (closp, geoclosp, rgb, s2_only, s1_only, untrained)."),
    "set": flags.DEFINE_multi_string(
      "set",
      [],
      "KEY=VALUE config overrides for every run, e.g. "
      "--set data.batch_size=16 (a value is read as a Python literal, else text).",
    ),
  }


def _parse_set(item: str) -> tuple[str, object]:
  import ast  # pylint: disable=import-outside-toplevel

  key, sep, text = item.partition("=")
  if not sep or not key.strip():
    raise app.UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.batch_size=16")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return key.strip(), value


def main(argv, f) -> int:
  if len(argv) != 2 or argv[1] != "paper":
    raise app.UsageError("expected the suite's name: python -m closp_jax.experiments paper --out DIR [...]")
  if not f["out"].value:
    raise app.UsageError("--out (the suite's folder) is required")
  from closp_jax.experiments.suite import Suite, projected_note  # pylint: disable=import-outside-toplevel

  quick = f["quick"].value
  suite = Suite(
    f["out"].value,
    variant=f["variant"].value,
    data=f["data"].value,
    data_dir=f["data_dir"].value,
    manual_dir=f["manual_dir"].value,
    seeds=1 if quick else f["seeds"].value,
    steps=f["steps"].value or (QUICK_STEPS if quick else None),
    runs=tuple(f["runs"].value) if f["runs"].value else None,
    overrides=tuple(_parse_set(item) for item in f["set"].value),
  )
  results = suite.run()
  if results.get("stopped"):
    return errors.EXIT_STOPPED if suite.signal else errors.EXIT_OK
  print(projected_note(results))
  return 0


def run() -> None:
  f = _flags()
  errors.run_main(lambda argv: main(argv, f))


if __name__ == "__main__":
  run()

r"""Evaluate CLOSP / GeoCLOSP text -> image retrieval, or compare evaluations.

  closp-evaluate --workdir DIR [--checkpoint latest|best|STEP|untrained] [--output OUT]
                 [--queries FILE --qrels FILE] [--data_dir D] [--eval_batch_size N]
  closp-evaluate --model MODEL_DIR [--data crisis_landmark/sample|full|tiny] [--data_dir D]
                 [--manual_dir M] [--output OUT] [--queries FILE --qrels FILE]
  closp-evaluate compare OUT1 OUT2 ...
  (python -m closp_jax.evaluate ... works the same)

The first form reads the run's config from DIR/config.json (no --config to repeat), restores a
checkpoint of DIR onto this run's devices, embeds the test split (S2 and S1) sharded over all
processes, ranks it for the queries and writes OUT (default DIR/eval/<step>): metrics.json,
run.{s2,s1,all}.trec, qrels*.trec, report.md and chart.png. The second does the same for an export
folder (written by closp-export, also from the authors' released checkpoints) with its exported
functions, without a workdir (default OUT: MODEL_DIR/eval/<data>). The third prints the metrics of
the folders side by side with their differences to the first. Protocol: docs/evaluation.md.
Exit status: 0, or 1 with one line `error: ...` for a fault the user fixes.
"""

from __future__ import annotations

from absl import app, flags

from closp_jax import errors


def _flags() -> dict:
  """The binary's flags, defined when it runs (importing this module defines none)."""
  _WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).")
  _CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", "latest, best, a step number, or untrained (the config's initial parameters)."
  )
  _OUTPUT = flags.DEFINE_string(
    "output", None, "Output folder (default: WORKDIR/eval/<step>, or MODEL_DIR/eval/<data> with --model)."
  )
  _MODEL = flags.DEFINE_string(
    "model", None, "An export folder (closp-export) to evaluate instead of a workdir's checkpoint."
  )
  _DATA = flags.DEFINE_string(
    "data",
    "crisis_landmark/sample",
    "With --model: the dataset whose test split is the "
    "corpus (crisis_landmark/sample, crisis_landmark/full, crisis_landmark/tiny).",
  )
  _DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Where the dataset is prepared (default: the run's "
    "config.data.data_dir, else $CLOSP_DATA_DIR, else ~/tensorflow_datasets).",
  )
  _MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "With --model and crisis_landmark/full: the official release folder to prepare it from."
  )
  _EVAL_BATCH = flags.DEFINE_integer(
    "eval_batch_size",
    None,
    "With --workdir: the global embedding batch (default: the run's config.data.eval_batch_size).",
  )
  _QUERIES = flags.DEFINE_string(
    "queries",
    None,
    "User queries (JSON lines {query_id, text, [type]}, or TSV qid<TAB>text[<TAB>type]); needs --qrels.",
  )
  _QRELS = flags.DEFINE_string(
    "qrels", None, "User judgments (TREC 'qid 0 docid grade' or BEIR tsv, a file or a folder of them); needs --queries."
  )
  _DEPTH = flags.DEFINE_integer("depth", 1000, "Documents retrieved per query (run files and metrics).")
  _FUSION = flags.DEFINE_enum(
    "fusion",
    "raw",
    ["raw", "zscore", "reference", "rrf"],
    "How text->all merges the S2 and S1 rankings: raw (the paper's protocol, the "
    "default by measurement, docs/evaluation.md), zscore, reference or rrf.",
  )
  _COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
  _NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  _PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  _AUTO = flags.DEFINE_bool("distributed_auto", None, "Let JAX detect the cluster (Cloud TPU, SLURM).")
  flags.DEFINE_alias("out", "output")
  return {
    "_WORKDIR": _WORKDIR,
    "_CHECKPOINT": _CHECKPOINT,
    "_OUTPUT": _OUTPUT,
    "_MODEL": _MODEL,
    "_DATA": _DATA,
    "_DATA_DIR": _DATA_DIR,
    "_MANUAL_DIR": _MANUAL_DIR,
    "_EVAL_BATCH": _EVAL_BATCH,
    "_QUERIES": _QUERIES,
    "_QRELS": _QRELS,
    "_DEPTH": _DEPTH,
    "_FUSION": _FUSION,
    "_COORD": _COORD,
    "_NPROC": _NPROC,
    "_PID": _PID,
    "_AUTO": _AUTO,
  }


def compare(folders: list[str]) -> str:
  """The `compare` subcommand's text: metrics of each folder side by side, with differences."""
  from closp_jax.retrieval import evaluator, report  # pylint: disable=import-outside-toplevel

  entries, seen = [], {}
  for folder in folders:
    m = evaluator.load_metrics(folder)
    label = f"{m.get('config', '?')}@{(m.get('checkpoint') or {}).get('step', '?')}"
    seen[label] = seen.get(label, 0) + 1
    if seen[label] > 1:
      label += f"#{seen[label]}"
    entries.append((label, m))
  lines = [f"{label}: {folder}" for (label, _), folder in zip(entries, folders)]
  return "\n".join(lines + ["", report.compare_table(entries)])


def main(argv, f) -> int:
  if len(argv) > 1 and argv[1] == "compare":
    if len(argv) < 3:
      raise app.UsageError("compare needs one or more evaluation folders: compare OUT1 OUT2 ...")
    print(compare(argv[2:]))
    return 0
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (the only subcommand is 'compare')")
  if (f["_QUERIES"].value is None) != (f["_QRELS"].value is None):
    raise app.UsageError("--queries and --qrels go together: pass both files, or neither")
  if (f["_MODEL"].value is None) == (f["_WORKDIR"].value is None):
    raise app.UsageError("pass --workdir (a training run) or --model (an export folder), one of them")
  from closp_jax.retrieval import evaluator  # pylint: disable=import-outside-toplevel

  if f["_MODEL"].value is not None:
    evaluator.evaluate_exported(
      f["_MODEL"].value,
      data=f["_DATA"].value,
      data_dir=f["_DATA_DIR"].value,
      manual_dir=f["_MANUAL_DIR"].value,
      output=f["_OUTPUT"].value,
      queries_path=f["_QUERIES"].value,
      qrels_path=f["_QRELS"].value,
      k=f["_DEPTH"].value,
      fusion=f["_FUSION"].value,
    )
    return 0
  from closp_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel

  config = checkpoint.load_run_config(f["_WORKDIR"].value)  # unlocked: the flags below may adjust it
  if f["_DATA_DIR"].value is not None:
    config.data.data_dir = f["_DATA_DIR"].value
  if f["_EVAL_BATCH"].value is not None:
    config.data.eval_batch_size = f["_EVAL_BATCH"].value
  distributed.initialize(f["_COORD"].value, f["_NPROC"].value, f["_PID"].value, auto=f["_AUTO"].value)
  evaluator.evaluate_checkpoint(
    config,
    f["_WORKDIR"].value,
    checkpoint=f["_CHECKPOINT"].value,
    output=f["_OUTPUT"].value,
    queries_path=f["_QUERIES"].value,
    qrels_path=f["_QRELS"].value,
    k=f["_DEPTH"].value,
    fusion=f["_FUSION"].value,
  )
  return 0


def run() -> None:
  """The `closp-evaluate` console script."""
  f = _flags()
  errors.run_main(lambda argv: main(argv, f))


if __name__ == "__main__":
  run()

r"""Evaluate CLOSP / GeoCLOSP text -> image retrieval, or compare evaluations.

  python -m closp_jax.evaluate --config configs/geoclosp.py --workdir DIR \
      [--checkpoint latest|best|STEP|untrained] [--output OUT] [--queries FILE --qrels FILE] \
      [--config.key=value ...]
  python -m closp_jax.evaluate --model MODEL_DIR [--data crisis_landmark/sample|full|tiny] \
      [--data_dir D] [--manual_dir M] [--out OUT] [--queries FILE --qrels FILE]
  python -m closp_jax.evaluate compare OUT1 OUT2 ...

The first form restores a checkpoint of DIR (trained with the same --config and overrides)
onto this run's devices, embeds the test split (S2 and S1) sharded over all processes, ranks
it for the queries and writes OUT (default DIR/eval/<step>): metrics.json, run.{s2,s1,all}.trec,
qrels*.trec, report.md and chart.png. The second does the same for an export folder (written by
`python -m closp_jax.export`, also from the authors' released checkpoints) with its exported
functions, without a workdir or config (default OUT: MODEL_DIR/eval/<data>). The third prints
the metrics of the folders side by side with their differences to the first. Protocol:
docs/evaluation.md.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from closp_jax.config import exit_on_bad_config_args

_CONFIG = config_flags.DEFINE_config_file("config", None, "The training config (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (default: ./workdir/<config name>).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best, a step number, or untrained "
                                  "(the config's initial parameters).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default: WORKDIR/eval/<step>, or "
                              "MODEL_DIR/eval/<data> with --model).")
flags.DEFINE_alias("out", "output")
_MODEL = flags.DEFINE_string("model", None, "An export folder (python -m closp_jax.export) to evaluate instead of "
                             "a workdir's checkpoint; needs no --config.")
_DATA = flags.DEFINE_string("data", "crisis_landmark/sample", "With --model: the dataset whose test split is the "
                            "corpus (crisis_landmark/sample, crisis_landmark/full, crisis_landmark/tiny).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "With --model: where the dataset is prepared "
                                "(default: $CLOSP_DATA_DIR, else ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "With --model and crisis_landmark/full: the official "
                                  "release folder to prepare it from.")
_QUERIES = flags.DEFINE_string("queries", None, "User queries (JSON lines {query_id, text, [type]}, or "
                               "TSV qid<TAB>text[<TAB>type]); needs --qrels.")
_QRELS = flags.DEFINE_string("qrels", None, "User judgments (TREC 'qid 0 docid grade' or BEIR tsv, a file "
                             "or a folder of them); needs --queries.")
_DEPTH = flags.DEFINE_integer("depth", 1000, "Documents retrieved per query (run files and metrics).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool("distributed_auto", None, "Let JAX detect the cluster (Cloud TPU, SLURM).")


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


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1 and argv[1] == "compare":
    if len(argv) < 3:
      raise app.UsageError("compare needs one or more evaluation folders: compare OUT1 OUT2 ...")
    try:
      print(compare(argv[2:]))
    except (FileNotFoundError, ValueError, KeyError) as e:
      sys.exit(f"error: {e}")
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (the only subcommand is 'compare')")
  if _MODEL.value is not None:
    evaluate_model()
    return
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required (the config the checkpoint was trained with)")
  from closp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
  from closp_jax.retrieval import evaluator  # pylint: disable=import-outside-toplevel
  workdir = _WORKDIR.value or "workdir/" + config.name.replace(":", "-")  # as closp_jax.main
  evaluator.evaluate_checkpoint(
      config, workdir, checkpoint=_CHECKPOINT.value,
      output=_OUTPUT.value, queries_path=_QUERIES.value, qrels_path=_QRELS.value, k=_DEPTH.value)


def evaluate_model() -> None:
  """--model: an export folder on a dataset's test split (closp_jax.retrieval.evaluator.evaluate_exported)."""
  if _CONFIG.value is not None or _WORKDIR.value is not None:
    raise app.UsageError("--model evaluates an export folder; it takes no --config / --workdir")
  if (_QUERIES.value is None) != (_QRELS.value is None):
    raise app.UsageError("--queries and --qrels go together: pass both files, or neither")
  from closp_jax.data.pipeline import DataFileError, DatasetNameError  # pylint: disable=import-outside-toplevel
  from closp_jax.data.crisis_landmark import ReleaseFileError  # pylint: disable=import-outside-toplevel
  from closp_jax.exported import ExportedModelError  # pylint: disable=import-outside-toplevel
  from closp_jax.retrieval import evaluator  # pylint: disable=import-outside-toplevel
  try:
    evaluator.evaluate_exported(_MODEL.value, data=_DATA.value, data_dir=_DATA_DIR.value,
                                manual_dir=_MANUAL_DIR.value, output=_OUTPUT.value, queries_path=_QUERIES.value,
                                qrels_path=_QRELS.value, k=_DEPTH.value)
  except (ExportedModelError, DatasetNameError, DataFileError, ReleaseFileError, FileNotFoundError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")


if __name__ == "__main__":
  exit_on_bad_config_args(sys.argv)
  app.run(main)

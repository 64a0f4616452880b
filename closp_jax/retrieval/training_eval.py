"""What the trainer evaluates while it runs: validation loss and nDCG@100, and the retrieval table.

The training loop (closp_jax/train/loop.py) does not import this module: the binary hands it
`TrainingEvaluator`, which the loop builds once it has the dataset and the mesh
(`TrainingEvaluator(cfg, builder, mesh, tokenizer)`). The validation loss is the training
objective (closp_jax.train.step.objective) over the whole validation split.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from closp_jax.data import labels as labels_lib
from closp_jax.data import pipeline
from closp_jax.models import embed as embed_lib
from closp_jax.retrieval import evaluator
from closp_jax.retrieval.ranking import TRAIN_TABLE_METRICS, retrieval_metrics
from closp_jax.train import step as step_lib

SENSORS = ("s2", "s1")


def embed_corpus(model, variables, builder, mesh, cfg, split: str, *, with_location: bool, max_items: int = 0):
  """{sensor: embed_split(...) result} for both sensors of a split."""
  return embed_lib.embed_corpus(
    model,
    variables,
    builder,
    mesh,
    split,
    eval_batch_size=int(cfg.data.eval_batch_size),
    inputs=pipeline.input_kwargs(cfg),
    with_location=with_location,
    max_items=max_items,
    sensors=SENSORS,
  )


def validation_metrics(model, variables, builder, mesh, cfg, text_emb: np.ndarray) -> dict[str, float]:
  """Contrastive loss over the validation split (all of it as one set, per sensor) and nDCG@100.

  nDCG@100 uses one query per class present (its name as text), relevant = samples carrying that
  class, ranked over both sensors together.
  """
  geo = bool(cfg.model.location.enabled)
  corpus = embed_corpus(model, variables, builder, mesh, cfg, "validation", with_location=geo)
  scale, bias = model.apply(variables, method=model.logit_params)
  weights = step_lib.loss_weights(cfg)
  if weights.pop("all_text", None) is not None:  # validation contrasts each sensor with its own texts
    weights.update(
      {f"{s}_text": float(cfg.loss.weights[f"{s}_text"]) for s in SENSORS if float(cfg.loss.weights[f"{s}_text"]) > 0}
    )
  terms = {}
  for sensor in SENSORS:
    c = corpus[sensor]
    img = jnp.asarray(c["emb"])
    txt = jnp.asarray(text_emb[c["text_id"]])
    loc = jnp.asarray(c["loc"]) if geo else None
    terms.update(step_lib.sensor_terms(cfg, sensor, img, txt, loc, scale, bias, weights))
  metrics = {f"val_loss/{k}": float(v) for k, v in terms.items()}
  metrics["val_loss"] = float(step_lib.objective(terms, weights))
  metrics["val_nDCG@100"] = class_query_ndcg(model, variables, corpus, cfg, k=100)
  return metrics


def class_query_ndcg(model, variables, corpus, cfg, k: int) -> float:
  from closp_jax.data.tokenize import load_tokenizer  # pylint: disable=import-outside-toplevel

  tok = load_tokenizer()
  keys = np.concatenate([corpus[s]["key"] for s in SENSORS])
  labels = np.concatenate([corpus[s]["labels"] for s in SENSORS])
  emb = np.concatenate([corpus[s]["emb"] for s in SENSORS])
  present = [i for i in range(labels_lib.NUM_CLASSES) if labels[:, i].any()]
  if not present:
    return float("nan")
  texts = [labels_lib.class_text(labels_lib.CLASSES[i]) for i in present]
  q = embed_lib.embed_texts(model, variables, tok, texts, max_len=int(cfg.data.max_len))
  qrels = {f"c{i}": {str(kk): 1 for kk in keys[labels[:, i] > 0]} for i in present}
  m = retrieval_metrics([f"c{i}" for i in present], q, emb, keys, qrels, k=k, metrics=(f"nDCG@{k}",))
  return float(m[f"nDCG@{k}"])


class TrainingEvaluator:
  """The trainer's evaluations for one run: `validation(model, variables)` and `table(model, variables)`."""

  def __init__(self, cfg, builder, mesh, tokenizer):
    self.cfg, self.builder, self.mesh, self.tokenizer = cfg, builder, mesh, tokenizer
    self.texts = pipeline.dataset_texts(builder)

  def validation(self, model, variables) -> dict[str, float]:
    text_emb = embed_lib.embed_texts(model, variables, self.tokenizer, self.texts, max_len=int(self.cfg.data.max_len))
    return validation_metrics(model, variables, self.builder, self.mesh, self.cfg, np.asarray(text_emb))

  def table(self, model, variables) -> dict[str, dict[str, float]]:
    return retrieval_table(model, variables, self.builder, self.mesh, self.cfg, self.tokenizer)

  @staticmethod
  def format_table(final: dict, untrained: dict | None) -> str:
    return format_table(final, untrained)


def retrieval_table(model, variables, builder, mesh, cfg, tokenizer) -> dict[str, dict[str, float]]:
  """{'text->s2'|'text->s1'|'text->all': metrics} on the test corpus, by the evaluation binary's
  protocol (closp_jax.retrieval.evaluator): the dataset's queries, or label-built ones."""
  corpus = evaluator.Corpus.from_embedded(
    embed_corpus(model, variables, builder, mesh, cfg, "test", with_location=False, max_items=int(cfg.eval.max_corpus))
  )
  queries, qrels, _ = evaluator.resolve_queries(builder.data_dir, corpus)
  qemb = embed_lib.embed_texts(model, variables, tokenizer, [q["text"] for q in queries], max_len=int(cfg.data.max_len))
  result = evaluator.evaluate_embeddings(corpus, queries, qemb, qrels, metrics=TRAIN_TABLE_METRICS)
  return {
    name: r["metrics"] or {m: float("nan") for m in TRAIN_TABLE_METRICS}
    for name, r in result.metrics["rankings"].items()
  }


def format_table(final: dict, untrained: dict | None) -> str:
  metrics = ("nDCG@10", "nDCG@100", "nDCG@1000", "mAP@100", "R@10")
  lines = []
  header = f"{'ranking':<11} {'metric':<10} {'trained':>8}"
  if untrained:
    header += f" {'untrained':>10} {'change':>8}"
  lines.append(header)
  lines.append("-" * len(header))
  for name, m in final.items():
    for metric in metrics:
      if metric not in m:
        continue
      row = f"{name:<11} {metric:<10} {m[metric]:>8.4f}"
      if untrained:
        u = untrained[name][metric]
        row += f" {u:>10.4f} {m[metric] - u:>+8.4f}"
      lines.append(row)
  return "\n".join(lines)

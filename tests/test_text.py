"""Text tower: MiniLM/BERT vs Hugging Face's PyTorch BertModel on the real weights, masking, pooling,
logical axes, the importer's errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax.models.text import TextEncoder
from closp_jax.weights import convert
from closp_jax.weights.locate import find_minilm_folder
from closp_jax.weights.minilm import (
  bert_params_from_state_dict,
  export_bert_state_dict,
  load_bert,
  load_minilm,
  text_encoder_from_hf_config,
)
from closp_jax.weights.safe_load import load_state_dict

TEXTS = ["trees. crops. water", "flooded area", "burned area. trees. shrub and scrub. bare. built. grass"]


@pytest.fixture(scope="module")
def minilm():
  module, params, tokenizer = load_minilm()
  tokenizer.enable_padding(length=64)
  tokenizer.enable_truncation(64)
  enc = tokenizer.encode_batch(TEXTS)
  ids = np.array([e.ids for e in enc], np.int32)
  mask = np.array([e.attention_mask for e in enc], np.int32)
  fwd = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))
  return module, params, ids, mask, fwd


def test_minilm_reference_values(minilm):
  """The all-MiniLM-L6-v2 CLS vector for "trees. crops. water" padded to 64 (reference in STACK.md)."""
  module, params, ids, mask, fwd = minilm
  assert (module.layers, module.hidden, module.heads, module.pooling) == (6, 384, 12, "cls")
  assert list(ids[0, :8]) == [101, 3628, 1012, 8765, 1012, 2300, 102, 0] and ids.shape == (3, 64)
  out = np.asarray(fwd(params, ids, mask))
  assert out.shape == (3, 384) and out.dtype == np.float32
  np.testing.assert_allclose(out[0, :5], [-0.104685, 0.388428, 0.173186, 0.408741, 0.867315], atol=2e-6)


@pytest.mark.torch
def test_minilm_matches_pytorch_bertmodel(minilm):
  torch = pytest.importorskip("torch")
  from transformers import BertModel  # pylint: disable=import-outside-toplevel

  module, params, ids, mask, fwd = minilm
  ref = BertModel.from_pretrained(str(find_minilm_folder())).eval()
  with torch.no_grad():
    hidden = ref(
      input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
    ).last_hidden_state.numpy()
  assert np.abs(np.asarray(fwd(params, ids, mask)) - hidden[:, 0]).max() <= 1e-4
  # Mean pooling: the masked mean of the last hidden state (sentence-transformers' pooling).
  mean = TextEncoder(pooling="mean")
  got = np.asarray(mean.apply({"params": params}, ids, mask))
  m = mask[..., None].astype(np.float32)
  assert np.abs(got - (hidden * m).sum(1) / m.sum(1)).max() <= 1e-4


def test_attention_mask_is_honoured(minilm):
  _, params, ids, mask, fwd = minilm
  base = np.asarray(fwd(params, ids, mask))
  noisy = np.where(mask == 1, ids, 7592)  # change every padded token
  np.testing.assert_allclose(np.asarray(fwd(params, noisy, mask)), base, atol=1e-6)
  n = int(mask[0].sum())  # the same text without any padding
  short = np.asarray(fwd(params, ids[:1, :n], mask[:1, :n]))
  np.testing.assert_allclose(short, base[:1], atol=1e-5)
  masked_more = mask.copy()
  masked_more[0, 3] = 0  # hiding a real token changes the embedding
  assert np.abs(np.asarray(fwd(params, ids, masked_more))[0] - base[0]).max() > 1e-3


def test_every_param_has_logical_axes_and_float32():
  module = TextEncoder(
    vocab_size=50, hidden=32, layers=2, heads=4, intermediate=64, max_position=16, dtype=jnp.bfloat16
  )
  v = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  leaves = jax.tree_util.tree_flatten_with_path(v["params"], is_leaf=lambda x: hasattr(x, "names"))[0]
  assert len(leaves) == 3 + 2 + 2 * 16
  for path, leaf in leaves:
    assert hasattr(leaf, "names"), jax.tree_util.keystr(path)
    assert leaf.value.dtype == jnp.float32
    assert len(leaf.names) == len(leaf.value.shape)


def test_bfloat16_compute_stays_close(minilm):
  module, params, ids, mask, fwd = minilm
  bf16 = TextEncoder(dtype=jnp.bfloat16)
  out = np.asarray(jax.jit(lambda p, i, m: bf16.apply({"params": p}, i, m))(params, ids, mask))
  ref = np.asarray(fwd(params, ids, mask))
  assert out.dtype == np.float32
  cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
  assert cos.min() > 0.99


def test_dropout_only_with_train(minilm):
  module, params, ids, mask, fwd = minilm
  a = np.asarray(module.apply({"params": params}, ids, mask, train=True, rngs={"dropout": jax.random.key(0)}))
  assert np.abs(a - np.asarray(fwd(params, ids, mask))).max() > 1e-3


def test_export_round_trip_and_errors(tmp_path):
  folder = find_minilm_folder()
  sd = load_state_dict(folder / "model.safetensors")
  module = text_encoder_from_hf_config(json.loads((folder / "config.json").read_text()))
  params = bert_params_from_state_dict(sd, module)
  back = export_bert_state_dict(params, module.layers, include_pooler=True)
  used = {k for k in sd if k != "embeddings.position_ids"}
  assert set(back) == used
  for k, v in back.items():
    if not k.startswith("pooler."):
      np.testing.assert_array_equal(v, sd[k])
  # A BertFor* checkpoint (bert. prefix, old LayerNorm names) reads the same.
  old = {
    ("bert." + k).replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
    for k, v in sd.items()
  }
  old["cls.predictions.bias"] = np.zeros(3, np.float32)
  again = bert_params_from_state_dict(old, module)
  np.testing.assert_array_equal(again["layer_5"]["output_norm"]["scale"], params["layer_5"]["output_norm"]["scale"])
  # Shape mismatch names the tensor and both shapes; missing tensors are listed.
  bad = dict(sd)
  bad["encoder.layer.2.intermediate.dense.weight"] = np.zeros((1000, 384), np.float32)
  del bad["encoder.layer.4.output.dense.bias"]
  with pytest.raises(convert.WeightMismatchError) as e:
    bert_params_from_state_dict(bad, module, source="bad.safetensors")
  msg = str(e.value)
  assert "encoder.layer.2.intermediate.dense.weight" in msg and "(1000, 384)" in msg and "(1536, 384)" in msg
  assert "encoder.layer.4.output.dense.bias" in msg and "bad.safetensors" in msg


def test_config_errors_name_the_field(tmp_path):
  with pytest.raises(ValueError, match="config.json: model_type is 'roberta'"):
    text_encoder_from_hf_config({"model_type": "roberta"})
  with pytest.raises(ValueError, match="hidden_act"):
    text_encoder_from_hf_config({"model_type": "bert", "hidden_act": "relu"})
  with pytest.raises(ValueError, match="missing field 'vocab_size'"):
    text_encoder_from_hf_config({"model_type": "bert"})
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_bert(tmp_path)

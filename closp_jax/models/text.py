"""The text tower: a BERT encoder (all-MiniLM-L6-v2 geometry by default) with CLS or mean pooling.

    enc = TextEncoder()                                  # 6 layers, hidden 384, 12 heads, MLP 1536
    params = enc.init(rng, input_ids, attention_mask)["params"]
    feats = enc.apply({"params": params}, input_ids, attention_mask)   # [B, 384], not normalised

Post-LayerNorm BERT as Hugging Face's BertModel: embeddings (word + absolute position + token type,
LayerNorm), then `layers` blocks of self-attention and an exact-erf GELU MLP, each followed by a
residual and LayerNorm. Padding (attention_mask == 0) is never attended to. The original CLOSP takes
the CLS token of the last hidden state ("cls"); "mean" is the masked mean (sentence-transformers).

Parameter tree (mirrors the Hugging Face names; see closp_jax/weights/minilm.py for the mapping):
  {word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings_norm/{scale,bias},
  layer_<i>/{query,key,value,attention_output,intermediate,output}/{kernel,bias},
  layer_<i>/{attention_norm,output_norm}/{scale,bias}
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLINGS = ("cls", "mean")

_normal = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range


def _dense(features: int, axes: tuple[str, str], dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    kernel_init=nn.with_logical_partitioning(_normal, axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
  )


def _layernorm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=jnp.float32,
    use_fast_variance=False,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
  )


class BertLayer(nn.Module):
  """One post-LN transformer block: self-attention + MLP, each with residual and LayerNorm."""

  hidden: int
  heads: int
  intermediate: int
  eps: float
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    b, t, _ = x.shape
    hd = self.hidden // self.heads
    split = lambda y: y.reshape(b, t, self.heads, hd)
    q = split(_dense(self.hidden, ("embed", "heads"), self.dtype, "query")(x))
    k = split(_dense(self.hidden, ("embed", "heads"), self.dtype, "key")(x))
    v = split(_dense(self.hidden, ("embed", "heads"), self.dtype, "value")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(float(hd))
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if train and self.dropout > 0:
      probs = nn.Dropout(self.dropout, deterministic=False)(probs)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(b, t, self.hidden)
    attn = _dense(self.hidden, ("heads", "embed"), self.dtype, "attention_output")(ctx)
    if train and self.dropout > 0:
      attn = nn.Dropout(self.dropout, deterministic=False)(attn)
    x = _layernorm(self.eps, self.dtype, "attention_norm")(x + attn)
    h = _dense(self.intermediate, ("embed", "mlp"), self.dtype, "intermediate")(x)
    h = nn.gelu(h, approximate=False)
    h = _dense(self.hidden, ("mlp", "embed"), self.dtype, "output")(h)
    if train and self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=False)(h)
    return _layernorm(self.eps, self.dtype, "output_norm")(x + h)


class TextEncoder(nn.Module):
  """BERT text encoder returning pooled features [B, hidden] (float32, not normalised).

  Dropout (BERT's hidden and attention dropout, p = `dropout`) acts only with train=True and a
  'dropout' rng; the default (train=False) is deterministic.
  """

  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_position: int = 512
  type_vocab: int = 2
  pooling: str = "cls"
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def _check(self, input_ids: jax.Array, attention_mask: jax.Array) -> None:
    if self.pooling not in POOLINGS:
      raise ValueError(f"text pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.hidden % self.heads:
      raise ValueError(f"text hidden size {self.hidden} is not divisible by heads {self.heads}")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(
        f"input_ids and attention_mask must both be [batch, length]; got {input_ids.shape} and {attention_mask.shape}"
      )
    if input_ids.shape[1] > self.max_position:
      raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position {self.max_position}")

  def _hidden_states(
    self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None, train: bool
  ) -> jax.Array:
    """The last hidden state [B, T, hidden] (compute dtype); called from the compact __call__."""
    self._check(input_ids, attention_mask)
    t = input_ids.shape[1]
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    embed = lambda n, axes, name: nn.Embed(
      n,
      self.hidden,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name=name,
      embedding_init=nn.with_logical_partitioning(_normal, axes),
    )
    x = embed(self.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
    x = x + embed(self.max_position, ("pos", "embed"), "position_embeddings")(jnp.arange(t)[None, :])
    x = x + embed(self.type_vocab, (None, "embed"), "token_type_embeddings")(token_type_ids)
    x = _layernorm(self.layer_norm_eps, self.dtype, "embeddings_norm")(x)
    if train and self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=False)(x)
    mask = attention_mask.astype(bool)
    for i in range(self.layers):
      x = BertLayer(
        self.hidden, self.heads, self.intermediate, self.layer_norm_eps, self.dropout, self.dtype, name=f"layer_{i}"
      )(x, mask, train)
    return x

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    token_type_ids: jax.Array | None = None,
    train: bool = False,
    all_tokens: bool = False,
  ) -> jax.Array:
    """Pooled features [B, hidden] float32; with all_tokens=True the last hidden state [B, T, hidden]."""
    h = self._hidden_states(input_ids, attention_mask, token_type_ids, train).astype(jnp.float32)
    if all_tokens:
      return h
    if self.pooling == "cls":
      return h[:, 0]
    m = attention_mask.astype(jnp.float32)[..., None]
    return (h * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)

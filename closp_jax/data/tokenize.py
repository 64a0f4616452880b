"""BERT-style tokenisation of sample and query texts with the MiniLM tokenizer.

The text tower reads `[CLS] tokens [SEP]` padded with 0 to a fixed length (64 in CLOSP).
`tokenize` can also cut the padding down to the batch's longest text, rounded up to a
bucket (16, 32 or 64), so that short label texts do not pay for 64 positions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from closp_jax.weights.locate import find_minilm_folder

BUCKETS = (16, 32, 64)


def load_tokenizer(path: str | os.PathLike | None = None):
  """The all-MiniLM-L6-v2 `tokenizers.Tokenizer`, from `path` or the local copy.

  Padding and truncation set in tokenizer.json are switched off: `tokenize` does both.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  folder = find_minilm_folder(path)
  tokenizer = Tokenizer.from_file(os.fspath(folder / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


def bucket_length(longest: int, max_len: int) -> int:
  """Smallest bucket (16, 32, 64, capped at max_len) that holds `longest` tokens."""
  for size in BUCKETS:
    if size >= max_len:
      return max_len
    if longest <= size:
      return size
  return max_len


def tokenize(tokenizer, texts: Sequence[str], max_len: int = 64, bucket: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask, both int32 [len(texts), T].

  T is `max_len`, or with `bucket=True` the bucket that holds the longest text.
  Texts longer than `max_len` are cut, keeping the final [SEP] (as Hugging Face's
  `truncation=True` does).
  """
  if isinstance(texts, str):
    raise TypeError("tokenize expects a sequence of texts, got one str; wrap it in a list")
  if max_len < 2:
    raise ValueError(f"max_len must be at least 2 ([CLS] and [SEP]), got {max_len}")
  encodings = tokenizer.encode_batch(list(texts))
  rows = []
  for enc in encodings:
    ids = list(enc.ids)
    if len(ids) > max_len:
      ids = ids[: max_len - 1] + ids[-1:]
    rows.append(ids)
  longest = max((len(r) for r in rows), default=1)
  length = bucket_length(longest, max_len) if bucket else max_len
  input_ids = np.zeros((len(rows), length), np.int32)
  attention_mask = np.zeros((len(rows), length), np.int32)
  for i, ids in enumerate(rows):
    input_ids[i, : len(ids)] = ids
    attention_mask[i, : len(ids)] = 1
  return input_ids, attention_mask

"""Corpus embedding throughput: the evaluation binary's embedding pass vs the original's way.

closp-jax: closp_jax.models.embed.embed_corpus, the call closp_jax.evaluate makes: the grain
eval iterator over the ArrayRecord test split (decode, normalise, batch, prefetch threads) feeding
the jitted image towers, embeddings gathered to the host, S2 then S1.

reference: the original stack's evaluation pass: every sample read from the HDF5 release by
opening the master file (benchmarks/input_pipeline.read_original), batched, S2 divided by 10,000,
and the timm towers + projection run under torch.inference_mode in eval mode (BatchNorm running
statistics), S2 then S1. Both embed the first `max_items` test samples of each sensor.

`model_only` figures (towers alone on a batch already in memory) are kept in the row's detail,
so the share of the readers and of the towers can be told apart.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import input_pipeline
from benchmarks.jax_step import closp_config
from closp_jax.data import crisis_landmark, pipeline
from closp_jax.models import embed as embed_lib
from closp_jax.models.towers import CLOSP
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup

S2_SCALE = 10000.0


class ClospEmbed:
  """embed_corpus over the builder's test split, with the towers of a closp-jax config variant."""

  def __init__(self, builder, variant: str, *, eval_batch_size: int, max_items: int):
    self.cfg = closp_config(variant, {"data.eval_batch_size": eval_batch_size})
    self.mesh = mesh_lib.make_mesh(self.cfg.mesh)
    self.model = CLOSP(self.cfg.model)
    self.variables, _ = setup.init_variables(self.model, self.cfg, self.mesh, jax.random.key(0))
    self.builder, self.max_items, self.eval_batch_size = builder, max_items, eval_batch_size
    self.count = 0

  def run(self) -> None:
    out = embed_lib.embed_corpus(
      self.model,
      self.variables,
      self.builder,
      self.mesh,
      "test",
      eval_batch_size=self.eval_batch_size,
      inputs=pipeline.input_kwargs(self.cfg),
      max_items=self.max_items,
    )
    self.count = sum(len(v["emb"]) for v in out.values())

  def model_only(self, sensor: str):
    """A callable embedding one in-memory batch (towers only)."""
    embed = embed_lib.make_image_embedder(self.model, self.mesh, sensor, False)
    chans = int(self.cfg.model[f"{sensor}_in_chans"])
    images = mesh_lib.global_batch(np.zeros((self.eval_batch_size, 120, 120, chans), np.float32), self.mesh)
    lonlat = mesh_lib.global_batch(np.zeros((self.eval_batch_size, 2), np.float32), self.mesh)
    return lambda: jax.block_until_ready(embed(self.variables, images, lonlat))


class TorchEmbed:
  """The original-style evaluation pass over the release folder with the PyTorch towers."""

  def __init__(self, release: Path, cfg, *, eval_batch_size: int, max_items: int):
    import torch  # pylint: disable=import-outside-toplevel

    from benchmarks.torch_reference import TorchCLOSP  # pylint: disable=import-outside-toplevel

    self.torch = torch
    dim = int(cfg.model.embed_dim)
    # Only the image towers run here; a one-row table stands in for the text tower.
    self.model = TorchCLOSP(cfg.model, text_table=torch.zeros(1, dim)).eval()
    self.master = Path(release) / crisis_landmark.MASTER_FILE
    keys = input_pipeline.original_keys(Path(release), 10**9, split="test", alternate=False)
    self.keys = {s: [k for k in keys if _sensor(k) == s][:max_items] for s in ("s2", "s1")}
    self.batch = eval_batch_size
    self.count = 0

  def run(self) -> None:
    torch = self.torch
    count = 0
    with torch.inference_mode():
      for sensor, keys in self.keys.items():
        for start in range(0, len(keys), self.batch):
          images = np.stack([input_pipeline.read_original(self.master, k)[0] for k in keys[start : start + self.batch]])
          if sensor == "s2":
            images = images / S2_SCALE
          x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))
          emb = self.model.encode_image(sensor, x)
          count += int(emb.shape[0])
    self.count = count

  def model_only(self, sensor: str, chans: int):
    torch = self.torch
    x = torch.zeros(self.batch, chans, 120, 120)

    def run():
      with torch.inference_mode():
        self.model.encode_image(sensor, x)

    return run


def _sensor(key: str) -> str:
  from closp_jax.data import preprocess  # pylint: disable=import-outside-toplevel

  return preprocess.sensor_of_source(preprocess.source_of_key(key))


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start

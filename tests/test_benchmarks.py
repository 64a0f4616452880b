"""The benchmark harness: alternation, medians, ratio orientation, the JSON rows, the references.

Timings are never asserted: only the logic around them and that the two sides compute the same thing.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, retrieval, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_alternate_warms_up_then_reverses_the_order_every_round():
  log, clock = [], FakeClock()
  cost = {"a": 1.0, "b": 3.0}

  def contender(name):
    def call():
      log.append(name)
      clock.now += cost[name]

    return call

  times = common.alternate({"a": contender("a"), "b": contender("b")}, repeats=4, warmup=2, clock=clock)
  assert log == ["a", "a", "b", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
  assert times == {"a": [1.0] * 4, "b": [3.0] * 4}


def test_alternate_rejects_bad_arguments():
  with pytest.raises(ValueError, match="repeats"):
    common.alternate({"a": lambda: None}, repeats=0)
  with pytest.raises(ValueError, match="warmup"):
    common.alternate({"a": lambda: None}, repeats=1, warmup=-1)
  with pytest.raises(ValueError, match="contender"):
    common.alternate({}, repeats=1)


def test_ratio_is_oriented_so_above_one_means_closp_jax_is_better():
  assert common.oriented_ratio(300.0, 100.0, common.HIGHER) == 3.0  # faster
  assert common.oriented_ratio(50.0, 100.0, common.HIGHER) == 0.5  # slower
  assert common.oriented_ratio(10.0, 80.0, common.LOWER) == 8.0  # less memory
  assert common.oriented_ratio(80.0, 10.0, common.LOWER) == 0.125  # more memory
  assert common.oriented_ratio(1.0, 0.0, common.HIGHER) == float("inf")
  with pytest.raises(ValueError, match="better"):
    common.oriented_ratio(1.0, 1.0, "faster")


def test_timed_row_reports_medians_of_per_round_rates():
  times = {"closp_jax": [2.0, 1.0, 8.0], "reference": [4.0, 16.0, 2.0]}
  row = common.timed_row(times, "closp_jax", "reference", work=16.0, unit="samples/s")
  assert row["closp_jax"] == 8.0  # rates 8, 16, 2
  assert row["reference"] == 4.0  # rates 4, 1, 8
  assert row["ratio"] == 2.0
  assert row["unit"] == "samples/s"
  assert row["detail"]["closp_jax_repeats"] == [8.0, 16.0, 2.0]
  assert row["detail"]["better"] == "higher"


def test_json_rows_have_the_documented_shape(tmp_path):
  rows = {
    "train_step_x": common.make_row(120.0, 60.0, "samples/s", common.HIGHER, {"batch": 64}),
    "loss_memory": common.make_row(5e6, 3e8, "bytes", common.LOWER),
  }
  path = common.write_json(tmp_path / "out" / "bench.json", rows)
  loaded = json.loads(path.read_text())
  assert set(loaded) == set(rows)
  for row in loaded.values():
    assert {"closp_jax", "reference", "unit", "ratio"} <= set(row)
  assert loaded["train_step_x"]["ratio"] == 2.0
  assert loaded["loss_memory"]["ratio"] == 60.0
  assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temporary file left


def test_a_malformed_row_is_named():
  with pytest.raises(ValueError, match="row 'broken': missing field 'ratio'"):
    common.check_row("broken", {"closp_jax": 1.0, "reference": 1.0, "unit": "s"})
  with pytest.raises(ValueError, match="row 'r': field 'unit'"):
    common.check_row("r", {"closp_jax": 1.0, "reference": 1.0, "unit": 3, "ratio": 1.0})


def test_table_lists_every_row():
  rows = {
    "a": common.make_row(2.0, 1.0, "samples/s", common.HIGHER),
    "b": common.make_row(1.0, 4.0, "bytes", common.LOWER),
  }
  table = common.format_table(rows).splitlines()
  assert table[0].startswith("| row") and len(table) == 4
  assert "2.00x" in table[2] and "4.00x" in table[3]


def test_unknown_rows_are_refused_with_the_valid_names():
  assert run.parse_rows(None) == list(run.ALL_ROWS)
  assert run.parse_rows("loss_memory, eval_embed") == ["loss_memory", "eval_embed"]
  with pytest.raises(SystemExit, match="valid rows: train_step_sample"):
    run.parse_rows("train_step_resnet")


def test_loss_memory_row_through_the_harness(tmp_path):
  """End to end on a tiny size: a subprocess with fake devices, the row, the JSON file."""
  out = tmp_path / "bench.json"
  sizes = run.Sizes(loss_batch=512, loss_devices=8)
  results = run.Bench(sizes, ["loss_memory"], None, str(out)).run()
  row = json.loads(out.read_text())["loss_memory"]
  assert row == results["loss_memory"]
  assert row["unit"] == "bytes" and row["detail"]["better"] == "lower"
  assert row["reference"] > row["closp_jax"] > 0  # the ring loss holds less
  assert row["ratio"] == pytest.approx(row["reference"] / row["closp_jax"])


def test_check_same_accepts_equal_results_and_catches_a_wrong_document():
  scores = np.array([[0.9, 0.5, 0.5, 0.1]], np.float32)
  index = np.array([[3, 7, 8, 1]])
  ok = retrieval.check_same((scores, index), (scores + 1e-6, np.array([[3, 8, 7, 1]])))
  assert ok["untied_ranks_checked"] == 2  # the tied pair may come in either order
  with pytest.raises(AssertionError, match="untied"):
    retrieval.check_same((scores, index), (scores, np.array([[3, 7, 8, 2]])))
  with pytest.raises(AssertionError, match="scores differ"):
    retrieval.check_same((scores, index), (scores + 0.01, index))


def test_closp_jax_search_agrees_with_faiss():
  pytest.importorskip("faiss")
  corpus = retrieval.unit_vectors(3000, 32, 0)
  queries = retrieval.unit_vectors(17, 32, 1)
  got = retrieval.jax_search(queries, corpus, 50, block=1024)
  want = retrieval.FaissFlat(corpus, threads=1).search(queries, 50)
  assert retrieval.check_same(got, want)["index_agreement"] > 0.99


def _small_model_cfg():
  from closp_jax.models.towers import model_config

  return model_config(
    s2_encoder="resnet_tiny",
    s1_encoder="resnet_tiny",
    text=dict(layers=1, intermediate=64, vocab_size=200, max_position=32),
  )


def test_embedders_are_compiled_once_per_tower_geometry():
  import ml_collections

  from closp_jax.models import embed as embed_lib
  from closp_jax.models.towers import CLOSP
  from closp_jax.parallel import mesh as mesh_lib

  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  a, b = CLOSP(_small_model_cfg()), CLOSP(_small_model_cfg())
  assert embed_lib.make_image_embedder(a, mesh, "s2", False) is embed_lib.make_image_embedder(b, mesh, "s2", False)
  assert embed_lib.make_image_embedder(a, mesh, "s2", False) is not embed_lib.make_image_embedder(a, mesh, "s1", False)
  # The cached encoder computes what a fresh jit of this model does.
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 200, (3, 8)), jnp.int32)
  mask = jnp.ones((3, 8), jnp.int32)
  variables = jax.jit(lambda r: a.init(r, jnp.zeros((1, 32, 32, 13)), jnp.zeros((1, 32, 32, 2)), ids, mask))(
    jax.random.key(0)
  )
  cached = embed_lib._cached_text_encoder(embed_lib._tower_spec(a))
  np.testing.assert_array_equal(
    np.asarray(cached(variables, ids, mask)), np.asarray(embed_lib._text_encoder(b)(variables, ids, mask))
  )


# ---- the PyTorch reference ------------------------------------------------------------------------


@pytest.mark.torch
def test_native_bert_is_transformers_bert():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from benchmarks import torch_reference
  from closp_jax.models.towers import model_config

  text = model_config().text
  torch.manual_seed(0)
  hf = torch_reference.text_encoder(text, "hf").eval()
  native = torch_reference.text_encoder(text, "native").load_from_hf(hf.bert).eval()
  ids = torch.randint(1000, 20000, (4, 16))
  mask = torch.ones(4, 16, dtype=torch.long)
  mask[1, 9:] = 0
  mask[3, 5:] = 0
  with torch.no_grad():
    a, b = hf(ids, mask), native(ids, mask)
  keep = mask.bool()
  assert torch.allclose(a[keep], b[keep], atol=2e-5), (a[keep] - b[keep]).abs().max()


def _jax_param_count(cfg, groups=None) -> int:
  import flax.linen as nn

  from closp_jax.models.towers import CLOSP
  from closp_jax.train import setup

  model = CLOSP(cfg.model)
  shapes = jax.eval_shape(lambda r: nn.unbox(model.init(r, *setup.dummy_inputs(cfg), train=False)), jax.random.key(0))[
    "params"
  ]
  return sum(
    int(np.prod(x.shape)) for g, tree in shapes.items() if groups is None or g in groups for x in jax.tree.leaves(tree)
  )


@pytest.mark.torch
@pytest.mark.parametrize("variant", ["paper", "sample"])
def test_reference_trains_the_parameters_closp_jax_trains(variant):
  pytest.importorskip("timm")
  from benchmarks import jax_step, torch_reference

  cfg = jax_step.closp_config(variant, run.PAPER_ALL_TRAINED if variant == "paper" else {})
  host = jax_step.synthetic_batch(cfg, 2)
  table = jax_step.text_table(384) if variant == "sample" else None
  step = torch_reference.TorchStep(cfg, host, text_table=table)
  # :sample keeps the text tower frozen (cached embeddings on both sides).
  trained = (
    None if variant == "paper" else {"s2_encoder", "s1_encoder", "s2_projection", "s1_projection", "logit_scale"}
  )
  assert step.num_params() == _jax_param_count(cfg, trained)
  step.run()
  assert np.isfinite(float(step.last_loss))


@pytest.mark.torch
def test_reference_clip_loss_is_the_closp_jax_loss():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_reference
  from closp_jax import losses

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 9, 16)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  want = float(losses.softmax_contrastive_loss(jnp.asarray(x), jnp.asarray(y), 7.0))
  got = float(torch_reference.clip_loss(torch.from_numpy(x), torch.from_numpy(y), torch.tensor(7.0)))
  assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.torch
def test_tiny_resnet_matches_the_closp_jax_layout():
  pytest.importorskip("timm")
  import flax.linen as nn

  from benchmarks import torch_reference
  from closp_jax.models.image import image_encoder

  enc = image_encoder("resnet_tiny", 13)
  shapes = jax.eval_shape(lambda r: nn.unbox(enc.init(r, jnp.zeros((1, 120, 120, 13)))), jax.random.key(0))
  jax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  torch_model = torch_reference.TinyResNet(13)
  assert sum(p.numel() for p in torch_model.parameters()) == jax_count
  assert torch_model.num_features == 128


@pytest.mark.slow
@pytest.mark.torch
def test_train_step_row_on_a_tiny_batch(tmp_path):
  pytest.importorskip("timm")
  out = tmp_path / "bench.json"
  sizes = run.Sizes(sample_batch=4, sample_repeats=2, warmup=1)
  run.Bench(sizes, ["train_step_sample"], None, str(out)).run()
  row = json.loads(out.read_text())["train_step_sample"]
  assert row["unit"] == "samples/s" and row["closp_jax"] > 0 and row["reference"] > 0
  assert row["detail"]["batch_per_sensor"] == 4
  assert np.isfinite(row["detail"]["closp_jax_loss"]) and np.isfinite(row["detail"]["reference_loss"])


@pytest.mark.slow
@pytest.mark.torch
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
  pytest.importorskip("timm")
  env = dict(os.environ, OUT=str(tmp_path))
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "benchmarks", "gpu.py"), "--tiny"],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (written,) = tmp_path.glob("gpu-*.json")
  result = json.loads(written.read_text())
  for name in ("gpu_train_step_rn50", "gpu_train_step_vit_l"):
    row = result[name]
    assert row["closp_jax"] > 0 and row["reference"] > 0 and row["unit"] == "samples/s"
    assert row["ratio"] == pytest.approx(row["closp_jax"] / row["reference"])
    assert 0 < row["mfu"] < 10  # tiny on CPU: against the measured matmul

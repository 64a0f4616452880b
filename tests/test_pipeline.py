"""grain train/eval iterators over crisis_landmark/full built from a tiny h5py release."""

import json
import os
import subprocess
import sys
import textwrap

import grain
import h5_archive
import numpy as np
import pytest

from closp_jax.data import crisis_landmark, pipeline
from closp_jax.data.tokenize import load_tokenizer, tokenize


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  builder, expected, _ = h5_archive.build_full(tmp_path_factory.mktemp("pipe"))
  return builder, expected


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer()


def _records(builder, split, sensor):
  source = builder.as_data_source(split=split)
  start, stop = pipeline.sensor_range(builder, split, sensor)
  return [source[i] for i in range(start, stop)]


def _by_lonlat(records):
  return {tuple(np.round(r["lonlat"], 4)): r for r in records}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  return all(np.array_equal(x[s][k], y[s][k]) for x, y in zip(a, b) for s in x for k in x[s])


# --------------------------------------------------------------------------- tokenizer


def test_tokenize_reference_ids(tok):
  ids, mask = tokenize(tok, ["trees. crops. water"], max_len=64)
  assert ids.shape == (1, 64) and ids.dtype == np.int32 and mask.dtype == np.int32
  assert ids[0, :8].tolist() == [101, 3628, 1012, 8765, 1012, 2300, 102, 0]
  assert mask[0].sum() == 7 and not ids[0, 7:].any()


def test_tokenize_matches_transformers_incl_truncation(tok):
  transformers = pytest.importorskip("transformers")
  from closp_jax.weights.locate import find_minilm_folder

  hf = transformers.AutoTokenizer.from_pretrained(str(find_minilm_folder()))
  texts = ["flooded area. built", "snow and ice", " ".join(["shrub and scrub."] * 30)]
  ref = hf(texts, padding="max_length", truncation=True, max_length=64, return_tensors="np")
  ids, mask = tokenize(tok, texts, max_len=64)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  assert ids[2, -1] == 102  # [SEP] kept when truncating


def test_tokenize_buckets(tok):
  assert tokenize(tok, ["water"], bucket=True)[0].shape == (1, 16)
  assert tokenize(tok, ["water. " * 10], bucket=True)[0].shape == (1, 32)
  assert tokenize(tok, ["water. " * 20], bucket=True)[0].shape == (1, 64)
  assert tokenize(tok, ["water. " * 20], max_len=48, bucket=True)[0].shape == (1, 48)


# --------------------------------------------------------------------------- train iterator


def test_train_batch_contract(built, tok):
  builder, _ = built
  batch = next(pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok))
  assert set(batch) == {"s2", "s1"}
  # text is padded to the smallest of 16/32/64 that holds the dataset's longest text
  longest = int(tokenize(tok, pipeline.dataset_texts(builder), max_len=64)[1].sum(1).max())
  longest_bucket = min(size for size in (16, 32, 64) if size >= longest)
  for sensor, channels in (("s2", 13), ("s1", 2)):
    b = batch[sensor]
    assert set(b) == set(pipeline.BATCH_KEYS)
    assert b["image"].shape == (2, 120, 120, channels) and b["image"].dtype == np.float32
    assert b["input_ids"].shape == (2, longest_bucket) and b["input_ids"].dtype == np.int32
    assert b["attention_mask"].dtype == np.int32
    assert b["lonlat"].shape == (2, 2) and b["lonlat"].dtype == np.float32
    assert b["labels"].shape == (2, 12) and b["labels"].dtype == np.float32
    assert b["text_id"].shape == (2,) and b["text_id"].dtype == np.int32


def test_text_id_indexes_dataset_texts_and_tokens(built, tok):
  builder, _ = built
  texts = pipeline.dataset_texts(builder)
  assert texts == sorted(set(texts))
  it = pipeline.train_iterator(builder, batch_size=2, seed=1, tokenizer=tok, augment=False)
  for step in _take(it, 3):
    for sensor, b in step.items():
      recs = _by_lonlat(_records(builder, "train", sensor))
      for i in range(2):
        rec = recs[tuple(np.round(b["lonlat"][i], 4))]
        assert texts[b["text_id"][i]] == rec["text"].decode()
        np.testing.assert_array_equal(b["labels"][i], rec["labels"])
        ids, mask = tokenize(tok, [texts[b["text_id"][i]]])  # padded to 64
        t = b["input_ids"].shape[1]
        np.testing.assert_array_equal(b["input_ids"][i], ids[0, :t])
        np.testing.assert_array_equal(b["attention_mask"][i], mask[0, :t])
        assert not mask[0, t:].any()  # only padding was cut


def test_bucketed_batches_are_shorter(built, tok):
  builder, _ = built
  b = next(pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok, bucket=True))
  for sensor in ("s2", "s1"):
    assert b[sensor]["input_ids"].shape == (2, 16)
    assert b[sensor]["attention_mask"][:, -1].sum() == 0


def test_deterministic_for_a_seed(built, tok):
  builder, _ = built
  kw = dict(batch_size=2, tokenizer=tok)
  a = _take(pipeline.train_iterator(builder, seed=3, **kw), 6)
  b = _take(pipeline.train_iterator(builder, seed=3, **kw), 6)
  c = _take(pipeline.train_iterator(builder, seed=4, **kw), 6)
  assert _equal(a, b)
  assert not _equal(a, c)


def test_state_restore_continues_identically(built, tok):
  builder, _ = built
  it = pipeline.train_iterator(builder, batch_size=2, seed=5, tokenizer=tok)
  _take(it, 3)
  state = it.get_state()
  after = _take(it, 4)
  fresh = pipeline.train_iterator(builder, batch_size=2, seed=5, tokenizer=tok)
  fresh.set_state(state)
  assert _equal(after, _take(fresh, 4))


def test_orbax_grain_checkpoint_roundtrip(built, tok, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  builder, _ = built
  it = pipeline.train_iterator(builder, batch_size=2, seed=6, tokenizer=tok)
  _take(it, 2)
  ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckpt.save(tmp_path / "data_state", args=grain.checkpoint.CheckpointSave(it))
  after = _take(it, 3)
  fresh = pipeline.train_iterator(builder, batch_size=2, seed=6, tokenizer=tok)
  ckpt.restore(tmp_path / "data_state", args=grain.checkpoint.CheckpointRestore(fresh))
  assert _equal(after, _take(fresh, 3))


def test_epoch_covers_longer_sensor_once_and_cycles_shorter(built, tok):
  builder, _ = built
  it = pipeline.train_iterator(builder, batch_size=1, seed=0, tokenizer=tok, augment=False, num_epochs=2)
  steps = list(it)
  n2, n1 = (pipeline.split_size(builder, "train", s) for s in ("s2", "s1"))
  assert (n2, n1) == (4, 5)
  assert len(steps) == 2 * max(n2, n1) == 2 * pipeline.steps_per_epoch(builder, 1)
  for epoch in range(2):
    chunk = steps[epoch * 5 : (epoch + 1) * 5]
    s1 = [tuple(np.round(s["s1"]["lonlat"][0], 4)) for s in chunk]
    assert sorted(s1) == sorted(_by_lonlat(_records(builder, "train", "s1")))
  s2_all = [tuple(np.round(s["s2"]["lonlat"][0], 4)) for s in steps]
  assert set(s2_all[:4]) == set(_by_lonlat(_records(builder, "train", "s2")))
  # Reshuffled every epoch.
  assert [s["s1"]["lonlat"][0].tolist() for s in steps[:5]] != [s["s1"]["lonlat"][0].tolist() for s in steps[5:]]


def test_normalisation_scale_and_standardize(built, tok):
  builder, _ = built
  stats = pipeline.band_stats(builder)
  for mode in ("scale", "standardize", "none"):
    it = pipeline.train_iterator(
      builder,
      batch_size=2,
      seed=0,
      tokenizer=tok,
      augment=False,
      normalization={"s2": mode, "s1": mode},
      scale_divisor={"s2": 10000.0, "s1": 4.0},
    )
    step = next(it)
    for sensor in ("s2", "s1"):
      recs = _by_lonlat(_records(builder, "train", sensor))
      for i in range(2):
        raw = recs[tuple(np.round(step[sensor]["lonlat"][i], 4))]["image"].astype(np.float64)
        if mode == "scale":
          want = raw / (10000.0 if sensor == "s2" else 4.0)
        elif mode == "none":
          want = raw
        else:
          mean = np.array(stats[sensor]["mean"])
          std = np.array(stats[sensor]["std"])
          want = (raw - mean) / np.where(std > 0, std, 1.0)
        np.testing.assert_allclose(step[sensor]["image"][i], want, rtol=1e-5, atol=1e-5)
  # S1 "none" leaves S1 exactly as stored (the authors' input); S2 keeps its default (scale).
  step = next(
    pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok, augment=False, normalization={"s1": "none"})
  )
  recs = _by_lonlat(_records(builder, "train", "s1"))
  np.testing.assert_array_equal(step["s1"]["image"][0], recs[tuple(np.round(step["s1"]["lonlat"][0], 4))]["image"])


def _d4(image):
  out = []
  for k in range(4):
    r = np.rot90(image, k, axes=(0, 1))
    out += [r, r[:, ::-1]]
  return out


def _flips(image):
  return [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]


@pytest.mark.parametrize("mode", ["flips_rot90", "flips"])
def test_augmentation_is_flips_and_rotations(built, tok, mode):
  """flips_rot90 draws from the 8 symmetries of the square; flips (the authors') only from the 4
  flip combinations, and over enough draws uses each of them."""
  builder, _ = built
  it = pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok, augment=mode, normalization={"s1": "none"})
  seen_rotation_only = 0
  used = set()
  for step in _take(it, 24):
    recs = _by_lonlat(_records(builder, "train", "s1"))
    for i in range(2):
      img = step["s1"]["image"][i]
      raw = recs[tuple(np.round(step["s1"]["lonlat"][i], 4))]["image"]
      assert any(np.array_equal(img, v) for v in _d4(raw))
      flips = [j for j, v in enumerate(_flips(raw)) if np.array_equal(img, v)]
      if mode == "flips":
        assert flips, "a flips-only augmentation produced a rotation"
      used.update(flips[:1])
      seen_rotation_only += not flips
  if mode == "flips":
    assert used == {0, 1, 2, 3}
  else:
    assert seen_rotation_only > 0


def test_rgb_baseline_channels(built, tok):
  builder, _ = built
  step = next(
    pipeline.train_iterator(
      builder, batch_size=2, seed=0, tokenizer=tok, augment=False, rgb=True, normalization={"s1": "none"}
    )
  )
  s2 = _by_lonlat(_records(builder, "train", "s2"))
  raw = s2[tuple(np.round(step["s2"]["lonlat"][0], 4))]["image"] / 10000.0
  np.testing.assert_allclose(step["s2"]["image"][0], raw[..., [3, 2, 1]], rtol=1e-6)
  s1 = _by_lonlat(_records(builder, "train", "s1"))
  raw = s1[tuple(np.round(step["s1"]["lonlat"][0], 4))]["image"]
  np.testing.assert_allclose(
    step["s1"]["image"][0], np.stack([raw[..., 0], raw[..., 1], raw[..., 0] - raw[..., 1]], -1)
  )


def test_batch_larger_than_split_is_an_error(built, tok):
  builder, _ = built
  with pytest.raises(ValueError, match=r"train has 4 s2 samples.*batch_size=8"):
    pipeline.train_iterator(builder, batch_size=8, seed=0, tokenizer=tok)
  with pytest.raises(ValueError, match="normalization"):
    pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok, normalization={"s2": "minmax"})


# --------------------------------------------------------------------------- eval iterator


@pytest.mark.parametrize("split,sensor", [("test", "s1"), ("train", "s2"), ("validation", "s1")])
def test_eval_visits_every_sample_once_in_order(built, tok, split, sensor):
  builder, _ = built
  records = _records(builder, split, sensor)
  batches = list(pipeline.eval_iterator(builder, split, sensor, batch_size=3, tokenizer=tok))
  assert len(batches) == pipeline.eval_steps(builder, split, sensor, 3) == -(-len(records) // 3)
  keys = np.concatenate([b["key"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.dtype == bool and keys.dtype.kind == "U"
  assert keys[mask].tolist() == [r["key"].decode() for r in records]
  assert (keys[~mask] == "").all() and mask[: len(records)].all()
  last = batches[-1]
  assert last["image"].shape[0] == 3
  assert not last["image"][~last["mask"]].any()
  for b in batches:
    assert set(b) == set(pipeline.BATCH_KEYS) | {"mask", "key"}


def test_eval_standardized_matches_train_stats(built, tok):
  builder, _ = built
  stats = pipeline.band_stats(builder)
  batch = next(
    pipeline.eval_iterator(builder, "test", "s2", batch_size=4, tokenizer=tok, normalization={"s2": "standardize"})
  )
  raw = _records(builder, "test", "s2")[0]["image"].astype(np.float64)
  std = np.array(stats["s2"]["std"])
  want = (raw - np.array(stats["s2"]["mean"])) / np.where(std > 0, std, 1.0)
  np.testing.assert_allclose(batch["image"][0], want, rtol=1e-5, atol=1e-5)
  assert not batch["image"][0][..., 10].any()


# --------------------------------------------------------------------------- per-process shares


class _FakeShard:
  """Stands in for grain's ShardByJaxProcess as process `index` of `count`."""

  def __init__(self, index, count):
    self.index, self.count = index, count

  def __call__(self, drop_remainder=False):
    shard = type("Shard", (), {})()
    shard.shard_index, shard.shard_count = self.index, self.count
    return shard


def test_process_shares_split_eval_and_train(built, tok, monkeypatch):
  builder, _ = built
  records = _records(builder, "train", "s1")  # 5 records over 2 processes
  keys, steps, lonlats = [], set(), []
  for index in range(2):
    monkeypatch.setattr(grain.sharding, "ShardByJaxProcess", _FakeShard(index, 2))
    batches = list(pipeline.eval_iterator(builder, "train", "s1", batch_size=2, tokenizer=tok))
    steps.add(len(batches))
    keys += [k for b in batches for k, m in zip(b["key"], b["mask"]) if m]
    it = pipeline.train_iterator(builder, batch_size=1, seed=0, tokenizer=tok, num_epochs=1)
    lonlats.append({tuple(np.round(s["s1"]["lonlat"][0], 4)) for s in it})
  assert keys == [r["key"].decode() for r in records]
  assert steps == {2}  # ceil(ceil(5 / 2) / 2) on both
  assert not lonlats[0] & lonlats[1]  # disjoint shares
  assert len(lonlats[0]) == len(lonlats[1]) == 2  # 5 // 2 each (remainder dropped)


# --------------------------------------------------------------------------- builder access


def test_get_builder_reuses_prepared_and_refuses_missing(built, tmp_path):
  builder, _ = built
  again = pipeline.get_builder("crisis_landmark/full", data_dir=builder.data_dir_root)
  assert again.info.metadata["texts"] == builder.info.metadata["texts"]
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.get_builder("crisis_landmark/full", data_dir=tmp_path, prepare=False)
  with pytest.raises(FileNotFoundError, match="manual_dir"):
    pipeline.get_builder("crisis_landmark/full", data_dir=tmp_path)


def test_sample_config_runs_the_same_conversion(tmp_path, tok, capsys):
  config = crisis_landmark.CrisisLandmarkConfig(
    name="sample_tiny", synthetic=True, num_s2=24, num_s1=24, seed=0, validation_min_per_sensor=4
  )
  builder = pipeline.get_builder("crisis_landmark", data_dir=tmp_path, config=config)
  out = capsys.readouterr().out
  assert "crisis_landmark/sample_tiny train:" in out and "validation" in out
  counts = builder.info.metadata["counts"]
  assert sum(c["sensors"]["s2"] for s, c in counts.items() if s != "validation") == 24
  assert sum(c["sensors"]["s1"] for s, c in counts.items() if s != "validation") == 24
  assert counts["validation"]["sensors"] == {"s2": 4, "s1": 4}
  step = next(pipeline.train_iterator(builder, batch_size=2, seed=0, tokenizer=tok))
  assert step["s2"]["image"].shape == (2, 120, 120, 13)
  # The temporary archive (under data_dir/downloads) is gone.
  leftovers = [p for p in tmp_path.rglob("crisis_landmark_sample_*")]
  assert not leftovers


# --------------------------------------------------------------------------- processes


def test_worker_processes_give_the_same_batches(built, tok):
  builder, _ = built
  plain = _take(pipeline.train_iterator(builder, batch_size=2, seed=7, tokenizer=tok), 4)
  workers = _take(pipeline.train_iterator(builder, batch_size=2, seed=7, tokenizer=tok, worker_count=2), 4)
  assert _equal(plain, workers)


_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[3],
                               num_processes=2, process_id=int(sys.argv[1]))
    from closp_jax.data import pipeline
    b = pipeline.get_builder("crisis_landmark/full", data_dir=sys.argv[2], prepare=False)
    keys = [str(k) for batch in pipeline.eval_iterator(b, "test", "s2", batch_size=1)
            for k, m in zip(batch["key"], batch["mask"]) if m]
    it = pipeline.train_iterator(b, batch_size=1, seed=0, num_epochs=1, augment=False)
    lonlats = [s["s2"]["lonlat"][0].tolist() for s in it]
    print(json.dumps({"keys": keys, "lonlats": lonlats, "process": jax.process_index()}))
""")


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_jax_processes_share_the_data(built, tmp_path):
  builder, _ = built
  script = tmp_path / "proc.py"
  script.write_text(_TWO_PROCESS_SCRIPT)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "JAX_PLATFORMS": "cpu"}
  port = str(_free_port())
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), str(i), str(builder.data_dir_root), port],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 0, stderr[-3000:]
    outs.append(json.loads(stdout.strip().splitlines()[-1]))
  outs.sort(key=lambda o: o["process"])
  records = _records(builder, "test", "s2")
  assert outs[0]["keys"] + outs[1]["keys"] == [r["key"].decode() for r in records]
  assert len(outs[0]["lonlats"]) == len(outs[1]["lonlats"]) == 2
  assert not {tuple(x) for x in outs[0]["lonlats"]} & {tuple(x) for x in outs[1]["lonlats"]}

"""The authors' released checkpoints without training: `python -m closp_jax.export --from-official`
(closp_jax.official) turns a state dict of the authors' CLOSP / GeoCLOSP class into an export folder
whose embeddings equal those of a PyTorch re-creation of that class (tests/authors_closp.py) with
the same random weights; the kornia resize and SatCLIP harmonics of the authors' code are matched;
bad checkpoints are one-line errors naming the file; `evaluate --model` evaluates an export folder."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")

import authors_closp as A  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from closp_jax import official  # noqa: E402

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
TEXTS = ["flooded area", "trees. crops. water", "burned area. bare. shrub and scrub", ""]


def minilm_config():
  """all-MiniLM-L6-v2's geometry (the authors' text model), random weights."""
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  return BertConfig(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
  )


def minilm_tokenizer():
  """The authors' tokenizer: transformers' AutoTokenizer of all-MiniLM-L6-v2."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  from closp_jax.weights.locate import find_minilm_folder  # pylint: disable=import-outside-toplevel

  return AutoTokenizer.from_pretrained(str(find_minilm_folder(None)))


def raw_inputs(n=3, seed=0):
  """Raw archive values, NCHW: S2 reflectance x 10,000 (13 bands, zero B10), S1 linear backscatter;
  (lon, lat) away from the poles (the authors' float32 harmonics lose digits within a degree of them)."""
  rng = np.random.default_rng(seed)
  s2 = rng.uniform(0, 5000, (n, 13, 120, 120)).astype(np.float32)
  s2[:, 10] = 0.0
  s1 = rng.gamma(1.0, 0.1, (n, 2, 120, 120)).astype(np.float32)
  lonlat = np.stack([rng.uniform(-180, 180, n), rng.uniform(-80, 80, n)], -1).astype(np.float32)
  return s2, s1, lonlat


def authors_checkpoint(variant, path, seed=0):
  """The authors' class of `variant` with random weights, saved as their train.py saves it."""
  torch.manual_seed(seed)
  model = A.randomize_(A.build(variant, minilm_config(), tokenizer=minilm_tokenizer()), seed + 1).eval()
  torch.save(model.state_dict(), path)
  return model


def authors_embeddings(model, s2, s1, lonlat):
  """Unit vectors as the authors' code computes them (encode_image / encode_text, then F.normalize)."""
  with torch.no_grad():
    out = {
      "s2": F.normalize(model.encode_image(torch.from_numpy(s2)), dim=-1).numpy(),
      "s1": F.normalize(model.encode_image(torch.from_numpy(s1)), dim=-1).numpy(),
      "text": F.normalize(model.encode_text(TEXTS), dim=-1).numpy(),
    }
    if isinstance(model, A.GeoCLOSP):
      out["location"] = model.encode_location(torch.from_numpy(lonlat)).numpy()
  return out


def export_embeddings(folder, s2, s1, lonlat):
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  m = load_exported(folder)
  out = {
    "s2": m.encode_image(s2, "s2", layout="NCHW"),
    "s1": m.encode_image(s1, "s1", layout="NCHW"),
    "text": m.encode_text(TEXTS),
  }
  if m.has_location:
    out["location"] = m.encode_location(lonlat)
  return out, m


def assert_parity(variant, want, got):
  assert sorted(want) == sorted(got)
  errors = {k: float(np.abs(want[k] - got[k]).max()) for k in want}
  print(f"{variant}: max abs diff " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
  for k, err in errors.items():
    assert want[k].shape == got[k].shape, k
    assert err <= TOLERANCE, f"{variant} {k}: max abs difference {err}"
  return errors


def run_binary(*args, env=None, timeout=900):
  env = dict(env or os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False
  )


# ---- the authors' preprocessing, checked against closp-jax's ----------------------------------


def test_kornia_resize_is_bilinear_with_aligned_corners():
  """K.Resize(224) of kornia 0.8.1 (the authors' pin) = interpolate(bilinear, align_corners=True) =
  closp-jax's resize with resize_align_corners; the half-pixel resize is another function."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from closp_jax.models.towers import resize_bilinear_align_corners  # pylint: disable=import-outside-toplevel

  s2 = raw_inputs(n=2, seed=4)[0]
  ref = A.val_transform(torch.from_numpy(s2), "s2", vit=True).numpy()
  assert ref.shape == (2, 13, 224, 224)
  try:
    import kornia.augmentation as K  # pylint: disable=import-outside-toplevel
  except ImportError:
    K = None
  if K is not None:  # the authors' own transform (closp.py:101-110)
    kornia_out = K.AugmentationSequential(K.Normalize(mean=0, std=10000), K.Resize(224), data_keys=["image"])(
      torch.from_numpy(s2)
    ).numpy()
    np.testing.assert_allclose(kornia_out, ref, rtol=0, atol=1e-7)
  x = np.transpose(s2, (0, 2, 3, 1)) / np.float32(10000)
  got = np.transpose(np.asarray(resize_bilinear_align_corners(jnp.asarray(x), (224, 224))), (0, 3, 1, 2))
  assert np.abs(got - ref).max() <= 1e-6
  half_pixel = np.transpose(np.asarray(jax.image.resize(x, (2, 224, 224, 13), "bilinear")), (0, 3, 1, 2))
  assert np.abs(half_pixel - ref).max() > 1e-2


def test_the_authors_analytic_harmonics_are_closp_jax_analytic_2023():
  """Their default 'analytic' table (SatCLIP's generator) is closp-jax's 'analytic_2023' convention;
  their 'closed-form' recurrence is 'closed_form'."""
  from closp_jax.models.location import spherical_harmonics  # pylint: disable=import-outside-toplevel

  lonlat = raw_inputs(n=64, seed=5)[2]
  analytic = A.SphericalHarmonics(10, "analytic")(torch.from_numpy(lonlat)).numpy()
  closed = A.SphericalHarmonics(10, "closed-form")(torch.from_numpy(lonlat)).numpy()
  assert analytic.shape == (64, 100)
  # float32 (their table loses a few digits of sqrt(1 - cos^2) at high latitudes; values reach 3.9)
  assert np.abs(np.asarray(spherical_harmonics(lonlat, 10, "analytic_2023")) - analytic).max() <= 1e-4
  assert np.abs(np.asarray(spherical_harmonics(lonlat, 10, "closed_form")) - closed).max() <= 1e-4
  assert np.abs(np.asarray(spherical_harmonics(lonlat, 10, "analytic")) - analytic).max() > 0.5


# ---- small towers: the class, the resize and the heads, quickly -------------------------------


def small_geoclosp(seed=0):
  """The authors' GeoCLOSP class around small towers: ViTs made for 120 px (S2 with a 1000-way head,
  S1 without, as CLOSP-VS), a 2-layer BERT, SatCLIP L = 10 with a narrow SIREN. Not a released layout."""
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  text = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
  model = A.GeoCLOSP(
    text,
    None,
    s1_encoder=A.small_vit(2),
    s2_encoder=A.small_vit(13, num_classes=1000),
    dim_hidden=32,
    dim_out=24,
    tokenizer=minilm_tokenizer(),
  )
  return A.randomize_(model, seed + 1).eval()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("small") / "best_model.pth"
  model = small_geoclosp()
  torch.save(model.state_dict(), path)
  return model, path


def test_small_towers_from_120px_match_the_authors_class(small_checkpoint):
  """A ViT tower fed 120 px: kornia-style resize to 224, pos-embed resampling, the kept head, CLS text,
  the analytic harmonics: closp-jax's towers with the imported weights equal the authors' class."""
  from closp_jax.data.tokenize import load_tokenizer, tokenize  # pylint: disable=import-outside-toplevel
  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.closp_checkpoint import infer_model_config, load_closp_checkpoint  # pylint: disable=import-outside-toplevel

  model, path = small_checkpoint
  cfg = infer_model_config(path, text_heads=2)
  assert (cfg.s2_encoder, cfg.s1_encoder, cfg.s2_head_classes, cfg.s1_head_classes) == ("vit_tiny", "vit_tiny", 1000, 0)
  assert (cfg.image_size, cfg.resize_align_corners, cfg.location.sh_convention) == (224, True, "analytic_2023")
  variables = load_closp_checkpoint(path, cfg)
  s2, s1, lonlat = raw_inputs(n=2, seed=6)
  want = authors_embeddings(model, s2, s1, lonlat)
  enc = model.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="np")
  ids, mask = tokenize(load_tokenizer(), TEXTS, max_len=64)
  np.testing.assert_array_equal(ids, enc["input_ids"])
  np.testing.assert_array_equal(mask, enc["attention_mask"])
  net = CLOSP(cfg)
  nhwc = lambda x: np.transpose(x, (0, 2, 3, 1))  # noqa: E731
  got = {
    "s2": net.apply(variables, nhwc(s2) / np.float32(10000), method=net.encode_s2),
    "s1": net.apply(variables, nhwc(s1), method=net.encode_s1),
    "text": net.apply(variables, ids, mask, method=net.encode_text),
    "location": net.apply(variables, lonlat, method=net.encode_location),
  }
  assert_parity("small GeoCLOSP (ViT towers)", want, {k: np.asarray(v) for k, v in got.items()})
  # The half-pixel resize would not do: the S2 tower then differs beyond the tolerance.
  half = CLOSP(infer_model_config(path, text_heads=2, resize_align_corners=False))
  err = np.abs(
    np.asarray(half.apply(variables, nhwc(s2) / np.float32(10000), method=half.encode_s2)) - want["s2"]
  ).max()
  assert err > 10 * TOLERANCE


# ---- errors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closp_rn_zeros(tmp_path_factory):
  """A CLOSP-RN-shaped checkpoint (zeros, the real tensor names and shapes) as safetensors."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  from closp_jax.models.towers import model_config
  from closp_jax.weights import convert  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.closp_checkpoint import abstract_variables, export_closp_state_dict  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.registry import RELEASED_LAYOUTS as PAPER_MODELS  # pylint: disable=import-outside-toplevel

  cfg = model_config(**PAPER_MODELS["CLOSP-RN"])
  zeros = jax.tree.map(
    lambda s: np.zeros(s.shape, s.dtype), convert.unflatten_tree(convert.flatten_tree(abstract_variables(cfg)))
  )
  path = tmp_path_factory.mktemp("zeros") / "closp_rn.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in export_closp_state_dict(zeros, cfg).items()}, str(path))
  return path


def test_variants_are_identified_from_the_tensors(closp_rn_zeros, small_checkpoint):
  sd, files, name = official.read_checkpoint(closp_rn_zeros)
  assert files == [closp_rn_zeros] and name is None
  variant, cfg = official.official_config(sd, str(closp_rn_zeros))
  assert variant == "CLOSP-RN" and (cfg.s2_head_classes, cfg.embed_dim, cfg.text.heads) == (1000, 384, 12)
  with pytest.raises(official.OfficialCheckpointError) as e:
    official.official_config(sd, str(closp_rn_zeros), variant="CLOSP-VS")
  msg = str(e.value)
  assert (
    "\n" not in msg
    and str(closp_rn_zeros) in msg
    and "holds a CLOSP-RN checkpoint" in msg
    and "not --variant CLOSP-VS" in msg
  )
  with pytest.raises(official.OfficialCheckpointError, match="expected one of CLOSP-RN, CLOSP-VS"):
    official.official_config(sd, "x", variant="CLOSP-XL")
  # The small ViT model is the authors' class, but no released layout.
  with pytest.raises(official.OfficialCheckpointError) as e:
    official.export_official(small_checkpoint[1], closp_rn_zeros.parent / "m")
  msg = str(e.value)
  assert (
    "\n" not in msg
    and str(small_checkpoint[1]) in msg
    and "vit_tiny" in msg
    and "match none of the released variants" in msg
    and "CLOSP-RN (s2 resnet50" in msg
  )
  assert not (closp_rn_zeros.parent / "m").exists()


def test_registry_names_resolve_through_the_hub_cache(closp_rn_zeros, tmp_path, monkeypatch):
  """closp/closp-rn is read from the Hugging Face cache (no network); its variant is checked."""
  snapshot = tmp_path / "hub" / "models--DarthReca--CLOSP-RN" / "snapshots" / ("0" * 40)
  snapshot.mkdir(parents=True)
  (snapshot / "model.safetensors").symlink_to(closp_rn_zeros)
  (snapshot.parents[1] / "refs").mkdir()
  (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  sd, files, name = official.read_checkpoint("closp/closp-rn")
  assert name == "closp/closp-rn" and files == [snapshot / "model.safetensors"]
  assert official.official_config(sd, str(files[0]))[0] == "CLOSP-RN"
  with pytest.raises(
    official.OfficialCheckpointError, match="closp/closp-rn is the released CLOSP-RN, not --variant CLOSP-VL"
  ):
    official.load_official("closp/closp-rn", variant="CLOSP-VL")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
  with pytest.raises(
    official.OfficialCheckpointError, match="closp/closp-rn: .*not on this machine.*weights fetch closp/closp-rn"
  ):
    official.read_checkpoint("closp/closp-rn")


def test_bad_checkpoints_are_one_line_errors_naming_the_file(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  cases = {}
  save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
  cases["other.safetensors"] = "not a CLOSP checkpoint"
  torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not tensors
  cases["pickled.pth"] = "refused to load"
  (tmp_path / "empty").mkdir()
  cases["empty"] = "expected one weight file"
  cases["missing.pth"] = "no such file or folder, and not a released checkpoint's name"
  for name, expected in cases.items():
    with pytest.raises(official.OfficialCheckpointError) as e:
      official.export_official(tmp_path / name, tmp_path / "out")
    assert expected in str(e.value) and name in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert not (tmp_path / "out").exists()


def test_binary_errors(closp_rn_zeros, tmp_path):
  proc = run_binary(
    "-m",
    "closp_jax.export",
    "--from-official",
    str(closp_rn_zeros),
    "--variant",
    "GeoCLOSP-RN",
    "--out",
    str(tmp_path / "m"),
  )
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
  assert (
    proc.stderr.startswith("error: ")
    and "holds a CLOSP-RN checkpoint" in proc.stderr
    and "not --variant GeoCLOSP-RN" in proc.stderr
  )
  proc = run_binary(
    "-m",
    "closp_jax.export",
    "--from-official",
    str(closp_rn_zeros),
    "--workdir",
    str(tmp_path),
    "--out",
    str(tmp_path / "m"),
  )
  assert proc.returncode == 1 and "pass --workdir (a training run) or --from-official" in proc.stderr
  assert not (tmp_path / "m").exists()


# ---- the released layouts at their real geometries ------------------------------------------------


def test_closp_rn_through_the_binary(tmp_path):
  """CLOSP-RN (ResNet-50 towers with their 1000-way fc, MiniLM geometry): the export binary's folder
  gives the authors' embeddings; config.json says where the weights came from."""
  ckpt = tmp_path / "best_model.pth"
  model = authors_checkpoint("CLOSP-RN", ckpt)
  proc = run_binary("-m", "closp_jax.export", "--from-official", str(ckpt), "--out", str(tmp_path / "closp-rn"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote" in proc.stdout
  s2, s1, lonlat = raw_inputs()
  got, exported = export_embeddings(tmp_path / "closp-rn", s2, s1, lonlat)
  assert_parity("CLOSP-RN", authors_embeddings(model, s2, s1, lonlat), got)
  meta = exported.config
  assert meta["name"] == "CLOSP-RN" and meta["location"] is None and meta["logit_scale"] == 1.0
  assert meta["checkpoint"]["kind"] == "official" and meta["checkpoint"]["variant"] == "CLOSP-RN"
  assert meta["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
  assert meta["sensors"]["s2"]["normalization"] == "scale" and meta["sensors"]["s1"]["normalization"] == "none"
  np.testing.assert_allclose(meta["sensors"]["s2"]["scale"], 1e-4, rtol=1e-6)
  assert meta["model_config"]["s2_head_classes"] == meta["model_config"]["s1_head_classes"] == 1000
  enc = model.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="np")
  ids, mask = exported.tokenize(TEXTS)
  np.testing.assert_array_equal(ids, enc["input_ids"])
  np.testing.assert_array_equal(mask, enc["attention_mask"])


def test_geoclosp_rn_from_a_hub_style_folder(tmp_path):
  """GeoCLOSP-RN saved as a Hugging Face model folder (config.json + model.safetensors, tensors under
  a `model.` prefix): S2, S1, text and location embeddings equal the authors'."""
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel

  model = authors_checkpoint("GeoCLOSP-RN", tmp_path / "best_model.pth")
  folder = tmp_path / "GeoCLOSP-RN"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "geoclosp"}))
  save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
  out = official.export_official(folder, tmp_path / "export", variant="GeoCLOSP-RN")
  s2, s1, lonlat = raw_inputs(seed=1)
  got, exported = export_embeddings(out, s2, s1, lonlat)
  assert_parity("GeoCLOSP-RN", authors_embeddings(model, s2, s1, lonlat), got)
  assert exported.config["model_config"]["location"]["sh_convention"] == "analytic_2023"
  assert exported.config["checkpoint"]["files"] == [str(folder / "model.safetensors")]


def test_closp_vs_resizes_as_the_authors(tmp_path):
  """CLOSP-VS (ViT-S/16: S2 with TorchGeo's 1000-way head, S1 without) from 120 px patches."""
  ckpt = tmp_path / "best_model.pth"
  model = authors_checkpoint("CLOSP-VS", ckpt)
  out = official.export_official(ckpt, tmp_path / "closp-vs")
  s2, s1, lonlat = raw_inputs(n=2, seed=2)
  got, exported = export_embeddings(out, s2, s1, lonlat)
  assert_parity("CLOSP-VS", authors_embeddings(model, s2, s1, lonlat), got)
  mc = exported.config["model_config"]
  assert (mc["image_size"], mc["resize_align_corners"], mc["s2_head_classes"], mc["s1_head_classes"]) == (
    224,
    True,
    1000,
    0,
  )


@pytest.mark.slow
def test_closp_vl(tmp_path):
  """CLOSP-VL (ViT-L/16 towers without heads): 0.63 G parameters, several minutes and about 6 GB."""
  ckpt = tmp_path / "best_model.pth"
  model = authors_checkpoint("CLOSP-VL", ckpt)
  s2, s1, lonlat = raw_inputs(n=2, seed=3)
  want = authors_embeddings(model, s2, s1, lonlat)
  del model  # about 9 GB at the peak otherwise
  out = official.export_official(ckpt, tmp_path / "closp-vl")
  ckpt.unlink()
  got, exported = export_embeddings(out, s2, s1, lonlat)
  assert_parity("CLOSP-VL", want, got)
  mc = exported.config["model_config"]
  assert (mc["s2_encoder"], mc["s2_head_classes"], mc["s1_head_classes"]) == ("vit_l16", 0, 0)


# ---- evaluate --model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tiny_data_dir, tmp_path_factory):
  """(workdir config, workdir, export folder) of a random sample-config model whose S1 is standardised
  with the tiny dataset's statistics, exported from its workdir."""
  from test_export import fresh_config, make_workdir  # pylint: disable=import-outside-toplevel

  from closp_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  tmp = tmp_path_factory.mktemp("tiny_export")
  cfg = fresh_config(name="crisis_landmark/tiny", data_dir=tiny_data_dir, eval_batch_size=64)
  make_workdir(tmp / "workdir", cfg)
  stats = pipeline.band_stats(pipeline.get_builder("crisis_landmark/tiny", data_dir=tiny_data_dir, prepare=False))
  out = export_lib.export_model(tmp / "workdir", tmp / "model", band_stats=stats)
  return cfg, tmp / "workdir", out


def test_evaluate_model_equals_the_workdir_evaluation(tiny_export, tiny_data_dir, tmp_path):
  """The export folder evaluated on its own gives the workdir evaluation's numbers and files."""
  from closp_jax.retrieval import evaluator  # pylint: disable=import-outside-toplevel

  cfg, workdir, out = tiny_export
  got = evaluator.evaluate_exported(out, data="crisis_landmark/tiny", data_dir=tiny_data_dir)
  folder = out / "eval" / "crisis_landmark" / "tiny"
  for f in ("metrics.json", "report.md", "run.s2.trec", "run.s1.trec", "run.all.trec", "qrels.trec"):
    assert (folder / f).is_file(), f
  assert evaluator.load_metrics(folder) == json.loads(json.dumps(got))
  want = evaluator.evaluate_checkpoint(cfg, workdir, output=tmp_path / "workdir_eval")
  assert got["dataset"]["docs"] == want["dataset"]["docs"] and got["queries"] == want["queries"]
  worst = 0.0
  for ranking, entry in want["rankings"].items():
    assert got["rankings"][ranking]["num_queries"] == entry["num_queries"] > 0
    for metric, value in entry["metrics"].items():
      worst = max(worst, abs(got["rankings"][ranking]["metrics"][metric] - value))
      assert got["rankings"][ranking]["metrics"][metric] == pytest.approx(value, abs=1e-4), (ranking, metric)
  print(f"evaluate --model vs the workdir evaluation: largest metric difference {worst:.1e}")
  assert got["checkpoint"]["step"] == "7" and got["checkpoint"]["model"] == str(out)


def test_evaluate_binary_with_model(tiny_export, tiny_data_dir, tmp_path):
  _, _, out = tiny_export
  env = dict(os.environ, CLOSP_DATA_DIR=tiny_data_dir)
  proc = run_binary(
    "-m",
    "closp_jax.evaluate",
    "--model",
    str(out),
    "--data",
    "crisis_landmark/tiny",
    "--out",
    str(tmp_path / "ev"),
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "text->all" in proc.stdout
  metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
  assert metrics["config"] == "geoclosp:sample" and (tmp_path / "ev" / "run.all.trec").is_file()
  proc = run_binary("-m", "closp_jax.evaluate", "--model", str(tmp_path), "--data", "crisis_landmark/tiny", env=env)
  assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "config.json not found" in proc.stderr and str(tmp_path) in proc.stderr

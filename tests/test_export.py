"""Export: a checkpoint -> a self-contained folder whose serialized functions give the checkpoint's
embeddings in a fresh process without the model code; the torch state dict loads strictly into a
PyTorch re-creation of the original CLOSP model and gives the same embeddings; inputs are
normalised as the trainer's pipeline does; errors name what is wrong."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")

from closp_jax import export as export_lib  # noqa: E402
from closp_jax.data import pipeline  # noqa: E402
from closp_jax.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEP = 7


def band_stats(seed=0):
  """Plausible train-split statistics (B10 constant, as in CrisisLandMark)."""
  rng = np.random.default_rng(seed)
  s2_mean, s2_std = rng.uniform(300, 2500, 13), rng.uniform(150, 900, 13)
  s2_mean[10], s2_std[10] = 0.0, 0.0
  return {"s2": {"mean": s2_mean.tolist(), "std": s2_std.tolist()}, "s1": {"mean": [0.16, 0.04], "std": [0.17, 0.037]}}


def raw_inputs(n=3, seed=1):
  """Raw archive values: S2 reflectance x 10,000 (zero B10, one NaN), S1 linear backscatter, lon/lat."""
  rng = np.random.default_rng(seed)
  s2 = rng.uniform(0, 4000, (n, 120, 120, 13)).astype(np.float32)
  s2[..., 10] = 0.0
  s2[0, 5, 7, 3] = np.nan
  s1 = rng.gamma(1.0, 0.1, (n, 120, 120, 2)).astype(np.float32)
  s1[1, 3, 3, 0] = np.nan
  lonlat = np.stack([rng.uniform(-180, 180, n), rng.uniform(-85, 85, n)], -1).astype(np.float32)
  return s2, s1, lonlat


TEXTS = ["flooded area", "trees. crops. water", "burned area. bare", ""]


def fresh_config(**data):
  """The sample GeoCLOSP config (resnet_tiny towers, MiniLM text, SatCLIP location)."""
  from closp_jax.config import load_config  # pylint: disable=import-outside-toplevel

  cfg = load_config(str(REPO / "configs" / "geoclosp.py"))
  cfg.unlock()
  for k, v in data.items():
    cfg.data[k] = v
  return cfg


def random_variables(cfg, seed=0):
  """Random variables of the config's model, from its shapes (no init computation): fan-in scaled
  kernels and embeddings, norm scales and BatchNorm variances in [0.5, 1.5], small biases and means."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from closp_jax.weights.closp_checkpoint import abstract_variables  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  abstract = nn.unbox(abstract_variables(export_lib.model_config_of(cfg)))

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if "logit_scale" in name:
      return np.asarray(np.log(10.0) + 0.1 * rng.normal(), np.float32)
    if name.endswith(("scale']", "var']")):
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    if len(a.shape) <= 1:
      return (0.1 * rng.normal(size=a.shape)).astype(np.float32)
    return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)

  variables = {c: jax.tree_util.tree_map_with_path(draw, t) for c, t in abstract.items()}
  variables.setdefault("batch_stats", {})
  return variables


def make_workdir(workdir: Path, cfg, seed=0):
  """A workdir with config.json and one checkpoint (step STEP) of random weights, saved as the
  trainer saves its state. Returns the variables stored in the checkpoint (numpy)."""
  from closp_jax.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from closp_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.train import setup  # pylint: disable=import-outside-toplevel
  from closp_jax.train.optimizer import make_optimizer  # pylint: disable=import-outside-toplevel

  mesh = mesh_lib.make_mesh(cfg.mesh)
  variables = random_variables(cfg, seed)
  shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), variables)
  optimizer = make_optimizer(cfg.optim, variables["params"], 10)
  state, _ = setup.create_state(variables, optimizer, shardings, mesh, 0)
  state = state.replace(step=jax.numpy.asarray(STEP, jax.numpy.int32))
  ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
  ckpt.save(STEP, state, force=True)
  ckpt.close()
  (workdir / "config.json").write_text(cfg.to_json(indent=2))
  return variables


def reference_embeddings(cfg, variables, stats):
  """The model code on inputs normalised by the trainer's pipeline (closp_jax.data.pipeline)."""
  from closp_jax.data.tokenize import load_tokenizer, tokenize  # pylint: disable=import-outside-toplevel
  from closp_jax.models.towers import CLOSP  # pylint: disable=import-outside-toplevel

  model = CLOSP(export_lib.model_config_of(cfg))
  s2, s1, lonlat = raw_inputs()
  fill = {"s2": 0.0, "s1": 1e-6}  # the builder's NaN rule (closp_jax.data.preprocess.NAN_FILL)
  out = {}
  for sensor, images in (("s2", s2), ("s1", s1)):
    norm = pipeline._Normalize(sensor, cfg.data.normalization[sensor], stats)  # pylint: disable=protected-access
    x = np.stack([norm(np.where(np.isnan(im), fill[sensor], im)) for im in images])
    method = model.encode_s2 if sensor == "s2" else model.encode_s1
    out[sensor] = np.asarray(jax.jit(lambda v, x, m=method: model.apply(v, x, method=m))(variables, x))
  ids, mask = tokenize(load_tokenizer(), TEXTS, max_len=int(cfg.data.max_len))
  out["text"] = np.asarray(model.apply(variables, ids, mask, method=model.encode_text))
  out["location"] = np.asarray(model.apply(variables, lonlat, method=model.encode_location))
  out["ids"], out["mask"] = ids, mask
  return out


FRESH_PROCESS = textwrap.dedent("""
  import json, sys
  import numpy as np
  import closp_jax
  model_dir, inputs, out = sys.argv[1:4]
  m = closp_jax.load_exported(model_dir)
  x = np.load(inputs)
  texts = json.loads(open(inputs + ".json").read())
  ids, mask = m.tokenize(texts)
  res = {"s2": m.encode_image(x["s2"], "s2"), "s1": m.encode_image(x["s1"], "s1"),
         "s2_12": m.encode_image(np.delete(x["s2"], 10, axis=-1), "s2"),
         "s1_nchw": m.encode_image(np.transpose(x["s1"], (0, 3, 1, 2)), "s1", layout="NCHW"),
         "s2_one": m.encode_image(x["s2"][1], "s2"),
         "text": m.encode_text(texts), "location": m.encode_location(x["lonlat"]),
         "ids": ids, "mask": mask}
  np.savez(out, **res)
  heavy = [k for k in sys.modules if k.split(".")[0] in ("flax", "tensorflow_datasets", "grain", "orbax", "torch")
           or k.startswith(("closp_jax.models", "closp_jax.data", "closp_jax.train", "closp_jax.weights"))]
  print(json.dumps({"heavy": heavy, "backend": __import__("jax").default_backend()}))
""")


def run_fresh(model_dir: Path, tmp: Path) -> tuple[dict, dict]:
  s2, s1, lonlat = raw_inputs()
  np.savez(tmp / "inputs.npz", s2=s2, s1=s1, lonlat=lonlat)
  (tmp / "inputs.npz.json").write_text(json.dumps(TEXTS))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
    [sys.executable, "-c", FRESH_PROCESS, str(model_dir), str(tmp / "inputs.npz"), str(tmp / "out.npz")],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  return dict(np.load(tmp / "out.npz")), info


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(cfg, checkpoint variables, band stats, model folder) of a fresh model exported with --format torch."""
  tmp = tmp_path_factory.mktemp("export")
  cfg = fresh_config()
  variables = make_workdir(tmp / "workdir", cfg)
  stats = band_stats()
  out = export_lib.export_model(tmp / "workdir", tmp / "model", formats=("jax", "torch"), band_stats=stats)
  return cfg, variables, stats, out


def test_folder_layout_and_config(exported):
  cfg, variables, _, out = exported
  names = sorted(p.name for p in out.iterdir())
  assert names == [
    "README.md",
    "closp_torch.safetensors",
    "config.json",
    "encode_location.jax",
    "encode_s1.jax",
    "encode_s2.jax",
    "encode_text.jax",
    "model.safetensors",
    "tokenizer",
  ]
  assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "tokenizer" / "vocab.txt").is_file()
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".model.tmp")]  # temporary folder renamed
  meta = json.loads((out / "config.json").read_text())
  assert meta["checkpoint"]["step"] == STEP and meta["embed_dim"] == 384 and meta["text"]["max_len"] == 64
  assert meta["sensors"]["s2"]["normalization"] == "scale" and meta["sensors"]["s1"]["normalization"] == "standardize"
  assert meta["training_config"]["model"]["s2_encoder"] == "resnet_tiny"
  np.testing.assert_allclose(meta["logit_scale"], np.exp(float(variables["params"]["logit_scale"])), rtol=1e-6)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  flat = load_file(str(out / "model.safetensors"))
  np.testing.assert_array_equal(flat["params/s2_projection/kernel"], variables["params"]["s2_projection"]["kernel"])
  np.testing.assert_array_equal(
    flat["batch_stats/s1_encoder/bn1/mean"], variables["batch_stats"]["s1_encoder"]["bn1"]["mean"]
  )
  assert flat["params/logit_scale"].shape == ()
  assert len(flat) == len(jax.tree.leaves(variables))


def test_fresh_process_matches_checkpoint_without_model_code(exported, tmp_path):
  cfg, variables, stats, out = exported
  want = reference_embeddings(cfg, variables, stats)
  got, info = run_fresh(out, tmp_path)
  assert info["heavy"] == [], f"the exported model imported {info['heavy']}"
  np.testing.assert_array_equal(got["ids"], want["ids"])
  np.testing.assert_array_equal(got["mask"], want["mask"])
  for k in ("s2", "s1", "text", "location"):
    assert got[k].shape == want[k].shape, k
    err = np.abs(got[k] - want[k]).max()
    assert err <= 1e-5, f"{k}: max abs difference {err}"
  np.testing.assert_allclose(np.linalg.norm(got["s2"], axis=1), 1.0, atol=1e-5)
  # 12 stored bands get the zero B10; NCHW is transposed; one patch without N is a batch of one.
  np.testing.assert_allclose(got["s2_12"], got["s2"], atol=1e-6)
  np.testing.assert_allclose(got["s1_nchw"], got["s1"], atol=1e-6)
  np.testing.assert_allclose(got["s2_one"], got["s2"][1:2], atol=1e-5)


def test_batches_are_padded_and_split_consistently(exported):
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  *_, out = exported
  m = load_exported(out)
  s2, s1, _ = raw_inputs(n=5, seed=4)
  whole = m.encode_image(s1, "s1")
  pieces = m.encode_image(s1, "s1", batch_size=2)  # 2 + 2 + 1 (padded to 1)
  np.testing.assert_allclose(pieces, whole, atol=1e-5)
  assert m.encode_image(s2[:0], "s2").shape == (0, 384)


def test_input_errors_name_the_problem(exported):
  from closp_jax.exported import ExportedModelError, load_exported  # pylint: disable=import-outside-toplevel

  *_, out = exported
  m = load_exported(out)
  with pytest.raises(ExportedModelError, match=r"s1 images have shape \(1, 120, 120, 3\).*VV, VH"):
    m.encode_image(np.zeros((1, 120, 120, 3)), "s1")
  with pytest.raises(ExportedModelError, match=r"expected \[N, 120, 120, 13\]"):
    m.encode_image(np.zeros((1, 64, 64, 13)), "s2")
  with pytest.raises(ExportedModelError, match="sensor must be 's2' or 's1'"):
    m.encode_image(np.zeros((1, 120, 120, 2)), "sar")
  with pytest.raises(ExportedModelError, match=r"lonlat must be \[N, 2\]"):
    m.encode_location(np.zeros((2, 3)))
  with pytest.raises(TypeError, match="wrap it in a list"):
    m.encode_text("flooded area")


def test_broken_folders_are_named(exported, tmp_path):
  from closp_jax.exported import ExportedModelError, load_exported  # pylint: disable=import-outside-toplevel

  with pytest.raises(ExportedModelError, match="config.json not found"):
    load_exported(tmp_path)
  *_, out = exported
  meta = json.loads((out / "config.json").read_text())
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({**meta, "version": 99}))
  with pytest.raises(ExportedModelError, match="field 'version' is 99"):
    load_exported(bad)
  (bad / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ExportedModelError, match="model.safetensors not found"):
    load_exported(bad)


def test_export_errors(exported, tmp_path):
  cfg, _, stats, out = exported
  workdir = Path(json.loads((out / "config.json").read_text())["checkpoint"]["workdir"])
  with pytest.raises(export_lib.ExportError, match="exists; pass overwrite=True"):
    export_lib.export_model(workdir, out, band_stats=stats)
  # the run's checkpoints and config.json are read by closp_jax.checkpoint: its CheckpointError (a
  # UserError, as ExportError is) names the step and the folder
  with pytest.raises(UserError, match=r"no checkpoint for step 3 .*available: \[7\]"):
    export_lib.export_model(workdir, tmp_path / "m", checkpoint=3, band_stats=stats)
  with pytest.raises(UserError, match="config.json not found"):
    export_lib.export_model(tmp_path, tmp_path / "m", band_stats=stats)
  with pytest.raises(export_lib.ExportError, match=r"normalization.s1='standardize': .*needs band statistics"):
    export_lib.input_spec(cfg, {"s2": stats["s2"]})
  with pytest.raises(export_lib.ExportError, match="unknown format"):
    export_lib.export_model(workdir, tmp_path / "m", formats=("onnx",))
  assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
  "normalization,rgb",
  [
    ({"s2": "scale", "s1": "standardize"}, False),
    ({"s2": "standardize", "s1": "none"}, False),
    ({"s2": "none", "s1": "scale"}, False),
    ({"s2": "scale", "s1": "standardize"}, True),
  ],
)
def test_input_normalisation_matches_the_pipeline(normalization, rgb):
  """The exported functions' preprocessing is the trainer's (_Normalize, then to_rgb)."""
  cfg = fresh_config(normalization=normalization, rgb=rgb)
  stats = band_stats(seed=2)
  spec = export_lib.input_spec(cfg, stats)
  s2, s1, _ = raw_inputs(n=2, seed=3)
  for sensor, images in (("s2", s2), ("s1", s1)):
    images = np.nan_to_num(images, nan=export_lib.NAN_FILL[sensor])
    norm = pipeline._Normalize(sensor, normalization[sensor], stats)  # pylint: disable=protected-access
    want = np.stack([norm(im) for im in images])
    if rgb:
      want = np.stack([pipeline.to_rgb(w, sensor) for w in want])
    got = np.asarray(jax.jit(lambda x, s=sensor: export_lib._prepare_images(x, spec[s], s, rgb))(images))  # pylint: disable=protected-access
    # XLA may fuse the RGB baseline's VV - VH with the scaling (an FMA): a few float32 ulps apart.
    np.testing.assert_allclose(got, want, rtol=0, atol=0 if not rgb else 1e-6)


# ---- PyTorch: the authors' CLOSP model class ------------------------------------------------------

SH_CALCULATION = {"closed_form": "closed-form", "analytic_2023": "analytic"}  # closp_jax -> the authors' names


def _original_closp(cfg):
  """The authors' GeoCLOSP class (tests/authors_closp.py) with this config's geometry: the sample's
  small ResNet towers in place of their ResNet-50s, a BERT of cfg.model.text, SatCLIP's location
  encoder with the config's harmonics."""
  pytest.importorskip("torch")
  pytest.importorskip("timm")
  import authors_closp  # pylint: disable=import-outside-toplevel
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  m, t, loc = cfg.model, cfg.model.text, cfg.model.location
  assert m.s2_encoder == m.s1_encoder == "resnet_tiny" and loc.kind == "satclip"
  text = BertConfig(
    vocab_size=t.vocab_size,
    hidden_size=t.hidden,
    num_hidden_layers=t.layers,
    num_attention_heads=t.heads,
    intermediate_size=t.intermediate,
    max_position_embeddings=t.max_position,
    type_vocab_size=t.type_vocab,
    layer_norm_eps=t.layer_norm_eps,
  )
  return authors_closp.GeoCLOSP(
    text,
    None,
    s1_encoder=authors_closp.small_resnet(m.s1_in_chans, m.s1_head_classes),
    s2_encoder=authors_closp.small_resnet(m.s2_in_chans, m.s2_head_classes),
    legendre_polys=loc.degree,
    dim_hidden=loc.hidden,
    num_layers=loc.layers,
    dim_out=loc.out,
    harmonics_calculation=SH_CALCULATION[loc.sh_convention],
  ).eval()


@pytest.mark.torch
def test_torch_state_dict_loads_into_the_original_model_class(exported):
  torch = pytest.importorskip("torch")
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  cfg, variables, stats, out = exported
  ref = _original_closp(cfg)
  sd = load_file(str(out / "closp_torch.safetensors"))
  ref.load_state_dict(sd, strict=True)
  with safe_open(str(out / "closp_torch.safetensors"), "np") as f:
    assert float(f.metadata()["logit_scale"]) == pytest.approx(np.exp(float(variables["params"]["logit_scale"])))

  want = reference_embeddings(cfg, variables, stats)
  s2, s1, lonlat = raw_inputs()
  spec = export_lib.input_spec(cfg, stats)

  def normalised(x, sensor):  # what a PyTorch user does with config.json's "sensors" entry
    e = spec[sensor]
    x = np.where(np.isnan(x), e["nan_fill"], x)
    x = (x - np.asarray(e["shift"], np.float32)) * np.asarray(e["scale"], np.float32)
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))

  # The towers of the authors' class on inputs normalised as config.json says (their encode_image would
  # apply their own S2 / 10,000 instead); the text's CLS token and the location as their code computes them.
  unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
  with torch.no_grad():
    got = {
      "s2": unit(ref.s2_projection(ref.s2_encoder(normalised(s2, "s2")))),
      "s1": unit(ref.s1_projection(ref.s1_encoder(normalised(s1, "s1")))),
      "text": unit(
        ref.encode_text(
          input_ids=torch.from_numpy(want["ids"]).long(), attention_mask=torch.from_numpy(want["mask"]).long()
        )
      ),
      "location": ref.encode_location(torch.from_numpy(lonlat)),
    }
  errors = {k: float(np.abs(v.numpy() - want[k]).max()) for k, v in got.items()}
  print(
    "closp_torch.safetensors in the authors' class: max abs diff "
    + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
  )
  for k, err in errors.items():
    assert err <= 1e-4, f"{k}: max abs difference {err}"


def _export_binary(cwd, *args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run(
    [sys.executable, "-m", "closp_jax.export", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def test_binary_writes_a_folder_from_relative_paths(tmp_path):
  """`python -m closp_jax.export --workdir RUN --out MODEL` with relative paths, as the README writes it,
  writes a folder that loads; the run's config comes from RUN/config.json. Inputs that need no band
  statistics (S2 scaled, S1 as stored) so that no dataset is needed."""
  cfg = fresh_config(normalization={"s2": "scale", "s1": "none"})
  variables = make_workdir(tmp_path / "runs" / "geo", cfg)
  proc = _export_binary(tmp_path, "--workdir", "runs/geo", "--out", "models/geo")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "models" / "geo"
  assert f"wrote {out}" in proc.stdout
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  model = load_exported(out)
  assert model.encode_text(["flooded area"]).shape == (1, int(cfg.model.embed_dim))
  meta = json.loads((out / "config.json").read_text())
  assert int(meta["checkpoint"]["step"]) == STEP and meta["sensors"]["s1"]["normalization"] == "none"
  flat, stored = export_lib.flatten_variables(variables), load_file(str(out / "model.safetensors"))
  assert set(flat) <= set(stored)
  for k in flat:
    np.testing.assert_array_equal(stored[k], flat[k], err_msg=k)
  # the folder exists now: a second export is a one-line error, and the folder is untouched
  before = sorted(p.name for p in out.iterdir())
  again = _export_binary(tmp_path, "--workdir", "runs/geo", "--out", "models/geo")
  assert again.returncode == 1 and again.stderr.strip().startswith("error:") and "--overwrite" in again.stderr
  assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
  assert sorted(p.name for p in out.iterdir()) == before


def test_binary_without_band_statistics_says_where_it_looked(exported, tmp_path):
  """The sample recipe standardises S1: with no prepared dataset the binary says where it looked,
  in one line, and writes nothing."""
  _, _, _, out = exported
  workdir = json.loads((out / "config.json").read_text())["checkpoint"]["workdir"]
  proc = _export_binary(tmp_path, "--workdir", workdir, "--out", "m", "--data_dir", str(tmp_path / "nodata"))
  assert proc.returncode == 1 and "nodata" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "m").exists()

"""configs/geoclosp.py:paper runs end to end as the authors train: pretrained ResNet-50 towers (TorchGeo's
layout, fc included), SatCLIP L10 and MiniLM loaded, the towers frozen (running BatchNorm statistics still
move, as in their train mode), the projections trained.

The weight files are random tensors at the real geometries, written in the published formats (timm-named
state dicts as TorchGeo's .pth files hold them, a SatCLIP Lightning checkpoint), passed as local files;
resolution by name is tests/test_weights_registry.py's.
"""

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

torch = pytest.importorskip("torch")


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + k + "/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def _write_weights(folder):
  """TorchGeo-style ResNet-50 .pth files (13 and 2 bands) and a SatCLIP-ResNet50-L10 Lightning checkpoint."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from closp_jax.models.image import image_encoder  # pylint: disable=import-outside-toplevel
  from closp_jax.models.location import SatCLIPLocationEncoder  # pylint: disable=import-outside-toplevel
  from closp_jax.weights import convert, timm_import  # pylint: disable=import-outside-toplevel
  from closp_jax.weights.satclip import siren_rules  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(3)

  def random_like(abstract, scale=0.05):
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)

  paths = {}
  for sensor, chans in (("s2", 13), ("s1", 2)):
    enc = image_encoder("resnet50", chans)
    abstract = jax.eval_shape(
      lambda e=enc, c=chans: nn.unbox(e.init(jax.random.key(0), np.zeros((1, 64, 64, c), np.float32)))
    )
    variables = random_like(abstract)
    variables["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, variables["batch_stats"])
    sd = timm_import.export_timm_resnet(variables["params"], variables["batch_stats"])
    # TorchGeo's MoCo files carry the backbone and no classifier: timm's fc stays as initialised.
    paths[sensor] = folder / f"resnet50_{sensor}.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, paths[sensor])
  loc = SatCLIPLocationEncoder(degree=10, hidden=256, layers=2, out=256)
  params = random_like(jax.eval_shape(lambda: nn.unbox(loc.init(jax.random.key(0), np.zeros((1, 2), np.float32)))))[
    "params"
  ]
  sd = convert.export_state_dict({"params": params}, siren_rules(2, prefix="model.location.nnet."))
  paths["location"] = folder / "satclip-resnet50-l10.ckpt"
  torch.save(
    {
      "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
      "hyper_parameters": {
        "legendre_polys": 10,
        "capacity": 256,
        "num_hidden_layers": 2,
        "embed_dim": 256,
        "le_type": "sphericalharmonics",
        "pe_type": "siren",
        "harmonics_calculation": "analytic",
      },
    },
    paths["location"],
  )
  return paths


@pytest.mark.slow
def test_geoclosp_paper_trains_the_projections_on_frozen_pretrained_towers(tmp_path, tiny_data_dir):
  paths = _write_weights(tmp_path)
  workdir = tmp_path / "run"
  env = dict(os.environ, CLOSP_DATA_DIR=tiny_data_dir)
  cmd = [
    sys.executable,
    "-m",
    "closp_jax.main",
    "--config",
    "geoclosp:paper",
    f"--workdir={workdir}",
    "--config.data.name=crisis_landmark/tiny",
    "--config.data.batch_size=8",
    "--config.data.eval_batch_size=64",
    "--config.train.epochs=0",
    "--config.train.steps=3",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=5",
    "--config.checkpoint.async_save=False",
    "--config.eval.every_steps=0",
    "--config.eval.final=False",
    f"--config.init.s2={paths['s2']}",
    f"--config.init.s1={paths['s1']}",
    f"--config.init.location={paths['location']}",
    "--config.optim.lr=1e-2",
  ]
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for slot in ("s2_encoder", "s1_encoder", "location_encoder", "text_model"):
    assert f"{slot} <- " in proc.stderr, proc.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["normalization"] == {"s2": "scale", "s1": "none"} and saved["optim"]["cycle_momentum"]

  def state(step):
    return ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))

  first, last = state(1), state(3)
  p1, p3 = _flat(first["params"]), _flat(last["params"])
  frozen = [k for k in p1 if k.split("/")[0] in ("s2_encoder", "s1_encoder", "text_model", "location_encoder")]
  trained = [k for k in p1 if k.split("/")[0] in ("s2_projection", "s1_projection", "location_projection")]
  assert frozen and trained
  assert all(np.array_equal(p1[k], p3[k]) for k in frozen)  # the towers never move
  assert all(not np.array_equal(p1[k], p3[k]) for k in trained)  # the projections train
  # the pretrained values are in the frozen towers (conv1 of the S1 file), and the timm fc kept its init
  sd = torch.load(paths["s1"], weights_only=True)
  np.testing.assert_array_equal(p3["s1_encoder/conv1/kernel"], sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  assert p3["s1_encoder/fc/kernel"].shape == (2048, 1000)
  # train-mode BatchNorm: the frozen towers' running statistics still follow the data, as in PyTorch
  b1, b3 = _flat(first["batch_stats"]), _flat(last["batch_stats"])
  assert any(not np.array_equal(b1[k], b3[k]) for k in b1 if k.startswith("s2_encoder/"))

"""Building a run from the config: pretrained tower weights, shardings, batch checks."""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from closp_jax.config import load_config
from closp_jax.models.image import image_encoder
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup
from closp_jax.weights import timm_import


def _cfg(**init):
  cfg = load_config("closp:sample")
  cfg.unlock()
  cfg.init.text = ""
  for k, v in init.items():
    cfg.init[k] = v
  return cfg


def test_pretrained_image_tower_is_merged_from_a_timm_state_dict(tmp_path):
  enc = image_encoder("resnet_tiny", 13)
  variables = enc.init(jax.random.key(7), np.zeros((1, 32, 32, 13), np.float32), train=False)
  sd = timm_import.export_timm_resnet(jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"]))
  path = tmp_path / "s2.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))

  cfg = _cfg(s2=str(path))
  mesh = mesh_lib.make_mesh(cfg.mesh)
  model, variables2, _, _, notes = setup.build_model_and_optimizer(cfg, mesh, 10)
  assert any("s2_encoder" in n for n in notes)
  got = jax.tree.leaves(jax.device_get(variables2["params"]["s2_encoder"]))
  want = jax.tree.leaves(jax.device_get(variables["params"]))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_pretrained_tensor_with_the_wrong_shape_is_named(tmp_path):
  enc = image_encoder("resnet_tiny", 2)  # 2 input channels, loaded into the 13-channel S2 tower
  variables = enc.init(jax.random.key(0), np.zeros((1, 32, 32, 2), np.float32), train=False)
  sd = timm_import.export_timm_resnet(jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"]))
  path = tmp_path / "s1_as_s2.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
  cfg = _cfg(s2=str(path))
  with pytest.raises(ValueError) as err:
    setup.build_model_and_optimizer(cfg, mesh_lib.make_mesh(cfg.mesh), 10)
  message = str(err.value)
  assert str(path) in message and "conv1.weight" in message
  assert "file has shape (16, 2, 7, 7), model expects (16, 13, 7, 7)" in message


def test_a_batch_of_zero_is_refused_on_one_device():
  """(The 8-device refusal of an indivisible batch is in tests/test_sharding.py.)"""
  cfg = _cfg()
  cfg.data.batch_size = 0
  with pytest.raises(setup.RunConfigError, match="config.data.batch_size=0 must be a positive multiple"):
    setup.check_batch(cfg, mesh_lib.make_mesh(cfg.mesh))


def test_mesh_that_does_not_match_the_devices_is_refused():
  cfg = _cfg()
  cfg.mesh.data = 3
  cfg.mesh.fsdp = 5
  with pytest.raises(mesh_lib.MeshConfigError, match="devices"):
    mesh_lib.make_mesh(cfg.mesh)


def test_resolve_steps_from_epochs_and_one_epoch_freeze():
  cfg = load_config("closp:paper")
  cfg.unlock()
  cfg.optim.freeze_steps = -1  # the authors' earlier train.py: unfreeze after the first epoch
  out = setup.resolve_steps(cfg, {"s2": 640, "s1": 700})
  assert out.train.steps_per_epoch == 11  # ceil(700 / 64)
  assert out.train.steps == 30 * 11
  assert out.optim.freeze_steps == 11

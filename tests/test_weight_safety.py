"""Every importer that accepts PyTorch files refuses a pickle that would run code, without running it."""

import os
import shutil

import pytest

from closp_jax.weights.safe_load import UnsafeWeightsError

pytestmark = pytest.mark.torch


class _Payload:
  """Unpickling this creates a directory: the marker that code from the file ran."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _malicious(path, marker, wrap):
  torch = pytest.importorskip("torch")
  torch.save(wrap(_Payload(marker)), path)
  return path


def _minilm_folder(tmp_path, marker):
  from closp_jax.weights.locate import find_minilm_folder  # pylint: disable=import-outside-toplevel

  real = find_minilm_folder()
  folder = tmp_path / "bert"
  folder.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(real / name, folder / name)
  _malicious(folder / "pytorch_model.bin", marker, lambda p: {"embeddings.word_embeddings.weight": p})
  return folder


def _importers():
  from closp_jax.models.towers import model_config  # pylint: disable=import-outside-toplevel
  from closp_jax.weights import closp_checkpoint, geoclip_import, minilm, satclip  # pylint: disable=import-outside-toplevel

  cfg = model_config(s2_encoder="resnet_tiny", s1_encoder="resnet_tiny")
  return {
    "load_minilm": (lambda tmp, m: minilm.load_minilm(_minilm_folder(tmp, m)), None),
    "load_bert": (lambda tmp, m: minilm.load_bert(_minilm_folder(tmp, m)), None),
    "load_satclip": (
      lambda tmp, m: satclip.load_satclip(tmp / "satclip.ckpt"),
      lambda p: {"hyper_parameters": {"legendre_polys": 10}, "state_dict": {"x": p}},
    ),
    "load_geoclip_location": (
      lambda tmp, m: geoclip_import.load_geoclip_location(tmp / "geoclip.pth"),
      lambda p: {"LocEnc0.capsule.0.b": p},
    ),
    "load_closp_checkpoint": (
      lambda tmp, m: closp_checkpoint.load_closp_checkpoint(tmp / "closp.pth", cfg),
      lambda p: {"s2_encoder.conv1.weight": p},
    ),
    "infer_model_config": (
      lambda tmp, m: closp_checkpoint.infer_model_config(tmp / "closp.pth"),
      lambda p: {"s2_encoder.conv1.weight": p},
    ),
  }


FILES = {
  "load_satclip": "satclip.ckpt",
  "load_geoclip_location": "geoclip.pth",
  "load_closp_checkpoint": "closp.pth",
  "infer_model_config": "closp.pth",
}


@pytest.mark.parametrize(
  "name",
  ["load_minilm", "load_bert", "load_satclip", "load_geoclip_location", "load_closp_checkpoint", "infer_model_config"],
)
def test_importer_refuses_code_in_a_pickle(tmp_path, name):
  torch = pytest.importorskip("torch")
  call, wrap = _importers()[name]
  marker = tmp_path / "code_ran"
  if wrap is not None:
    _malicious(tmp_path / FILES[name], marker, wrap)
  with pytest.raises(UnsafeWeightsError, match="refused"):
    call(tmp_path, marker)
  assert not marker.exists()
  # Control: the file really does run code when unpickled without weights_only.
  target = tmp_path / FILES[name] if wrap is not None else tmp_path / "bert" / "pytorch_model.bin"
  torch.load(target, weights_only=False)
  assert marker.is_dir()

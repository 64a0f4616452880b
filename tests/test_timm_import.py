"""timm weight import/export: round trips, prefixes, heads, error messages, files, unsafe pickles."""

import copy
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax.models.image import image_encoder
from closp_jax.weights.convert import WeightMismatchError, flatten_tree, unflatten_tree
from closp_jax.weights.safe_load import UnsafeWeightsError
from closp_jax.weights.timm_import import export_timm_resnet, export_timm_vit, load_timm_resnet, load_timm_vit


def _flax_variables(name, in_chans, seed=0):
  """Random variables (numpy) with the structure `image_encoder(name, in_chans).init` makes; a fresh copy per call."""
  return copy.deepcopy(_cached_variables(name, in_chans, seed))


@functools.cache
def _cached_variables(name, in_chans, seed):
  model = image_encoder(name, in_chans)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, in_chans)), train=False))
  rng = np.random.RandomState(seed)

  def draw(path, shape):
    if path[-1] == "var":  # BatchNorm running variance
      v = rng.rand(*shape) + 0.5
    elif path[-1] == "scale":  # BatchNorm / LayerNorm scale
      v = rng.rand(*shape) + 0.5
    elif len(shape) > 1 and path[-1] == "kernel":  # fan-in scaled: O(1) activations
      v = rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      v = rng.randn(*shape) * 0.1
    return v.astype(np.float32)

  return unflatten_tree({k: draw(k, s.shape) for k, s in flatten_tree(shapes).items()})


def _assert_same(a, b):
  fa, fb = flatten_tree(a), flatten_tree(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def test_resnet_export_import_round_trip():
  v = _flax_variables("resnet_tiny", 13)
  sd = export_timm_resnet(v["params"], v["batch_stats"])
  assert sd["conv1.weight"].shape == (16, 13, 7, 7)
  assert sd["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
  assert sd["layer2.0.downsample.1.running_var"].shape == (32,)
  assert sd["bn1.num_batches_tracked"].dtype == np.int64
  assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
  params, batch_stats = load_timm_resnet(sd, "resnet_tiny")
  _assert_same({"params": params, "batch_stats": batch_stats}, v)


def test_vit_export_import_round_trip():
  v = _flax_variables("vit_tiny", 2)
  sd = export_timm_vit(v["params"])
  assert sd["blocks.1.attn.qkv.weight"].shape == (3 * 96, 96)
  assert sd["blocks.1.attn.proj.weight"].shape == (96, 96)
  assert sd["patch_embed.proj.weight"].shape == (96, 2, 8, 8)
  assert sd["pos_embed"].shape == (1, 1 + 15 * 15, 96)
  _assert_same(load_timm_vit(sd, "vit_tiny"), v["params"])


def test_qkv_layout_splits_heads_like_timm():
  """timm's qkv rows are ordered (q|k|v, head, head_dim): row r of q for head h is r = h*hd + i."""
  v = _flax_variables("vit_tiny", 2)
  sd = export_timm_vit(v["params"])
  kernel = v["params"]["blocks_0"]["attn"]["qkv"]["kernel"]  # (D, 3, H, hd)
  hd = 96 // 3
  np.testing.assert_array_equal(sd["blocks.0.attn.qkv.weight"][96 + 2 * hd + 5], kernel[:, 1, 2, 5])  # k, head 2
  proj = v["params"]["blocks_0"]["attn"]["proj"]["kernel"]  # (H, hd, D)
  np.testing.assert_array_equal(sd["blocks.0.attn.proj.weight"][7, 1 * hd + 3], proj[1, 3, 7])


def test_prefix_head_and_counters(caplog):
  v = _flax_variables("resnet_tiny", 2)
  sd = export_timm_resnet(v["params"], v["batch_stats"])
  ckpt = {f"s2_encoder.{k}": v for k, v in sd.items()}
  ckpt["s2_encoder.fc.weight"] = np.zeros((10, 128), np.float32)
  ckpt["s2_encoder.fc.bias"] = np.zeros((10,), np.float32)
  ckpt["s1_encoder.conv1.weight"] = np.zeros((16, 2, 7, 7), np.float32)  # another tower: not read
  ckpt["logit_scale"] = np.ones((), np.float32)
  with caplog.at_level(logging.INFO, logger="closp_jax.weights.convert"):
    params, _ = load_timm_resnet(ckpt, "resnet_tiny", prefix="s2_encoder.", source="ckpt.safetensors")
  np.testing.assert_array_equal(params["conv1"]["kernel"], v["params"]["conv1"]["kernel"])
  assert "fc.weight" in caplog.text and "fc.bias" in caplog.text and "ckpt.safetensors" in caplog.text
  with pytest.raises(WeightMismatchError, match="no tensor name starts with prefix 's3_encoder.'"):
    load_timm_resnet(ckpt, "resnet_tiny", prefix="s3_encoder.")


def test_vit_head_is_ignored():
  v = _flax_variables("vit_tiny", 13)
  sd = export_timm_vit(v["params"])
  sd["head.weight"], sd["head.bias"] = np.zeros((5, 96), np.float32), np.zeros((5,), np.float32)
  _assert_same(load_timm_vit(sd, "vit_tiny"), v["params"])


def test_errors_name_tensor_shapes_missing_and_unexpected():
  v = _flax_variables("resnet_tiny", 13)
  sd = export_timm_resnet(v["params"], v["batch_stats"])
  with pytest.raises(WeightMismatchError) as e:
    load_timm_resnet(sd, "resnet_tiny", in_chans=2, source="ssl4eo.pth")
  msg = str(e.value)
  assert "ssl4eo.pth" in msg
  assert "conv1.weight -> params/conv1/kernel: file has shape (16, 13, 7, 7), model expects (16, 2, 7, 7)" in msg
  broken = dict(sd)
  del broken["layer3.0.conv2.weight"], broken["layer1.0.bn2.running_var"]
  broken["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(WeightMismatchError) as e:
    load_timm_resnet(broken, "resnet_tiny")
  msg = str(e.value)
  assert (
    "missing tensors (2): layer1.0.bn2.running_var, layer3.0.conv2.weight" in msg
    or "missing tensors (2): layer3.0.conv2.weight, layer1.0.bn2.running_var" in msg
  )
  assert "unexpected tensors (1): layer5.0.conv1.weight" in msg
  # a ResNet-18 state dict for the tiny model: every size problem is listed, not only the first
  with pytest.raises(WeightMismatchError, match=r"(?s)bn1.weight.*\(64\).*\(16\).*unexpected tensors \(40\): layer1.1"):
    load_timm_resnet(export_timm_resnet(*_rn18()), "resnet_tiny")
  with pytest.raises(ValueError, match="not a ResNet"):
    load_timm_resnet(sd, "vit_tiny")
  with pytest.raises(WeightMismatchError, match="patch_embed.proj.weight"):
    load_timm_vit(sd, "vit_tiny")  # a ResNet file given to the ViT importer


def _rn18():
  model = image_encoder("resnet18", 3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  tree = unflatten_tree({k: np.zeros(s.shape, np.float32) for k, s in flatten_tree(shapes).items()})
  return tree["params"], tree["batch_stats"]


def test_reads_safetensors_files(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  v = _flax_variables("vit_tiny", 2)
  path = tmp_path / "vit.safetensors"
  save_file(export_timm_vit(v["params"]), str(path))
  _assert_same(load_timm_vit(path, "vit_tiny"), v["params"])


# ---- with PyTorch ---------------------------------------------------------------------------------


@pytest.mark.torch
def test_reads_torch_files_and_refuses_a_malicious_pickle(tmp_path):
  torch = pytest.importorskip("torch")
  v = _flax_variables("resnet_tiny", 2)
  sd = export_timm_resnet(v["params"], v["batch_stats"])
  good = tmp_path / "ok.pth"
  torch.save({"state_dict": {k: torch.from_numpy(np.array(a)) for k, a in sd.items()}}, good)
  params, _ = load_timm_resnet(good, "resnet_tiny")
  np.testing.assert_array_equal(params["layer4_0"]["conv2"]["kernel"], v["params"]["layer4_0"]["conv2"]["kernel"])

  target = tmp_path / "pwned.txt"

  class Payload:
    def __reduce__(self):
      return (open, (str(target), "w"))  # unpickling this creates `target`

  evil = tmp_path / "evil.pt"
  torch.save({"conv1.weight": torch.zeros(16, 2, 7, 7), "extra": Payload()}, evil)
  with pytest.raises(UnsafeWeightsError, match="evil.pt"):
    load_timm_resnet(evil, "resnet_tiny")
  assert not target.exists()
  # the payload is real: an unsafe load would have run it
  torch.load(evil, weights_only=False)
  assert target.exists()


def _timm_randomized(name, in_chans, **kw):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  m = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **kw)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for k, t in m.state_dict().items():
      if t.dtype.is_floating_point:
        t.copy_(
          torch.rand(t.shape, generator=g) + 0.5
          if k.endswith("running_var")
          else torch.randn(t.shape, generator=g) * (t[0].numel() ** -0.5 if t.ndim > 1 else 0.1)
        )
  return m


@pytest.mark.torch
@pytest.mark.parametrize("name,timm_name,in_chans", [("resnet50", "resnet50", 13), ("resnet18", "resnet18", 2)])
def test_timm_resnet_import_export_is_exact(name, timm_name, in_chans):
  ref = _timm_randomized(timm_name, in_chans)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  params, batch_stats = load_timm_resnet(sd, name)
  assert sum(a.size for a in flatten_tree(params).values()) == sum(p.numel() for p in ref.parameters())
  back = export_timm_resnet(params, batch_stats)
  assert back.keys() == sd.keys()
  for k in sd:
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


@pytest.mark.torch
def test_timm_vit_import_export_is_exact():
  ref = _timm_randomized("vit_small_patch16_224", 13)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  params = load_timm_vit(sd, "vit_s16")
  assert sum(a.size for a in flatten_tree(params).values()) == sum(p.numel() for p in ref.parameters())
  back = export_timm_vit(params)
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


@pytest.mark.torch
def test_exported_flax_model_runs_the_same_in_timm():
  """Export direction: a Flax-initialised ResNet, exported, loads strictly into timm and gives the same features."""
  torch = pytest.importorskip("torch")
  from timm.models.resnet import BasicBlock, ResNet  # pylint: disable=import-outside-toplevel

  v = _flax_variables("resnet_tiny", 13, seed=4)
  ref = ResNet(block=BasicBlock, layers=[1, 1, 1, 1], channels=(16, 32, 64, 128), in_chans=13, num_classes=0)
  ref.conv1 = torch.nn.Conv2d(13, 16, 7, stride=2, padding=3, bias=False)
  ref.bn1 = torch.nn.BatchNorm2d(16)
  ref.layer1[0] = BasicBlock(16, 16)
  ref.load_state_dict(
    {k: torch.from_numpy(a) for k, a in export_timm_resnet(v["params"], v["batch_stats"]).items()}, strict=True
  )
  x = np.random.RandomState(0).randn(2, 96, 96, 13).astype(np.float32)
  with torch.no_grad():
    want = ref.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(image_encoder("resnet_tiny", 13).apply(v, x, train=False))
  assert want.std() > 0.1
  assert np.abs(got - want).max() <= 1e-4

"""CLOSP towers: config, shapes and norms, temperature, resizing, logical axes, and the authors'
checkpoint layout (import vs a PyTorch model of the same layout, export round trip, errors)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from closp_jax.models.towers import CLOSP, GEOCLIP_LOCATION, model_config, tower_spec
from closp_jax.weights import convert
from closp_jax.weights.closp_checkpoint import (
  export_closp_state_dict,
  infer_model_config,
  load_closp_checkpoint,
  merge_submodule,
)
from closp_jax.weights.registry import RELEASED_LAYOUTS as PAPER_MODELS

TINY_TEXT = dict(vocab_size=60, hidden=32, layers=2, heads=4, intermediate=64, max_position=16)


def tiny_config(**overrides):
  fields = dict(
    s2_encoder="resnet_tiny",
    s1_encoder="vit_tiny",
    embed_dim=32,
    text=dict(TINY_TEXT),
    location=dict(enabled=True, degree=4, hidden=16, layers=2, out=12),
  )
  fields.update(overrides)
  return model_config(**fields)


def inputs(size=32, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  s2 = rng.normal(size=(batch, size, size, 13)).astype(np.float32)
  s1 = rng.normal(size=(batch, size, size, 2)).astype(np.float32)
  ids = np.array([[1, 5, 9, 2, 0, 0], [1, 7, 2, 0, 0, 0]][:batch], np.int32)
  lonlat = np.stack([rng.uniform(-180, 180, batch), rng.uniform(-90, 90, batch)], -1).astype(np.float32)
  return s2, s1, ids, (ids > 0).astype(np.int32), lonlat


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config()
  model = CLOSP(cfg)
  variables = jax.jit(model.init)(jax.random.key(0), *inputs())
  return cfg, model, variables


def test_model_config_defaults_and_overrides():
  c = model_config()
  assert (c.embed_dim, c.s2_encoder, c.s1_encoder, c.s2_in_chans, c.s1_in_chans, c.image_size) == (
    384,
    "resnet50",
    "resnet50",
    13,
    2,
    None,
  )
  assert (c.text.hidden, c.text.layers, c.text.heads, c.text.intermediate, c.text.pooling, c.text.text_projection) == (
    384,
    6,
    12,
    1536,
    "cls",
    False,
  )
  assert (
    c.location.enabled,
    c.location.kind,
    c.location.degree,
    c.location.hidden,
    c.location.layers,
    c.location.out,
  ) == (False, "satclip", 10, 256, 2, 256)
  assert (c.temperature.init_scale, c.temperature.learnable, c.temperature.sigmoid_bias) == (1.0, False, None)
  assert (c.dtype, c.bn_mode) == ("float32", "batch")
  c = model_config(embed_dim=512, image_size=224, **{"location.enabled": True}, temperature=dict(learnable=True))
  assert (c.embed_dim, c.image_size, c.location.enabled, c.temperature.learnable) == (512, 224, True, True)
  with pytest.raises(KeyError, match="embed_dim"):
    model_config(embedding_dim=3)
  with pytest.raises(KeyError, match="valid fields here: .*degree"):
    model_config(**{"location.degre": 3})
  with pytest.raises(AttributeError):
    model_config().new_field = 1  # locked
  for fields in PAPER_MODELS.values():
    tower_spec(model_config(**fields))  # every paper layout is a valid config
  with pytest.raises(ValueError, match="text.pooling"):
    tower_spec(model_config(text=dict(pooling="max")))
  with pytest.raises(ValueError, match="location.kind"):
    tower_spec(model_config(location=dict(enabled=True, kind="h3")))


def test_towers_shapes_norms_and_names(tiny):
  cfg, model, variables = tiny
  s2, s1, ids, mask, lonlat = inputs()
  out = jax.jit(model.apply)(variables, s2, s1, ids, mask, lonlat)
  for k in ("s2", "s1", "text", "location"):
    assert out[k].shape == (2, 32) and out[k].dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out[k], axis=-1), 1.0, atol=1e-5)
  assert set(variables["params"]) == {
    "s2_encoder",
    "s1_encoder",
    "text_model",
    "s2_projection",
    "s1_projection",
    "location_encoder",
    "location_projection",
  }
  assert set(variables["batch_stats"]) == {"s2_encoder"}
  np.testing.assert_allclose(model.apply(variables, s2, method=model.encode_s2), out["s2"], atol=1e-6)
  np.testing.assert_allclose(model.apply(variables, ids, mask, method=model.encode_text), out["text"], atol=1e-6)
  np.testing.assert_allclose(model.apply(variables, lonlat, method=model.encode_location), out["location"], atol=1e-6)
  feats = model.apply(variables, ids, mask, method=model.encode_text_features)
  np.testing.assert_allclose(feats / np.linalg.norm(feats, axis=-1, keepdims=True), out["text"], atol=1e-6)
  emb, upd = model.apply(variables, s2, train=True, method=model.encode_s2, mutable=["batch_stats"])
  assert emb.shape == (2, 32) and set(upd["batch_stats"]) == {"s2_encoder"}
  leaves = jax.tree_util.tree_flatten_with_path(variables["params"], is_leaf=lambda x: hasattr(x, "names"))[0]
  for path, leaf in leaves:
    assert hasattr(leaf, "names"), f"{jax.tree_util.keystr(path)} has no logical axis names"


def test_logit_params_fixed_and_learnable(tiny):
  cfg, model, variables = tiny
  scale, bias = model.apply(variables, method=model.logit_params)
  assert (float(scale), float(bias)) == (1.0, 0.0)
  assert not any(k.startswith("logit") for k in variables["params"])  # fixed: not a parameter
  cfg2 = tiny_config(
    temperature=dict(init_scale=1 / 0.07, learnable=True, sigmoid_bias=-10.0), location=dict(enabled=False)
  )
  m2 = CLOSP(cfg2)
  v2 = jax.eval_shape(m2.init, jax.random.key(0), *inputs()[:4])
  assert v2["params"]["logit_scale"].value.shape == () and v2["params"]["logit_bias"].value.shape == ()
  params = {"logit_scale": jnp.asarray(math.log(1 / 0.07)), "logit_bias": jnp.asarray(-10.0)}
  scale, bias = m2.apply({"params": params}, method=m2.logit_params)
  np.testing.assert_allclose([float(scale), float(bias)], [1 / 0.07, -10.0], rtol=1e-6)
  params["logit_scale"] = jnp.asarray(math.log(1000.0))
  assert float(m2.apply({"params": params}, method=m2.logit_params)[0]) == pytest.approx(100.0)
  g = jax.grad(lambda p: m2.apply({"params": p}, method=m2.logit_params)[0])(
    {"logit_scale": jnp.asarray(1.0), "logit_bias": jnp.asarray(0.0)}
  )
  assert float(g["logit_scale"]) == pytest.approx(math.e, rel=1e-6)


def test_text_projection_when_hidden_differs_and_location_disabled():
  cfg = tiny_config(embed_dim=24, location=dict(enabled=False))
  model = CLOSP(cfg)
  s2, s1, ids, mask, _ = inputs()
  v = jax.eval_shape(model.init, jax.random.key(0), s2, s1, ids, mask)
  assert v["params"]["text_projection"]["kernel"].value.shape == (32, 24)
  assert "location_encoder" not in v["params"]
  with pytest.raises(ValueError, match="location.enabled"):
    model.apply(jax.tree.map(jnp.zeros_like, v), inputs()[4], method=model.encode_location)


@pytest.mark.parametrize("align_corners", [False, True])
def test_image_size_resizes_bilinearly(align_corners):
  """The tower's 24 -> 40 px resize equals torch's F.interpolate(bilinear) with the same corner rule
  (half-pixel centres, or aligned corners as kornia's Resize): the embedding of the small input equals
  the embedding of torch's resized input, which the tower takes as it is."""
  torch = pytest.importorskip("torch")
  cfg = tiny_config(
    image_size=40, location=dict(enabled=False), s1_encoder="resnet_tiny", resize_align_corners=align_corners
  )
  model = CLOSP(cfg)
  s2, s1, ids, mask, _ = inputs(size=24)
  v = jax.jit(model.init)(jax.random.key(0), s2, s1, ids, mask)
  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_s2))
  got = encode(v, s2)
  resized = torch.nn.functional.interpolate(
    torch.from_numpy(np.asarray(s2)).permute(0, 3, 1, 2), size=(40, 40), mode="bilinear", align_corners=align_corners
  )
  want = encode(v, jnp.asarray(resized.permute(0, 2, 3, 1).numpy()))
  np.testing.assert_allclose(got, want, atol=2e-6)
  other = torch.nn.functional.interpolate(
    torch.from_numpy(np.asarray(s2)).permute(0, 3, 1, 2),
    size=(40, 40),
    mode="bilinear",
    align_corners=not align_corners,
  )
  assert np.abs(np.asarray(got) - np.asarray(encode(v, jnp.asarray(other.permute(0, 2, 3, 1).numpy())))).max() > 1e-4
  with pytest.raises(ValueError, match="13 channels"):
    model.apply(v, s1, method=model.encode_s2)


def test_merge_submodule_puts_pretrained_weights_in(tiny):
  from closp_jax.models.text import TextEncoder  # pylint: disable=import-outside-toplevel

  cfg, model, variables = tiny
  s2, s1, ids, mask, lonlat = inputs()
  text = TextEncoder(**TINY_TEXT)
  tparams = text.init(jax.random.key(7), ids, mask)["params"]
  merged = merge_submodule(variables, "text_model", {"params": convert.unflatten_tree(convert.flatten_tree(tparams))})
  got = model.apply(merged, ids, mask, method=model.encode_text)
  want = text.apply({"params": tparams}, ids, mask)
  np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-6)
  bad = convert.unflatten_tree(convert.flatten_tree(tparams))
  bad["layer_0"]["query"]["kernel"] = np.zeros((32, 8), np.float32)
  with pytest.raises(convert.WeightMismatchError, match="layer_0/query/kernel: model \\(32, 32\\), given \\(32, 8\\)"):
    merge_submodule(variables, "text_model", {"params": bad})


def test_geoclip_location_kind_round_trips_through_the_checkpoint_format():
  cfg = tiny_config(location=dict(enabled=True, kind="geoclip", hidden=16, layers=2, out=8))
  model = CLOSP(cfg)
  s2, s1, ids, mask, lonlat = inputs()
  v = jax.jit(model.init)(jax.random.key(1), s2, s1, ids, mask, lonlat)
  assert set(v["batch_stats"]) == {"s2_encoder", "location_encoder"}
  sd = export_closp_state_dict(v, cfg)
  assert sd["location_encoder.LocEnc2.capsule.0.b"].shape == (256, 2)
  assert sd["location_encoder.LocEnc0.capsule.3.weight"].shape == (16, 16)
  back = load_closp_checkpoint(sd, infer_model_config(sd, text_heads=4, image_size=None))
  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_location))
  np.testing.assert_allclose(encode(back, lonlat), encode(v, lonlat), atol=1e-6)
  assert model_config(location=dict(GEOCLIP_LOCATION, enabled=True)).location.out == 512


# ---- the authors' checkpoint layout, against a PyTorch model built the same way -------------------


def _randomize(module, seed=0):
  import torch  # pylint: disable=import-outside-toplevel

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for k, t in module.state_dict().items():
      if not t.dtype.is_floating_point:
        continue
      if t.ndim > 1:
        t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
      elif k.endswith("running_var") or k.endswith("weight"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
  return module


def _torch_closp():
  """A GeoCLOSP-layout PyTorch model: timm towers (TorchGeo-style fc head on S2), a Hugging Face
  BertModel, Linear projections and a SatCLIP-style SIREN."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("timm")
  from test_location import _torch_siren  # pylint: disable=import-outside-toplevel
  from timm.models.resnet import BasicBlock, ResNet  # pylint: disable=import-outside-toplevel
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel
  from transformers import BertConfig, BertModel  # pylint: disable=import-outside-toplevel

  class Ref(torch.nn.Module):
    def __init__(self):
      super().__init__()
      s2 = ResNet(block=BasicBlock, layers=[1, 1, 1, 1], channels=(16, 32, 64, 128), in_chans=13, num_classes=7)
      s2.conv1 = torch.nn.Conv2d(13, 16, 7, stride=2, padding=3, bias=False)
      s2.bn1 = torch.nn.BatchNorm2d(16)
      s2.layer1[0] = BasicBlock(16, 16)
      self.s2_encoder = s2
      self.s1_encoder = VisionTransformer(
        img_size=120, patch_size=8, embed_dim=96, depth=2, num_heads=3, in_chans=2, num_classes=0
      )
      self.text_model = BertModel(
        BertConfig(
          vocab_size=60,
          hidden_size=32,
          num_hidden_layers=2,
          num_attention_heads=4,
          intermediate_size=64,
          max_position_embeddings=16,
        )
      )
      self.s2_projection = torch.nn.Linear(7, 32)
      self.s1_projection = torch.nn.Linear(96, 32)
      self.location_encoder = _torch_siren(degree=4, hidden=16, layers=2, out=12)
      self.location_projection = torch.nn.Linear(12, 32)

  return _randomize(Ref(), seed=3).eval()


@pytest.mark.torch
def test_authors_checkpoint_layout_imports_and_exports(tmp_path):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from test_location import scipy_sh  # pylint: disable=import-outside-toplevel

  ref = _torch_closp()
  path = tmp_path / "best_model.pth"
  torch.save(ref.state_dict(), path)

  cfg = infer_model_config(path, text_heads=4, sh_convention="closed_form", image_size=None)
  assert (cfg.s2_encoder, cfg.s1_encoder, cfg.s2_head_classes, cfg.s1_head_classes, cfg.embed_dim) == (
    "resnet_tiny",
    "vit_tiny",
    7,
    0,
    32,
  )
  assert (cfg.text.layers, cfg.text.hidden, cfg.text.vocab_size, cfg.location.enabled, cfg.location.degree) == (
    2,
    32,
    60,
    True,
    4,
  )
  variables = load_closp_checkpoint(path, cfg)
  model = CLOSP(cfg)

  s2, s1, ids, mask, lonlat = inputs(size=120, seed=5)
  with torch.no_grad():
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    want = {
      "s2": F.normalize(ref.s2_projection(ref.s2_encoder(nchw(s2))), dim=-1),
      "s1": F.normalize(ref.s1_projection(ref.s1_encoder(nchw(s1))), dim=-1),
      "text": F.normalize(
        ref.text_model(
          input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state[:, 0],
        dim=-1,
      ),
      "location": F.normalize(
        ref.location_projection(
          ref.location_encoder.nnet(torch.tensor(scipy_sh(lonlat.astype(np.float64), 4), dtype=torch.float32))
        ),
        dim=-1,
      ),
    }
  got = jax.jit(model.apply)(variables, s2, s1, ids, mask, lonlat)
  for k, w in want.items():
    assert np.abs(np.asarray(got[k]) - w.numpy()).max() <= 1e-4, k

  exported = export_closp_state_dict(variables, cfg)
  ref_sd = ref.state_dict()
  assert set(exported) == set(ref_sd)
  for k, v in ref_sd.items():
    if not k.startswith("text_model.pooler."):
      np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)
  ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()}, strict=True)

  # A Lightning-style wrapper prefix is removed.
  wrapped = {f"model.{k}": v.numpy() for k, v in ref_sd.items()}
  again = load_closp_checkpoint(wrapped, cfg)
  np.testing.assert_array_equal(
    again["params"]["s1_projection"]["kernel"], variables["params"]["s1_projection"]["kernel"]
  )


@pytest.mark.torch
def test_checkpoint_mismatches_name_tensors_shapes_and_hints(tmp_path):
  pytest.importorskip("torch")
  sd = {k: v.numpy() for k, v in _torch_closp().state_dict().items()}
  cfg = infer_model_config(sd, text_heads=4, image_size=None)
  wrong_head = model_config(**{**cfg.to_dict(), "s2_head_classes": 0})
  with pytest.raises(convert.WeightMismatchError) as e:
    load_closp_checkpoint(sd, wrong_head)
  msg = str(e.value)
  assert "s2_encoder.fc.weight" in msg and "s2_head_classes=0" in msg and "(32, 128)" in msg
  bad = dict(sd)
  bad["s1_projection.weight"] = np.zeros((32, 95), np.float32)
  with pytest.raises(convert.WeightMismatchError, match=r"s1_projection.weight .*\(32, 95\).*\(32, 96\)"):
    load_closp_checkpoint(bad, cfg)
  no_loc = model_config(**{**cfg.to_dict(), "location": {**cfg.location.to_dict(), "enabled": False}})
  with pytest.raises(convert.WeightMismatchError, match="location encoder: cfg.location.enabled=False"):
    load_closp_checkpoint(sd, no_loc)
  with pytest.raises(convert.WeightMismatchError, match="not a CLOSP checkpoint"):
    load_closp_checkpoint({"foo.weight": np.zeros(3)}, cfg)


def test_model_config_accepts_a_frozen_configdict(tiny):
  cfg, model, variables = tiny
  frozen = ml_collections.FrozenConfigDict(cfg)
  s2 = inputs()[0]
  np.testing.assert_allclose(
    CLOSP(frozen).apply(variables, s2, method=CLOSP.encode_s2),
    model.apply(variables, s2, method=model.encode_s2),
    atol=1e-6,
  )


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_paper_layouts_have_the_original_tensor_names(name):
  """The released models' layouts, without computing anything: exported names and shapes are the
  original ones, and the config is recovered from them."""
  from closp_jax.weights.closp_checkpoint import abstract_variables  # pylint: disable=import-outside-toplevel

  cfg = model_config(**PAPER_MODELS[name])
  zeros = jax.tree.map(
    lambda s: np.zeros(s.shape, s.dtype), convert.unflatten_tree(convert.flatten_tree(abstract_variables(cfg)))
  )
  sd = export_closp_state_dict(zeros, cfg)
  shapes = {k: tuple(v.shape) for k, v in sd.items()}
  assert shapes["text_model.embeddings.word_embeddings.weight"] == (30522, 384)
  assert shapes["text_model.encoder.layer.5.attention.self.query.weight"] == (384, 384)
  assert shapes["text_model.pooler.dense.weight"] == (384, 384)
  if name.endswith("RN"):
    assert shapes["s2_encoder.conv1.weight"] == (64, 13, 7, 7) and shapes["s1_encoder.conv1.weight"] == (64, 2, 7, 7)
    assert shapes["s2_encoder.fc.weight"] == (1000, 2048) and shapes["s2_projection.weight"] == (384, 1000)
    assert shapes["s1_encoder.layer4.2.bn3.running_var"] == (2048,)
  if name == "CLOSP-VS":
    assert shapes["s2_encoder.head.weight"] == (1000, 384) and shapes["s1_projection.weight"] == (384, 384)
    assert "s1_encoder.head.weight" not in shapes
  if name == "CLOSP-VL":
    assert shapes["s2_encoder.patch_embed.proj.weight"] == (1024, 13, 16, 16)
    assert shapes["s2_projection.weight"] == (384, 1024)
  if name.startswith("Geo"):
    assert shapes["location_encoder.nnet.layers.0.weight"] == (256, 100)
    assert shapes["location_encoder.nnet.layers.1.weight"] == (256, 256)
    assert shapes["location_encoder.nnet.last_layer.weight"] == (256, 256)
    assert shapes["location_projection.weight"] == (384, 256)
  else:
    assert not any(k.startswith("location") for k in shapes)
  inferred = infer_model_config(sd)
  for field in (
    "s2_encoder",
    "s1_encoder",
    "s2_head_classes",
    "s1_head_classes",
    "embed_dim",
    "image_size",
    "s2_in_chans",
    "s1_in_chans",
  ):
    assert inferred[field] == cfg[field], field
  assert inferred.text.to_dict() == cfg.text.to_dict()
  assert inferred.location.enabled == cfg.location.enabled

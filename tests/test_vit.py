"""ViT encoders: factory contract, logical axes, position-embedding resampling, parity with timm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax.models.image import default_input_size, image_encoder, num_features
from closp_jax.models.vit import bicubic_aa_matrix, resample_pos_embed
from closp_jax.weights.convert import flatten_tree

ALLOWED_AXES = {None, "embed", "mlp", "heads", "kv", "conv_h", "conv_w", "conv_in", "norm", "pos"}


def test_factory_and_shapes():
  assert (num_features("vit_s16"), num_features("vit_l16"), num_features("vit_tiny")) == (384, 1024, 96)
  assert default_input_size("vit_s16") == 224
  model = image_encoder("vit_tiny", 2, bn_mode="frozen")  # bn_mode accepted, nothing to freeze
  x = jnp.ones((3, 120, 120, 2))
  variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(0), x, train=False)
  assert set(variables) == {"params"}
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=True))
  for size in (120, 64, 100):  # 100 -> 12x12 grid, 4 trailing pixels dropped
    assert fwd(variables, jnp.ones((3, size, size, 2))).shape == (3, 96)
  with pytest.raises(ValueError, match=r"\[B, H, W, 2\]"):
    model.apply(variables, jnp.ones((1, 120, 120, 13)))
  with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
    model.apply(variables, jnp.ones((1, 4, 120, 2)))
  n = sum(v.size for v in flatten_tree(variables["params"]).values())
  assert 0.1e6 < n < 0.5e6, n


def test_trailing_pixels_do_not_matter_and_train_equals_eval():
  model = image_encoder("vit_tiny", 13)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 100, 100, 13))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  fwd = jax.jit(model.apply, static_argnames="train")
  y = fwd(variables, x, train=False)
  x2 = x.at[:, 96:, :, :].set(123.0).at[:, :, 96:, :].set(-5.0)  # the pixels past the 12x12 patch grid
  np.testing.assert_array_equal(fwd(variables, x2, train=True), y)
  x3 = x.at[:, 95, 0, 0].add(1.0)  # a pixel inside the grid does matter
  assert np.abs(fwd(variables, x3, train=False) - y).max() > 1e-4


def test_every_param_has_logical_axes():
  model = image_encoder("vit_tiny", 13)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 120, 120, 13))))
  leaves = jax.tree_util.tree_flatten_with_path(variables["params"], is_leaf=lambda v: hasattr(v, "names"))[0]
  assert len(leaves) == 4 + 2 + 12 * 2
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    assert hasattr(leaf, "names"), f"{name} has no logical axis names"
    assert len(leaf.names) == len(leaf.value.shape), name
    assert set(leaf.names) <= ALLOWED_AXES, (name, leaf.names)
  by_name = {jax.tree_util.keystr(p): l.names for p, l in leaves}
  assert by_name["['patch_embed']['kernel']"] == ("conv_h", "conv_w", "conv_in", "embed")
  assert by_name["['pos_embed']"] == (None, "pos", "embed")
  assert by_name["['blocks_0']['attn']['qkv']['kernel']"] == ("embed", None, "heads", "kv")
  assert by_name["['blocks_1']['mlp']['fc2']['kernel']"] == ("mlp", "embed")


def test_resample_matrix_properties():
  for n_in, n_out in [(14, 7), (14, 20), (7, 7), (5, 1)]:
    m = bicubic_aa_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)  # constants are preserved
  np.testing.assert_allclose(bicubic_aa_matrix(9, 9), np.eye(9), atol=1e-12)
  grid = jnp.arange(14 * 14 * 3, dtype=jnp.float32).reshape(14, 14, 3)
  assert resample_pos_embed(grid, (14, 14)) is grid
  assert resample_pos_embed(grid, (7, 9)).shape == (7, 9, 3)


# ---- against PyTorch / timm ---------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("n_in,n_out", [(14, 7), (14, 8), (14, 20), (15, 7), (7, 14), (3, 10), (14, 1)])
def test_resample_matrix_matches_torch_bicubic_antialias(n_in, n_out):
  torch = pytest.importorskip("torch")
  x = torch.randn(1, 4, n_in, n_in + 2, generator=torch.Generator().manual_seed(n_in * 31 + n_out))
  ref = torch.nn.functional.interpolate(
    x, size=(n_out, n_out + 1), mode="bicubic", antialias=True, align_corners=False
  ).numpy()
  out = np.einsum(
    "oh,nchw,pw->ncop",
    bicubic_aa_matrix(n_in, n_out),
    x.numpy().astype(np.float64),
    bicubic_aa_matrix(n_in + 2, n_out + 1),
  )
  assert np.abs(out - ref).max() <= 1e-5


@pytest.mark.torch
def test_resample_pos_embed_matches_timm():
  torch = pytest.importorskip("torch")
  layers = pytest.importorskip("timm.layers")
  pe = torch.randn(1, 1 + 14 * 14, 16, generator=torch.Generator().manual_seed(0))
  ref = layers.resample_abs_pos_embed(pe, new_size=(7, 9), num_prefix_tokens=1).numpy()
  out = resample_pos_embed(jnp.asarray(pe[0, 1:].numpy().reshape(14, 14, 16)), (7, 9))
  assert np.abs(np.asarray(out).reshape(-1, 16) - ref[0, 1:]).max() <= 1e-5


def _randomize(module, seed=0):
  """Random weights with O(1) activations: fan-in scaled matrices, LayerNorm scales around 1."""
  import torch  # pylint: disable=import-outside-toplevel

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for k, t in module.state_dict().items():
      if k in ("pos_embed", "cls_token"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
      elif t.ndim > 1:
        t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
      elif "norm" in k and k.endswith("weight"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
  return module


_TIMM = {"vit_s16": "vit_small_patch16_224", "vit_l16": "vit_large_patch16_224"}


def _timm(name, in_chans, **kw):
  timm = pytest.importorskip("timm")
  if name == "vit_tiny":
    from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel

    return VisionTransformer(
      img_size=120, patch_size=8, embed_dim=96, depth=2, num_heads=3, in_chans=in_chans, num_classes=0, **kw
    )
  return timm.create_model(_TIMM[name], pretrained=False, in_chans=in_chans, num_classes=0, **kw)


def _parity(name, in_chans, size, reference=None):
  """Max abs difference between our encoder (weights imported from a random timm model) and timm."""
  torch = pytest.importorskip("torch")
  from closp_jax.weights.timm_import import load_timm_vit  # pylint: disable=import-outside-toplevel

  source = _randomize(_timm(name, in_chans), seed=in_chans).eval()
  sd = {k: v.numpy() for k, v in source.state_dict().items()}
  reference = reference(sd) if reference else source
  x = np.random.RandomState(in_chans).randn(2, size, size, in_chans).astype(np.float32)
  with torch.no_grad():
    ref = reference.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = image_encoder(name, in_chans)
  out = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(load_timm_vit(sd, name), x))
  assert out.shape == ref.shape == (2, num_features(name))
  assert ref.std() > 0.1  # not a degenerate comparison
  return float(np.abs(out - ref).max())


@pytest.mark.torch
@pytest.mark.parametrize("in_chans", [13, 2])
@pytest.mark.parametrize("name", ["vit_s16", "vit_tiny"])
def test_parity_with_timm_at_trained_size(name, in_chans):
  assert _parity(name, in_chans, default_input_size(name)) <= 1e-4


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [13, 2])
def test_vit_l16_parity_with_timm(in_chans):
  assert _parity("vit_l16", in_chans, 224) <= 1e-4


@pytest.mark.torch
def test_vit_s16_at_120px_matches_timm_model_built_for_120px():
  """120 px: timm's img_size=120 model (7x7 grid, last 8 px dropped by the patch conv) loaded from
  the 224 px weights through timm's own checkpoint filter, which resamples pos_embed 14x14 -> 7x7."""
  torch = pytest.importorskip("torch")
  from timm.models.vision_transformer import checkpoint_filter_fn  # pylint: disable=import-outside-toplevel

  def timm_120(sd):
    m = _timm("vit_s16", 13, img_size=120)
    m.load_state_dict(checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in sd.items()}, m), strict=True)
    assert tuple(m.pos_embed.shape) == (1, 1 + 7 * 7, 384)
    return m

  assert _parity("vit_s16", 13, 120, reference=timm_120) <= 1e-4


@pytest.mark.torch
def test_vit_s16_at_160px_matches_timm_dynamic_img_size():
  """Input sizes divisible by the patch match timm's dynamic_img_size=True (10x10 grid here)."""
  torch = pytest.importorskip("torch")

  def timm_dynamic(sd):
    m = _timm("vit_s16", 2, dynamic_img_size=True)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return m

  assert _parity("vit_s16", 2, 160, reference=timm_dynamic) <= 1e-4

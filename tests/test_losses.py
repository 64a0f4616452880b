"""Contrastive losses against NumPy references, and the shard_map ring against the dense loss."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax import losses

REPO = Path(__file__).resolve().parents[1]


def _unit_rows(rng, b, d):
  v = rng.normal(size=(b, d))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _logsumexp(a, axis):
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def numpy_clip_loss(x, y, scale):
  """CLIP: mean of the cross-entropies of image->text and text->image, labels = diagonal."""
  logits = scale * x.astype(np.float64) @ y.astype(np.float64).T
  n = len(x)
  ce_rows = np.mean([_logsumexp(logits[i], 0) - logits[i, i] for i in range(n)])
  ce_cols = np.mean([_logsumexp(logits[:, j], 0) - logits[j, j] for j in range(n)])
  return (ce_rows + ce_cols) / 2


def numpy_siglip_loss(x, y, scale, bias):
  """SigLIP: -(1/B) sum_ij log sigmoid(z_ij (scale x_i.y_j + bias)), z = +1 on the diagonal."""
  logits = scale * x.astype(np.float64) @ y.astype(np.float64).T + bias
  z = 2 * np.eye(len(x)) - 1
  return np.sum(np.log1p(np.exp(-z * logits))) / len(x)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_softmax_matches_numpy_clip(scale):
  rng = np.random.default_rng(0)
  x, y = _unit_rows(rng, 12, 8), _unit_rows(rng, 12, 8)
  got = losses.softmax_contrastive_loss(jnp.float32(x), jnp.float32(y), scale)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), numpy_clip_loss(x, y, scale), rtol=2e-6)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (1.0, 0.0), (30.0, 2.5)])
def test_sigmoid_matches_numpy_siglip(scale, bias):
  rng = np.random.default_rng(1)
  x, y = _unit_rows(rng, 10, 6), _unit_rows(rng, 10, 6)
  got = losses.sigmoid_contrastive_loss(jnp.float32(x), jnp.float32(y), scale, bias)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), numpy_siglip_loss(x, y, scale, bias), rtol=2e-6)


def test_bfloat16_inputs_are_computed_in_float32():
  rng = np.random.default_rng(2)
  x = jnp.asarray(_unit_rows(rng, 16, 8), jnp.bfloat16)
  y = jnp.asarray(_unit_rows(rng, 16, 8), jnp.bfloat16)
  xr, yr = np.asarray(x, np.float64), np.asarray(y, np.float64)  # the bf16 values, exactly
  soft = losses.softmax_contrastive_loss(x, y, jnp.bfloat16(20.0))
  sig = losses.sigmoid_contrastive_loss(x, y, 10.0, -5.0)
  assert soft.dtype == jnp.float32 and sig.dtype == jnp.float32
  np.testing.assert_allclose(float(soft), numpy_clip_loss(xr, yr, 20.0), rtol=2e-6)
  np.testing.assert_allclose(float(sig), numpy_siglip_loss(xr, yr, 10.0, -5.0), rtol=2e-6)
  gx, gy = jax.grad(losses.softmax_contrastive_loss, argnums=(0, 1))(x, y, 20.0)
  assert gx.dtype == jnp.bfloat16 and gy.dtype == jnp.bfloat16


def test_softmax_gradient_matches_finite_differences():
  rng = np.random.default_rng(3)
  x, y = _unit_rows(rng, 5, 4), _unit_rows(rng, 5, 4)
  gs = jax.grad(losses.softmax_contrastive_loss, argnums=2)(jnp.float32(x), jnp.float32(y), 3.0)
  eps = 1e-4
  fd = (numpy_clip_loss(x, y, 3.0 + eps) - numpy_clip_loss(x, y, 3.0 - eps)) / (2 * eps)
  np.testing.assert_allclose(float(gs), fd, rtol=1e-4)


def test_dispatch_and_errors():
  rng = np.random.default_rng(4)
  x, y = jnp.float32(_unit_rows(rng, 6, 4)), jnp.float32(_unit_rows(rng, 6, 4))
  assert float(losses.contrastive_loss(x, y, 5.0)) == float(losses.softmax_contrastive_loss(x, y, 5.0))
  assert float(losses.contrastive_loss(x, y, 5.0, -1.0, kind="sigmoid")) == float(
    losses.sigmoid_contrastive_loss(x, y, 5.0, -1.0)
  )
  with pytest.raises(ValueError, match="kind='sigmoid' needs logit_bias"):
    losses.contrastive_loss(x, y, 5.0, kind="sigmoid")
  with pytest.raises(ValueError, match="takes no logit_bias"):
    losses.contrastive_loss(x, y, 5.0, 1.0)
  with pytest.raises(ValueError, match="expected one of"):
    losses.contrastive_loss(x, y, 5.0, kind="triplet")
  with pytest.raises(ValueError, match="needs mesh"):
    losses.contrastive_loss(x, y, 5.0, chunked=True)
  with pytest.raises(ValueError, match=r"shape \[batch, dim\]"):
    losses.softmax_contrastive_loss(x, y[:5], 5.0)


_SHARDED_CHECK = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from closp_jax import losses
  assert jax.device_count() == 8, jax.device_count()

  def unit(rng, b, d):
    v = rng.normal(size=(b, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  def close(name, a, b, rtol=1e-5, atol=2e-7):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol, err_msg=name)

  rng = np.random.default_rng(0)
  B, D = 48, 12
  x, y = unit(rng, B, D), unit(rng, B, D)
  auto = jax.sharding.AxisType.Auto
  for shape, names in (((8,), ("data",)), ((4, 2), ("data", "fsdp"))):
    mesh = jax.make_mesh(shape, names, axis_types=(auto,) * len(shape))
    sh = NamedSharding(mesh, P(names, None))
    xs, ys = jax.device_put(x, sh), jax.device_put(y, sh)
    for kind, args in (("softmax", (7.0,)), ("sigmoid", (7.0, -3.0))):
      argnums = tuple(range(2 + len(args)))
      def dense(*a, kind=kind):
        return losses.contrastive_loss(*a, kind=kind)
      def ring(*a, kind=kind, mesh=mesh, names=names):
        return losses.contrastive_loss(*a, kind=kind, mesh=mesh, chunked=True, axis_names=names)
      vd, gd = jax.jit(jax.value_and_grad(dense, argnums))(xs, ys, *args)
      vr, gr = jax.jit(jax.value_and_grad(ring, argnums))(xs, ys, *args)
      tag = f"{kind} {names}"
      # Dense on a sharded batch sees the whole global batch: compare with one device.
      v1 = dense(jnp.asarray(x), jnp.asarray(y), *args)
      close(tag + " dense sharded vs single device", vd, v1)
      close(tag + " value", vr, vd)
      for i, (a, b) in enumerate(zip(gr, gd)):
        close(f"{tag} grad {i}", a, b)
      assert gr[0].sharding.is_equivalent_to(sh, 2), (tag, gr[0].sharding)
    # bf16 embeddings: float32 maths inside, bf16 gradients out.
    xb, yb = xs.astype(jnp.bfloat16), ys.astype(jnp.bfloat16)
    vb, gb = jax.value_and_grad(
        lambda a, b: losses.chunked_softmax_contrastive_loss(a, b, 5.0, mesh=mesh,
                                                             axis_names=names),
        argnums=(0, 1))(xb, yb)
    assert vb.dtype == jnp.float32 and gb[0].dtype == jnp.bfloat16
    close("bf16 value", vb, losses.softmax_contrastive_loss(xb, yb, 5.0))
  try:
    losses.chunked_softmax_contrastive_loss(x[:44], y[:44], 1.0, mesh=mesh, axis_names=names)
  except ValueError as e:
    assert "not divisible by the 8 devices" in str(e), e
  else:
    raise AssertionError("batch 44 on 8 devices was accepted")
  try:
    losses.chunked_sigmoid_contrastive_loss(x, y, 1.0, 0.0, mesh=mesh, axis_names=("tensor",))
  except ValueError as e:
    assert "'tensor' not in the mesh axes" in str(e), e
  else:
    raise AssertionError("unknown mesh axis was accepted")
  print("SHARDED-OK")
""")


def test_ring_equals_dense_on_8_devices():
  env = dict(
    os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)
  )
  proc = subprocess.run(
    [sys.executable, "-c", _SHARDED_CHECK], env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind,args", [("softmax", (4.0,)), ("sigmoid", (4.0, -2.0))])
def test_ring_on_a_single_device_mesh(kind, args):
  """n = 1: no hop in the loop, only the local block; still equal to the dense loss."""
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  rng = np.random.default_rng(6)
  x, y = jnp.float32(_unit_rows(rng, 6, 4)), jnp.float32(_unit_rows(rng, 6, 4))
  argnums = tuple(range(2 + len(args)))
  vd, gd = jax.value_and_grad(lambda *a: losses.contrastive_loss(*a, kind=kind), argnums)(x, y, *args)
  vr, gr = jax.value_and_grad(lambda *a: losses.contrastive_loss(*a, kind=kind, mesh=mesh, chunked=True), argnums)(
    x, y, *args
  )
  np.testing.assert_allclose(float(vr), float(vd), rtol=1e-6)
  for a, b in zip(gr, gd):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-7)

"""Contrastive losses for paired embeddings: softmax (CLIP/InfoNCE) and sigmoid (SigLIP).

Two implementations of each loss:

* dense (`softmax_contrastive_loss`, `sigmoid_contrastive_loss`): one global
  B x B logit matrix. Under `jax.jit` with the batch sharded over a mesh, XLA
  (GSPMD) gathers what it needs, so every example sees every negative of the
  global batch; each device holds a (B / devices) x B slice of the logits.
* chunked (`chunked_softmax_contrastive_loss`, `chunked_sigmoid_contrastive_loss`):
  a `jax.shard_map` ring. Each device keeps its local rows of x and passes the
  blocks of y around the ring with `jax.lax.ppermute`; a device never holds
  more than one (B / devices) x (B / devices) block of logits. Running
  log-sum-exp statistics for the rows stay on the device; the statistics for
  the columns of a y block travel with that block and arrive complete back at
  its home device after a full turn. The backward pass is a hand-written
  custom VJP doing a second ring turn (the y block travels with its gradient
  accumulator), so nothing of size B x B or B x D is saved for autodiff.

All losses take L2-normalised x and y of shape [B, D] where row i of x matches
row i of y, and compute in float32 whatever the input dtype. `logit_scale` is
the multiplier applied to cosine similarities (already exponentiated, as in
open_clip's ClipLoss); `logit_bias` is added after scaling (SigLIP).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

AxisNames = Sequence[str]


def _as_f32(*arrays):
  return tuple(jnp.asarray(a).astype(jnp.float32) for a in arrays)


def _check_pair(x, y) -> None:
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(
      f"x and y must both have shape [batch, dim] and match; got x {tuple(x.shape)} and y {tuple(y.shape)}."
    )


# --------------------------------------------------------------------------- dense


def softmax_contrastive_loss(x: jax.Array, y: jax.Array, logit_scale) -> jax.Array:
  """Symmetric InfoNCE (CLIP) loss: mean of the x->y and y->x cross-entropies.

  logits[i, j] = logit_scale * <x_i, y_j>; the target of row i (and of column i)
  is i. Returns a float32 scalar.
  """
  _check_pair(x, y)
  x, y, s = _as_f32(x, y, logit_scale)
  logits = s * (x @ y.T)
  positives = jnp.diagonal(logits)
  row = jax.nn.logsumexp(logits, axis=1) - positives
  col = jax.nn.logsumexp(logits, axis=0) - positives
  return 0.5 * (jnp.mean(row) + jnp.mean(col))


def directional_softmax_loss(x: jax.Array, y: jax.Array, logit_scale) -> jax.Array:
  """The x->y half of the InfoNCE loss: mean over rows i of the cross-entropy of
  logit_scale * <x_i, y_j> over j with target i (torch's CrossEntropyLoss on x @ y.T)."""
  _check_pair(x, y)
  x, y, s = _as_f32(x, y, logit_scale)
  logits = s * (x @ y.T)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


def sigmoid_contrastive_loss(x: jax.Array, y: jax.Array, logit_scale, logit_bias) -> jax.Array:
  """SigLIP loss: -sum_ij log sigmoid(z_ij * (logit_scale <x_i, y_j> + logit_bias)) / B.

  z_ij = +1 on the diagonal (matching pairs) and -1 elsewhere. Returns a
  float32 scalar.
  """
  _check_pair(x, y)
  x, y, s, b = _as_f32(x, y, logit_scale, logit_bias)
  logits = s * (x @ y.T) + b
  signs = 2.0 * jnp.eye(x.shape[0], dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / x.shape[0]


# ------------------------------------------------------------------------- chunked


def _ring(mesh: Mesh, axis_names: tuple[str, ...]):
  """Ring size and the ppermute pairs sending block k to device k + 1."""
  for name in axis_names:
    if name not in mesh.shape:
      raise ValueError(f"axis_names {axis_names}: mesh axis {name!r} not in the mesh axes {tuple(mesh.shape)}.")
  n = math.prod(mesh.shape[name] for name in axis_names)
  return n, [(i, (i + 1) % n) for i in range(n)]


def _check_chunked(x, y, mesh: Mesh, axis_names: tuple[str, ...]) -> None:
  _check_pair(x, y)
  n, _ = _ring(mesh, axis_names)
  if x.shape[0] % n:
    raise ValueError(
      f"batch size {x.shape[0]} is not divisible by the {n} devices of mesh axes "
      f"{axis_names}; the chunked loss needs equal local batches."
    )


def _lse_update(m, l, logits, axis):
  """Fold a block of logits into a running (max, sum of exp) along `axis`."""
  m_new = jnp.maximum(m, jnp.max(logits, axis=axis))
  scale = jnp.exp(m - m_new)
  expand = (lambda v: v[:, None]) if axis == 1 else (lambda v: v[None, :])
  l_new = l * scale + jnp.sum(jnp.exp(logits - expand(m_new)), axis=axis)
  return m_new, l_new


def _varying(value, axis_names):
  return jax.lax.pcast(value, axis_names, to="varying")


@functools.cache
def _chunked_softmax_fn(mesh: Mesh, axis_names: tuple[str, ...]):
  """Builds the custom-VJP ring softmax loss for one mesh and batch axes."""
  n, perm = _ring(mesh, axis_names)
  batch = P(axis_names, None)
  vec = P(axis_names)

  def send(tree):
    return jax.lax.ppermute(tree, axis_names, perm)

  def fwd_body(x, y, s):
    x, y = _as_f32(x, y)
    rows = x.shape[0]
    global_batch = rows * n

    def block(carry):
      yb, cm, cl, rm, rl = carry
      logits = s * (x @ yb.T)
      rm, rl = _lse_update(rm, rl, logits, axis=1)
      cm, cl = _lse_update(cm, cl, logits, axis=0)
      return yb, cm, cl, rm, rl

    def step(_, carry):
      yb, cm, cl, rm, rl = block(carry)
      yb, cm, cl = send((yb, cm, cl))
      return yb, cm, cl, rm, rl

    neg_inf = _varying(jnp.full((rows,), -jnp.inf, jnp.float32), axis_names)
    zero = _varying(jnp.zeros((rows,), jnp.float32), axis_names)
    carry = jax.lax.fori_loop(0, n - 1, step, (y, neg_inf, zero, neg_inf, zero))
    _, cm, cl, rm, rl = block(carry)
    cm, cl = send((cm, cl))  # the column statistics of y come home complete
    row_lse = rm + jnp.log(rl)
    col_lse = cm + jnp.log(cl)
    positives = s * jnp.sum(x * y, axis=1)
    local = jnp.sum(row_lse - positives) + jnp.sum(col_lse - positives)
    loss = 0.5 * jax.lax.psum(local, axis_names) / global_batch
    return loss, row_lse, col_lse

  def bwd_body(x, y, s, row_lse, col_lse, g):
    x_dtype, y_dtype = x.dtype, y.dtype
    x, y = _as_f32(x, y)
    rows = x.shape[0]
    c = g * 0.5 / (rows * n)

    def block(carry):
      yb, lse_b, dyb, dx, ds = carry
      sims = x @ yb.T
      logits = s * sims
      grad = c * (jnp.exp(logits - row_lse[:, None]) + jnp.exp(logits - lse_b[None, :]))
      return yb, lse_b, dyb + grad.T @ x, dx + grad @ yb, ds + jnp.sum(grad * sims)

    def step(_, carry):
      yb, lse_b, dyb, dx, ds = block(carry)
      yb, lse_b, dyb = send((yb, lse_b, dyb))
      return yb, lse_b, dyb, dx, ds

    zeros = _varying(jnp.zeros(x.shape, jnp.float32), axis_names)
    ds0 = _varying(jnp.zeros((), jnp.float32), axis_names)
    carry = jax.lax.fori_loop(0, n - 1, step, (y, col_lse, zeros, zeros, ds0))
    _, _, dy, dx, ds = block(carry)
    dy = send(dy)  # the gradient of the local y comes home complete
    # Positive pairs: both cross-entropies subtract logit_ii.
    dx = s * (dx - 2.0 * c * y)
    dy = s * (dy - 2.0 * c * x)
    ds = jax.lax.psum(ds - 2.0 * c * jnp.sum(x * y), axis_names)
    return dx.astype(x_dtype), dy.astype(y_dtype), ds

  fwd_sharded = jax.shard_map(fwd_body, mesh=mesh, in_specs=(batch, batch, P()), out_specs=(P(), vec, vec))
  bwd_sharded = jax.shard_map(
    bwd_body, mesh=mesh, in_specs=(batch, batch, P(), vec, vec, P()), out_specs=(batch, batch, P())
  )

  @jax.custom_vjp
  def loss_fn(x, y, s):
    return fwd_sharded(x, y, s)[0]

  def loss_fwd(x, y, s):
    loss, row_lse, col_lse = fwd_sharded(x, y, s)
    return loss, (x, y, s, row_lse, col_lse)

  def loss_bwd(res, g):
    return bwd_sharded(*res, g)

  loss_fn.defvjp(loss_fwd, loss_bwd)
  return loss_fn


@functools.cache
def _chunked_sigmoid_fn(mesh: Mesh, axis_names: tuple[str, ...]):
  """Builds the custom-VJP ring sigmoid loss for one mesh and batch axes."""
  n, perm = _ring(mesh, axis_names)
  batch = P(axis_names, None)

  def send(tree):
    return jax.lax.ppermute(tree, axis_names, perm)

  def signs(t, rows):
    """+1 for matching pairs: only in the first block, which is the device's own y."""
    eye = jnp.eye(rows, dtype=bool)
    return jnp.where(eye & (t == 0), 1.0, -1.0)

  def forward(x, y, s, b):
    x, y = _as_f32(x, y)
    rows = x.shape[0]

    def block(t, yb):
      logits = s * (x @ yb.T) + b
      return jnp.sum(jax.nn.log_sigmoid(signs(t, rows) * logits))

    def step(t, carry):
      yb, total = carry
      return send(yb), total + block(t, yb)

    total = _varying(jnp.zeros((), jnp.float32), axis_names)
    yb, total = jax.lax.fori_loop(0, n - 1, step, (y, total))
    total = total + block(n - 1, yb)
    return -jax.lax.psum(total, axis_names) / (rows * n)

  def bwd_body(x, y, s, b, g):
    x_dtype, y_dtype = x.dtype, y.dtype
    x, y = _as_f32(x, y)
    rows = x.shape[0]
    c = -g / (rows * n)

    def block(t, carry):
      yb, dyb, dx, ds, db = carry
      sims = x @ yb.T
      z = signs(t, rows)
      grad = c * z * jax.nn.sigmoid(-z * (s * sims + b))
      return yb, dyb + grad.T @ x, dx + grad @ yb, ds + jnp.sum(grad * sims), db + jnp.sum(grad)

    def step(t, carry):
      yb, dyb, dx, ds, db = block(t, carry)
      yb, dyb = send((yb, dyb))
      return yb, dyb, dx, ds, db

    zeros = _varying(jnp.zeros(x.shape, jnp.float32), axis_names)
    scalar = _varying(jnp.zeros((), jnp.float32), axis_names)
    carry = jax.lax.fori_loop(0, n - 1, step, (y, zeros, zeros, scalar, scalar))
    _, dy, dx, ds, db = block(n - 1, carry)
    dy = send(dy)  # the gradient of the local y comes home complete
    ds, db = jax.lax.psum((ds, db), axis_names)
    return (s * dx).astype(x_dtype), (s * dy).astype(y_dtype), ds, db

  fwd_sharded = jax.shard_map(forward, mesh=mesh, in_specs=(batch, batch, P(), P()), out_specs=P())
  bwd_sharded = jax.shard_map(
    bwd_body, mesh=mesh, in_specs=(batch, batch, P(), P(), P()), out_specs=(batch, batch, P(), P())
  )

  @jax.custom_vjp
  def loss_fn(x, y, s, b):
    return fwd_sharded(x, y, s, b)

  def loss_fwd(x, y, s, b):
    return fwd_sharded(x, y, s, b), (x, y, s, b)

  def loss_bwd(res, g):
    return bwd_sharded(*res, g)

  loss_fn.defvjp(loss_fwd, loss_bwd)
  return loss_fn


def chunked_softmax_contrastive_loss(
  x: jax.Array, y: jax.Array, logit_scale, *, mesh: Mesh, axis_names: AxisNames = ("data",)
) -> jax.Array:
  """`softmax_contrastive_loss` as a shard_map ring over the mesh axes `axis_names`.

  The batch dimension of x and y is split over `axis_names` (in that order,
  as `PartitionSpec(axis_names)`); the global batch must divide evenly. Same
  value and gradients as the dense loss, without the global logit matrix.
  """
  axis_names = tuple(axis_names)
  _check_chunked(x, y, mesh, axis_names)
  (s,) = _as_f32(logit_scale)
  return _chunked_softmax_fn(mesh, axis_names)(x, y, s)


def chunked_sigmoid_contrastive_loss(
  x: jax.Array, y: jax.Array, logit_scale, logit_bias, *, mesh: Mesh, axis_names: AxisNames = ("data",)
) -> jax.Array:
  """`sigmoid_contrastive_loss` as a shard_map ring over the mesh axes `axis_names`."""
  axis_names = tuple(axis_names)
  _check_chunked(x, y, mesh, axis_names)
  s, b = _as_f32(logit_scale, logit_bias)
  return _chunked_sigmoid_fn(mesh, axis_names)(x, y, s, b)


# ------------------------------------------------------------------------ dispatch

LOSS_KINDS = ("softmax", "sigmoid")


def contrastive_loss(
  x: jax.Array,
  y: jax.Array,
  logit_scale,
  logit_bias=None,
  *,
  kind: str = "softmax",
  mesh: Mesh | None = None,
  chunked: bool = False,
  axis_names: AxisNames = ("data",),
) -> jax.Array:
  """Dispatches to the dense or chunked softmax / sigmoid contrastive loss.

  kind: "softmax" (CLIP; takes no bias) or "sigmoid" (SigLIP; needs logit_bias).
  chunked: use the shard_map ring over `mesh` and `axis_names` (mesh required).
  """
  if kind not in LOSS_KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {LOSS_KINDS}.")
  if kind == "softmax" and logit_bias is not None:
    raise ValueError(
      "kind='softmax' takes no logit_bias (a constant bias cancels in the "
      "softmax); pass logit_bias=None or use kind='sigmoid'."
    )
  if kind == "sigmoid" and logit_bias is None:
    raise ValueError("kind='sigmoid' needs logit_bias (SigLIP initialises it at -10).")
  if chunked and mesh is None:
    raise ValueError("chunked=True needs mesh= (the mesh whose axis_names split the batch).")
  if kind == "softmax":
    if chunked:
      return chunked_softmax_contrastive_loss(x, y, logit_scale, mesh=mesh, axis_names=axis_names)
    return softmax_contrastive_loss(x, y, logit_scale)
  if chunked:
    return chunked_sigmoid_contrastive_loss(x, y, logit_scale, logit_bias, mesh=mesh, axis_names=axis_names)
  return sigmoid_contrastive_loss(x, y, logit_scale, logit_bias)

"""CLOSP / GeoCLOSP: Sentinel-2, Sentinel-1, text and (GeoCLOSP) location towers in one space.

    cfg = model_config()                                   # CLOSP-RN geometry, 384-d space
    model = CLOSP(cfg)
    variables = model.init(rng, s2, s1, input_ids, attention_mask, lonlat)   # touches every tower
    z = model.apply(variables, s2, method=model.encode_s2)                  # [B, 384], unit norm
    scale, bias = model.apply(variables, method=model.logit_params)

Submodules (named as the original PyTorch model, so checkpoints map 1:1): s2_encoder, s1_encoder,
text_model, s2_projection, s1_projection, [text_projection], [location_encoder, location_projection].
Each image encoder may keep a classifier layer inside it (`s2_head_classes`): the original towers
built through TorchGeo keep timm's 1000-way `fc` (ResNet) or `head` (ViT) and project its output.

Temperature: `logit_scale` holds log(scale) and is a parameter only when `temperature.learnable`
(scale = exp(logit_scale), clipped at 100 as CLIP); a fixed temperature is a constant, not a
parameter, so the optimizer and checkpoints never see it. `logit_bias` (sigmoid losses) likewise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from closp_jax.models.image import image_encoder
from closp_jax.models.location import LOCATION_KINDS, SH_CONVENTIONS, location_encoder
from closp_jax.models.text import POOLINGS, TextEncoder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BN_MODES = ("batch", "frozen")
MAX_LOGIT_SCALE = 100.0

# Location-encoder geometry of GeoCLIP's released weights (closp_jax.weights.load_geoclip_location).
GEOCLIP_LOCATION = {"kind": "geoclip", "hidden": 1024, "layers": 3, "out": 512}

# ---- config -------------------------------------------------------------------------------------


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The tower config (locked): defaults below, then `overrides`.

  Overrides are top-level fields (`embed_dim=512`), dotted paths (`**{"location.kind": "geoclip"}`)
  or dicts for groups (`location=dict(enabled=True)`). An unknown field is a KeyError naming the
  valid ones.
  """
  c = ml_collections.ConfigDict()
  c.embed_dim = 384
  c.s2_encoder = "resnet50"
  c.s1_encoder = "resnet50"
  c.s2_in_chans = 13
  c.s1_in_chans = 2
  c.s2_head_classes = 0  # >0: keep timm's classifier (fc/head) inside the encoder, as TorchGeo did
  c.s1_head_classes = 0
  c.image_size = config_dict.placeholder(int)  # None: as given; int: bilinear resize (ViTs: 224)
  # The resize's sampling grid: False = half-pixel centres (jax.image.resize, PyTorch's
  # align_corners=False); True = corner pixels aligned, as the authors' kornia K.Resize(224) does.
  c.resize_align_corners = False
  c.text = ml_collections.ConfigDict(
    dict(
      vocab_size=30522,
      hidden=384,
      layers=6,
      heads=12,
      intermediate=1536,
      max_position=512,
      type_vocab=2,
      pooling="cls",
      text_projection=False,
      dropout=0.1,
      layer_norm_eps=1e-12,
    )
  )
  c.location = ml_collections.ConfigDict(
    dict(
      enabled=False,
      kind="satclip",
      degree=10,
      hidden=256,
      layers=2,
      out=256,
      sh_convention="closed_form",
      dropout=0.5,
      sigmas=(1.0, 16.0, 256.0),
      rff_dim=256,
    )
  )
  c.temperature = ml_collections.ConfigDict(
    dict(init_scale=1.0, learnable=False, sigmoid_bias=config_dict.placeholder(float))
  )
  c.dtype = "float32"
  c.bn_mode = "batch"
  for key, value in overrides.items():
    _override(c, key.split("."), value, key)
  c.lock()
  return c


def _override(c: ml_collections.ConfigDict, path: list[str], value: Any, full: str) -> None:
  head = path[0]
  if head not in c:
    raise KeyError(f"model config has no field {full!r}; valid fields here: {', '.join(sorted(c.keys()))}")
  if len(path) > 1:
    if not isinstance(c[head], ml_collections.ConfigDict):
      raise KeyError(f"model config field {head!r} is not a group (in {full!r})")
    _override(c[head], path[1:], value, full)
    return
  if isinstance(c[head], ml_collections.ConfigDict):
    if not isinstance(value, Mapping):
      raise TypeError(f"model config group {full!r} takes a dict of fields, got {type(value).__name__}")
    for k, v in value.items():
      _override(c[head], [k], v, f"{full}.{k}")
    return
  c[head] = value


@dataclasses.dataclass(frozen=True)
class TowerSpec:
  """A validated, hashable view of a model config."""

  embed_dim: int
  s2_encoder: str
  s1_encoder: str
  s2_in_chans: int
  s1_in_chans: int
  s2_head_classes: int
  s1_head_classes: int
  image_size: int | None
  resize_align_corners: bool
  text: tuple[tuple[str, Any], ...]
  text_projection: bool
  location: tuple[tuple[str, Any], ...] | None
  location_kind: str
  init_scale: float
  learnable: bool
  sigmoid_bias: float | None
  dtype: Any
  bn_mode: str


def tower_spec(cfg: Any) -> TowerSpec:
  """Checks a model config (ConfigDict, FrozenConfigDict or TowerSpec) and returns its TowerSpec."""
  if isinstance(cfg, TowerSpec):
    return cfg

  def need(cond: bool, msg: str) -> None:
    if not cond:
      raise ValueError(f"model config: {msg}")

  t, loc, temp = cfg.text, cfg.location, cfg.temperature
  need(cfg.dtype in DTYPES, f"dtype={cfg.dtype!r}, expected one of {tuple(DTYPES)}")
  need(cfg.bn_mode in BN_MODES, f"bn_mode={cfg.bn_mode!r}, expected one of {BN_MODES}")
  need(int(cfg.embed_dim) > 0, f"embed_dim must be positive, got {cfg.embed_dim}")
  need(t.pooling in POOLINGS, f"text.pooling={t.pooling!r}, expected one of {POOLINGS}")
  need(int(t.hidden) % int(t.heads) == 0, f"text.hidden={t.hidden} is not divisible by text.heads={t.heads}")
  need(cfg.image_size is None or int(cfg.image_size) > 0, f"image_size must be None or positive, got {cfg.image_size}")
  need(
    float(temp.init_scale) > 0 and float(temp.init_scale) <= MAX_LOGIT_SCALE,
    f"temperature.init_scale must be in (0, {MAX_LOGIT_SCALE}], got {temp.init_scale}",
  )
  text_projection = bool(t.text_projection) or int(t.hidden) != int(cfg.embed_dim)
  text = (
    ("vocab_size", int(t.vocab_size)),
    ("hidden", int(t.hidden)),
    ("layers", int(t.layers)),
    ("heads", int(t.heads)),
    ("intermediate", int(t.intermediate)),
    ("max_position", int(t.max_position)),
    ("type_vocab", int(t.type_vocab)),
    ("pooling", str(t.pooling)),
    ("dropout", float(t.dropout)),
    ("layer_norm_eps", float(t.layer_norm_eps)),
  )
  location = None
  if loc.enabled:
    need(loc.kind in LOCATION_KINDS, f"location.kind={loc.kind!r}, expected one of {LOCATION_KINDS}")
    if loc.kind == "satclip":
      need(
        loc.sh_convention in SH_CONVENTIONS,
        f"location.sh_convention={loc.sh_convention!r}, expected one of {SH_CONVENTIONS}",
      )
      need(int(loc.degree) >= 1, f"location.degree must be >= 1, got {loc.degree}")
      location = (
        ("degree", int(loc.degree)),
        ("hidden", int(loc.hidden)),
        ("layers", int(loc.layers)),
        ("out", int(loc.out)),
        ("dropout", float(loc.dropout)),
        ("sh_convention", str(loc.sh_convention)),
      )
    else:
      location = (
        ("sigmas", tuple(float(s) for s in loc.sigmas)),
        ("rff_dim", int(loc.rff_dim)),
        ("hidden", int(loc.hidden)),
        ("depth", int(loc.layers)),
        ("out", int(loc.out)),
      )
  return TowerSpec(
    embed_dim=int(cfg.embed_dim),
    s2_encoder=str(cfg.s2_encoder),
    s1_encoder=str(cfg.s1_encoder),
    s2_in_chans=int(cfg.s2_in_chans),
    s1_in_chans=int(cfg.s1_in_chans),
    s2_head_classes=int(cfg.s2_head_classes),
    s1_head_classes=int(cfg.s1_head_classes),
    image_size=None if cfg.image_size is None else int(cfg.image_size),
    resize_align_corners=bool(cfg.get("resize_align_corners", False)),
    text=text,  # absent in older configs
    text_projection=text_projection,
    location=location,
    location_kind=str(loc.kind),
    init_scale=float(temp.init_scale),
    learnable=bool(temp.learnable),
    sigmoid_bias=None if temp.sigmoid_bias is None else float(temp.sigmoid_bias),
    dtype=DTYPES[cfg.dtype],
    bn_mode=str(cfg.bn_mode),
  )


# ---- modules ------------------------------------------------------------------------------------

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's nn.Linear default for the weight (and the bias).
_TORCH_LINEAR_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _linear(features: int, axes: tuple[str, str], dtype: Any, fan_in: int | None = None) -> nn.Dense:
  bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
  bias_init = (
    (lambda key, shape, dt=jnp.float32: jax.random.uniform(key, shape, dt, -bound, bound))
    if fan_in
    else nn.initializers.zeros
  )
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.with_logical_partitioning(_TORCH_LINEAR_KERNEL, axes),
    bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)),
  )


def _align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower index, upper index, upper weight) per output pixel of 1-D linear resampling with the
  corners aligned, computed as PyTorch's upsample_bilinear2d(align_corners=True) does in float32:
  source = i * (in - 1) / (out - 1), upper index clamped to the last pixel."""
  scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """NHWC bilinear resize with aligned corners and no antialiasing: what kornia 0.8.1's
  `K.Resize(size)` (bilinear, align_corners=True, antialias=False) and
  `torch.nn.functional.interpolate(mode="bilinear", align_corners=True)` compute. Width is
  interpolated first, then height, in the same order as PyTorch's kernel."""
  x = x.astype(jnp.float32)
  h_lo, h_hi, h_w = _align_corners_taps(x.shape[1], size[0])
  w_lo, w_hi, w_w = _align_corners_taps(x.shape[2], size[1])
  w_w = w_w[None, None, :, None]
  x = x[:, :, w_lo] * (np.float32(1) - w_w) + x[:, :, w_hi] * w_w
  h_w = h_w[None, :, None, None]
  return x[:, h_lo] * (np.float32(1) - h_w) + x[:, h_hi] * h_w


class ImageTower(nn.Module):
  """An image encoder from closp_jax.models.image, optionally resizing its input and keeping a
  classifier layer. The encoder's parameters sit directly in this module's scope (shared scope),
  next to the classifier (`fc` for ResNets, `head` for ViTs, as timm names them).

  Resize (when `image_size` is set and the input differs): bilinear, half-pixel centres
  (jax.image.resize) by default, or with the corners aligned (`resize_align_corners`, the authors'
  kornia K.Resize)."""

  encoder: str
  in_chans: int
  head_classes: int = 0
  head_fan_in: int = 0
  image_size: int | None = None
  dtype: Any = jnp.float32
  bn_mode: str = "batch"
  resize_align_corners: bool = False

  def setup(self):
    self.backbone = image_encoder(self.encoder, self.in_chans, dtype=self.dtype, bn_mode=self.bn_mode)
    nn.share_scope(self, self.backbone)
    if self.head_classes:
      head = _linear(self.head_classes, ("embed", "mlp"), self.dtype, self.head_fan_in)
      if self.encoder.startswith("vit"):
        self.head = head
      else:
        self.fc = head

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f"{self.encoder} tower expects NHWC images with {self.in_chans} channels, got shape {x.shape}")
    if self.image_size and tuple(x.shape[1:3]) != (self.image_size, self.image_size):
      if self.resize_align_corners:
        x = resize_bilinear_align_corners(x, (self.image_size, self.image_size))
      else:
        x = jax.image.resize(
          x.astype(jnp.float32), (x.shape[0], self.image_size, self.image_size, x.shape[3]), method="bilinear"
        )
    f = self.backbone(x, train=train)
    if self.head_classes:
      f = (self.head if self.encoder.startswith("vit") else self.fc)(f)
    return f.astype(jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis, in float32 (as torch.nn.functional.normalize)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CLOSP(nn.Module):
  """The CLOSP towers (GeoCLOSP when cfg.location.enabled). See the module docstring."""

  cfg: Any

  def setup(self):
    from closp_jax.models.image import num_features  # pylint: disable=import-outside-toplevel

    s = tower_spec(self.cfg)
    self.spec = s
    feat = {k: num_features(getattr(s, f"{k}_encoder")) for k in ("s2", "s1")}
    self.s2_encoder = ImageTower(
      s.s2_encoder,
      s.s2_in_chans,
      s.s2_head_classes,
      feat["s2"],
      s.image_size,
      s.dtype,
      s.bn_mode,
      s.resize_align_corners,
    )
    self.s1_encoder = ImageTower(
      s.s1_encoder,
      s.s1_in_chans,
      s.s1_head_classes,
      feat["s1"],
      s.image_size,
      s.dtype,
      s.bn_mode,
      s.resize_align_corners,
    )
    self.s2_projection = _linear(s.embed_dim, ("embed", "proj"), s.dtype, s.s2_head_classes or feat["s2"])
    self.s1_projection = _linear(s.embed_dim, ("embed", "proj"), s.dtype, s.s1_head_classes or feat["s1"])
    text = dict(s.text)
    self.text_model = TextEncoder(**text, dtype=s.dtype)
    if s.text_projection:
      self.text_projection = _linear(s.embed_dim, ("embed", "proj"), s.dtype, text["hidden"])
    if s.location is not None:
      loc = dict(s.location)
      self.location_encoder = location_encoder(s.location_kind, **loc)
      self.location_projection = _linear(s.embed_dim, ("embed", "proj"), jnp.float32, loc["out"])
    if s.learnable:
      self.logit_scale_param = self.param(
        "logit_scale", nn.with_logical_partitioning(nn.initializers.constant(math.log(s.init_scale)), ()), ()
      )
      if s.sigmoid_bias is not None:
        self.logit_bias_param = self.param(
          "logit_bias", nn.with_logical_partitioning(nn.initializers.constant(s.sigmoid_bias), ()), ()
        )

  # -- towers --
  def encode_s2(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Sentinel-2 images [B, H, W, s2_in_chans] (already scaled) -> unit vectors [B, embed_dim]."""
    return l2_normalize(self.s2_projection(self.s2_encoder(images, train=train)))

  def encode_s1(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Sentinel-1 images [B, H, W, s1_in_chans] -> unit vectors [B, embed_dim]."""
    return l2_normalize(self.s1_projection(self.s1_encoder(images, train=train)))

  def encode_text_features(self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False) -> jax.Array:
    """Text features in the shared space before normalisation [B, embed_dim] (float32)."""
    return self.project_text_features(self.text_model(input_ids, attention_mask, train=train))

  def text_backbone(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The text model's pooled output before any projection [B, hidden] (float32, no dropout): what
    the training step's table of frozen text holds."""
    return self.text_model(input_ids, attention_mask, train=False).astype(jnp.float32)

  def project_text_features(self, f: jax.Array) -> jax.Array:
    """Text model output [B, hidden] -> features in the shared space before normalisation (float32)."""
    if self.spec.text_projection:
      f = self.text_projection(f)
    return f.astype(jnp.float32)

  def project_text(self, f: jax.Array) -> jax.Array:
    """Text model output [B, hidden] -> unit vectors [B, embed_dim] (the step's table lookups)."""
    return l2_normalize(self.project_text_features(f))

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array, train: bool = False) -> jax.Array:
    """Token ids and mask [B, T] -> unit vectors [B, embed_dim]. train=True enables dropout
    (needs a 'dropout' rng); the default is deterministic."""
    return l2_normalize(self.encode_text_features(input_ids, attention_mask, train=train))

  def encode_location(self, lonlat: jax.Array, train: bool = False) -> jax.Array:
    """(lon, lat) degrees [B, 2] -> unit vectors [B, embed_dim]. Needs cfg.location.enabled."""
    if self.spec.location is None:
      raise ValueError("encode_location needs a location encoder: set model config location.enabled=True")
    return l2_normalize(self.location_projection(self.location_encoder(lonlat, train=train)))

  def logit_params(self) -> tuple[jax.Array, jax.Array]:
    """(logit_scale, logit_bias): the scale already exponentiated and clipped at 100; bias 0 if unused."""
    s = self.spec
    if s.learnable:
      scale = jnp.exp(jnp.minimum(self.logit_scale_param, math.log(MAX_LOGIT_SCALE)))
      bias = self.logit_bias_param if s.sigmoid_bias is not None else jnp.zeros((), jnp.float32)
    else:
      scale = jnp.asarray(s.init_scale, jnp.float32)
      bias = jnp.asarray(s.sigmoid_bias or 0.0, jnp.float32)
    return scale, bias

  def __call__(
    self,
    s2: jax.Array,
    s1: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    lonlat: jax.Array | None = None,
    train: bool = False,
  ) -> dict[str, jax.Array]:
    """Every tower at once (used by init): {'s2', 's1', 'text', ['location'], 'logit_scale', 'logit_bias'}."""
    out = {
      "s2": self.encode_s2(s2, train),
      "s1": self.encode_s1(s1, train),
      "text": self.encode_text(input_ids, attention_mask, train),
    }
    if self.spec.location is not None:
      if lonlat is None:
        raise ValueError("the location encoder is enabled: pass lonlat [B, 2] to initialise it")
      out["location"] = self.encode_location(lonlat, train)
    out["logit_scale"], out["logit_bias"] = self.logit_params()
    return out

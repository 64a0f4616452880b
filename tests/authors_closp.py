"""The authors' CLOSP / GeoCLOSP model classes re-created in PyTorch: the independent reference that
closp-jax's official-checkpoint import and exports are checked against.

Written from the behaviour of DarthReca/closp at 4938033 (models/closp.py, models/location_encoder.py,
models/positional_encoding.py) and TorchGeo v0.7.1 (torchgeo/models/resnet.py, vit.py); no code of
closp_jax is used here. What it reproduces:

- image encoders as the authors' `CLOSP.vision_models` table builds them:
  "resnet50": TorchGeo's resnet50(weights) = timm.create_model("resnet50", in_chans=...) with timm's
  default num_classes=1000, so each tower ends in a 1000-way `fc` (TorchGeo resnet.py:834-847);
  "vit-s": S2 = TorchGeo's vit_small_patch16_224(weights), timm's default 1000-way `head` kept
  (vit.py:583-603); S1 = the authors' vit_small_patch16_224_v2, num_classes=0 (closp.py:34-43);
  "vit-l": both the authors' vit_large_patch16_224, num_classes=0 (closp.py:22-31).
- the text tower: a Hugging Face BertModel (what AutoModel gives for all-MiniLM-L6-v2, pooler
  included), the CLS token of the last hidden state (closp.py:195-202), the tokenizer padding and
  truncating to 64 tokens (closp.py:185-191);
- the projections Linear(encoder output, text hidden) sized by a forward pass at 224 px in train
  mode (closp.py:90-98), so a BatchNorm tower's running statistics move once, as theirs do;
- the evaluation transforms (closp.py:101-114): S2 kornia K.Normalize(mean=0, std=10000), S1
  nothing, and K.Resize(224) for timm VisionTransformer towers; kornia 0.8.1's Resize is bilinear
  with align_corners=True and no antialiasing (kornia/augmentation/_2d/geometric/resize.py:45-95),
  which is torch.nn.functional.interpolate(mode="bilinear", align_corners=True) on the whole image;
- GeoCLOSP's SatCLIP location encoder (location_encoder.py): SphericalHarmonics (no weights) ->
  SirenNet(layers of Siren with their own weight/bias, sin(w0 x), w0 = 30 first, 1 after, dropout
  off in eval) -> last_layer (identity activation); location_projection Linear(dim_out, 384);
- the harmonics: `analytic` (their default, positional_encoding.py:14, 27-29) is the table SatCLIP's
  generator writes (satclip/positional_encoding/spherical_harmonics_generate_ylms.py, in the repository
  since its first commit); their copy of that table (models/spherical_armonics.py) is not public, so it
  is regenerated here with sympy from the generator's formulas, m = 0 included as the generator writes
  it (sqrt((2l+1)/4*pi)); `closed-form` is their associated-Legendre recurrence (positional_encoding.py:63-108).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_LEN = 64  # their tokenizer: padding="max_length", truncation=True, max_length=64
S2_SCALE = 10000.0  # K.Normalize(mean=0, std=10000)
VIT_SIZE = 224  # K.Resize(224)


# ---- image encoders -----------------------------------------------------------------------------


def torchgeo_resnet50(in_chans: int) -> nn.Module:
  """TorchGeo v0.7.1 resnet50(weights): timm.create_model('resnet50', in_chans=weights.meta['in_chans'])."""
  import timm  # pylint: disable=import-outside-toplevel

  return timm.create_model("resnet50", in_chans=in_chans)


def torchgeo_vit_small(in_chans: int) -> nn.Module:
  """TorchGeo v0.7.1 vit_small_patch16_224(weights): timm's model with its default 1000-way head."""
  import timm  # pylint: disable=import-outside-toplevel

  return timm.create_model("vit_small_patch16_224", in_chans=in_chans)


def authors_vit_small(in_chans: int) -> nn.Module:
  """The authors' vit_small_patch16_224_v2: num_classes=0 (no head)."""
  import timm  # pylint: disable=import-outside-toplevel

  return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=in_chans)


def authors_vit_large(in_chans: int) -> nn.Module:
  """The authors' vit_large_patch16_224: num_classes=0 (no head)."""
  import timm  # pylint: disable=import-outside-toplevel

  return timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, in_chans=in_chans)


# vision_model -> (S1 builder, S2 builder), as CLOSP.vision_models (closp.py:47-72; "mix" not released).
VISION_MODELS = {
  "resnet50": (torchgeo_resnet50, torchgeo_resnet50),
  "vit-s": (authors_vit_small, torchgeo_vit_small),
  "vit-l": (authors_vit_large, authors_vit_large),
}
# Released variants: (vision_model, GeoCLOSP?).
VARIANTS = {
  "CLOSP-RN": ("resnet50", False),
  "CLOSP-VS": ("vit-s", False),
  "CLOSP-VL": ("vit-l", False),
  "GeoCLOSP-RN": ("resnet50", True),
}


def small_resnet(in_chans: int, num_classes: int = 0) -> nn.Module:
  """NOT an authors' encoder: timm's BasicBlock ResNet with one block per stage and widths 16..128
  (closp_jax's `resnet_tiny`), for quick tests of the class around it."""
  from timm.models.resnet import BasicBlock, ResNet  # pylint: disable=import-outside-toplevel

  net = ResNet(
    block=BasicBlock, layers=[1, 1, 1, 1], channels=(16, 32, 64, 128), in_chans=in_chans, num_classes=num_classes
  )
  net.conv1 = nn.Conv2d(in_chans, 16, 7, stride=2, padding=3, bias=False)
  net.bn1 = nn.BatchNorm2d(16)
  net.layer1[0] = BasicBlock(16, 16)
  return net


def small_vit(in_chans: int, num_classes: int = 0) -> nn.Module:
  """NOT an authors' encoder: a 2-block ViT (patch 8, width 96, 3 heads) made for 120 px whose position
  embeddings are resampled to other sizes (timm dynamic_img_size; closp_jax's `vit_tiny`)."""
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel

  return VisionTransformer(
    img_size=120,
    patch_size=8,
    embed_dim=96,
    depth=2,
    num_heads=3,
    in_chans=in_chans,
    num_classes=num_classes,
    dynamic_img_size=True,
  )


# ---- evaluation transforms ----------------------------------------------------------------------


def val_transform(image: torch.Tensor, sensor: str, vit: bool) -> torch.Tensor:
  """val_s2_transform / val_s1_transform: S2 / 10,000; a ViT's input resized to 224 (kornia Resize)."""
  if sensor == "s2":
    image = (image - 0.0) / S2_SCALE  # kornia.enhance.normalize: (x - mean) / std
  if vit and tuple(image.shape[-2:]) != (VIT_SIZE, VIT_SIZE):
    image = F.interpolate(image, size=(VIT_SIZE, VIT_SIZE), mode="bilinear", align_corners=True)
  return image


def _is_vit(module: nn.Module) -> bool:
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel

  return isinstance(module, VisionTransformer)


# ---- CLOSP --------------------------------------------------------------------------------------


class CLOSP(nn.Module):
  """The authors' CLOSP with the text model built from `text_config` (a transformers BertConfig)
  instead of downloaded weights. `vision_model` names their table's entry; `s1_encoder` /
  `s2_encoder` (modules) replace it for quick tests."""

  def __init__(
    self,
    text_config,
    vision_model: str | None = "resnet50",
    scale: float = 1.0,
    *,
    s1_encoder: nn.Module | None = None,
    s2_encoder: nn.Module | None = None,
    tokenizer=None,
  ):
    super().__init__()
    from transformers import BertModel  # pylint: disable=import-outside-toplevel

    if vision_model is not None:
      s1_vision, s2_vision = VISION_MODELS[vision_model]
      s1_encoder, s2_encoder = s1_vision(2), s2_vision(13)
    self.s1_encoder = s1_encoder
    self.s2_encoder = s2_encoder
    self.text_model = BertModel(text_config)
    self.tokenizer = tokenizer
    with torch.no_grad():  # the module is still in train mode here, as theirs is
      out_shape = self.text_model(torch.ones(1, MAX_LEN, dtype=torch.long)).last_hidden_state.shape[-1]
      in_s2 = self.s2_encoder(torch.randn(1, 13, 224, 224)).shape[-1]
      in_s1 = self.s1_encoder(torch.randn(1, 2, 224, 224)).shape[-1]
    self.s2_projection = nn.Linear(in_s2, out_shape)
    self.s1_projection = nn.Linear(in_s1, out_shape)
    self.scale = scale

  def encode_image(self, image: torch.Tensor) -> torch.Tensor:
    """Their encode_image: raw archive values NCHW (13 bands S2, 2 bands S1) -> projected, NOT normalised."""
    if image.shape[1] == 2:
      image = val_transform(image, "s1", _is_vit(self.s1_encoder))
      return self.s1_projection(self.s1_encoder(image))
    image = val_transform(image, "s2", _is_vit(self.s2_encoder))
    return self.s2_projection(self.s2_encoder(image))

  def encode_text(self, text=None, input_ids=None, attention_mask=None) -> torch.Tensor:
    """Their encode_text: the CLS token of the last hidden state, NOT normalised."""
    if text is not None:
      enc = self.tokenizer(text, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
      input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1][:, 0, :]


class GeoCLOSP(CLOSP):
  """The authors' GeoCLOSP: CLOSP plus SatCLIP's location encoder and a projection into the space."""

  def __init__(
    self,
    text_config,
    vision_model: str | None = "resnet50",
    scale: float = 1.0,
    *,
    legendre_polys: int = 10,
    dim_hidden: int = 256,
    num_layers: int = 2,
    dim_out: int = 256,
    harmonics_calculation: str = "analytic",
    **kwargs,
  ):
    super().__init__(text_config, vision_model, scale, **kwargs)
    self.location_encoder = LocationEncoder(
      dim_hidden=dim_hidden,
      num_layers=num_layers,
      dim_out=dim_out,
      legendre_polys=legendre_polys,
      harmonics_calculation=harmonics_calculation,
    )
    self.location_projection = nn.Linear(self.location_encoder.nnet.last_layer.dim_out, self.s1_projection.out_features)

  def encode_location(self, coords: torch.Tensor) -> torch.Tensor:
    """(lon, lat) degrees [B, 2] -> unit vectors, as GeoCLOSP.forward computes location_embed."""
    return F.normalize(self.location_projection(self.location_encoder(coords)), p=2, dim=-1)


def build(variant: str, text_config, **kwargs) -> CLOSP:
  """The released variant's class with random (their default-initialised) weights, in eval mode."""
  vision_model, geo = VARIANTS[variant]
  cls = GeoCLOSP if geo else CLOSP
  return cls(text_config, vision_model, **kwargs).eval()


def randomize_(module: nn.Module, seed: int, skip: tuple[str, ...] = ("location_encoder.",)) -> nn.Module:
  """Every floating tensor redrawn (fan-in scaled matrices; norm scales and BatchNorm variances in
  [0.5, 1.5]; small vectors), so no block is an identity (timm zero-inits each block's last norm).
  Tensors under `skip` keep their initialisation (the SIREN's own uniform init)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.dtype.is_floating_point or name.startswith(skip):
        continue
      if t.ndim > 1:
        t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
      elif name.endswith(("running_var", "weight")):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
  return module


# ---- SatCLIP location encoder (their location_encoder.py) ---------------------------------------


class LocationEncoder(nn.Module):
  def __init__(
    self,
    dim_hidden: int,
    num_layers: int,
    dim_out: int,
    legendre_polys: int = 10,
    harmonics_calculation: str = "analytic",
  ):
    super().__init__()
    self.posenc = SphericalHarmonics(legendre_polys=legendre_polys, harmonics_calculation=harmonics_calculation)
    self.nnet = SirenNet(
      dim_in=self.posenc.embedding_dim, dim_hidden=dim_hidden, num_layers=num_layers, dim_out=dim_out
    )

  def forward(self, x):
    return self.nnet(self.posenc(x))


class Sine(nn.Module):
  def __init__(self, w0=1.0):
    super().__init__()
    self.w0 = w0

  def forward(self, x):
    return torch.sin(self.w0 * x)


class Siren(nn.Module):
  """A linear layer (its own weight / bias parameters), dropout in training only, then sin(w0 x)
  (or the given activation); initialised uniform(+-1/dim_in) first, +-sqrt(6/dim_in)/w0 after."""

  def __init__(self, dim_in, dim_out, w0=1.0, c=6.0, is_first=False, use_bias=True, activation=None, dropout=False):
    super().__init__()
    self.dim_in, self.dim_out, self.is_first, self.dropout = dim_in, dim_out, is_first, dropout
    w_std = (1 / dim_in) if is_first else (math.sqrt(c / dim_in) / w0)
    self.weight = nn.Parameter(torch.empty(dim_out, dim_in).uniform_(-w_std, w_std))
    self.bias = nn.Parameter(torch.empty(dim_out).uniform_(-w_std, w_std)) if use_bias else None
    self.activation = Sine(w0) if activation is None else activation

  def forward(self, x):
    out = F.linear(x, self.weight, self.bias)
    if self.dropout:
      out = F.dropout(out, training=self.training)
    return self.activation(out)


class SirenNet(nn.Module):
  def __init__(self, dim_in, dim_hidden, dim_out, num_layers, w0=1.0, w0_initial=30.0, use_bias=True, dropout=True):
    super().__init__()
    self.layers = nn.ModuleList(
      [
        Siren(
          dim_in=dim_in if i == 0 else dim_hidden,
          dim_out=dim_hidden,
          w0=w0_initial if i == 0 else w0,
          use_bias=use_bias,
          is_first=i == 0,
          dropout=dropout,
        )
        for i in range(num_layers)
      ]
    )
    self.last_layer = Siren(
      dim_in=dim_hidden, dim_out=dim_out, w0=w0, use_bias=use_bias, activation=nn.Identity(), dropout=False
    )

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return self.last_layer(x)


# ---- spherical harmonics (their positional_encoding.py) -----------------------------------------


class SphericalHarmonics(nn.Module):
  """(lon, lat) degrees -> L*L features; phi = rad(lon + 180), theta = rad(lat + 90); l < L, m = -l..l."""

  def __init__(self, legendre_polys: int = 10, harmonics_calculation: str = "analytic"):
    super().__init__()
    self.L = self.M = int(legendre_polys)
    self.embedding_dim = self.L * self.M
    if harmonics_calculation == "closed-form":
      self.SH = sh_closed_form
    elif harmonics_calculation == "analytic":
      self.SH = sh_analytic
    else:
      raise ValueError(harmonics_calculation)

  def forward(self, lonlat):
    lon, lat = lonlat[:, 0], lonlat[:, 1]
    phi = torch.deg2rad(lon + 180)
    theta = torch.deg2rad(lat + 90)
    ys = []
    for l in range(self.L):
      for m in range(-l, l + 1):
        y = self.SH(m, l, phi, theta)
        if isinstance(y, float):
          y = y * torch.ones_like(phi)
        ys.append(y)
    return torch.stack(ys, dim=-1)


def _legendre(l, m, x):
  """Associated Legendre P_l^m(x) with the Condon-Shortley phase, by the recurrence of their file."""
  pmm = torch.ones_like(x)
  if m > 0:
    somx2 = torch.sqrt((1 - x) * (1 + x))
    fact = 1.0
    for _ in range(1, m + 1):
      pmm = pmm * (-fact) * somx2
      fact += 2.0
  if l == m:
    return pmm
  pmmp1 = x * (2.0 * m + 1.0) * pmm
  if l == m + 1:
    return pmmp1
  pll = torch.zeros_like(x)
  for ll in range(m + 2, l + 1):
    pll = ((2.0 * ll - 1.0) * x * pmmp1 - (ll + m - 1.0) * pmm) / (ll - m)
    pmm, pmmp1 = pmmp1, pll
  return pll


def _renorm(l, m):
  return math.sqrt((2.0 * l + 1.0) * math.factorial(l - m) / (4 * math.pi * math.factorial(l + m)))


def sh_closed_form(m, l, phi, theta):
  if m == 0:
    return _renorm(l, m) * _legendre(l, m, torch.cos(theta))
  if m > 0:
    return math.sqrt(2.0) * _renorm(l, m) * torch.cos(m * phi) * _legendre(l, m, torch.cos(theta))
  return math.sqrt(2.0) * _renorm(l, -m) * torch.sin(-m * phi) * _legendre(l, -m, torch.cos(theta))


@functools.cache
def _analytic_function(l: int, m: int):
  """Y_l^m as SatCLIP's generator writes it into spherical_harmonics_ylm.py: the sympy expression,
  evaluated to 15 digits, printed and compiled (with torch's cos and sin)."""
  import sympy  # pylint: disable=import-outside-toplevel

  theta, phi = sympy.Symbol("theta"), sympy.Symbol("phi")
  am = abs(m)
  p = sympy.assoc_legendre(l, am, sympy.cos(theta))
  if m == 0:
    y = sympy.sqrt((2 * l + 1) / 4 * sympy.pi) * p  # the generator's m = 0 line, as written
  else:
    p_bar = sympy.sqrt(((2 * l + 1) / (4 * sympy.pi)) * (sympy.factorial(l - am) / sympy.factorial(l + am))) * p
    y = (-1) ** m * sympy.sqrt(2) * p_bar * (sympy.sin(am * phi) if m < 0 else sympy.cos(m * phi))
  source = f"def ylm(theta, phi):\n    return {y.evalf()}\n"
  scope = {"cos": torch.cos, "sin": torch.sin}
  exec(compile(source, f"<Yl{l}_m{m}>", "exec"), scope)  # pylint: disable=exec-used
  return scope["ylm"]


def sh_analytic(m, l, phi, theta):
  value = _analytic_function(l, m)(theta, phi)
  return float(value) if not isinstance(value, torch.Tensor) else value

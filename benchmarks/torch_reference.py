"""The PyTorch reference for the train-step rows: CLOSP towers built from timm and transformers.

The original trains with this stack (timm/TorchGeo image encoders, a transformers BertModel,
torch.optim). The reference is built from the same closp-jax config as the JAX step, so both
sides have the same architecture, loss and optimizer:

  image towers   timm ResNet-50 / ViT (in_chans 13 or 2, timm's classifier kept when the config's
                 *_head_classes says so, as the released layouts) + nn.Linear to embed_dim;
                 resnet_tiny (no timm model name) is a small module of timm BasicBlocks with the
                 closp-jax layout (stem 16, one block per stage, widths 16-32-64-128);
                 ViTs get the bilinear 120 -> image_size resize the closp-jax tower does.
  text tower     transformers BertModel with the all-MiniLM-L6-v2 geometry, CLS token; or, where
                 transformers is missing (the GPU machine), `NativeBert`, the same network in plain
                 torch (tests/test_benchmarks.py checks that both give the same output).
                 Dropout is off, as in the closp-jax train step (the text tower there is
                 deterministic). When the config freezes the text tower, both sides use a table of
                 cached text embeddings indexed by text id instead.
  loss           per sensor, symmetric CLIP cross-entropy of scale * img @ txt.T (fixed scale, or
                 exp(logit_scale) clipped at 100 when learnable), the two sensors averaged.
  optimizer      torch.optim.AdamW (decay on >= 2-D weights, none on biases, norms and the
                 temperature), gradient clipping when the config has it, the closp-jax learning-rate
                 schedule through LambdaLR, one optimizer step per S2 + S1 batch pair (the
                 original steps once per sensor batch; the closp-jax step once per pair).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


# ---- image towers -------------------------------------------------------------------------------


class TinyResNet(nn.Module):
  """closp-jax's resnet_tiny in torch: 7x7/2 stem (16), max pool, four stages of one timm BasicBlock
  (16, 32, 64, 128; stride 2 from stage 2 on), global average pool. timm's ResNet class fixes the
  stem at 64 channels, hence this module."""

  def __init__(self, in_chans: int, widths=(16, 32, 64, 128), stem_width: int = 16, num_classes: int = 0):
    super().__init__()
    from timm.models.resnet import BasicBlock  # pylint: disable=import-outside-toplevel

    self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_width)
    self.act1 = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    stages, inplanes = [], stem_width
    for i, width in enumerate(widths):
      stride = 1 if i == 0 else 2
      down = None
      if stride != 1 or inplanes != width:
        down = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
      stages.append(nn.Sequential(BasicBlock(inplanes, width, stride=stride, downsample=down)))
      inplanes = width
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.num_features = inplanes
    self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(x.mean(dim=(2, 3)))


_TIMM_NAMES = {
  "resnet50": "resnet50",
  "resnet18": "resnet18",
  "vit_s16": "vit_small_patch16_224",
  "vit_l16": "vit_large_patch16_224",
}


def image_encoder(name: str, in_chans: int, head_classes: int) -> nn.Module:
  """A torch image encoder [B, C, H, W] -> features (timm's classifier output when head_classes > 0)."""
  if name == "resnet_tiny":
    return TinyResNet(in_chans, num_classes=head_classes)
  if name == "vit_tiny":  # closp-jax's test-sized ViT: 8 px patches, 96 wide, 2 blocks, 3 heads, 120 px grid
    from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel

    return VisionTransformer(
      img_size=120, patch_size=8, in_chans=in_chans, num_classes=head_classes, embed_dim=96, depth=2, num_heads=3
    )
  if name not in _TIMM_NAMES:
    raise ValueError(
      f"no PyTorch reference for image encoder {name!r}; known: resnet_tiny, vit_tiny, {', '.join(_TIMM_NAMES)}"
    )
  import timm  # pylint: disable=import-outside-toplevel

  return timm.create_model(_TIMM_NAMES[name], pretrained=False, in_chans=in_chans, num_classes=head_classes)


def _feature_width(encoder: nn.Module, head_classes: int) -> int:
  return head_classes or int(encoder.num_features)


# ---- text tower ---------------------------------------------------------------------------------


class NativeBert(nn.Module):
  """Post-LN BERT encoder (BertModel's computation, no dropout) in plain torch; returns the last
  hidden state [B, T, hidden]. Attention through scaled_dot_product_attention with a padding mask."""

  def __init__(
    self, vocab_size=30522, hidden=384, layers=6, heads=12, intermediate=1536, max_position=512, type_vocab=2, eps=1e-12
  ):
    super().__init__()
    self.heads = heads
    self.word_embeddings = nn.Embedding(vocab_size, hidden)
    self.position_embeddings = nn.Embedding(max_position, hidden)
    self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
    self.embeddings_norm = nn.LayerNorm(hidden, eps=eps)
    self.layers = nn.ModuleList(
      [
        nn.ModuleDict(
          dict(
            qkv=nn.Linear(hidden, 3 * hidden),
            out=nn.Linear(hidden, hidden),
            norm1=nn.LayerNorm(hidden, eps=eps),
            fc1=nn.Linear(hidden, intermediate),
            fc2=nn.Linear(intermediate, hidden),
            norm2=nn.LayerNorm(hidden, eps=eps),
          )
        )
        for _ in range(layers)
      ]
    )
    for m in self.modules():
      if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
      if isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)

  def forward(self, input_ids, attention_mask):
    b, t = input_ids.shape
    pos = torch.arange(t, device=input_ids.device)
    x = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(pos)[None]
      + self.token_type_embeddings(torch.zeros_like(input_ids))
    )
    x = self.embeddings_norm(x)
    keep = attention_mask.bool()[:, None, None, :]
    for layer in self.layers:
      q, k, v = layer["qkv"](x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
      ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
      x = layer["norm1"](x + layer["out"](ctx.transpose(1, 2).reshape(b, t, -1)))
      x = layer["norm2"](x + layer["fc2"](F.gelu(layer["fc1"](x))))
    return x

  def load_from_hf(self, bert) -> NativeBert:
    """Copies the weights of a transformers BertModel of the same geometry (for parity checks)."""
    e = bert.embeddings
    with torch.no_grad():
      for mine, theirs in (
        (self.word_embeddings, e.word_embeddings),
        (self.position_embeddings, e.position_embeddings),
        (self.token_type_embeddings, e.token_type_embeddings),
        (self.embeddings_norm, e.LayerNorm),
      ):
        mine.load_state_dict(theirs.state_dict())
      for layer, hf in zip(self.layers, bert.encoder.layer):
        att = hf.attention.self
        layer["qkv"].weight.copy_(torch.cat([att.query.weight, att.key.weight, att.value.weight]))
        layer["qkv"].bias.copy_(torch.cat([att.query.bias, att.key.bias, att.value.bias]))
        layer["out"].load_state_dict(hf.attention.output.dense.state_dict())
        layer["norm1"].load_state_dict(hf.attention.output.LayerNorm.state_dict())
        layer["fc1"].load_state_dict(hf.intermediate.dense.state_dict())
        layer["fc2"].load_state_dict(hf.output.dense.state_dict())
        layer["norm2"].load_state_dict(hf.output.LayerNorm.state_dict())
    return self


class HFBert(nn.Module):
  """transformers BertModel (MiniLM geometry, dropout off, SDPA attention) -> last hidden state."""

  def __init__(self, text_cfg):
    super().__init__()
    from transformers import BertConfig, BertModel  # pylint: disable=import-outside-toplevel

    config = BertConfig(
      vocab_size=int(text_cfg.vocab_size),
      hidden_size=int(text_cfg.hidden),
      num_hidden_layers=int(text_cfg.layers),
      num_attention_heads=int(text_cfg.heads),
      intermediate_size=int(text_cfg.intermediate),
      max_position_embeddings=int(text_cfg.max_position),
      type_vocab_size=int(text_cfg.type_vocab),
      layer_norm_eps=float(text_cfg.layer_norm_eps),
      hidden_act="gelu",
      hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0,
    )
    self.bert = BertModel(config, add_pooling_layer=False)

  def forward(self, input_ids, attention_mask):
    return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def text_encoder(text_cfg, impl: str = "auto") -> nn.Module:
  """'hf' (transformers BertModel), 'native' (NativeBert) or 'auto' (hf when transformers imports)."""
  if impl == "auto":
    try:
      import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

      impl = "hf"
    except ImportError:
      impl = "native"
  if impl == "hf":
    return HFBert(text_cfg)
  if impl == "native":
    return NativeBert(
      int(text_cfg.vocab_size),
      int(text_cfg.hidden),
      int(text_cfg.layers),
      int(text_cfg.heads),
      int(text_cfg.intermediate),
      int(text_cfg.max_position),
      int(text_cfg.type_vocab),
      float(text_cfg.layer_norm_eps),
    )
  raise ValueError(f"text impl must be 'auto', 'hf' or 'native', got {impl!r}")


# ---- the model and its step ---------------------------------------------------------------------


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """Symmetric CLIP cross-entropy of scale * img @ txt.T (inputs already unit norm)."""
  logits = scale * img @ txt.T
  target = torch.arange(img.shape[0], device=img.device)
  return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class TorchCLOSP(nn.Module):
  """S2 / S1 image towers, projections, a text tower (or a cached-embedding table) and the temperature."""

  def __init__(self, model_cfg, *, text_table: torch.Tensor | None = None, text_impl: str = "auto"):
    super().__init__()
    m = model_cfg
    self.image_size = None if m.image_size is None else int(m.image_size)
    self.resize_align_corners = bool(m.get("resize_align_corners", False))
    for sensor in ("s2", "s1"):
      enc = image_encoder(m[f"{sensor}_encoder"], int(m[f"{sensor}_in_chans"]), int(m[f"{sensor}_head_classes"]))
      setattr(self, f"{sensor}_encoder", enc)
      setattr(
        self, f"{sensor}_projection", nn.Linear(_feature_width(enc, int(m[f"{sensor}_head_classes"])), int(m.embed_dim))
      )
    if text_table is None:
      self.text_model = text_encoder(m.text, text_impl)
      self.register_buffer("text_table", None)
    else:
      self.text_model = None
      self.register_buffer("text_table", text_table)
    init = math.log(float(m.temperature.init_scale))
    if m.temperature.learnable:
      self.logit_scale = nn.Parameter(torch.tensor(init))
    else:
      self.register_buffer("logit_scale", torch.tensor(init))

  def encode_image(self, sensor: str, images: torch.Tensor) -> torch.Tensor:
    if self.image_size and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
      images = F.interpolate(
        images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=bool(self.resize_align_corners)
      )
    f = getattr(self, f"{sensor}_encoder")(images)
    return F.normalize(getattr(self, f"{sensor}_projection")(f).float(), dim=-1)

  def encode_text(self, batch: dict) -> torch.Tensor:
    if self.text_model is None:
      return self.text_table[batch["text_id"]]
    hidden = self.text_model(batch["input_ids"], batch["attention_mask"])
    return F.normalize(hidden[:, 0].float(), dim=-1)

  def scale(self) -> torch.Tensor:
    return torch.exp(torch.clamp(self.logit_scale, max=math.log(MAX_LOGIT_SCALE)))

  def loss(self, batch: dict) -> torch.Tensor:
    s = self.scale()
    terms = [
      clip_loss(self.encode_image(sensor, batch[sensor]["image"]), self.encode_text(batch[sensor]), s)
      for sensor in ("s2", "s1")
    ]
    return sum(terms) / len(terms)


def adamw(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
  """AdamW with the closp-jax decay mask: decay on >= 2-D weights, not on biases, norms or the temperature."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    (decay if p.ndim >= 2 and "logit" not in name else no_decay).append(p)
  groups = [{"params": decay, "weight_decay": float(optim_cfg.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
  return torch.optim.AdamW(
    groups, lr=float(optim_cfg.lr), betas=(float(optim_cfg.b1), float(optim_cfg.b2)), eps=float(optim_cfg.eps)
  )


def torch_batch(host_batch: dict, device: Any = "cpu", channels_last: bool = False) -> dict:
  """The trainer-format numpy batch as torch tensors (images NCHW, ids int64)."""
  out = {}
  for sensor, b in host_batch.items():
    image = torch.from_numpy(b["image"]).permute(0, 3, 1, 2).contiguous()
    if channels_last:
      image = image.contiguous(memory_format=torch.channels_last)
    out[sensor] = {
      "image": image.to(device),
      "input_ids": torch.from_numpy(b["input_ids"]).long().to(device),
      "attention_mask": torch.from_numpy(b["attention_mask"]).long().to(device),
      "text_id": torch.from_numpy(b["text_id"]).long().to(device),
    }
  return out


class TorchStep:
  """One training step of the reference: forward, backward, [clip], AdamW step.

  `autocast` (e.g. torch.bfloat16 on CUDA) runs the towers in mixed precision as
  torch.autocast does; parameters and optimizer state stay float32.
  """

  def __init__(
    self,
    cfg,
    host_batch: dict,
    *,
    text_table=None,
    device: Any = "cpu",
    autocast: Any = None,
    channels_last: bool = False,
    text_impl: str = "auto",
    lr_table=None,
  ):
    self.device = torch.device(device)
    frozen_text = "text_model" in tuple(cfg.optim.frozen)
    table = torch.from_numpy(text_table) if frozen_text and text_table is not None else None
    if frozen_text and table is None:
      raise ValueError("the config freezes the text tower: pass text_table (the cached embeddings)")
    self.model = TorchCLOSP(cfg.model, text_table=table, text_impl=text_impl).to(self.device)
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.model.train()
    self.optimizer = adamw(self.model, cfg.optim)
    self.scheduler = None
    if lr_table is not None:  # the closp-jax schedule, step by step (factors of the base rate)
      factors = [float(v) / float(cfg.optim.lr) for v in lr_table]
      self.scheduler = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda step: factors[min(step, len(factors) - 1)]
      )
    self.grad_clip = float(cfg.optim.grad_clip or 0.0)
    self.batch = torch_batch(host_batch, self.device, channels_last)
    self.autocast = autocast
    self.samples_per_step = sum(b["image"].shape[0] for b in self.batch.values())
    self.last_loss = None

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

  def run(self, steps: int = 1) -> None:
    """`steps` training steps; on CUDA, returns when the last one has finished on the device."""
    for _ in range(steps):
      self.optimizer.zero_grad(set_to_none=True)
      if self.autocast is not None:
        with torch.autocast(self.device.type, dtype=self.autocast):
          loss = self.model.loss(self.batch)
      else:
        loss = self.model.loss(self.batch)
      loss.backward()
      if self.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
      self.optimizer.step()
      if self.scheduler is not None:
        self.scheduler.step()
      self.last_loss = loss.detach()
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

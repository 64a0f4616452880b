"""The parts CLOSP and GeoCLOSP recipes share: one function per variant, read top to bottom.

configs/closp.py and configs/geoclosp.py call these; the schema (every key, its default, its
allowed values) is closp_jax/config.py. A new variant is a function here (or in a recipe file), a
name in VARIANTS and a branch in `apply`: nothing in the library changes.
"""

from closp_jax import config as schema
from closp_jax.weights.registry import RELEASED_LAYOUTS

VARIANTS = ("sample", "rgb", "paper", "vit_s", "vit_l", "pod")


def variant_of(arg) -> str:
  """The variant named after the colon (`geoclosp:paper`); `sample` when none is given."""
  variant = (arg or "sample").strip() or "sample"
  if variant not in VARIANTS:
    raise schema.ConfigValueError(f"unknown config variant {variant!r}; expected one of {', '.join(VARIANTS)}")
  return variant


def base(model: str, variant: str):
  """The schema's defaults, named `<model>:<variant>`."""
  c = schema.defaults()
  c.name = f"{model}:{variant}"
  return c


def sample(c) -> None:
  """A CPU demonstration, not the paper's recipe: builds the synthetic sample, trains CPU-sized
  random towers for 150 steps, and prints the retrieval table, within 10 minutes on 2 cores."""
  c.data.name = "crisis_landmark/sample"
  c.model.s2_encoder = "resnet_tiny"
  c.model.s1_encoder = "resnet_tiny"
  # A fixed scale of 1.0 (the paper's) gives these small towers almost no gradient signal;
  # a learnable temperature from 10 trains them within minutes.
  c.model.temperature.init_scale = 10.0
  c.model.temperature.learnable = True
  # The text tower stays frozen and without dropout, so its embeddings are computed once.
  c.optim.frozen = ("text_model",)
  c.model.text.dropout = 0.0
  c.model.location.dropout = 0.0
  c.optim.lr = 1e-3
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 20
  c.train.steps = 150
  c.eval.every_steps = 75
  c.checkpoint.every_steps = 75


def rgb(c) -> None:
  """The RGB-only baseline on the sample: S2 bands B4, B3, B2; S1 as VV, VH, VV - VH."""
  sample(c)
  c.model.s2_in_chans = 3
  c.model.s1_in_chans = 3
  c.data.rgb = True


def paper(c, released: str = "CLOSP-RN") -> None:
  """The authors' training as their final train.py and configs/default.yaml run it
  (DarthReca/closp at 4938033); docs/fidelity.md gives the file and line of every value."""
  c.data.name = "crisis_landmark/full"
  c.data.batch_size = 64  # per sensor
  c.data.normalization.s2 = "scale"  # S2 / 10,000
  c.data.normalization.s1 = "none"  # S1 as stored
  c.data.augment = "flips"  # random horizontal and vertical flips
  # The released tower layout: TorchGeo's ResNet-50 keeps timm's 1000-way classifier, projected to 384.
  c.model.update_from_flattened_dict(RELEASED_LAYOUTS[released])
  c.model.temperature.init_scale = 1.0  # logits = 1.0 * cosine, fixed
  c.model.temperature.learnable = False
  c.model.text.dropout = 0.1  # BERT's hidden and attention dropout, on in training
  c.model.location.dropout = 0.5  # SatCLIP's SIREN dropout, on in training
  c.init.text = "minilm"
  c.init.s2 = "ssl4eo-s12/resnet50-s2-moco"
  c.init.s1 = "ssl4eo-s12/resnet50-s1-moco"
  # The pretrained towers stay frozen (freeze_pretrained: true; the final train.py never unfreezes);
  # the projections train. docs/configs.md shows how to unfreeze after the first epoch instead.
  c.optim.frozen = ("s2_encoder", "s1_encoder", "text_model")
  c.optim.freeze_towers = ()
  c.optim.freeze_steps = 0
  c.optim.name = "adamw"  # torch.optim.AdamW(params, lr=1e-6): wd 0.01 on every parameter
  c.optim.weight_decay = 0.01
  c.optim.decay = "all"
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip = 0.0
  c.optim.lr = 1e-6  # OneCycleLR(max_lr=1e-6, pct_start=0.1, div_factor=1e6,
  c.optim.schedule = "one_cycle"  #            final_div_factor=1e6), stepped every batch,
  c.optim.pct_start = 0.1  #            beta1 cycling 0.95 -> 0.85 -> 0.95
  c.optim.div_factor = 1e6
  c.optim.final_div_factor = 1e6
  c.optim.cycle_momentum = True
  c.optim.base_momentum = 0.85
  c.optim.max_momentum = 0.95
  c.train.epochs = 30.0
  c.train.steps = -1
  c.train.sensor_updates = "joint"  # one update from the mean of the S2 and S1 losses
  c.loss.location_directions = "both"  # GeoCLOSP: mean of four cross-entropies per sensor
  c.eval.every_steps = 1000
  c.checkpoint.every_steps = 1000


def vit_s(c) -> None:
  """CLOSP-VS: ViT-S/16 towers at 224 px (resized as kornia's Resize(224) does), SSL4EO-S12 weights."""
  paper(c, "CLOSP-VS")
  c.init.s2 = "ssl4eo-s12/vit-s16-s2-moco"
  c.init.s1 = "ssl4eo-s12/vit-s16-s1-mae"


def vit_l(c) -> None:
  """CLOSP-VL: ViT-L/16 towers at 224 px, SSL4EO-S12 MAE weights."""
  paper(c, "CLOSP-VL")
  c.init.s2 = "ssl4eo-s12/vit-l16-s2-mae"
  c.init.s1 = "ssl4eo-s12/vit-l16-s1-mae"


def pod(c) -> None:
  """Pod-scale training of every tower on the release: global batch 32,768 per sensor, learnable
  temperature, ring loss, FSDP, bf16 compute; towers unfrozen after the first epoch."""
  paper(c)
  c.optim.frozen = ()
  c.optim.freeze_towers = ("s2_encoder", "s1_encoder", "text_model")
  c.optim.freeze_steps = -1  # -1: one epoch, resolved from the dataset size
  c.optim.cycle_momentum = False
  c.optim.decay = "matrices"
  c.data.augment = "flips_rot90"
  c.data.batch_size = 32768
  c.data.eval_batch_size = 32768
  c.model.temperature.init_scale = 1.0 / 0.07
  c.model.temperature.learnable = True
  c.loss.chunked = True
  c.optim.lr = 5e-4
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 500
  c.optim.weight_decay = 0.1
  c.optim.grad_clip = 1.0
  c.model.dtype = "bfloat16"
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.rules = "fsdp"
  c.eval.every_steps = 200
  c.checkpoint.every_steps = 200


def apply(c, variant: str) -> None:
  """The shared recipe of `variant`."""
  if variant == "sample":
    sample(c)
  elif variant == "rgb":
    rgb(c)
  elif variant == "paper":
    paper(c)
  elif variant == "vit_s":
    vit_s(c)
  elif variant == "vit_l":
    vit_l(c)
  elif variant == "pod":
    pod(c)

"""CLOSP: text, Sentinel-2 and Sentinel-1 in one space.

  --config closp[:VARIANT]   (or configs/closp.py[:VARIANT] from a checkout)

Variants (configs/common.py has each recipe, top to bottom):
  sample  the default: a CPU demonstration on the synthetic sample (random CPU-sized towers,
          learnable temperature), minutes on a laptop
  rgb     the RGB-only baseline on the sample
  paper   the authors' training: SSL4EO-S12 ResNet-50 towers frozen, projections trained,
          AdamW one-cycle to 1e-6 for 30 epochs on the real release (docs/fidelity.md)
  vit_s   paper with ViT-S/16 towers (CLOSP-VS)
  vit_l   paper with ViT-L/16 towers (CLOSP-VL)
  pod     every tower trained at pod scale (batch 32,768 per sensor, FSDP, bf16)
"""

from closp_jax.configs import common


def get_config(arg=None):
  variant = common.variant_of(arg)
  c = common.base("closp", variant)
  common.apply(c, variant)
  # No location tower: the location terms of the objective are off.
  c.model.location.enabled = False
  c.init.location = ""
  c.loss.weights.s2_location = 0.0
  c.loss.weights.s1_location = 0.0
  c.lock()
  return c

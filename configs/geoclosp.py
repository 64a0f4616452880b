"""GeoCLOSP: CLOSP plus a location encoder contrasted with the image embeddings.

  --config geoclosp[:VARIANT]   (or configs/geoclosp.py[:VARIANT] from a checkout)

Variants as CLOSP's (configs/closp.py, recipes in configs/common.py), with a SatCLIP location
tower: spherical harmonics of degree 10 into a SIREN (2 hidden layers of 256, 256-d out), projected
to the shared space. Location contrasts with the image embedding, not with text; retrieval uses
text and images only.
"""

from closp_jax.configs import common


def get_config(arg=None):
  variant = common.variant_of(arg)
  c = common.base("geoclosp", variant)
  common.apply(c, variant)
  c.model.location.enabled = True
  c.model.location.kind = "satclip"
  c.model.location.degree = 10
  c.model.location.hidden = 256
  c.model.location.layers = 2
  c.model.location.out = 256
  c.loss.weights.s2_location = 1.0  # mean of the four cross-entropies per sensor
  c.loss.weights.s1_location = 1.0
  if variant in ("paper", "vit_s", "vit_l", "pod"):
    # The authors start from the SatCLIP-ResNet50-L10 checkpoint (configs/loc_default.yaml), trained
    # with SatCLIP's 2023 "analytic" spherical-harmonics table, and keep it frozen with the towers.
    c.init.location = "satclip/resnet50-l10"
    c.model.location.sh_convention = "analytic_2023"
    if variant != "pod":
      c.optim.frozen = tuple(c.optim.frozen) + ("location_encoder",)
  c.lock()
  return c
